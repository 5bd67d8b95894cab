//! Tracing setup: human text for a terminal, JSON for journald and SIEM.
//!
//! Logs go to stderr, so stdout stays free for command output (`plan --format json`, `check`).
//! `RUST_LOG` overrides the level chosen by `-v`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("RUST_LOG is not a valid filter ({reason}): fix it, e.g. RUST_LOG=dexscope=debug")]
    BadFilter { reason: String },
    #[error("cannot install the log subscriber ({reason}): it was already set up")]
    Install { reason: String },
}

/// The filter directives for a `-v` count when `RUST_LOG` is not set: 0 → info, 1 → debug for
/// dexscope, 2 → trace for dexscope, 3 or more → trace for everything (HTTP internals included).
pub fn directives(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "info",
        1 => "info,dexscope=debug",
        2 => "debug,dexscope=trace",
        _ => "trace",
    }
}

/// The filter in force: `RUST_LOG` when set (and not empty), else the `-v` level.
pub fn filter(verbosity: u8, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let spec = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(directives(verbosity));
    EnvFilter::builder()
        .parse(spec)
        .map_err(|e| TelemetryError::BadFilter {
            reason: e.to_string(),
        })
}

/// Installs the global subscriber writing to stderr. Call once, early in `main`.
pub fn init(format: LogFormat, verbosity: u8) -> Result<(), TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(verbosity, rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal();
    let install = |e: Box<dyn std::error::Error + Send + Sync>| TelemetryError::Install {
        reason: e.to_string(),
    };
    match format {
        LogFormat::Text => builder(filter, std::io::stderr)
            .with_ansi(ansi)
            .try_init()
            .map_err(install),
        LogFormat::Json => builder(filter, std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .map_err(install),
    }
}

/// The subscriber builder shared by [`init`] and the tests (which write into a buffer).
pub fn builder<W>(
    filter: EnvFilter,
    writer: W,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    EnvFilter,
    W,
>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
}

/// With `DEXSCOPE_TRACE_MEMORY` set, logs the process's peak and current resident memory
/// (Linux `/proc/self/status`) at a phase boundary: how the memory figure of the benchmark is
/// attributed to the passes. A diagnostic, not a setting; silent elsewhere.
pub(crate) fn trace_memory(phase: &str) {
    if std::env::var_os("DEXSCOPE_TRACE_MEMORY").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    tracing::info!(
        phase,
        vm_hwm = field("VmHWM:"),
        vm_rss = field("VmRSS:"),
        "memory"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn emit_all_levels() {
        tracing::info!(target: "dexscope::test", "at info");
        tracing::debug!(target: "dexscope::test", "at debug");
        tracing::trace!(target: "dexscope::test", "at trace");
        tracing::debug!(target: "hyper::proto", "dependency debug");
    }

    #[test]
    fn verbosity_raises_the_level_and_rust_log_wins() {
        // (verbosity, RUST_LOG, lines expected, lines not expected)
        type Case<'a> = (u8, Option<&'a str>, &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (0, None, &["at info"], &["at debug", "dependency debug"]),
            (
                1,
                None,
                &["at info", "at debug"],
                &["at trace", "dependency debug"],
            ),
            (2, None, &["at trace", "dependency debug"], &[]),
            (
                0,
                Some("dexscope=trace"),
                &["at trace"],
                &["dependency debug"],
            ),
            (3, Some("warn"), &[], &["at info"]),
            (1, Some("  "), &["at debug"], &["at trace"]),
        ];
        for (verbosity, rust_log, want, not_want) in cases {
            let buf = Buffer::default();
            let sub = builder(filter(*verbosity, *rust_log).unwrap(), buf.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(sub, emit_all_levels);
            let out = buf.text();
            for w in *want {
                assert!(
                    out.contains(w),
                    "-v×{verbosity} {rust_log:?}: missing {w:?} in {out}"
                );
            }
            for w in *not_want {
                assert!(
                    !out.contains(w),
                    "-v×{verbosity} {rust_log:?}: unexpected {w:?}"
                );
            }
        }
    }

    #[test]
    fn json_format_writes_one_object_per_line() {
        let buf = Buffer::default();
        let sub = builder(filter(0, None).unwrap(), buf.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "dexscope::test", group = "g1", "first");
            tracing::warn!(target: "dexscope::test", "second\nline");
        });
        let out = buf.text();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "first");
        assert_eq!(first["group"], "g1");
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["message"], "second\nline");
    }

    #[test]
    fn bad_rust_log_is_reported() {
        let err = filter(0, Some("dexscope=loud")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RUST_LOG is not a valid filter")
        );
        assert!(!err.to_string().contains('\n'));
    }
}
