//! A valid desired state kept as the texts it was read from, parsed again whenever a pass needs
//! its entries. Pure.
//!
//! Parsed, an entry costs about 90 bytes plus its strings: 16 MB at 100,000 users and 50,000
//! devices. Its line of text costs 25 to 45 bytes. The daemon keeps a desired state between
//! passes for as long as it runs, and a pass that borrowed the parsed state had to copy what
//! it resolved beside it. Kept as text, each pass parses its own copy and drops each part once
//! resolved, as `apply` does. The same texts parsed for the same day in the same mode give
//! the same state, so a pass works on exactly what was validated, whatever the files on disk
//! say by then.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::{DesiredState, Diagnostics, Loaded, Mode, parse_files};

/// A validated desired state as its texts, with what callers read without its entries.
#[derive(Debug)]
pub struct Kept {
    files: Vec<(PathBuf, Box<str>)>,
    today: NaiveDate,
    mode: Mode,
    commit: Option<String>,
    sources: Vec<PathBuf>,
    removals_held: Option<String>,
    users: usize,
    devices: usize,
}

impl Kept {
    /// Keeps `files`, which parsed for `today` in `mode` into `loaded` (its commit, sources and
    /// hold included, since those are set after parsing).
    pub fn new(
        loaded: &Loaded,
        files: Vec<(PathBuf, String)>,
        today: NaiveDate,
        mode: Mode,
    ) -> Self {
        let state = &loaded.state;
        Kept {
            files: files
                .into_iter()
                .map(|(path, text)| (path, text.into_boxed_str()))
                .collect(),
            today,
            mode,
            commit: state.commit.clone(),
            sources: state.sources.clone(),
            removals_held: state.removals_held.clone(),
            users: state.users.len(),
            devices: state.devices.len(),
        }
    }

    /// The state, parsed again from the kept texts. An error cannot happen for texts that were
    /// valid when kept; it is returned rather than assumed away.
    pub fn state(&self) -> Result<DesiredState, Diagnostics> {
        let texts: Vec<(&Path, &str)> = self
            .files
            .iter()
            .map(|(path, text)| (path.as_path(), &**text))
            .collect();
        let mut state = parse_files(&texts, self.today, self.mode)
            .into_result()?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_texts_parse_into_the_state_that_was_validated() {
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let text = r#"
users = [
  "alice@contoso.com",
  { upn = "bob@contoso.com", note = "on call", expires = 2026-05-01 },
  { upn = "carol@contoso.com", expires = 2026-07-01 },
  { group = "5e2c6a0d-8f3b-4c1e-9a7d-2b6f0e4c8a13" },
]
devices = ["ws-0001.contoso.local"]
"#;
        let path = PathBuf::from("scope.toml");
        let files = vec![(path.clone(), text.to_string())];
        let mut loaded = parse_files(&[(&path, text)], today, Mode::Runtime)
            .into_result()
            .unwrap();
        loaded.state.commit = Some("abc123".into());
        loaded.state.removals_held = Some("gone.toml".into());
        let kept = Kept::new(&loaded, files, today, Mode::Runtime);
        // Bob expired before `today` and is left out, as when validated.
        assert_eq!((kept.users(), kept.devices()), (2, 1));
        assert_eq!(kept.state().unwrap(), loaded.state);
        assert_eq!(kept.commit(), Some("abc123"));
        assert_eq!(kept.removals_held(), Some("gone.toml"));
    }
}
