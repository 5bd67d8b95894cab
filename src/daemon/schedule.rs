//! The scheduler: each loop on its own timer with jitter and back-off, one pass at a time,
//! every pass recorded (state database, metrics, alerts, systemd status).
//!
//! A [`Loop`] is a name, an interval and a function that starts one pass and returns its
//! [`PassSummary`] or [`PassError`]; the scheduler knows nothing of what a pass does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rand::Rng;
use tokio::sync::{Notify, watch};

use super::systemd::{Progress, status};
use crate::alerts::{Alerter, Notice, Observation, observe};
use crate::metrics::{Metrics, PassFigures};
use crate::state::records::{PassDetails, PassFailed, PassOk};
use crate::state::{LoopPass, State};

pub use crate::alerts::observe::FAILURES_BEFORE_ALERT;

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
    /// Verdicts reached, the ones reached before included (the metrics count each once).
    pub verdicts: Vec<crate::metrics::VerdictReached>,
    /// Defender Experts' pickups the incident pass saw (agreements settled, latencies).
    pub pickups: crate::metrics::PickupFigures,
    /// Alerts the pass observed (good or bad); the daemon folds them into the alert state.
    pub observations: Vec<Observation>,
    /// Recorded with the pass in the state database (read by `status` and `check`).
    pub details: PassDetails,
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

/// What the scheduler shares between loops: where passes and alerts are recorded.
pub struct Scheduler {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// The one alert path: every observation of a pass goes through it to every sink.
    pub alerter: Arc<Alerter>,
    /// Passes run one at a time. Each pass holds a whole read of its scope (at 100k users and
    /// 50k machines, tens of MiB); loops that started together would hold them all at once and
    /// add up their peaks. A pass waits at most for the one running, which is short next to
    /// any loop's interval; the wait is not counted in the pass's duration.
    passes: tokio::sync::Mutex<()>,
}

/// The outcome of one pass as the scheduler saw it.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub loop_name: &'static str,
    pub result: Result<PassSummary, PassError>,
    pub duration: Duration,
    pub notices: Vec<Notice>,
}

impl Scheduler {
    /// A scheduler recording into `state` and `metrics`, alerting through `alerter` (whose
    /// figures the metrics export from now on).
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>, alerter: Arc<Alerter>) -> Self {
        metrics.set_alert_source(alerter.metrics());
        Scheduler {
            state,
            metrics,
            alerter,
            passes: tokio::sync::Mutex::new(()),
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
                tracing::info!(
                    r#loop = name,
                    duration_ms = ms,
                    changes = s.changes_applied,
                    drift = s.drift,
                    "{name} pass: {}",
                    s.text
                );
                for line in &s.lines {
                    tracing::debug!(r#loop = name, "{line}");
                }
                status(&format!("{name} pass ok: {}", s.text));
                observations.extend(s.observations.iter().cloned());
                observations.extend(observe::loop_failing(name, 0, ""));
            }
            Err(e) => {
                lp.failures += 1;
                let n = lp.failures;
                tracing::warn!(r#loop = name, duration_ms = ms, failures = n, error = %e, "{name} pass failed; the next tick retries");
                status(&format!("{name} pass failed ({n} in a row): {e}"));
                observations.extend(e.observations.iter().cloned());
                observations.extend(observe::loop_failing(name, n, &e.to_string()));
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
                coverage: coverage(&s.details),
                verdicts: s.verdicts.clone(),
                pickups: s.pickups.clone(),
            },
            Err(_) => PassFigures {
                ok: false,
                duration,
                finished,
                ..PassFigures::default()
            },
        };
        self.metrics.record_pass(name, &figures);
        let notices = self.alerter.observe(observations, Utc::now()).await;
        PassReport {
            loop_name: name,
            result,
            duration,
            notices,
        }
    }

    /// Runs `lp` on its timer until `stop` turns true; a pass in flight is finished first.
    pub(super) async fn drive(
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

/// The scoped groups' desired and effective sizes a reconcile pass recorded, for the metrics.
fn coverage(details: &PassDetails) -> Vec<(&'static str, u64, u64)> {
    match details {
        PassDetails::Reconcile(f) => vec![
            ("users", f.users.desired, f.users.effective),
            ("devices", f.devices.desired, f.devices.effective),
        ],
        _ => Vec::new(),
    }
}

/// The row a pass leaves in the state database (what `status` and `check` read): for a
/// success its text, figures and details; for a failure the error and, carried over from
/// `previous`, the time of the last success (the table keeps one pass per loop).
pub fn pass_record(
    name: &str,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    result: &Result<PassSummary, PassError>,
    previous: Option<&LoopPass>,
) -> LoopPass {
    match result {
        Ok(s) => LoopPass::succeeded(
            name,
            started,
            finished,
            &PassOk {
                text: s.text.clone(),
                changes_applied: s.changes_applied,
                drift: s.drift,
                details: s.details.clone(),
            },
        ),
        Err(e) => LoopPass::failed(
            name,
            started,
            finished,
            &PassFailed {
                error: e.message.clone(),
                last_success: previous.and_then(LoopPass::last_success),
            },
        ),
    }
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
}
