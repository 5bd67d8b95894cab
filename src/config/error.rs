//! Why a configuration cannot be used, and where a bad setting came from.

use std::fmt;
use std::path::Path;

use crate::text::one_line;

/// Where a setting came from, for the error line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: String, line: Option<usize> },
    Env { var: String },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{path}:{line}"),
            Origin::File { path, line: None } => write!(f, "{path}"),
            Origin::Env { var } => write!(f, "environment {var}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// Why the configuration cannot be used. Each renders as one line (what, where, what to do) and
/// never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}: check the path, or pass --config PATH")]
    ReadFile { path: String, reason: String },
    #[error("config file {path}:{line}:{column}: invalid TOML: {message}: fix the syntax")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("unknown section [{section}] ({origin}): {hint}")]
    UnknownSection {
        section: String,
        origin: Origin,
        hint: String,
    },
    #[error("unknown key \"{key}\" in [{section}] ({origin}): {hint}")]
    UnknownKey {
        section: String,
        key: String,
        origin: Origin,
        hint: String,
    },
    #[error("environment variable {var} names no setting: {hint}")]
    EnvName { var: String, hint: String },
    #[error("[{section}] {key} is required but not set ({origin}): {todo}")]
    Missing {
        section: &'static str,
        key: &'static str,
        origin: Origin,
        todo: String,
    },
    #[error("[{section}] {key} {problem} ({origin}): {todo}")]
    Invalid {
        section: &'static str,
        key: &'static str,
        problem: String,
        origin: Origin,
        todo: String,
    },
    #[error("credential: {problem}: {todo}")]
    Credential { problem: String, todo: String },
    #[error("{what} file {path}: {problem}: {todo}")]
    SecretFile {
        what: &'static str,
        path: String,
        problem: String,
        todo: String,
    },
    #[error("cannot merge the config layers: {reason}: report this as a bug")]
    Merge { reason: String },
}

pub(super) fn show_path(p: &Path) -> String {
    one_line(&p.display().to_string())
}
