//! Typed values read out of the merged layers, each bad one named with where it was set; the
//! duration and URL forms settings take.

use std::collections::HashMap;
use std::time::Duration;

use config::{Value, ValueKind};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ConfigError, ENV_ORIGIN, Guid, Origin};

/// Reads typed values out of the merged layers and says where a bad one came from.
pub(super) struct Reader {
    pub(super) merged: config::Map<String, Value>,
    pub(super) path: String,
    pub(super) lines: HashMap<String, usize>,
    pub(super) env_vars: HashMap<String, String>,
    /// Secrets read so far: a quoted bad value that contains one is hidden.
    pub(super) secrets: Vec<SecretString>,
}

pub(super) type Sk = (&'static str, &'static str);

impl Reader {
    /// The value of `key` in `section`; a section `a.b` is the table `b` inside `[a]`.
    pub(super) fn get(&self, (section, key): Sk) -> Option<&Value> {
        let mut parts = section.split('.');
        let mut table = match &self.merged.get(parts.next()?)?.kind {
            ValueKind::Table(t) => t,
            _ => return None,
        };
        for part in parts {
            table = match &table.get(part)?.kind {
                ValueKind::Table(t) => t,
                _ => return None,
            };
        }
        table.get(key).filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    pub(super) fn origin(&self, (section, key): Sk) -> Origin {
        let full = format!("{section}.{key}");
        let from_env = self
            .get((section, key))
            .is_some_and(|v| v.origin() == Some(ENV_ORIGIN));
        match (from_env, self.env_vars.get(&full), self.lines.get(&full)) {
            (true, Some(var), _) => Origin::Env { var: var.clone() },
            (_, _, Some(line)) => Origin::File {
                path: self.path.clone(),
                line: Some(*line),
            },
            _ => Origin::Default,
        }
    }

    /// A value for an error line, or a note that it is hidden because it holds a secret.
    pub(super) fn quote(&self, value: &str) -> String {
        let holds_secret = self.secrets.iter().any(|s| {
            let s = s.expose_secret();
            s.len() >= 4 && value.contains(s)
        });
        if holds_secret {
            "(value hidden: it contains a configured secret)".into()
        } else {
            let cut: String = value.chars().take(80).collect();
            format!("{cut:?}")
        }
    }

    pub(super) fn describe(&self, v: &Value) -> String {
        match &v.kind {
            ValueKind::String(s) => self.quote(s),
            ValueKind::Boolean(b) => b.to_string(),
            ValueKind::I64(i) => i.to_string(),
            ValueKind::I128(i) => i.to_string(),
            ValueKind::U64(i) => i.to_string(),
            ValueKind::U128(i) => i.to_string(),
            ValueKind::Float(x) => x.to_string(),
            ValueKind::Table(_) => "a table".into(),
            ValueKind::Array(_) => "a list".into(),
            ValueKind::Nil => "nothing".into(),
        }
    }

    pub(super) fn invalid(&self, sk: Sk, problem: String, todo: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            section: sk.0,
            key: sk.1,
            problem,
            origin: self.origin(sk),
            todo: todo.into(),
        }
    }

    pub(super) fn missing(&self, sk: Sk, todo: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            section: sk.0,
            key: sk.1,
            origin: Origin::File {
                path: self.path.clone(),
                line: None,
            },
            todo: todo.into(),
        }
    }

    /// A string setting; an empty string counts as unset (so the environment can clear an
    /// optional file setting).
    pub(super) fn opt_str(&self, sk: Sk) -> Result<Option<String>, ConfigError> {
        match self.get(sk) {
            None => Ok(None),
            Some(v) => match &v.kind {
                ValueKind::String(s) if s.is_empty() => Ok(None),
                ValueKind::String(s) => Ok(Some(s.clone())),
                _ => Err(self.invalid(
                    sk,
                    format!("must be text, not {}", self.describe(v)),
                    "put the value in quotes",
                )),
            },
        }
    }

    pub(super) fn req_str(&self, sk: Sk, todo: &str) -> Result<String, ConfigError> {
        self.opt_str(sk)?.ok_or_else(|| self.missing(sk, todo))
    }

    pub(super) fn guid(&self, sk: Sk, what: &str) -> Result<Guid, ConfigError> {
        let todo =
            format!("set it to the {what}, a GUID like 00000000-0000-0000-0000-000000000000");
        let s = self.req_str(sk, &todo)?;
        Guid::parse(s.trim()).ok_or_else(|| {
            self.invalid(
                sk,
                format!("{} is not a GUID", self.quote(&s)),
                format!("write the {what} as 8-4-4-4-12 hex digits"),
            )
        })
    }

    pub(super) fn boolean(&self, sk: Sk) -> Result<bool, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set true or false"))?;
        match &v.kind {
            ValueKind::Boolean(b) => Ok(*b),
            // Environment values are always text.
            ValueKind::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            ValueKind::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(self.invalid(
                sk,
                format!("must be true or false, not {}", self.describe(v)),
                "write true or false",
            )),
        }
    }

    pub(super) fn uint(&self, sk: Sk, min: u32) -> Result<u32, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a whole number"))?;
        let n: Option<i128> = match &v.kind {
            ValueKind::I64(i) => Some(i128::from(*i)),
            ValueKind::I128(i) => Some(*i),
            ValueKind::U64(i) => Some(i128::from(*i)),
            ValueKind::String(s) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        n.and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= min)
            .ok_or_else(|| {
                self.invalid(
                    sk,
                    format!("must be a whole number ≥ {min}, not {}", self.describe(v)),
                    format!("write a whole number from {min} to {}", u32::MAX),
                )
            })
    }

    pub(super) fn uint_at_most(&self, sk: Sk, min: u32, max: u32) -> Result<u32, ConfigError> {
        let n = self.uint(sk, 0)?;
        if !(min..=max).contains(&n) {
            let v = self.get(sk).expect("read just now");
            return Err(self.invalid(
                sk,
                format!("must be from {min} to {max}, not {}", self.describe(v)),
                format!("write a whole number from {min} to {max}"),
            ));
        }
        Ok(n)
    }

    pub(super) fn duration(&self, sk: Sk, min: Duration) -> Result<Duration, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a duration like 90s, 5m, 2h or 1d"))?;
        let parsed = match &v.kind {
            ValueKind::String(s) => parse_duration(s),
            _ => None,
        };
        let todo = "write a whole number followed by s, m, h or d, like 90s, 5m, 2h or 1d";
        match parsed {
            None => Err(self.invalid(sk, format!("is not a duration: {}", self.describe(v)), todo)),
            Some(d) if d < min => Err(self.invalid(
                sk,
                format!(
                    "is {}, below the minimum of {}",
                    self.describe(v),
                    crate::text::duration(min)
                ),
                format!("use at least {}", crate::text::duration(min)),
            )),
            Some(d) => Ok(d),
        }
    }

    pub(super) fn list(&self, sk: Sk) -> Result<Vec<String>, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a list of values"))?;
        let bad = || {
            self.invalid(
                sk,
                format!("must be a list of text values, not {}", self.describe(v)),
                "write a list like [\"a\", \"b\"] (comma-separated in the environment)",
            )
        };
        match &v.kind {
            ValueKind::Array(items) => items
                .iter()
                .map(|i| match &i.kind {
                    ValueKind::String(s) => Ok(s.trim().to_string()),
                    _ => Err(bad()),
                })
                .collect(),
            // A comma-separated list from the environment; an empty value is an empty list.
            ValueKind::String(s) if v.origin() == Some(ENV_ORIGIN) => Ok(s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()),
            _ => Err(bad()),
        }
    }

    /// An endpoint URL: `https://`, or `http://` on loopback only; kept as a root ending in `/`.
    pub(super) fn endpoint(&self, sk: Sk, preset: &str) -> Result<Url, ConfigError> {
        let raw = self.opt_str(sk)?;
        let text = raw.as_deref().unwrap_or(preset);
        let mut url = Url::parse(text.trim()).map_err(|e| {
            self.invalid(
                sk,
                format!("{} is not a URL ({e})", self.quote(text)),
                "write an absolute URL like https://graph.microsoft.com",
            )
        })?;
        // Checked before anything quotes the value: a password in the URL must not reach the
        // message, and a client would send it (and a redirect or proxy could see it).
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(
                sk,
                "carries a user name or password in the URL".into(),
                "remove the user:password@ part: dexscope authenticates with its own credential",
            ));
        }
        if let Err(problem) = check_transport(&url) {
            return Err(self.invalid(
                sk,
                format!("{} {problem}", self.quote(text)),
                "use https:// (http:// only for 127.0.0.0/8, [::1] or localhost)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(self.invalid(
                sk,
                format!("{} carries a query or fragment", self.quote(text)),
                "give only scheme, host, port and an optional path",
            ));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }
}

/// `90s`, `5m`, `2h`, `1d`: a whole number and one unit.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(unit_at);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(factor).map(Duration::from_secs)
}

/// Only `https://` travels off the machine; plain `http://` is allowed to loopback (tests, the
/// simulated tenant). The returned text never contains the URL.
pub(super) fn check_transport(url: &Url) -> Result<(), &'static str> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => return Err("uses http:// to a non-loopback host"),
        _ => return Err("has an unsupported scheme"),
    }
    if url.host().is_none() {
        return Err("has no host");
    }
    Ok(())
}

/// Loopback means `127.0.0.0/8`, `[::1]` and `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("2h", Some(7_200)),
            ("1d", Some(86_400)),
            ("0s", Some(0)),
            (" 3m ", Some(180)),
            ("5", None),
            ("m", None),
            ("5 m", None),
            ("1h30m", None),
            ("-5s", None),
            ("5M", None),
            ("1.5h", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_duration(input).map(|d| d.as_secs()),
                *want,
                "input {input:?}"
            );
        }
    }
}
