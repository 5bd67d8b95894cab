//! Tracing setup: human text for a terminal, JSON for journald and SIEM.
//!
//! Logs go to stderr, so stdout stays free for command output (`plan --format json`, `check`).
//! `RUST_LOG` overrides the level chosen by `-v`. Under journald each line carries its level
//! as a syslog priority prefix and the text format leaves the timestamp to the journal;
//! `NO_COLOR` turns the terminal colours off.

use std::io::{IsTerminal, Write};

use tracing::Level;
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

/// Where stderr goes, as far as the log format cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// stderr is the journal's stream: priority prefixes, no timestamp, no colour.
    pub journal: bool,
    /// ANSI colours: stderr is a terminal, not the journal, and `NO_COLOR` is unset or empty.
    pub ansi: bool,
}

impl Output {
    /// The output of this process, from the environment and what fd 2 is.
    pub fn detect() -> Output {
        let stderr = std::io::stderr();
        let journal = std::env::var("JOURNAL_STREAM")
            .ok()
            .is_some_and(|v| stderr_is_stream(&stderr, &v));
        Output::decide(
            journal,
            stderr.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    /// The decision itself: no-color.org says any `NO_COLOR` that is present and not empty
    /// turns colour off; the journal stores bytes, not a terminal's rendering.
    pub fn decide(journal: bool, terminal: bool, no_color: Option<&std::ffi::OsStr>) -> Output {
        let no_color = no_color.is_some_and(|v| !v.is_empty());
        Output {
            journal,
            ansi: terminal && !journal && !no_color,
        }
    }
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`, both decimal) names the file stderr is open
/// on. systemd sets it for a unit whose stdout or stderr is connected to the journal, and a
/// child whose stderr was redirected elsewhere inherits the variable, so the device and inode
/// are compared rather than trusting its presence (systemd.exec(5), "$JOURNAL_STREAM").
fn stderr_is_stream(stderr: &std::io::Stderr, value: &str) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat on a duplicate of fd 2: the duplicate is closed again when the file drops.
    let meta = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    meta.is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The syslog priority prefix of a level, as journald reads it from the start of each line of
/// a stream (sd-daemon(3): `<3>` err, `<4>` warning, `<6>` info, `<7>` debug), so that
/// `journalctl -p err` finds dexscope's errors.
///
/// Chosen over writing to the journal's socket (`tracing-journald`): the stream is already
/// there for a unit's stderr, so it needs no socket access in a hardened unit, no further
/// dependency, and works the same when the output is a file, which is how it is tested.
pub fn priority_prefix(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

/// stderr with each line of an event led by the event's priority prefix.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalStderr;

impl<'a> MakeWriter<'a> for JournalStderr {
    type Writer = PrefixedLines<std::io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        PrefixedLines::new(std::io::stderr().lock(), priority_prefix(&Level::INFO))
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        PrefixedLines::new(std::io::stderr().lock(), priority_prefix(meta.level()))
    }
}

/// A writer that puts `prefix` before every line: a message with a line break stays at its
/// level on every journal line it becomes. One writer serves one event, holding the lock on
/// stderr so lines of two threads do not interleave.
pub struct PrefixedLines<W: Write> {
    inner: W,
    prefix: &'static str,
    at_line_start: bool,
}

impl<W: Write> PrefixedLines<W> {
    pub fn new(inner: W, prefix: &'static str) -> Self {
        PrefixedLines {
            inner,
            prefix,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for PrefixedLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(self.prefix.as_bytes())?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Installs the global subscriber writing to stderr. Call once, early in `main`.
pub fn init(format: LogFormat, verbosity: u8) -> Result<(), TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(verbosity, rust_log.as_deref())?;
    init_with(format, filter, Output::detect())
}

/// Installs the global subscriber with this filter, for this output.
pub fn init_with(
    format: LogFormat,
    filter: EnvFilter,
    output: Output,
) -> Result<(), TelemetryError> {
    let install = |e: Box<dyn std::error::Error + Send + Sync>| TelemetryError::Install {
        reason: e.to_string(),
    };
    // Four shapes, each its own type: text or JSON, to the journal or to plain stderr.
    // journald stamps every entry itself, so the text format drops its own time there.
    match (format, output.journal) {
        (LogFormat::Text, false) => builder(filter, std::io::stderr)
            .with_ansi(output.ansi)
            .try_init(),
        (LogFormat::Text, true) => builder(filter, JournalStderr)
            .with_ansi(false)
            .without_time()
            .try_init(),
        (LogFormat::Json, false) => json(builder(filter, std::io::stderr)).try_init(),
        (LogFormat::Json, true) => json(builder(filter, JournalStderr)).try_init(),
    }
    .map_err(install)
}

/// The JSON shape: one object per line, the event's fields at the top level.
fn json<W>(
    b: tracing_subscriber::fmt::SubscriberBuilder<
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        EnvFilter,
        W,
    >,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    EnvFilter,
    W,
>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    b.json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

/// Logs an error that ends the process through the log subscriber, so it reaches the journal
/// at priority err and in JSON when JSON is configured. When no subscriber is installed yet
/// (the config could not be read, or `RUST_LOG` is bad) a text one is installed for it first,
/// one that lets errors through whatever `RUST_LOG` says.
pub fn fatal(message: &str) {
    if !tracing::dispatcher::has_been_set() {
        let filter = EnvFilter::new("error");
        let _ = init_with(LogFormat::Text, filter, Output::detect());
    }
    tracing::error!(target: "dexscope", "{message}");
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
    fn every_line_of_an_event_carries_its_priority_however_it_is_written() {
        let mut out = Vec::new();
        {
            let mut w = PrefixedLines::new(&mut out, priority_prefix(&Level::ERROR));
            // One event's text arriving in pieces that cut lines anywhere.
            for piece in ["ERROR first", " line\nsecond", "\n", "third\n"] {
                w.write_all(piece.as_bytes()).unwrap();
            }
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<3>ERROR first line\n<3>second\n<3>third\n"
        );
        let levels = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ];
        let prefixes: Vec<&str> = levels.iter().map(priority_prefix).collect();
        assert_eq!(prefixes, ["<3>", "<4>", "<6>", "<7>", "<7>"]);
    }

    #[test]
    fn colour_only_on_a_terminal_outside_the_journal_without_no_color() {
        use std::ffi::OsStr;
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        // (journal, terminal, NO_COLOR, ansi)
        let cases = [
            (false, true, None, true),
            (false, true, empty, true),
            (false, true, set, false),
            (false, false, None, false),
            (true, true, None, false),
        ];
        for (journal, terminal, no_color, ansi) in cases {
            let got = Output::decide(journal, terminal, no_color);
            assert_eq!(
                got,
                Output { journal, ansi },
                "{journal} {terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn journal_stream_must_name_the_file_stderr_is() {
        // Whatever fd 2 is here, it is not inode 0 of device 0, and junk is not a stream.
        let stderr = std::io::stderr();
        for value in ["0:0", "", "12", "a:b", "1:2:3"] {
            assert!(!stderr_is_stream(&stderr, value), "{value}");
        }
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
