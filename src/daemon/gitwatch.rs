//! The git source's watch: the desired state of the last applied branch head, fetched every
//! `fetch_every`. A new valid head replaces it and wakes the reconcile loop; an invalid tree,
//! a refused head or a failed fetch keeps it and raises an alert. Nothing here ever makes the
//! state smaller than the last applied commit says: a fetch failure never removes anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::Notify;

use super::lock;
use super::watch::DesiredWatch;
use crate::alerts::{Alerter, Observation, observe};
use crate::config::{ScopeGit, Verify};
use crate::desired::source::{
    CommitId, DEFAULT_TIMEOUT, Fetched, GitCache, SourceError, cache_dir,
};
use crate::desired::{self, Kept, Mode};
use crate::state::{GitSourceRecord, RefusedHead, State};

/// Where the passes read the desired state from: files on this host, or a git source.
#[derive(Debug, Clone)]
pub enum DesiredSource {
    Files(Arc<DesiredWatch>),
    Git(Arc<GitWatch>),
}

impl DesiredSource {
    /// The last valid desired state, if one was ever read.
    pub fn current(&self) -> Option<Arc<Kept>> {
        match self {
            DesiredSource::Files(watch) => watch.current(),
            DesiredSource::Git(watch) => watch.current(),
        }
    }

    /// Where the state comes from, for messages to people.
    pub fn describe(&self) -> String {
        match self {
            DesiredSource::Files(watch) => watch.path().display().to_string(),
            DesiredSource::Git(watch) => watch.describe(),
        }
    }
}

/// The git source, its cache and the last applied state.
pub struct GitWatch {
    cache: GitCache,
    stale_after: Duration,
    state: Arc<State>,
    /// Where each applied state's texts are kept: the state directory (see
    /// [`Kept::spill_to`]).
    spill: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for GitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitWatch")
            .field("source", &self.describe())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Inner {
    current: Option<Arc<Kept>>,
    record: GitSourceRecord,
    /// A head whose tree is not a valid desired state, and why.
    invalid: Option<(CommitId, String)>,
    /// When fetches began to fail, while they fail.
    failing_since: Option<DateTime<Utc>>,
}

/// What a [`GitWatch::refresh`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum GitRefresh {
    Unchanged,
    /// A new head's state replaced the old one.
    Loaded {
        commit: CommitId,
        rewritten: bool,
    },
    /// The head's tree is invalid; the last valid state is kept.
    Invalid {
        commit: CommitId,
        message: String,
    },
    /// The head is not signed by an allowed signer; the last verified state is kept.
    Refused {
        commit: CommitId,
        reason: String,
    },
    /// The fetch failed; the last good state is kept.
    Failed(String),
}

impl GitWatch {
    /// Opens the cache (blocking: it may run `git init`).
    pub fn open(git: &ScopeGit, state: Arc<State>) -> Result<Self, SourceError> {
        let cache = GitCache::open(
            git.source.clone(),
            &cache_dir(state.path()),
            DEFAULT_TIMEOUT,
        )?;
        let source = cache.source();
        let record = GitSourceRecord {
            url: source.url().to_string(),
            branch: source.branch().to_string(),
            verified: source.verify() == Verify::Ssh,
            ..GitSourceRecord::default()
        };
        Ok(Self {
            cache,
            stale_after: git.stale_after,
            spill: super::state_dir(&state),
            state,
            inner: Mutex::new(Inner {
                record,
                ..Inner::default()
            }),
        })
    }

    pub fn describe(&self) -> String {
        let source = self.cache.source();
        format!("{}:{} at {}", source.branch(), source.path(), source.url())
    }

    pub fn fetch_every(&self) -> Duration {
        self.cache.source().fetch_every()
    }

    pub fn current(&self) -> Option<Arc<Kept>> {
        lock(&self.inner).current.clone()
    }

    /// Reads back the commit the state database says was applied last, from the cache and
    /// without the network, so a restart without network still has a state (blocking).
    pub fn restore(&self, today: NaiveDate) -> Option<CommitId> {
        let stored = self.state.git_source().ok().flatten()?;
        let mut inner = lock(&self.inner);
        if stored.url != inner.record.url || stored.branch != inner.record.branch {
            return None;
        }
        let commit = CommitId::parse(stored.applied.as_deref()?)?;
        let files = self.cache.read(&commit).ok()?;
        let loaded = parse(&commit, files, today, &self.spill).ok()?;
        inner.current = Some(Arc::new(loaded));
        inner.record.applied = Some(commit.to_string());
        inner.record.last_ok_fetch = stored.last_ok_fetch;
        Some(commit)
    }

    /// Fetches the branch head and applies it when it is new, verified and valid (blocking).
    pub fn refresh(&self, today: NaiveDate, now: DateTime<Utc>) -> GitRefresh {
        let applied = lock(&self.inner)
            .record
            .applied
            .as_deref()
            .and_then(CommitId::parse);
        let fetched = self.cache.fetch(applied.as_ref());
        let mut inner = lock(&self.inner);
        inner.record.last_fetch = Some(now);
        // A refused head was fetched: the repository was reached.
        let reached = matches!(fetched, Ok(_) | Err(SourceError::Unverified { .. }));
        if reached {
            inner.record.last_ok_fetch = Some(now);
            inner.record.error = None;
            inner.failing_since = None;
        } else {
            inner.failing_since.get_or_insert(now);
        }
        let outcome = match fetched {
            Ok(Fetched::Unchanged { .. }) => {
                inner.record.refused = None;
                inner.invalid = None;
                GitRefresh::Unchanged
            }
            Ok(Fetched::New {
                commit,
                files,
                rewritten,
            }) => {
                inner.record.refused = None;
                match parse(&commit, files, today, &self.spill) {
                    Ok(loaded) => {
                        inner.current = Some(Arc::new(loaded));
                        inner.record.applied = Some(commit.to_string());
                        inner.invalid = None;
                        GitRefresh::Loaded { commit, rewritten }
                    }
                    Err(message) => {
                        let again = inner.invalid.as_ref().is_some_and(|(c, _)| *c == commit);
                        inner.invalid = Some((commit.clone(), message.clone()));
                        if again {
                            GitRefresh::Unchanged
                        } else {
                            GitRefresh::Invalid { commit, message }
                        }
                    }
                }
            }
            Err(SourceError::Unverified { commit, reason }) => {
                let refused = RefusedHead {
                    commit: commit.to_string(),
                    reason: reason.to_string(),
                };
                let again = inner.record.refused.as_ref() == Some(&refused);
                inner.record.refused = Some(refused);
                if again {
                    GitRefresh::Unchanged
                } else {
                    GitRefresh::Refused {
                        commit,
                        reason: reason.to_string(),
                    }
                }
            }
            Err(e) => {
                let message = chain(&e);
                inner.record.error = Some(message.clone());
                GitRefresh::Failed(message)
            }
        };
        if let Err(e) = self.state.set_git_source(&inner.record) {
            tracing::warn!(error = %e, "cannot store the git source record: {e}");
        }
        outcome
    }

    /// The three alerts of the git source as of the last refresh.
    pub fn observations(&self, now: DateTime<Utc>) -> Vec<Observation> {
        let inner = lock(&self.inner);
        let record = &inner.record;
        let source = self.describe();
        let failing = match (&record.error, record.last_ok_fetch.or(inner.failing_since)) {
            (Some(error), Some(since)) => Some((error.as_str(), since)),
            _ => None,
        };
        let findings = observe::GitFindings {
            source: &source,
            applied: record.applied.as_deref(),
            invalid: inner
                .invalid
                .as_ref()
                .map(|(c, m)| (c.as_str(), m.as_str())),
            refused: record
                .refused
                .as_ref()
                .map(|h| (h.commit.as_str(), h.reason.as_str())),
            failing,
            stale_after: self.stale_after,
        };
        observe::desired_git(&findings, now)
    }
}

/// Validates the tree of `commit` and keeps it as its texts (see [`Kept`]), in a file in
/// `spill` when one can be made there.
fn parse(
    commit: &CommitId,
    files: Vec<(PathBuf, String)>,
    today: NaiveDate,
    spill: &Path,
) -> Result<Kept, String> {
    let texts: Vec<(&Path, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    let mut loaded = desired::parse_files(&texts, today, Mode::Runtime)
        .into_result()
        .map_err(|d| d.to_string())?;
    drop(texts);
    loaded.state.commit = Some(commit.to_string());
    loaded.state.sources = files.iter().map(|(p, _)| p.clone()).collect();
    let mut kept = Kept::new(&loaded, files, today, Mode::Runtime);
    kept.spill_to(spill);
    Ok(kept)
}

/// The error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    crate::text::one_line(&text)
}

/// Fetches once in a blocking task, logs what it found, wakes the reconcile loop on a new
/// state (when a trigger is given) and delivers the git source's alerts.
pub async fn refresh_git(watch: &Arc<GitWatch>, alerter: &Alerter, trigger: Option<&Notify>) {
    let today = chrono::Local::now().date_naive();
    let fetcher = watch.clone();
    let refreshed = tokio::task::spawn_blocking(move || fetcher.refresh(today, Utc::now())).await;
    let source = watch.describe();
    match refreshed {
        Err(_) | Ok(GitRefresh::Unchanged) => {}
        Ok(GitRefresh::Loaded { commit, rewritten }) => {
            if rewritten {
                tracing::warn!(source, commit = %commit, "the branch history was rewritten (force push or reset): the new head is not a descendant of the last applied commit; applying it");
            }
            if let Some(kept) = watch.current() {
                tracing::info!(source, commit = %commit, users = kept.users(), devices = kept.devices(), "desired state read from git");
            }
            if let Some(trigger) = trigger {
                trigger.notify_one();
            }
        }
        Ok(GitRefresh::Invalid { commit, message }) => {
            tracing::error!(source, commit = %commit, "{message}; keeping the last valid desired state");
        }
        Ok(GitRefresh::Refused { commit, reason }) => {
            tracing::error!(source, commit = %commit, "head commit {commit} refused: {reason}; keeping the last verified desired state");
        }
        Ok(GitRefresh::Failed(error)) => {
            tracing::warn!(
                source,
                "cannot fetch the desired state: {error}; keeping the last good state"
            );
        }
    }
    alerter
        .observe(watch.observations(Utc::now()), Utc::now())
        .await;
}

/// Reads back the last applied commit, fetches once, then every `fetch_every`.
pub(super) async fn start_git(
    watch: Arc<GitWatch>,
    alerter: Arc<Alerter>,
    trigger: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    let today = chrono::Local::now().date_naive();
    let reader = watch.clone();
    if let Ok(Some(commit)) = tokio::task::spawn_blocking(move || reader.restore(today)).await {
        tracing::info!(source = watch.describe(), commit = %commit, "desired state read back from the git cache");
    }
    refresh_git(&watch, &alerter, None).await;
    tokio::spawn(async move {
        let every = watch.fetch_every();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            refresh_git(&watch, &alerter, Some(&trigger)).await;
        }
    })
}
