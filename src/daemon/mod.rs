//! `dexscope run`: the daemon. Signals and config generations live here; the scheduler and
//! its loops in `schedule`, the pass adapters in `passes`, systemd notify and the watchdog in
//! `systemd`, the desired-state watch in `watch` (files) and `gitwatch` (a git source).
//!
//! The daemon decides nothing about the domain: each pass returns its report and the pure
//! functions beside the pass turn it into alert observations and recorded figures. The
//! scheduler runs each loop on its own timer with jitter, backs a failing loop off and alerts
//! (the others go on), records every pass in the state database and the metrics, and ties the
//! systemd watchdog to loop progress.
//!
//! Signals: SIGTERM/SIGINT stop taking new work, let in-flight passes finish (bounded by
//! [`Options::shutdown_grace`]) and exit 0; SIGHUP reloads the config and the desired state
//! (an invalid new config is logged and the running one kept).

mod gitwatch;
mod passes;
mod schedule;
mod systemd;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, watch as channel};

use crate::alerts::{Alerter, AlerterError, Condition, observe};
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::state::{State, StateError};
use crate::tenant::{Tenant, TenantError};

pub use gitwatch::{DesiredSource, GitRefresh, GitWatch, refresh_git};
pub use passes::{PassContext, build_loops, incidents_pass, priority_pass, reconcile_pass};
pub use schedule::{
    FAILURES_BEFORE_ALERT, Loop, PassError, PassFuture, PassReport, PassSummary, Scheduler,
    next_delay, pass_record,
};
pub use systemd::{Progress, notify, notify_flush};
pub use watch::{DesiredWatch, Refresh, load_desired, refresh_desired};

use systemd::{status, watchdog};
use watch::watch_desired;

pub use crate::state::records::{INCIDENTS, PRIORITY, RECONCILE};

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
    #[error("cannot open the git source: {0}")]
    GitSource(#[from] crate::desired::source::SourceError),
}

// ---------------------------------------------------------------------------------------------
// Signals and generations.

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

/// What one config generation runs on.
struct Setup {
    config: Arc<Config>,
    state: Arc<State>,
    tenant: Tenant,
    scheduler: Arc<Scheduler>,
    /// The git source, when `[scope.git]` replaces `desired_state`.
    git: Option<Arc<GitWatch>>,
}

/// The loops of a generation while they run.
struct Running {
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    watcher: tokio::task::JoinHandle<()>,
    stop: channel::Sender<bool>,
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
    let setup = setup(config, metrics)?;
    progress.reset(&[]);

    status("obtaining a token");
    let token = first_token(&setup.tenant, &setup.scheduler.alerter);
    tokio::pin!(token);
    loop {
        tokio::select! {
            () = &mut token => break,
            signal = signals.recv() => {
                if let Some(next) = on_signal(signal, &setup.config) {
                    return Ok(next);
                }
            }
        }
    }
    metrics.token_obtained(Utc::now());

    let running = start_loops(&setup, metrics, progress, options).await;
    let reloaded = if first { "" } else { " (config reloaded)" };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("running{reloaded}")),
    ]);
    tracing::info!(
        loops = running
            .tasks
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(","),
        "dexscope running"
    );

    let next = loop {
        if let Some(next) = on_signal(signals.recv().await, &setup.config) {
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
    stop_loops(running, options).await;
    progress.reset(&[]);
    Ok(next)
}

/// The directory of the state database: disk-backed and writable by the daemon (SQLite writes
/// its journal beside the database), where the kept desired state's texts go.
pub fn state_dir(state: &State) -> PathBuf {
    state
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Opens the state database, connects to the tenant and builds the one alert path (with the
/// webhook when one is configured and valid).
fn setup(config: Config, metrics: &Arc<Metrics>) -> Result<Setup, DaemonError> {
    let config = Arc::new(config);
    let state = Arc::new(State::open(&config.state.path)?);
    let tenant = Tenant::from_config(&config)?;
    metrics.set_http_client(tenant.http.clone());
    let alerter = match Alerter::from_config(state.clone(), &config, tenant.http.reqwest()) {
        Ok(alerter) => alerter,
        Err(AlerterError::Webhook(e)) => {
            tracing::error!(error = %e, "alert webhook disabled: {e}");
            Alerter::new(
                state.clone(),
                config.tenant.tenant_id.to_string(),
                config.alerts.renotify_every,
                None,
            )?
        }
        Err(AlerterError::State(e)) => return Err(e.into()),
    };
    let scheduler = Scheduler::new(state.clone(), metrics.clone(), Arc::new(alerter));
    let git = match &config.scope.git {
        Some(git) => Some(Arc::new(GitWatch::open(git, state.clone())?)),
        None => None,
    };
    Ok(Setup {
        config,
        state,
        tenant,
        scheduler: Arc::new(scheduler),
        git,
    })
}

/// Reads the desired state, then starts every loop and the desired-state watch.
async fn start_loops(
    setup: &Setup,
    metrics: &Metrics,
    progress: &Arc<Progress>,
    options: &Options,
) -> Running {
    let trigger = Arc::new(Notify::new());
    let alerter = &setup.scheduler.alerter;
    let (desired, watcher) = match &setup.git {
        None => {
            let desired = Arc::new(
                DesiredWatch::new(setup.config.scope.desired_state.clone())
                    .spill_to(state_dir(&setup.state)),
            );
            load_desired(&desired, alerter).await;
            let watcher = tokio::spawn(watch_desired(
                desired.clone(),
                alerter.clone(),
                trigger.clone(),
                options.watch_every,
            ));
            (DesiredSource::Files(desired), watcher)
        }
        Some(git) => {
            let watcher = gitwatch::start_git(git.clone(), alerter.clone(), trigger.clone()).await;
            (DesiredSource::Git(git.clone()), watcher)
        }
    };
    let ctx = PassContext {
        config: setup.config.clone(),
        tenant: setup.tenant.clone(),
        state: setup.state.clone(),
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

    let (stop, stop_rx) = channel::channel(false);
    let tasks = loops
        .into_iter()
        .map(|lp| {
            let name = lp.name;
            let task = tokio::spawn(setup.scheduler.clone().drive(
                lp,
                progress.clone(),
                options.pass_slack,
                stop_rx.clone(),
            ));
            (name, task)
        })
        .collect();
    Running {
        tasks,
        watcher,
        stop,
    }
}

/// Stops the watch, tells the loops to stop and lets in-flight passes finish within the grace.
async fn stop_loops(running: Running, options: &Options) {
    let Running {
        mut tasks,
        watcher,
        stop,
    } = running;
    watcher.abort();
    let _ = stop.send(true);
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

/// Waits until a token is obtained for at least one resource, retrying with back-off. Every
/// attempt's outcome goes through the alert path, so an auth failure at start reaches the
/// webhook while the token is still retried, and a missing application permission is reported
/// (it does not stop the daemon: the passes that need it fail and alert on their own).
async fn first_token(tenant: &Tenant, alerter: &Alerter) {
    let mut wait = Duration::from_secs(2);
    loop {
        let mut observations = Vec::new();
        let mut errors = Vec::new();
        for (resource, result) in tenant.tokens.self_check().await {
            let name = resource.display_name();
            match result {
                Ok(report) => {
                    if !report.is_complete() {
                        tracing::warn!(resource = name, "{}", report.message);
                    }
                    observations.push(observe::permissions(name, &report));
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let got = !observations.is_empty();
        let auth = observe::auth(got, &errors);
        if let Condition::Bad { summary, .. } = &auth.condition {
            status(&format!("waiting for a token: {summary}"));
        }
        observations.push(auth);
        alerter.observe(observations, Utc::now()).await;
        if got {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(300));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data that a panic elsewhere cannot leave half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
