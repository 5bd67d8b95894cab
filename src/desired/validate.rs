//! The `validate` command: checks desired-state files offline (no network, no config) and
//! prints every problem as text, JSON or GitHub Actions annotations.

use std::io::Write;
use std::path::PathBuf;

use chrono::NaiveDate;

use super::{Diagnostic, Mode, Outcome, Severity};

/// Output format of `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ValidateFormat {
    /// `file:line:col: error: message` lines and a summary line.
    #[default]
    Text,
    /// One JSON object: `{"valid", "diagnostics", "users", "devices"}`.
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::message`).
    Github,
}

/// Validates `paths` as one desired state in strict mode (expired entries are errors) and
/// writes the result to `out`. Returns the exit code: 0 valid, 1 invalid (or output failed).
pub fn validate_command(
    paths: &[PathBuf],
    format: ValidateFormat,
    today: NaiveDate,
    out: &mut dyn Write,
) -> i32 {
    let outcome = super::evaluate(paths, today, Mode::Strict);
    write_outcome(&outcome, format, out)
}

/// Validates the desired state at the head of a git source (`URL#branch:path`; its signature
/// checked against `allowed_signers` when given) like [`validate_command`]. A source that
/// cannot be read is reported on `err`, exit code 1.
pub fn validate_git_command(
    spec: &str,
    allowed_signers: Option<&std::path::Path>,
    format: ValidateFormat,
    today: NaiveDate,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let read = super::source::source_from_spec(spec, allowed_signers)
        .and_then(|source| Ok(super::source::read_head(&source)?));
    let (commit, files) = match read {
        Ok(read) => read,
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            return 1;
        }
    };
    let texts: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    let mut outcome = super::parse_files(&texts, today, Mode::Strict);
    outcome.state.commit = Some(commit.to_string());
    write_outcome(&outcome, format, out)
}

fn write_outcome(outcome: &Outcome, format: ValidateFormat, out: &mut dyn Write) -> i32 {
    let written = match format {
        ValidateFormat::Text => write_text(outcome, out),
        ValidateFormat::Json => write_json(outcome, out),
        ValidateFormat::Github => write_github(outcome, out),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) if outcome.is_valid() => 0,
        _ => 1,
    }
}

/// `N errors, M warnings in K files`.
pub fn summary(outcome: &Outcome) -> String {
    let errors = outcome.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = outcome.diagnostics.len() - errors;
    let files = outcome.state.sources.len();
    format!(
        "{} {}, {} {} in {} {}",
        errors,
        plural(errors, "error"),
        warnings,
        plural(warnings, "warning"),
        files,
        plural(files, "file")
    )
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn write_text(outcome: &Outcome, out: &mut dyn Write) -> std::io::Result<()> {
    for d in &outcome.diagnostics {
        writeln!(out, "{d}")?;
    }
    writeln!(out, "{}", summary(outcome))
}

fn write_json(outcome: &Outcome, out: &mut dyn Write) -> std::io::Result<()> {
    let diagnostics: Vec<serde_json::Value> = outcome
        .diagnostics
        .iter()
        .map(|d| {
            serde_json::json!({
                "file": d.at.file.display().to_string(),
                "line": d.at.line,
                "col": d.at.col,
                "severity": d.severity.as_str(),
                "message": d.message,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "valid": outcome.is_valid(),
        "diagnostics": diagnostics,
        "users": outcome.state.users.len(),
        "devices": outcome.state.devices.len(),
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

fn write_github(outcome: &Outcome, out: &mut dyn Write) -> std::io::Result<()> {
    for d in &outcome.diagnostics {
        writeln!(out, "{}", github_annotation(d))?;
    }
    writeln!(out, "{}", summary(outcome))
}

/// One workflow command. Properties and data are escaped as the Actions runner expects, so
/// a value from the file cannot end the command early or forge another one.
pub fn github_annotation(d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut props = Vec::new();
    if !d.at.file.as_os_str().is_empty() {
        props.push(format!(
            "file={}",
            escape_property(&d.at.file.display().to_string())
        ));
    }
    if d.at.line > 0 {
        props.push(format!("line={}", d.at.line));
        props.push(format!("col={}", d.at.col));
    }
    let props = if props.is_empty() {
        String::new()
    } else {
        format!(" {}", props.join(","))
    };
    format!("::{level}{props}::{}", escape_data(&d.message))
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}
