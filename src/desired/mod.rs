//! The desired state: TOML files parsed and validated (pure), read from a file or a directory.
//!
//! A desired state is one `.toml` file, or a directory whose `*.toml` files are merged in name
//! order, or several such paths taken together. Each file may say:
//!
//! ```toml
//! users = ["alice@contoso.com", { id = "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14", expires = 2027-03-31 }]
//! devices = ["ws-ber-0012.contoso.local", { aad_device_id = "1a2b3c4d-1111-2222-3333-444455556666" }]
//! allow_empty = false
//! ```
//!
//! The layers, from the bottom: [`parse`] turns one text into entries and diagnostics (pure);
//! [`merge`] joins files, finds duplicates across them, applies `expires` against a `today`
//! parameter and refuses an empty state (pure); [`read`] expands paths into files and reads
//! them; [`git`] finds the commit the files come from. [`load`] ties them together and
//! [`validate_command`] is the `validate` command.
//!
//! Every problem is collected as a [`Diagnostic`] with its `file:line:col`; a syntax error stops
//! only the file it is in.

pub mod git;
pub mod kept;
pub mod lines;
pub mod merge;
pub mod parse;
pub mod read;
pub mod selector;
pub mod source;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;

use crate::model::{AadDeviceId, DnsName, MachineId, Upn, UserId};

pub use kept::Kept;
pub use selector::{Condition, Selector, Source as SelectorSource, Subject};

pub use validate::{ValidateFormat, validate_command, validate_git_command};

/// How `expires` dates in the past are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `validate` and CI: an expired entry is an error, so the pull request that lets an entry
    /// lapse is asked to remove it.
    Strict,
    /// The daemon, `plan` and `apply`: an expired entry is a warning and is left out of scope
    /// ("expires takes the entry out of scope from that day on"), so an expiry never makes the
    /// desired state invalid and never freezes reconciliation.
    Runtime,
}

/// A place in a desired-state file. `line` and `col` are 1-based (`col` counts characters);
/// `line == 0` means the file or path as a whole (it does not exist, cannot be read, …).
///
/// The path is shared: every entry of a file points at the same allocation, so 150k entries
/// do not each carry a copy of the file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: u32,
    pub col: u32,
}

impl Location {
    /// The file as a whole, for problems that have no line (missing path, unreadable file).
    pub fn whole(file: impl AsRef<Path>) -> Self {
        Self {
            file: Arc::from(file.as_ref()),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in the desired state: where, how bad, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub at: Location,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(at: Location, message: impl Into<String>) -> Self {
        Self {
            at,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(at: Location, message: impl Into<String>) -> Self {
        Self {
            at,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.file.as_os_str().is_empty() {
            write!(f, "{}: {}", self.severity, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.severity, self.message)
        }
    }
}

/// Why a desired state was refused: every diagnostic found (errors and warnings, in file and
/// position order), at least one of them an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
}

impl fmt::Display for Diagnostics {
    /// One line, for logs and alerts: the count and the first error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(
            f,
            "desired state is invalid ({n} error{})",
            if n == 1 { "" } else { "s" }
        )?;
        if let Some(first) = self.errors().next() {
            write!(f, "; first: {first}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// How a desired user is identified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserKey {
    Upn(Upn),
    Id(UserId),
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserKey::Upn(upn) => upn.fmt(f),
            UserKey::Id(id) => id.fmt(f),
        }
    }
}

/// How a desired device is identified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKey {
    /// MDE `computerDnsName`.
    Name(DnsName),
    /// MDE machine id.
    Machine(MachineId),
    /// Entra device id (MDE `aadDeviceId`).
    AadDevice(AadDeviceId),
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKey::Name(name) => name.fmt(f),
            DeviceKey::Machine(id) => id.fmt(f),
            DeviceKey::AadDevice(id) => id.fmt(f),
        }
    }
}

/// One entry of `users` or `devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<K> {
    pub key: K,
    /// `Box<str>`, not `String`: every entry carries the field, and a capacity word each is
    /// 0.8 MB at 100k entries.
    pub note: Option<Box<str>>,
    /// The entry is out of scope from this day on.
    pub expires: Option<NaiveDate>,
    /// Where the entry is written (its value: the string or the inline table).
    pub at: Location,
}

pub type DesiredUser = Entry<UserKey>;
pub type DesiredDevice = Entry<DeviceKey>;

/// The merged desired state, entries in file order then position order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    pub users: Vec<DesiredUser>,
    pub devices: Vec<DesiredDevice>,
    /// `group` and `where` entries of `users` and `devices`, expanded against the tenant by
    /// `crate::selectors`; users' first, each list in merge order.
    pub selectors: Vec<Selector>,
    /// Identities taken out of what the selectors yield.
    pub exclude_users: Vec<DesiredUser>,
    pub exclude_devices: Vec<DesiredDevice>,
    /// Some file said `allow_empty = true`: an empty state really means "nobody in scope".
    pub allow_empty: bool,
    /// The commit id of `HEAD` when the first path is inside a git work tree.
    pub commit: Option<String>,
    /// The files read, in merge order.
    pub sources: Vec<PathBuf>,
    /// Set by the daemon's watch, never by parsing: this reload lost entries because the file
    /// they were written in vanished or became empty since the last clean read (a half-done
    /// write or checkout looks exactly like that). The reconcile pass removes nothing while it
    /// is set; the text names the files, for the plan and the alert.
    pub removals_held: Option<String>,
}

impl DesiredState {
    /// No single entries. Selectors are not counted: what they yield is only known against
    /// the tenant, and a selector that yields nothing must never read as "remove everyone".
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.devices.is_empty()
    }

    /// Nothing listed at all: no single entry and no selector.
    pub fn lists_nothing(&self) -> bool {
        self.is_empty() && self.selectors.is_empty()
    }
}

/// A valid desired state and the warnings found on the way (entries about to expire, and in
/// [`Mode::Runtime`] expired entries that were left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub state: DesiredState,
    pub warnings: Vec<Diagnostic>,
}

/// Everything found, valid or not: what [`load`] decides on and what `validate` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The entries that parsed (also when other parts are invalid).
    pub state: DesiredState,
    /// Errors and warnings in file and position order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Outcome {
    pub fn is_valid(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn into_result(self) -> Result<Loaded, Diagnostics> {
        if self.is_valid() {
            Ok(Loaded {
                state: self.state,
                warnings: self.diagnostics,
            })
        } else {
            Err(Diagnostics(self.diagnostics))
        }
    }
}

/// Reads and validates the desired state at `paths` (files or directories, taken together as
/// one state). `today` decides which entries have expired; `mode` whether that is an error.
pub fn load(paths: &[PathBuf], today: NaiveDate, mode: Mode) -> Result<Loaded, Diagnostics> {
    evaluate(paths, today, mode).into_result()
}

/// Like [`load`], but the state comes back as [`Kept`] texts, for a process that keeps it
/// between passes, with what was found on the way (the warnings).
pub fn load_kept(
    paths: &[PathBuf],
    today: NaiveDate,
    mode: Mode,
) -> Result<(Kept, Vec<Diagnostic>), Diagnostics> {
    let (outcome, files) = evaluate_files(paths, today, mode);
    let loaded = outcome.into_result()?;
    let kept = Kept::new(&loaded, files, today, mode);
    Ok((kept, loaded.warnings))
}

/// Like [`load`], but returns everything found, valid or not.
pub fn evaluate(paths: &[PathBuf], today: NaiveDate, mode: Mode) -> Outcome {
    evaluate_files(paths, today, mode).0
}

/// [`evaluate`], and the texts read.
fn evaluate_files(
    paths: &[PathBuf],
    today: NaiveDate,
    mode: Mode,
) -> (Outcome, Vec<(PathBuf, String)>) {
    let mut diagnostics = Vec::new();
    if paths.is_empty() {
        diagnostics.push(Diagnostic::error(
            Location::whole(""),
            "no desired-state path given: name a .toml file or a directory of them",
        ));
        let outcome = Outcome {
            state: DesiredState::default(),
            diagnostics,
        };
        return (outcome, Vec::new());
    }
    let files = read::read_all(paths, &mut diagnostics);
    let texts: Vec<(&Path, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    let mut outcome = parse_files(&texts, today, mode);
    drop(texts);
    // Problems with the paths themselves (missing, unreadable) come first.
    diagnostics.append(&mut outcome.diagnostics);
    outcome.diagnostics = diagnostics;
    outcome.state.commit = git::head_commit(&paths[0]);
    (outcome, files)
}

/// Parses and validates several in-memory files as one desired state. Pure.
pub fn parse_files(files: &[(&Path, &str)], today: NaiveDate, mode: Mode) -> Outcome {
    let parsed = files
        .iter()
        .map(|(name, text)| parse::parse_file(name, text))
        .collect();
    merge::merge(parsed, today, mode)
}

/// Parses and validates one in-memory file. Pure.
pub fn parse_str(
    name: &Path,
    text: &str,
    today: NaiveDate,
    mode: Mode,
) -> Result<Loaded, Diagnostics> {
    parse_files(&[(name, text)], today, mode).into_result()
}
