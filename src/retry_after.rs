//! `Retry-After` values as Graph, Defender for Endpoint and the token endpoint send them, read
//! into a bounded wait. Below both `auth` and `http`, which each honour it; pure: `now` is a
//! parameter.

use std::time::{Duration, SystemTime};

/// The longest wait a `Retry-After` value is taken at: anything longer is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// How long a `Retry-After` value asks to wait, measured from `now`: integer or fractional
/// seconds (`2`, `1.5`) or an HTTP date. A date in the past means "now" (zero); a wait longer
/// than [`MAX_RETRY_AFTER`] is clamped to it. Unparseable or negative values give `None`, and
/// the caller falls back to exponential backoff. Never panics, however large the number.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        let secs: f64 = v.parse().ok()?;
        // Round up to the next millisecond: never wait less than asked.
        let millis = (secs * 1000.0).ceil();
        if millis.is_nan() || millis < 0.0 {
            return None;
        }
        let max = MAX_RETRY_AFTER.as_millis() as f64;
        return Some(Duration::from_millis(millis.min(max) as u64));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let cases: &[(&str, Option<Duration>)] = &[
            ("1", Some(Duration::from_secs(1))),
            ("1.5", Some(Duration::from_millis(1500))),
            (" 2.128 ", Some(Duration::from_millis(2128))),
            ("0.0001", Some(Duration::from_millis(1))),
            ("0", Some(Duration::ZERO)),
            (
                "Wed, 21 Oct 2015 07:28:07 GMT",
                Some(Duration::from_secs(7)),
            ),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("-1", None),
            ("soon", None),
            ("", None),
            ("1.2.3", None),
            ("86400", Some(MAX_RETRY_AFTER)),
            ("86400.5", Some(MAX_RETRY_AFTER)),
            ("99999999999999999999999999", Some(MAX_RETRY_AFTER)),
            ("Wed, 21 Oct 2099 07:28:00 GMT", Some(MAX_RETRY_AFTER)),
            ("1e20", None),
            ("inf", None),
            ("NaN", None),
            ("-0.5", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_retry_after(input, now), *expected, "input {input:?}");
        }
    }
}
