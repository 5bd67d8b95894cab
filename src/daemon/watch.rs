//! The desired-state watch: the last valid desired state, re-read when its files change. A
//! valid change wakes the reconcile loop; an invalid one keeps the last valid state and raises
//! `invalid_desired_state`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde_json::json;
use tokio::sync::Notify;

use super::lock;
use crate::alerts::{AlertKind, AlertSeverity, Alerter, Observation};
use crate::desired::{self, Loaded, Mode};

/// Keeps the last valid desired state and notices changes by polling the files' sizes and
/// modification times. An invalid change keeps the last valid state.
#[derive(Debug)]
pub struct DesiredWatch {
    path: PathBuf,
    inner: Mutex<WatchInner>,
}

#[derive(Debug, Default)]
struct WatchInner {
    fingerprint: Option<Fingerprint>,
    current: Option<Arc<Loaded>>,
    error: Option<String>,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// What a [`DesiredWatch::refresh`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    Unchanged,
    /// A new valid state replaced the old one.
    Loaded,
    /// The files changed and are invalid; the last valid state is kept.
    Invalid(String),
}

impl DesiredWatch {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DesiredWatch {
            path: path.into(),
            inner: Mutex::new(WatchInner::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last valid desired state, if one was ever read.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        lock(&self.inner).current.clone()
    }

    /// Re-reads the desired state when its files changed since the last look.
    pub fn refresh(&self, today: chrono::NaiveDate) -> Refresh {
        let print = fingerprint(&self.path);
        if lock(&self.inner).fingerprint.as_ref() == Some(&print) {
            return Refresh::Unchanged;
        }
        let loaded = desired::load(std::slice::from_ref(&self.path), today, Mode::Runtime);
        let mut inner = lock(&self.inner);
        inner.fingerprint = Some(print);
        match loaded {
            Ok(loaded) => {
                inner.current = Some(Arc::new(loaded));
                inner.error = None;
                Refresh::Loaded
            }
            Err(diagnostics) => {
                let message = diagnostics.to_string();
                inner.error = Some(message.clone());
                Refresh::Invalid(message)
            }
        }
    }

    /// The `invalid_desired_state` alert as of the last refresh.
    pub fn observation(&self) -> Observation {
        match &lock(&self.inner).error {
            None => Observation::good(AlertKind::InvalidDesiredState, ""),
            Some(error) => Observation::bad(
                AlertKind::InvalidDesiredState,
                "",
                AlertSeverity::Critical,
                format!(
                    "{error}; keeping the last valid desired state: fix {} and commit",
                    self.path.display()
                ),
                json!({ "path": self.path.display().to_string() }),
            ),
        }
    }
}

/// Sizes and modification times of the path and, for a directory, of its `*.toml` files.
fn fingerprint(path: &Path) -> Fingerprint {
    let entry = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        (
            p.to_path_buf(),
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        )
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
    match refreshed {
        Ok(Refresh::Unchanged) | Err(_) => return,
        Ok(Refresh::Loaded) => {
            if let Some(loaded) = desired.current() {
                tracing::info!(path = %desired.path().display(), users = loaded.state.users.len(), devices = loaded.state.devices.len(), commit = ?loaded.state.commit, "desired state read");
            }
            if let Some(trigger) = trigger {
                trigger.notify_one();
            }
        }
        Ok(Refresh::Invalid(error)) => {
            tracing::error!(path = %desired.path().display(), "{error}; keeping the last valid desired state");
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

    #[test]
    fn the_watch_keeps_the_last_valid_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        let today = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let watch = DesiredWatch::new(&path);
        assert!(matches!(watch.refresh(today), Refresh::Invalid(_)));
        assert!(watch.current().is_none());
        std::fs::write(&path, "users = [\"ann@contoso.com\"]\n").unwrap();
        assert_eq!(watch.refresh(today), Refresh::Loaded);
        assert_eq!(watch.refresh(today), Refresh::Unchanged);
        assert!(!watch.observation().is_bad());
        std::fs::write(&path, "users = [\"ann@contoso.com\", \"not an upn\"\n").unwrap();
        assert!(matches!(watch.refresh(today), Refresh::Invalid(_)));
        assert_eq!(watch.current().unwrap().state.users.len(), 1);
        assert!(watch.observation().is_bad());
        std::fs::write(
            &path,
            "users = [\"ann@contoso.com\", \"bob@contoso.com\"]\n",
        )
        .unwrap();
        assert_eq!(watch.refresh(today), Refresh::Loaded);
        assert_eq!(watch.current().unwrap().state.users.len(), 2);
    }
}
