//! A valid desired state kept as the texts it was read from, parsed again whenever a pass needs
//! its entries; the texts themselves kept in an unlinked file of the state directory.
//!
//! Parsed, an entry costs about 90 bytes plus its strings: 16 MB at 100,000 users and 50,000
//! devices. Its line of text costs 25 to 45 bytes. The daemon keeps a desired state between
//! passes for as long as it runs, and a pass that borrowed the parsed state had to copy what
//! it resolved beside it. Kept as text, each pass parses its own copy and drops each part once
//! resolved, as `apply` does. The same texts parsed for the same day in the same mode give
//! the same state, so a pass works on exactly what was validated, whatever the files on disk
//! say by then.
//!
//! The texts are read once per pass (every `reconcile_every` or `priority_every`, minutes
//! apart), yet resident they cost about 5 MB at 100,000 users and 50,000 devices for the
//! daemon's whole life. [`Kept::spill_to`] writes them once to a file of the state directory
//! (disk-backed and writable: the state database lives there) and unlinks it at once, so only
//! the open descriptor keeps it and nothing is left behind however the process ends
//! (unlink(2): the file is removed when its last descriptor closes). Each pass reads them
//! back with positional reads, which need no lock. When the file cannot be made, the texts
//! stay in memory.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::NaiveDate;

use super::{DesiredState, Diagnostics, Loaded, Mode, parse_files};

/// A validated desired state as its texts, with what callers read without its entries.
#[derive(Debug)]
pub struct Kept {
    texts: Texts,
    today: NaiveDate,
    mode: Mode,
    commit: Option<String>,
    sources: Vec<PathBuf>,
    removals_held: Option<String>,
    users: usize,
    devices: usize,
}

/// Where the texts are.
#[derive(Debug)]
enum Texts {
    Memory(Vec<(PathBuf, Box<str>)>),
    File(Spill),
}

/// The texts written one after another to an unlinked file.
#[derive(Debug)]
struct Spill {
    file: File,
    /// The directory the file was made in, for messages (the file has no name of its own).
    dir: PathBuf,
    /// Each text's path and length, in the order written from offset 0.
    parts: Vec<(PathBuf, usize)>,
}

/// Why [`Kept::state`] gave no state.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    #[error(
        "cannot read back the kept desired-state texts from their unlinked temporary file in \
         {}: {source}; the next reload or restart reads the desired-state files again",
        dir.display()
    )]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

/// Whether a failure to keep the texts in a file was logged already: it is logged once, since
/// every later reload would fail the same way.
static SPILL_WARNED: AtomicBool = AtomicBool::new(false);

impl Kept {
    /// Keeps `files`, which parsed for `today` in `mode` into `loaded` (its commit, sources and
    /// hold included, since those are set after parsing), in memory.
    pub fn new(
        loaded: &Loaded,
        files: Vec<(PathBuf, String)>,
        today: NaiveDate,
        mode: Mode,
    ) -> Self {
        let state = &loaded.state;
        Kept {
            texts: Texts::Memory(
                files
                    .into_iter()
                    .map(|(path, text)| (path, text.into_boxed_str()))
                    .collect(),
            ),
            today,
            mode,
            commit: state.commit.clone(),
            sources: state.sources.clone(),
            removals_held: state.removals_held.clone(),
            users: state.users.len(),
            devices: state.devices.len(),
        }
    }

    /// Moves the texts out of memory into a new unlinked file in `dir`. When the file cannot
    /// be made or written (no such directory, no permission, disk full), they stay in memory
    /// and a warning is logged (the first time only): the state is kept either way.
    pub fn spill_to(&mut self, dir: &Path) {
        let Texts::Memory(files) = &self.texts else {
            return;
        };
        match spill(dir, files) {
            Ok(spill) => self.texts = Texts::File(spill),
            Err(e) => {
                if !SPILL_WARNED.swap(true, Ordering::Relaxed) {
                    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
                    tracing::warn!(
                        dir = %dir.display(),
                        "cannot keep the desired-state texts in a temporary file in {}: {e}; \
                         keeping them in memory instead ({bytes} bytes); make the state \
                         directory writable to free that memory",
                        dir.display()
                    );
                }
            }
        }
    }

    /// Whether the texts are kept in a file rather than in memory.
    pub fn is_spilled(&self) -> bool {
        matches!(self.texts, Texts::File(_))
    }

    /// The state, parsed again from the kept texts. Texts that were valid when kept parse
    /// again; the error is returned rather than assumed away, and reading them back from their
    /// file can fail.
    pub fn state(&self) -> Result<DesiredState, KeptError> {
        let mut state = match &self.texts {
            Texts::Memory(files) => {
                let texts: Vec<(&Path, &str)> = files
                    .iter()
                    .map(|(path, text)| (path.as_path(), &**text))
                    .collect();
                parse_files(&texts, self.today, self.mode).into_result()?
            }
            Texts::File(spill) => {
                let buf = spill.read().map_err(|source| KeptError::Read {
                    dir: spill.dir.clone(),
                    source,
                })?;
                let texts = spill.split(&buf).map_err(|source| KeptError::Read {
                    dir: spill.dir.clone(),
                    source,
                })?;
                parse_files(&texts, self.today, self.mode).into_result()?
            }
        }
        .state;
        state.commit.clone_from(&self.commit);
        state.sources.clone_from(&self.sources);
        state.removals_held.clone_from(&self.removals_held);
        Ok(state)
    }

    /// Marks the state as having lost entries with their file (see
    /// [`DesiredState::removals_held`]).
    pub fn set_removals_held(&mut self, held: Option<String>) {
        self.removals_held = held;
    }

    pub fn removals_held(&self) -> Option<&str> {
        self.removals_held.as_deref()
    }

    pub fn commit(&self) -> Option<&str> {
        self.commit.as_deref()
    }

    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Single user entries.
    pub fn users(&self) -> usize {
        self.users
    }

    /// Single device entries.
    pub fn devices(&self) -> usize {
        self.devices
    }
}

/// Writes `files` one after another to a new file in `dir`, unlinked before anything is
/// written so that no exit, however abrupt, leaves it behind.
fn spill(dir: &Path, files: &[(PathBuf, Box<str>)]) -> std::io::Result<Spill> {
    let name = format!(
        ".dexscope-desired-{}-{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let path = dir.join(name);
    // Readable and writable by the daemon's user only; never an existing file.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut parts = Vec::with_capacity(files.len());
    for (source, text) in files {
        file.write_all(text.as_bytes())?;
        parts.push((source.clone(), text.len()));
    }
    file.flush()?;
    Ok(Spill {
        file,
        dir: dir.to_path_buf(),
        parts,
    })
}

impl Spill {
    /// All the texts, in one buffer.
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let total = self.parts.iter().map(|(_, len)| len).sum();
        let mut buf = vec![0; total];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// `buf` cut back into each file's text.
    fn split<'a>(&'a self, buf: &'a [u8]) -> std::io::Result<Vec<(&'a Path, &'a str)>> {
        let mut rest = buf;
        let mut texts = Vec::with_capacity(self.parts.len());
        for (path, len) in &self.parts {
            let (text, after) = rest.split_at(*len);
            let text = std::str::from_utf8(text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the text of {} came back changed: {e}", path.display()),
                )
            })?;
            texts.push((path.as_path(), text));
            rest = after;
        }
        Ok(texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
users = [
  "alice@contoso.com",
  { upn = "bob@contoso.com", note = "on call", expires = 2026-05-01 },
  { upn = "carol@contoso.com", expires = 2026-07-01 },
  { group = "5e2c6a0d-8f3b-4c1e-9a7d-2b6f0e4c8a13" },
]
devices = ["ws-0001.contoso.local"]
"#;
    const MORE: &str = "devices = [\"ws-0002.contoso.local\", \"ws-0003.contoso.local\"]\n";

    /// Two files validated together, with a commit and a hold set after parsing.
    fn validated() -> (Loaded, Kept) {
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let (a, b) = (PathBuf::from("scope.toml"), PathBuf::from("more.toml"));
        let files = vec![(a.clone(), TEXT.to_string()), (b.clone(), MORE.to_string())];
        let mut loaded = parse_files(&[(&a, TEXT), (&b, MORE)], today, Mode::Runtime)
            .into_result()
            .unwrap();
        loaded.state.commit = Some("abc123".into());
        loaded.state.removals_held = Some("gone.toml".into());
        let kept = Kept::new(&loaded, files, today, Mode::Runtime);
        (loaded, kept)
    }

    #[test]
    fn the_kept_texts_parse_into_the_state_that_was_validated() {
        let (loaded, kept) = validated();
        assert!(!kept.is_spilled());
        // Bob expired before `today` and is left out, as when validated.
        assert_eq!((kept.users(), kept.devices()), (2, 3));
        assert_eq!(kept.state().unwrap(), loaded.state);
        assert_eq!(kept.commit(), Some("abc123"));
        assert_eq!(kept.removals_held(), Some("gone.toml"));
    }

    #[test]
    fn texts_kept_in_a_file_parse_into_the_state_that_was_validated() {
        let dir = tempfile::tempdir().unwrap();
        let (loaded, mut kept) = validated();
        kept.spill_to(dir.path());
        assert!(kept.is_spilled());
        // Unlinked at once: the directory holds nothing, the descriptor keeps the texts.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(kept.state().unwrap(), loaded.state);
        // Read again, the same: each pass reads its own copy.
        assert_eq!(kept.state().unwrap(), loaded.state);
        assert_eq!((kept.users(), kept.devices()), (2, 3));
        assert_eq!(kept.removals_held(), Some("gone.toml"));
        fn shared<T: Send + Sync>(_: &T) {}
        shared(&kept);
    }

    #[test]
    fn texts_that_cannot_go_to_a_file_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("state.db");
        std::fs::write(&not_a_dir, "").unwrap();
        for place in [dir.path().join("missing"), not_a_dir] {
            let (loaded, mut kept) = validated();
            kept.spill_to(&place);
            assert!(!kept.is_spilled(), "{}", place.display());
            assert_eq!(kept.state().unwrap(), loaded.state);
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_back_fails_with_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut kept) = validated();
        kept.spill_to(dir.path());
        // The same texts behind a descriptor opened for writing only: every read fails.
        let Texts::File(spill) = &mut kept.texts else {
            panic!("not spilled");
        };
        let path = dir.path().join("write-only");
        spill.file = File::create(&path).unwrap();
        let e = kept.state().unwrap_err();
        assert!(matches!(e, KeptError::Read { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains("next reload or restart"),
            "{message}"
        );
    }
}
