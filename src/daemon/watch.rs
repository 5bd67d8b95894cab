//! The desired-state watch: the last valid desired state, re-read when its files change and
//! then hold still. A valid change wakes the reconcile loop; an invalid one keeps the last valid
//! state and raises `invalid_desired_state`.
//!
//! Files are read only when they hold still: the fingerprint (size, modification and change
//! time, inode of the path and of each `*.toml` file) must be the same at two looks in a row,
//! and again right after reading, else the read is discarded and the watch waits for the next
//! look. A writer that writes in pieces, truncates first, or checks out file by file changes
//! the fingerprint between looks and is never read half-done, as long as it pauses less than
//! one look interval between pieces.
//!
//! A reload whose entries vanished *because their file vanished or became empty* is taken, but
//! carries [`DesiredState::removals_held`]: the planner keeps every removal candidate
//! (`FileVanished`) while that state is current, and `invalid_desired_state` fires. The
//! comparison is against the last reload without such a loss, so the entries stay protected
//! until the file comes back; a deliberate deletion is confirmed by reloading the daemon
//! (SIGHUP starts a fresh watch).
//!
//! [`DesiredState::removals_held`]: crate::desired::DesiredState::removals_held

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use super::lock;
use crate::alerts::{Alerter, Observation, observe};
use crate::desired::{self, Kept, Mode};

/// Keeps the last valid desired state and notices changes by polling the files' metadata.
/// An invalid change keeps the last valid state.
#[derive(Debug)]
pub struct DesiredWatch {
    path: PathBuf,
    /// Where each valid state's texts are kept (see [`Kept::spill_to`]); `None` keeps them in
    /// memory.
    spill: Option<PathBuf>,
    inner: Mutex<WatchInner>,
}

#[derive(Debug, Default)]
struct WatchInner {
    /// The fingerprint of the last read, valid or not.
    read: Option<Fingerprint>,
    /// The fingerprint of the last look, when it differed from `read`.
    seen: Option<Fingerprint>,
    current: Option<Arc<Kept>>,
    /// The last state read without losing a file's entries: what a loss is measured against.
    baseline: Option<Arc<Kept>>,
    error: Option<String>,
}

/// What the watch compares between looks: per path, its metadata (or `None` when absent).
type Fingerprint = Vec<(PathBuf, Option<Stamp>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// What a [`DesiredWatch::refresh`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    Unchanged,
    /// The files changed since the last look, or while being read: nothing was taken yet.
    Settling,
    /// A new valid state replaced the old one.
    Loaded,
    /// The files changed and are invalid; the last valid state is kept.
    Invalid(String),
}

impl DesiredWatch {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DesiredWatch {
            path: path.into(),
            spill: None,
            inner: Mutex::new(WatchInner::default()),
        }
    }

    /// Keeps each valid state's texts in an unlinked file in `dir` (the daemon's state
    /// directory) rather than in memory.
    pub fn spill_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill = Some(dir.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last valid desired state, if one was ever read.
    pub fn current(&self) -> Option<Arc<Kept>> {
        lock(&self.inner).current.clone()
    }

    /// One look: reads the desired state when its files changed since the last read and have
    /// held still since the previous look, and keeps it when they did not change while read.
    pub fn refresh(&self, today: chrono::NaiveDate) -> Refresh {
        let print = fingerprint(&self.path);
        {
            let mut inner = lock(&self.inner);
            if inner.read.as_ref() == Some(&print) {
                inner.seen = None;
                return Refresh::Unchanged;
            }
            if inner.seen.as_ref() != Some(&print) {
                inner.seen = Some(print);
                return Refresh::Settling;
            }
        }
        let mut loaded = desired::load_kept(std::slice::from_ref(&self.path), today, Mode::Runtime);
        let after = fingerprint(&self.path);
        if let (true, Ok((kept, _)), Some(dir)) = (after == print, &mut loaded, &self.spill) {
            kept.spill_to(dir);
        }
        let mut inner = lock(&self.inner);
        if after != print {
            inner.seen = Some(after);
            return Refresh::Settling;
        }
        inner.read = Some(print);
        inner.seen = None;
        match loaded {
            Ok((mut kept, _warnings)) => {
                let lost = match &inner.baseline {
                    Some(base) => lost_with_file(base, &kept, &after),
                    None => None,
                };
                kept.set_removals_held(lost.clone());
                let loaded = Arc::new(kept);
                inner.error = lost.map(|files| {
                    format!(
                        "desired-state entries vanished with their file ({files}): nothing is \
                         removed until the file is back; to remove them on purpose, reload the \
                         daemon"
                    )
                });
                if inner.error.is_none() {
                    inner.baseline = Some(loaded.clone());
                }
                inner.current = Some(loaded);
                Refresh::Loaded
            }
            Err(diagnostics) => {
                let message = format!(
                    "{diagnostics}; keeping the last valid desired state: fix {} and commit",
                    self.path.display()
                );
                inner.error = Some(message.clone());
                Refresh::Invalid(message)
            }
        }
    }

    /// Looks until the files hold still (a pause between looks, at most `looks` looks): for the
    /// first read at start, which has no earlier look to compare with.
    pub fn settle(&self, today: chrono::NaiveDate, pause: Duration, looks: u32) -> Refresh {
        let mut last = self.refresh(today);
        for _ in 1..looks {
            if last != Refresh::Settling {
                break;
            }
            std::thread::sleep(pause);
            last = self.refresh(today);
        }
        last
    }

    /// The `invalid_desired_state` alert as of the last refresh.
    pub fn observation(&self) -> Observation {
        observe::desired_files(lock(&self.inner).error.as_deref(), &self.path)
    }
}

/// The files whose entries `new` lost against `old` because the file is gone or empty now
/// (comma-separated), or `None` when no entry vanished that way. Both are parsed again only
/// when a file of `old` is gone or empty.
fn lost_with_file(old: &Kept, new: &Kept, print: &Fingerprint) -> Option<String> {
    let gone: BTreeSet<&Path> = old
        .sources()
        .iter()
        .map(PathBuf::as_path)
        .filter(|file| {
            let stamp = print.iter().find(|(p, _)| p == file).map(|(_, s)| s);
            matches!(stamp, None | Some(None)) || matches!(stamp, Some(Some(s)) if s.len == 0)
        })
        .collect();
    if gone.is_empty() {
        return None;
    }
    let names = |files: &BTreeSet<&Path>| {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    };
    // Texts that were valid when kept parse again, but reading them back from their file can
    // fail: then the loss cannot be measured, and every vanished file is taken as lost, so
    // nothing is removed for it.
    let (Ok(old), Ok(new)) = (old.state(), new.state()) else {
        return Some(names(&gone));
    };
    let users: BTreeSet<String> = new.users.iter().map(|e| e.key.to_string()).collect();
    let devices: BTreeSet<String> = new.devices.iter().map(|e| e.key.to_string()).collect();
    let mut lost: BTreeSet<&Path> = BTreeSet::new();
    for entry in &old.users {
        if gone.contains(&*entry.at.file) && !users.contains(&entry.key.to_string()) {
            lost.insert(&entry.at.file);
        }
    }
    for entry in &old.devices {
        if gone.contains(&*entry.at.file) && !devices.contains(&entry.key.to_string()) {
            lost.insert(&entry.at.file);
        }
    }
    if lost.is_empty() {
        return None;
    }
    Some(names(&lost))
}

/// The metadata of the path and, for a directory, of its `*.toml` files.
fn fingerprint(path: &Path) -> Fingerprint {
    let entry = |p: &Path| {
        let stamp = std::fs::metadata(p).ok().map(|m| Stamp {
            len: m.len(),
            inode: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        });
        (p.to_path_buf(), stamp)
    };
    let mut out = vec![entry(path)];
    if let Ok(dir) = std::fs::read_dir(path) {
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        out.extend(files.iter().map(|p| entry(p)));
    }
    out
}

/// Reads the desired state at start, once its files hold still (bounded: after about ten
/// seconds of change the daemon starts without one and the watch keeps looking).
pub async fn load_desired(desired: &Arc<DesiredWatch>, alerter: &Alerter) {
    let today = chrono::Local::now().date_naive();
    let watch = desired.clone();
    let settled =
        tokio::task::spawn_blocking(move || watch.settle(today, Duration::from_millis(200), 50))
            .await;
    report(desired, alerter, settled, None).await;
}

/// Re-reads the desired state when it changed: a valid change wakes the reconcile loop (when a
/// trigger is given), an invalid one keeps the last valid state; either way the
/// `invalid_desired_state` alert is observed and delivered.
pub async fn refresh_desired(
    desired: &Arc<DesiredWatch>,
    alerter: &Alerter,
    trigger: Option<&Notify>,
) {
    let today = chrono::Local::now().date_naive();
    let watch = desired.clone();
    // File reads block; keep them off the runtime's threads.
    let refreshed = tokio::task::spawn_blocking(move || watch.refresh(today)).await;
    report(desired, alerter, refreshed, trigger).await;
}

/// Logs what a look found, wakes the reconcile loop on a new state and observes the alert.
async fn report(
    desired: &Arc<DesiredWatch>,
    alerter: &Alerter,
    refreshed: Result<Refresh, tokio::task::JoinError>,
    trigger: Option<&Notify>,
) {
    match refreshed {
        Ok(Refresh::Unchanged | Refresh::Settling) | Err(_) => return,
        Ok(Refresh::Loaded) => {
            if let Some(kept) = desired.current() {
                tracing::info!(path = %desired.path().display(), users = kept.users(), devices = kept.devices(), commit = kept.commit(), "desired state read");
                if let Some(files) = kept.removals_held() {
                    tracing::error!(path = %desired.path().display(), "desired-state entries vanished with their file ({files}); nothing is removed until it is back");
                }
            }
            if let Some(trigger) = trigger {
                trigger.notify_one();
            }
        }
        Ok(Refresh::Invalid(error)) => {
            tracing::error!(path = %desired.path().display(), "{error}");
        }
    }
    alerter.observe([desired.observation()], Utc::now()).await;
}

/// Compares the desired-state files every `every` and refreshes on a change.
pub(super) async fn watch_desired(
    desired: Arc<DesiredWatch>,
    alerter: Arc<Alerter>,
    trigger: Arc<Notify>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh_desired(&desired, &alerter, Some(&trigger)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
    }

    /// Two looks: the first sees the change, the second finds it held still and reads.
    fn two_looks(watch: &DesiredWatch) -> Refresh {
        assert_eq!(watch.refresh(today()), Refresh::Settling);
        watch.refresh(today())
    }

    #[test]
    fn the_watch_keeps_the_last_valid_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        let watch = DesiredWatch::new(&path);
        assert!(matches!(two_looks(&watch), Refresh::Invalid(_)));
        assert!(watch.current().is_none());
        std::fs::write(&path, "users = [\"ann@contoso.com\"]\n").unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert_eq!(watch.refresh(today()), Refresh::Unchanged);
        assert!(!watch.observation().is_bad());
        std::fs::write(&path, "users = [\"ann@contoso.com\", \"not an upn\"\n").unwrap();
        assert!(matches!(two_looks(&watch), Refresh::Invalid(_)));
        assert_eq!(watch.current().unwrap().users(), 1);
        assert!(watch.observation().is_bad());
        std::fs::write(
            &path,
            "users = [\"ann@contoso.com\", \"bob@contoso.com\"]\n",
        )
        .unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().users(), 2);
    }

    #[test]
    fn a_file_that_changes_between_looks_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        std::fs::write(&path, "users = [\"ann@contoso.com\"]\n").unwrap();
        let watch = DesiredWatch::new(&path);
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        // A writer in pieces: every look sees a new size, so nothing is read.
        for piece in ["devices = [", "\"ws-1.contoso.local\"", "]\n"] {
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str(piece);
            std::fs::write(&path, text).unwrap();
            assert_eq!(watch.refresh(today()), Refresh::Settling);
        }
        assert_eq!(watch.current().unwrap().devices(), 0);
        assert_eq!(watch.refresh(today()), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().devices(), 1);
    }

    #[test]
    fn entries_lost_with_their_file_hold_removals_until_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(&a, "users = [\"ann@contoso.com\"]\n").unwrap();
        std::fs::write(&b, "users = [\"bob@contoso.com\"]\n").unwrap();
        let watch = DesiredWatch::new(dir.path());
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().removals_held(), None);

        std::fs::remove_file(&b).unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        let held = watch.current().unwrap().removals_held().map(str::to_owned);
        assert!(held.unwrap().ends_with("b.toml"));
        assert!(watch.observation().is_bad());
        // Another change while b.toml is gone still holds: the loss is measured against the
        // last state that had it.
        std::fs::write(&a, "users = [\"ann@contoso.com\", \"cy@contoso.com\"]\n").unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert!(watch.current().unwrap().removals_held().is_some());

        std::fs::write(&b, "users = [\"bob@contoso.com\"]\n").unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().removals_held(), None);
        assert!(!watch.observation().is_bad());
        // An entry moved from a vanished file to another one is not lost.
        std::fs::write(&a, "users = [\"ann@contoso.com\", \"bob@contoso.com\"]\n").unwrap();
        std::fs::remove_file(&b).unwrap();
        assert_eq!(two_looks(&watch), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().removals_held(), None);
    }
}
