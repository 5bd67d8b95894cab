//! `dexscope run`: a thin scheduler around the passes, plus signals, systemd notify, the
//! desired-state watch and reload.
//!
//! The scheduler knows nothing of what a pass does. A [`Loop`] is a name, an interval and a
//! function that starts one pass and returns its [`PassSummary`] or [`PassError`]; the daemon
//! runs each loop on its own timer with jitter, backs a failing loop off and alerts (the others
//! go on), records every pass in the state database and the metrics, and ties the systemd
//! watchdog to loop progress. [`build_loops`] is the one place that says which pass runs in
//! which loop.
//!
//! Signals: SIGTERM/SIGINT stop taking new work, let in-flight passes finish (bounded by
//! [`Options::shutdown_grace`]) and exit 0; SIGHUP reloads the config and the desired state
//! (an invalid new config is logged and the running one kept).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::alerts::{self, AlertKind, AlertSeverity, Observation};
use crate::config::Config;
use crate::desired::{self, Loaded, Mode};
use crate::incidents::poll;
use crate::metrics::{self, Metrics, PassFigures};
use crate::priority;
use crate::priority::check as priority_check;
use crate::reconcile;
use crate::reconcile::plan::GroupKind;
use crate::state::{LoopPass, State, StateError};
use crate::tenant::{Tenant, TenantError};

/// Names of the three loops (state database keys, metrics labels).
pub const RECONCILE: &str = "reconcile";
pub const PRIORITY: &str = "priority";
pub const INCIDENTS: &str = "incidents";

/// Consecutive failures of a loop before its `loop_failing` alert fires: one failure is
/// usually a transient blip the next tick heals.
pub const FAILURES_BEFORE_ALERT: u32 = 2;

/// What a successful pass reports.
#[derive(Debug, Clone, Default)]
pub struct PassSummary {
    /// One line: what the pass saw and did.
    pub text: String,
    /// Further detail lines (findings, changes), logged at debug and narrated by `demo`.
    pub lines: Vec<String>,
    pub changes_applied: u64,
    /// Objects out of line with the desired state, when the pass looks.
    pub drift: Option<u64>,
    /// Verdicts reached, by kind (see [`metrics::VERDICT_KINDS`]).
    pub verdicts: Vec<(&'static str, u64)>,
    /// Alerts the pass observed (good or bad); the daemon folds them into the alert state.
    pub observations: Vec<Observation>,
    /// Recorded with the pass in the state database.
    pub details: serde_json::Value,
}

/// Why a pass failed. The next tick retries; nothing else does.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PassError {
    pub message: String,
    /// Alerts the failure implies (e.g. an auth failure); `loop_failing` is added by the daemon.
    pub observations: Vec<Observation>,
}

impl PassError {
    pub fn new(message: impl Into<String>) -> Self {
        PassError {
            message: message.into(),
            observations: Vec::new(),
        }
    }
}

pub type PassFuture = BoxFuture<'static, Result<PassSummary, PassError>>;

/// One scheduled loop: a name, an interval, and the pass it runs.
pub struct Loop {
    pub name: &'static str,
    pub every: Duration,
    pub pass: Box<dyn FnMut() -> PassFuture + Send>,
    /// Woken to run a pass now (the desired-state watch wakes the reconcile loop).
    pub trigger: Option<Arc<Notify>>,
    failures: u32,
}

impl Loop {
    pub fn new(
        name: &'static str,
        every: Duration,
        pass: impl FnMut() -> PassFuture + Send + 'static,
    ) -> Self {
        Loop {
            name,
            every,
            pass: Box::new(pass),
            trigger: None,
            failures: 0,
        }
    }

    pub fn with_trigger(mut self, trigger: Arc<Notify>) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// Consecutive failed passes.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The delay before a loop's next pass: its interval with ±10 % jitter (`jitter` in −1..=1);
/// after failures it doubles per failure, up to 16 × the interval or an hour, whichever is
/// larger than the interval. Pure.
pub fn next_delay(every: Duration, failures: u32, jitter: f64) -> Duration {
    let base = if failures == 0 {
        every
    } else {
        let backed = every.saturating_mul(1 << failures.min(4));
        backed.min(Duration::from_secs(3600).max(every))
    };
    base.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0))
}

/// Tunables of the daemon that are not operator settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long in-flight passes may take to finish after SIGTERM or SIGHUP.
    pub shutdown_grace: Duration,
    /// How long a pass may run past its loop's next due time before the watchdog stops being
    /// fed (so systemd restarts a daemon whose loop hangs).
    pub pass_slack: Duration,
    /// How often the desired-state files' sizes and times are compared.
    pub watch_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            shutdown_grace: Duration::from_secs(20),
            pass_slack: Duration::from_secs(600),
            watch_every: Duration::from_secs(2),
        }
    }
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot open the state database: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

// ---------------------------------------------------------------------------------------------
// systemd notify and the watchdog.

/// Sends a notification to systemd; a no-op when `NOTIFY_SOCKET` is unset. The datagram is sent
/// from a dedicated thread, because a send blocks while the service manager's queue is full and
/// must never stall the runtime; when even the hand-over queue is full the message is dropped
/// (the next status or ping supersedes it). A failure to send is logged at debug.
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Some(tx) = notifier() {
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let _ = tx.try_send(Note::Send(message));
    }
}

/// Waits (up to `limit`) until the notifications handed over so far were sent: called before
/// the process exits, so `STOPPING=1` is not lost.
pub fn notify_flush(limit: Duration) {
    if let Some(tx) = notifier() {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if tx.try_send(Note::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

enum Note {
    Send(String),
    Flush(std::sync::mpsc::SyncSender<()>),
}

fn notifier() -> Option<&'static std::sync::mpsc::SyncSender<Note>> {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, sync_channel};
    static SENDER: OnceLock<Option<SyncSender<Note>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = sync_channel::<Note>(64);
            std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || {
                    for note in rx {
                        match note {
                            Note::Send(message) => {
                                let state = sd_notify::NotifyState::Custom(message.trim_end());
                                if let Err(e) = sd_notify::notify(&[state]) {
                                    tracing::debug!(error = %e, "cannot notify the service manager");
                                }
                            }
                            Note::Flush(done) => {
                                let _ = done.try_send(());
                            }
                        }
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

fn status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// When each loop must next show progress. The watchdog is fed only while every deadline is
/// in the future, so a hung pass or a dead loop lets systemd restart the daemon.
#[derive(Debug, Default)]
pub struct Progress {
    deadlines: Mutex<BTreeMap<&'static str, Instant>>,
}

impl Progress {
    pub fn reset(&self, loops: &[(&'static str, Instant)]) {
        let mut d = lock(&self.deadlines);
        d.clear();
        d.extend(loops.iter().copied());
    }

    pub fn set(&self, name: &'static str, deadline: Instant) {
        lock(&self.deadlines).insert(name, deadline);
    }

    /// `Ok` while every loop is within its deadline; else the first late loop.
    pub fn check(&self, now: Instant) -> Result<(), &'static str> {
        match lock(&self.deadlines).iter().find(|(_, d)| **d < now) {
            Some((name, _)) => Err(name),
            None => Ok(()),
        }
    }
}

/// Feeds the systemd watchdog at half its interval while [`Progress::check`] passes.
async fn watchdog(progress: Arc<Progress>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    let mut late = None;
    loop {
        tick.tick().await;
        match progress.check(Instant::now()) {
            Ok(()) => {
                late = None;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(name) if late != Some(name) => {
                late = Some(name);
                tracing::error!(
                    r#loop = name,
                    "the {name} loop made no progress within its interval; not feeding the \
                     watchdog, so systemd restarts dexscope"
                );
            }
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The desired-state watch.

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

// ---------------------------------------------------------------------------------------------
// Running passes.

/// What the scheduler shares between loops: where passes and alerts are recorded.
pub struct Scheduler {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    pub renotify_every: TimeDelta,
    alerts: Mutex<()>,
    /// Passes run one at a time. Each pass holds a whole read of its scope (at 100k users and
    /// 50k machines, tens of MiB); loops that started together would hold them all at once and
    /// add up their peaks. A pass waits at most for the one running, which is short next to
    /// any loop's interval; the wait is not counted in the pass's duration.
    passes: tokio::sync::Mutex<()>,
    /// Where notices go besides the log and the metrics: the webhook and the tenant it names.
    webhook: Option<(alerts::Webhook, String)>,
}

/// The outcome of one pass as the scheduler saw it.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub loop_name: &'static str,
    pub result: Result<PassSummary, PassError>,
    pub duration: Duration,
    pub notices: Vec<alerts::Notice>,
}

impl Scheduler {
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>, renotify_every: Duration) -> Self {
        Scheduler {
            state,
            metrics,
            renotify_every: TimeDelta::from_std(renotify_every).unwrap_or(TimeDelta::MAX),
            alerts: Mutex::new(()),
            passes: tokio::sync::Mutex::new(()),
            webhook: None,
        }
    }

    /// Also sends every notice to `webhook` (generic JSON; Teams Workflows accept it).
    pub fn with_webhook(mut self, webhook: alerts::Webhook, tenant_id: impl Into<String>) -> Self {
        self.webhook = Some((webhook, tenant_id.into()));
        self
    }

    /// Delivers notices to the webhook, if one is configured. A failure is logged (never the
    /// URL) and never fails the pass: the alert state is already saved, so the next notice
    /// comes at the repeat interval.
    async fn deliver(&self, notices: &[alerts::Notice]) {
        let Some((webhook, tenant_id)) = &self.webhook else {
            return;
        };
        for notice in notices {
            let body = alerts::webhook_body(notice, tenant_id);
            if let Err(e) = webhook.send(&body).await {
                tracing::warn!(
                    alert = notice.alert.as_str(),
                    error = %e,
                    "alert webhook not delivered"
                );
            }
        }
    }

    /// Runs one pass of `lp` and records it: a summary log event, the state database, the
    /// metrics, the alerts (the pass's own and `loop_failing`), and a systemd status line.
    pub async fn run_pass(&self, lp: &mut Loop) -> PassReport {
        let name = lp.name;
        let one_at_a_time = self.passes.lock().await;
        let started = Utc::now();
        let t0 = Instant::now();
        let result = (lp.pass)().await;
        let duration = t0.elapsed();
        drop(one_at_a_time);
        let finished = Utc::now();
        let ms = duration.as_millis() as u64;
        let mut observations = Vec::new();
        match &result {
            Ok(s) => {
                lp.failures = 0;
                tracing::info!(r#loop = name, duration_ms = ms, changes = s.changes_applied, drift = ?s.drift, "{name} pass: {}", s.text);
                for line in &s.lines {
                    tracing::debug!(r#loop = name, "{line}");
                }
                status(&format!("{name} pass ok: {}", s.text));
                observations.extend(s.observations.iter().cloned());
                observations.push(Observation::good(AlertKind::LoopFailing, name));
            }
            Err(e) => {
                lp.failures += 1;
                let n = lp.failures;
                tracing::warn!(r#loop = name, duration_ms = ms, failures = n, error = %e, "{name} pass failed; the next tick retries");
                status(&format!("{name} pass failed ({n} in a row): {e}"));
                observations.extend(e.observations.iter().cloned());
                if n >= FAILURES_BEFORE_ALERT {
                    observations.push(Observation::bad(
                        AlertKind::LoopFailing,
                        name,
                        AlertSeverity::Warning,
                        format!("the {name} loop failed {n} times in a row: {e}"),
                        json!({ "loop": name, "failures": n }),
                    ));
                }
            }
        }
        let previous = match &result {
            Err(_) => self.state.last_pass(name).ok().flatten(),
            Ok(_) => None,
        };
        let pass = pass_record(name, started, finished, &result, previous.as_ref());
        if let Err(e) = self.state.record_pass(&pass) {
            tracing::error!(r#loop = name, error = %e, "cannot record the pass");
        }
        let figures = match &result {
            Ok(s) => PassFigures {
                ok: true,
                duration,
                finished,
                changes_applied: s.changes_applied,
                drift: s.drift,
                verdicts: s.verdicts.clone(),
            },
            Err(_) => PassFigures {
                ok: false,
                duration,
                finished,
                ..PassFigures::default()
            },
        };
        self.metrics.record_pass(name, &figures);
        let notices = self.observe(observations);
        self.deliver(&notices).await;
        PassReport {
            loop_name: name,
            result,
            duration,
            notices,
        }
    }

    /// Folds observations into the persisted alert state, logs the notices due and refreshes
    /// the alert gauges.
    pub fn observe(&self, observations: Vec<Observation>) -> Vec<alerts::Notice> {
        let _serial = lock(&self.alerts);
        let now = Utc::now();
        let mut notices = Vec::new();
        for obs in observations {
            let prev = match self.state.load_alert(obs.kind, &obs.subject) {
                Ok(prev) => prev,
                Err(e) => {
                    tracing::error!(alert = obs.kind.as_str(), error = %e, "cannot read the alert state");
                    None
                }
            };
            let (record, notice) = alerts::step(prev.as_ref(), obs, now, self.renotify_every);
            if prev.as_ref() != Some(&record)
                && let Err(e) = self.state.save_alert(&record)
            {
                tracing::error!(alert = record.kind.as_str(), error = %e, "cannot save the alert state");
            }
            if let Some(notice) = notice {
                alerts::log_notice(&notice);
                notices.push(notice);
            }
        }
        match self.state.alerts() {
            Ok(records) => self.metrics.set_alerts(&records),
            Err(e) => tracing::error!(error = %e, "cannot read the alert state"),
        }
        notices
    }

    /// Runs `lp` on its timer until `stop` turns true; a pass in flight is finished first.
    async fn drive(
        self: Arc<Self>,
        mut lp: Loop,
        progress: Arc<Progress>,
        slack: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut wait = Duration::ZERO;
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let trigger = lp.trigger.clone();
            let woken = async {
                match trigger {
                    Some(t) => t.notified().await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => continue,
                _ = tokio::time::sleep(wait) => {}
                _ = woken => tracing::info!(r#loop = lp.name, "starting a {} pass now: the desired state changed", lp.name),
            }
            // The pass may take a while; its deadline is the next due time plus the slack.
            progress.set(lp.name, Instant::now() + lp.every + slack);
            self.run_pass(&mut lp).await;
            let jitter = rand::rng().random_range(-1.0..=1.0);
            wait = next_delay(lp.every, lp.failures, jitter);
            progress.set(lp.name, Instant::now() + wait + slack);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The passes: the one place that says which pass runs in which loop.

/// Everything a pass may use, built once per config generation.
#[derive(Clone)]
pub struct PassContext {
    pub config: Arc<Config>,
    pub tenant: Tenant,
    pub state: Arc<State>,
    pub desired: Arc<DesiredWatch>,
}

/// The three loops with their passes: `reconcile_once`, `priority_once` and `poll_once`, each
/// reading the world afresh. A file-watch event may start a reconcile pass early, never steer it.
pub fn build_loops(ctx: &PassContext, reconcile_trigger: Arc<Notify>) -> Vec<Loop> {
    let schedule = &ctx.config.schedule;
    let reconcile = {
        let ctx = ctx.clone();
        Loop::new(RECONCILE, schedule.reconcile_every, move || {
            let ctx = ctx.clone();
            async move { reconcile_pass(&ctx, Utc::now()).await }.boxed()
        })
        .with_trigger(reconcile_trigger)
    };
    let priority = {
        let ctx = ctx.clone();
        Loop::new(PRIORITY, schedule.priority_every, move || {
            let ctx = ctx.clone();
            async move { priority_pass(&ctx, Utc::now()).await }.boxed()
        })
    };
    let incidents = {
        let ctx = ctx.clone();
        Loop::new(INCIDENTS, schedule.incidents_every, move || {
            let ctx = ctx.clone();
            async move { incidents_pass(&ctx, Utc::now()).await }.boxed()
        })
    };
    vec![reconcile, priority, incidents]
}

/// One reconcile pass against the last valid desired state. A tripped removal guard raises the
/// `removal_guard_tripped` alert (the refusal itself is recorded by the pass, so `check` sees it).
pub async fn reconcile_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let Some(desired) = ctx.desired.current() else {
        return Err(PassError::new(format!(
            "no valid desired state yet: fix {} (dexscope validate shows why)",
            ctx.desired.path().display()
        )));
    };
    let scope = &ctx.config.scope;
    let rctx = reconcile::Context {
        tenant: &ctx.tenant,
        state: &ctx.state,
        user_group: &scope.user_group_id,
        device_tag: &scope.device_tag,
        member_resync: scope.member_resync,
    };
    let settings = reconcile::settings_from_config(&ctx.config, false);
    let report = reconcile::reconcile_once(rctx, &desired.state, &settings, now)
        .await
        .map_err(|e| PassError::new(format!("reconcile pass failed: {e}")))?;
    let plan = &report.plan;
    let guard = if plan.guard_tripped() {
        let refused: Vec<String> = plan
            .refusals()
            .iter()
            .map(|(group, count, max)| format!("{count} removals from {group} (max {max})"))
            .collect();
        Observation::bad(
            AlertKind::RemovalGuardTripped,
            "reconcile",
            AlertSeverity::Critical,
            format!(
                "removal guard refused {}; run `dexscope apply --allow-mass-removal` if intended",
                refused.join(", ")
            ),
            json!({ "refused": refused }),
        )
    } else {
        Observation::good(AlertKind::RemovalGuardTripped, "reconcile")
    };
    let applied = report.applied.iter().filter(|a| a.is_success()).count() as u64;
    let failed = report.failed().count();
    let pending = report.not_converged.len() + failed;
    let drift = (plan.users.drift_count() + plan.devices.drift_count()) as u64;
    let text = format!(
        "{} changes planned, {applied} applied, {failed} failed, {} not converged, {} unresolved",
        plan.change_count(),
        report.not_converged.len(),
        plan.unresolved.len()
    );
    Ok(PassSummary {
        text,
        lines: plan.to_string().lines().map(str::to_string).collect(),
        changes_applied: applied,
        drift: Some(drift),
        observations: vec![guard],
        details: json!({
            "pending_changes": pending,
            "unresolved": plan.unresolved.len(),
            "applied": applied,
            "commit": report.commit,
            "users": group_figures(&report, GroupKind::Users),
            "devices": group_figures(&report, GroupKind::Devices),
            "unresolved_entries": plan
                .unresolved
                .iter()
                .map(|u| json!({ "entry": u.entry, "problem": u.problem }))
                .collect::<Vec<_>>(),
        }),
        ..PassSummary::default()
    })
}

/// The row a pass leaves in the state database (what `status` reads): for a success its text,
/// figures and details; for a failure the error and, carried over from `previous`, the time of
/// the last success (the table keeps one pass per loop).
pub fn pass_record(
    name: &str,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    result: &Result<PassSummary, PassError>,
    previous: Option<&LoopPass>,
) -> LoopPass {
    let summary = match result {
        Ok(s) => {
            json!({ "text": s.text, "changes_applied": s.changes_applied, "drift": s.drift, "details": s.details })
        }
        Err(e) => {
            let last_success = match previous {
                Some(p) if p.ok => Some(json!(p.finished)),
                Some(p) => p.summary.get("last_success").cloned(),
                None => None,
            };
            json!({ "error": e.message, "last_success": last_success })
        }
    };
    LoopPass {
        loop_name: name.to_string(),
        started,
        finished,
        ok: result.is_ok(),
        summary,
    }
}

/// One group's figures for the pass summary (read by `status`): desired entries resolved, the
/// group's size after the pass (before, plus adds, minus removals that took effect), drift.
fn group_figures(report: &reconcile::ReconcileReport, group: GroupKind) -> serde_json::Value {
    use crate::state::Operation;
    let c = &report.counts;
    let (desired, before, drift) = match group {
        GroupKind::Users => (c.desired_users, c.members, report.plan.users.drift_count()),
        GroupKind::Devices => (
            c.desired_devices,
            c.tagged,
            report.plan.devices.drift_count(),
        ),
    };
    let took = |ops: [Operation; 2]| {
        report
            .applied
            .iter()
            .filter(|a| a.group == group && ops.contains(&a.operation))
            .filter(|a| a.result == reconcile::apply::AppliedResult::Ok)
            .count()
    };
    let effective = (before + took([Operation::Add, Operation::Tag]))
        .saturating_sub(took([Operation::Remove, Operation::Untag]));
    json!({ "desired": desired, "effective": effective, "drift": drift })
}

/// One priority pass: tagged machines' placement (and desired devices missing the tag).
pub async fn priority_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let scope = &ctx.config.scope;
    let desired_devices = match ctx.desired.current() {
        Some(desired) if !desired.state.devices.is_empty() => {
            let machines = ctx.tenant.defender.all_machines().await.map_err(|e| {
                PassError::new(format!(
                    "cannot list machines to resolve desired devices: {e}"
                ))
            })?;
            Some(priority::resolve_devices(&desired.state, &machines).0)
        }
        _ => None,
    };
    let input = priority::PriorityInput {
        desired_devices: desired_devices.as_deref(),
        sightings: &[],
    };
    let report = priority::priority_once(&ctx.tenant.defender, &ctx.state, scope, input, now)
        .await
        .map_err(|e| PassError::new(format!("priority pass failed: {e}")))?;
    let worst = priority_check::worst(&report.findings);
    Ok(PassSummary {
        text: format!(
            "{} tagged machines checked; worst finding: {worst:?}",
            report.tagged
        )
        .to_lowercase(),
        lines: report.findings.iter().map(|f| f.summary.clone()).collect(),
        observations: vec![priority_check::observation(&report.findings)],
        details: json!({ "findings": report.findings, "counts": report.counts }),
        ..PassSummary::default()
    })
}

/// One incident pass: new and updated incidents judged, each verdict posted once. Evidence that
/// shows an in-scope device in another group raises the priority alert too.
pub async fn incidents_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let settings = poll::PollSettings::from_config(&ctx.config);
    let report = poll::poll_once(&ctx.tenant, &ctx.state, &settings, now)
        .await
        .map_err(|e| PassError::new(format!("incident pass failed: {e}")))?;
    let mut verdicts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for incident in &report.incidents {
        if let Some(kind) = incident.verdict {
            *verdicts.entry(kind).or_default() += 1;
        }
    }
    let evidence = if report.priority_findings.is_empty() {
        Observation::good(AlertKind::PriorityMisconfigured, "incident evidence")
    } else {
        let ids: Vec<&str> = report
            .priority_findings
            .iter()
            .map(|f| f.incident_id.as_str())
            .collect();
        Observation::bad(
            AlertKind::PriorityMisconfigured,
            "incident evidence",
            AlertSeverity::Critical,
            format!(
                "incident evidence places in-scope devices outside {} (incidents {})",
                ctx.config.scope.device_group_name,
                ids.join(", ")
            ),
            json!({ "findings": report.priority_findings }),
        )
    };
    Ok(PassSummary {
        text: format!(
            "{} incidents listed, {} handled, {} failed",
            report.listed,
            report.incidents.len(),
            report.failed.len()
        ),
        lines: report
            .incidents
            .iter()
            .filter_map(|i| {
                i.verdict
                    .map(|v| format!("incident {}: {v} ({:?})", i.id, i.handled))
            })
            .collect(),
        verdicts: verdicts.into_iter().collect(),
        observations: vec![evidence],
        details: json!({ "listed": report.listed, "failed": report.failed }),
        ..PassSummary::default()
    })
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// Why a generation (one config) ended.
enum Next {
    Stop,
    Reload(Box<Config>),
}

enum Signal {
    Stop(&'static str),
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let make = |k| signal(k).map_err(DaemonError::Signals);
        Ok(Signals {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `config` was loaded (and logging set up) by the
/// caller; SIGHUP re-reads it from `config.path` with the process environment.
pub async fn run(config: Config, options: Options) -> Result<(), DaemonError> {
    let mut signals = Signals::install()?;
    let metrics = Arc::new(Metrics::new());
    let (listener, addr) = metrics::bind(config.metrics.listen).await?;
    tracing::info!(address = %addr, "metrics endpoint listening on http://{addr}/metrics");
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), async {
        let _ = server_stopped.await;
    }));
    let progress = Arc::new(Progress::default());
    let watchdog = tokio::spawn(watchdog(progress.clone()));

    let mut config = config;
    let mut first = true;
    let result = loop {
        match generation(config, &metrics, &progress, &mut signals, &options, first).await {
            Ok(Next::Stop) => break Ok(()),
            Ok(Next::Reload(new)) => {
                if new.metrics.listen != addr && new.metrics.listen.port() != 0 {
                    tracing::warn!(
                        "[metrics] listen changed; the endpoint keeps {addr} until restart"
                    );
                }
                config = *new;
                first = false;
            }
            Err(e) => break Err(e),
        }
    };
    watchdog.abort();
    notify_flush(Duration::from_secs(2));
    let _ = server_stop.send(());
    let _ = server.await;
    tracing::info!("dexscope stopped");
    result
}

/// One config generation: open the state, connect, get a first token, run the loops until a
/// signal says stop or reload, then stop the loops gracefully.
async fn generation(
    config: Config,
    metrics: &Arc<Metrics>,
    progress: &Arc<Progress>,
    signals: &mut Signals,
    options: &Options,
    first: bool,
) -> Result<Next, DaemonError> {
    let config = Arc::new(config);
    let state = Arc::new(State::open(&config.state.path)?);
    let tenant = Tenant::from_config(&config)?;
    metrics.set_http_client(tenant.http.clone());
    let mut scheduler =
        Scheduler::new(state.clone(), metrics.clone(), config.alerts.renotify_every);
    if let Some(url) = &config.alerts.webhook_url {
        let settings = alerts::WebhookSettings::new(url.clone());
        match alerts::Webhook::new(settings, tenant.http.reqwest().clone()) {
            Ok(webhook) => {
                scheduler = scheduler.with_webhook(webhook, config.tenant.tenant_id.to_string())
            }
            Err(e) => tracing::error!(error = %e, "alert webhook disabled: {e}"),
        }
    }
    let scheduler = Arc::new(scheduler);
    progress.reset(&[]);

    status("obtaining a token");
    tokio::select! {
        () = first_token(&tenant, &scheduler) => {}
        signal = signals.recv() => {
            if let Some(next) = on_signal(signal, &config) {
                return Ok(next);
            }
        }
    }
    metrics.token_obtained(Utc::now());

    let desired = Arc::new(DesiredWatch::new(config.scope.desired_state.clone()));
    let trigger = Arc::new(Notify::new());
    refresh_desired(&desired, &scheduler, None);
    let ctx = PassContext {
        config: config.clone(),
        tenant,
        state,
        desired: desired.clone(),
    };
    let loops = build_loops(&ctx, trigger.clone());
    let now = Instant::now();
    progress.reset(
        &loops
            .iter()
            .map(|l| (l.name, now + l.every + options.pass_slack))
            .collect::<Vec<_>>(),
    );
    metrics.set_loops(&loops.iter().map(|l| (l.name, l.every)).collect::<Vec<_>>());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)> = loops
        .into_iter()
        .map(|lp| {
            let name = lp.name;
            let task = tokio::spawn(scheduler.clone().drive(
                lp,
                progress.clone(),
                options.pass_slack,
                stop_rx.clone(),
            ));
            (name, task)
        })
        .collect();
    let watcher = tokio::spawn(watch_desired(
        desired,
        scheduler.clone(),
        trigger,
        options.watch_every,
    ));

    if first {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("running"),
        ]);
    } else {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("running (config reloaded)"),
        ]);
    }
    tracing::info!(loops = ?tasks.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "dexscope running");

    let next = loop {
        if let Some(next) = on_signal(signals.recv().await, &config) {
            break next;
        }
    };
    match next {
        Next::Stop => notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping: letting in-flight passes finish"),
        ]),
        Next::Reload(_) => notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading: letting in-flight passes finish"),
        ]),
    }
    watcher.abort();
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + options.shutdown_grace;
    for (name, task) in &mut tasks {
        if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
            task.abort();
            tracing::warn!(
                r#loop = *name,
                "the {name} pass did not finish within {}; stopped it (the next pass converges)",
                crate::text::duration(options.shutdown_grace)
            );
        }
    }
    progress.reset(&[]);
    Ok(next)
}

/// What a signal means now: stop, reload with a valid new config (its load warnings logged, as
/// at start-up), or nothing (an invalid new config is logged, shown in the systemd status, and
/// the running one kept).
fn on_signal(signal: Signal, config: &Config) -> Option<Next> {
    match signal {
        Signal::Stop(name) => {
            tracing::info!("{name} received: stopping");
            Some(Next::Stop)
        }
        Signal::Reload => match Config::load(&config.path, std::env::vars()) {
            Ok(new) => {
                tracing::info!(config = %config.path.display(), "SIGHUP received: reloading the config and the desired state");
                for warning in &new.warnings {
                    tracing::warn!(config = %config.path.display(), "{warning}");
                }
                Some(Next::Reload(Box::new(new)))
            }
            Err(e) => {
                tracing::error!(config = %config.path.display(), "SIGHUP received but the config is invalid, keeping the running one: {e}");
                status(&format!(
                    "config reload refused, keeping the running config: {e}"
                ));
                None
            }
        },
    }
}

/// Waits until a token is obtained for at least one resource, retrying with back-off; reports
/// missing application permissions and auth failures as alerts. A missing permission does not
/// stop the daemon: the passes that need it fail and alert on their own.
async fn first_token(tenant: &Tenant, scheduler: &Scheduler) {
    let mut wait = Duration::from_secs(2);
    loop {
        let mut observations = Vec::new();
        let mut errors = Vec::new();
        for (resource, result) in tenant.tokens.self_check().await {
            let name = resource.display_name();
            match result {
                Ok(report) if report.is_complete() => {
                    observations.push(Observation::good(AlertKind::MissingPermission, name));
                }
                Ok(report) => {
                    tracing::warn!(resource = name, "{}", report.message);
                    observations.push(Observation::bad(
                        AlertKind::MissingPermission,
                        name,
                        AlertSeverity::Critical,
                        report.message.clone(),
                        json!({ "missing": report.missing }),
                    ));
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let got = !observations.is_empty();
        if got {
            observations.push(Observation::good(AlertKind::AuthFailure, ""));
        } else {
            let summary = format!("cannot obtain a token: {}", errors.join("; "));
            status(&format!("waiting for a token: {summary}"));
            observations.push(Observation::bad(
                AlertKind::AuthFailure,
                "",
                AlertSeverity::Critical,
                summary,
                json!({}),
            ));
        }
        scheduler.observe(observations);
        if got {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(300));
    }
}

/// Re-reads the desired state when it changed: a valid change wakes the reconcile loop, an
/// invalid one keeps the last valid state and alerts.
fn refresh_desired(desired: &DesiredWatch, scheduler: &Scheduler, trigger: Option<&Notify>) {
    let today = chrono::Local::now().date_naive();
    match desired.refresh(today) {
        Refresh::Unchanged => return,
        Refresh::Loaded => {
            if let Some(loaded) = desired.current() {
                tracing::info!(path = %desired.path().display(), users = loaded.state.users.len(), devices = loaded.state.devices.len(), commit = ?loaded.state.commit, "desired state read");
            }
            if let Some(trigger) = trigger {
                trigger.notify_one();
            }
        }
        Refresh::Invalid(error) => {
            tracing::error!(path = %desired.path().display(), "{error}; keeping the last valid desired state");
        }
    }
    scheduler.observe(vec![desired.observation()]);
}

async fn watch_desired(
    desired: Arc<DesiredWatch>,
    scheduler: Arc<Scheduler>,
    trigger: Arc<Notify>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (d, s, t) = (desired.clone(), scheduler.clone(), trigger.clone());
        // File reads and SQLite writes block; keep them off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || refresh_desired(&d, &s, Some(&t))).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data that a panic elsewhere cannot leave half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_jitter_and_back_off() {
        let m = Duration::from_secs(60);
        // (every, failures, jitter, expected)
        let cases = [
            (m, 0, 0.0, m),
            (m, 0, 1.0, Duration::from_secs(66)),
            (m, 0, -1.0, Duration::from_secs(54)),
            (m, 1, 0.0, Duration::from_secs(120)),
            (m, 3, 0.0, Duration::from_secs(480)),
            (m, 4, 0.0, Duration::from_secs(960)),
            (m, 30, 0.0, Duration::from_secs(960)),
            (Duration::from_secs(900), 4, 0.0, Duration::from_secs(3600)),
            (Duration::from_secs(7200), 2, 0.0, Duration::from_secs(7200)),
            (m, 0, 5.0, Duration::from_secs(66)),
        ];
        for (every, failures, jitter, want) in cases {
            assert_eq!(
                next_delay(every, failures, jitter),
                want,
                "{every:?} {failures} {jitter}"
            );
        }
    }

    #[test]
    fn progress_reports_the_first_late_loop() {
        let p = Progress::default();
        let t = Instant::now();
        p.reset(&[
            ("a", t + Duration::from_secs(10)),
            ("b", t + Duration::from_secs(5)),
        ]);
        assert_eq!(p.check(t), Ok(()));
        assert_eq!(p.check(t + Duration::from_secs(6)), Err("b"));
        p.set("b", t + Duration::from_secs(20));
        assert_eq!(p.check(t + Duration::from_secs(6)), Ok(()));
        assert_eq!(p.check(t + Duration::from_secs(11)), Err("a"));
    }

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
