//! Retry timing: the exponential backoff (from `backon`); `Retry-After` values are read by
//! [`crate::retry_after`].

use std::time::Duration;

pub use crate::retry_after::parse_retry_after;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::RetrySettings;

/// The exponential delays for one request: base × factor^n, plus a positive jitter, each
/// capped at `max_delay`.
pub(crate) struct Backoff {
    inner: backon::ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(s: &RetrySettings) -> Self {
        let mut b = ExponentialBuilder::default()
            .with_min_delay(s.base_delay)
            .with_factor(s.factor)
            .with_max_delay(s.max_delay)
            .without_max_times();
        if s.jitter {
            b = b.with_jitter();
        }
        Self {
            inner: b.build(),
            cap: s.max_delay,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_never_shrinks_below_base_and_is_capped() {
        let s = RetrySettings {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            ..RetrySettings::default()
        };
        let mut b = Backoff::new(&s);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let floors = [100, 200, 400, 500, 500, 500, 500, 500];
        for (d, floor) in delays.iter().zip(floors) {
            assert!(*d >= Duration::from_millis(floor), "{delays:?}");
            assert!(*d <= Duration::from_millis(500), "{delays:?}");
        }
    }
}
