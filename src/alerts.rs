//! Alert transitions (a pure state machine) and their sinks: log, webhook, metrics.
//!
//! Every alert kind goes through one mechanism. Each pass turns what it saw into an
//! [`Observation`]; [`step`] folds it into the persisted [`AlertRecord`] and says whether a
//! [`Notice`] is due: `Firing` on the transition to bad, `Repeat` every `renotify_every` while
//! still bad, `Resolved` once when fixed, nothing otherwise. Sinks consume notices: the log event
//! ([`log_notice`]), the webhook ([`webhook_body`], [`Webhook`]) and the metrics values
//! ([`AlertMetrics`]) consume the same `Notice` values and records. [`Alerter`] ties them
//! together: load the stored record, step, notify, persist.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::state::{State, StateError};

/// Every kind of alert, by its stable snake_case name (webhook `alert`, log field `alert`,
/// metrics label, state database key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    PriorityMisconfigured,
    RemovalGuardTripped,
    InvalidDesiredState,
    AuthFailure,
    MissingPermission,
    LoopFailing,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::PriorityMisconfigured,
        AlertKind::RemovalGuardTripped,
        AlertKind::InvalidDesiredState,
        AlertKind::AuthFailure,
        AlertKind::MissingPermission,
        AlertKind::LoopFailing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PriorityMisconfigured => "priority_misconfigured",
            AlertKind::RemovalGuardTripped => "removal_guard_tripped",
            AlertKind::InvalidDesiredState => "invalid_desired_state",
            AlertKind::AuthFailure => "auth_failure",
            AlertKind::MissingPermission => "missing_permission",
            AlertKind::LoopFailing => "loop_failing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alert severity, ordered: `Critical` is worse than `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Warning,
    Critical,
}

impl AlertSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [AlertSeverity::Warning, AlertSeverity::Critical]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Whether an alert is currently bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [AlertState::Firing, AlertState::Resolved]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The remembered state of one alert (persisted, so a restart neither repeats nor forgets it).
/// An alert is identified by its kind and a subject (the loop name, the missing permission, …;
/// empty when the kind has one instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub kind: AlertKind,
    pub subject: String,
    pub state: AlertState,
    /// When the current state began.
    pub since: DateTime<Utc>,
    /// When a notice was last sent for this alert.
    pub last_notified: Option<DateTime<Utc>>,
    /// The last bad observation's severity, summary and details (kept when resolved, so the
    /// resolved notice says what was fixed).
    pub severity: AlertSeverity,
    pub summary: String,
    pub details: Value,
}

/// What a pass saw, for one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: AlertKind,
    pub subject: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Good,
    Bad {
        severity: AlertSeverity,
        summary: String,
        details: Value,
    },
}

impl Observation {
    pub fn good(kind: AlertKind, subject: &str) -> Self {
        Observation {
            kind,
            subject: subject.to_string(),
            condition: Condition::Good,
        }
    }

    pub fn bad(
        kind: AlertKind,
        subject: &str,
        severity: AlertSeverity,
        summary: impl Into<String>,
        details: Value,
    ) -> Self {
        Observation {
            kind,
            subject: subject.to_string(),
            condition: Condition::Bad {
                severity,
                summary: summary.into(),
                details,
            },
        }
    }

    pub fn is_bad(&self) -> bool {
        matches!(self.condition, Condition::Bad { .. })
    }

    /// The details of a bad observation (`null` when good).
    pub fn details(&self) -> &Value {
        match &self.condition {
            Condition::Bad { details, .. } => details,
            Condition::Good => &Value::Null,
        }
    }
}

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The alert turned bad (or got worse: warning → critical).
    Firing,
    /// Still bad, `renotify_every` after the last notice.
    Repeat,
    /// Fixed.
    Resolved,
}

/// A notification due now; sinks (log, webhook) consume it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub notice: NoticeKind,
    pub alert: AlertKind,
    pub subject: String,
    pub severity: AlertSeverity,
    pub summary: String,
    pub details: Value,
    /// When the alert's current state began.
    pub since: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

impl Notice {
    pub fn state(&self) -> AlertState {
        match self.notice {
            NoticeKind::Firing | NoticeKind::Repeat => AlertState::Firing,
            NoticeKind::Resolved => AlertState::Resolved,
        }
    }
}

/// Folds one observation into the alert's record. Pure. `prev` is the stored record of the same
/// alert (a record of another kind or subject is ignored). A `renotify_every` of zero or less
/// turns repeats off.
pub fn step(
    prev: Option<&AlertRecord>,
    observed: Observation,
    now: DateTime<Utc>,
    renotify_every: TimeDelta,
) -> (AlertRecord, Option<Notice>) {
    let prev = prev.filter(|p| p.kind == observed.kind && p.subject == observed.subject);
    let firing = prev.filter(|p| p.state == AlertState::Firing);
    let (record, notice) = match (firing, observed.condition) {
        (
            None,
            Condition::Bad {
                severity,
                summary,
                details,
            },
        ) => {
            let record = AlertRecord {
                kind: observed.kind,
                subject: observed.subject,
                state: AlertState::Firing,
                since: now,
                last_notified: Some(now),
                severity,
                summary,
                details,
            };
            (record, Some(NoticeKind::Firing))
        }
        (
            Some(p),
            Condition::Bad {
                severity,
                summary,
                details,
            },
        ) => {
            let escalated = severity > p.severity;
            let repeat_due = renotify_every > TimeDelta::zero()
                && p.last_notified.is_none_or(|t| now - t >= renotify_every);
            let notice = if escalated {
                Some(NoticeKind::Firing)
            } else if repeat_due {
                Some(NoticeKind::Repeat)
            } else {
                None
            };
            let record = AlertRecord {
                last_notified: if notice.is_some() {
                    Some(now)
                } else {
                    p.last_notified
                },
                severity,
                summary,
                details,
                ..p.clone()
            };
            (record, notice)
        }
        (Some(p), Condition::Good) => {
            let record = AlertRecord {
                state: AlertState::Resolved,
                since: now,
                last_notified: Some(now),
                ..p.clone()
            };
            (record, Some(NoticeKind::Resolved))
        }
        (None, Condition::Good) => {
            let record = prev.cloned().unwrap_or_else(|| AlertRecord {
                kind: observed.kind,
                subject: observed.subject,
                state: AlertState::Resolved,
                since: now,
                last_notified: None,
                severity: AlertSeverity::Warning,
                summary: String::new(),
                details: Value::Null,
            });
            (record, None)
        }
    };
    let notice = notice.map(|kind| Notice {
        notice: kind,
        alert: record.kind,
        subject: record.subject.clone(),
        severity: record.severity,
        summary: match kind {
            NoticeKind::Resolved => format!("resolved: {}", record.summary),
            _ => record.summary.clone(),
        },
        details: record.details.clone(),
        since: record.since,
        at: now,
    });
    (record, notice)
}

/// The webhook body (generic JSON; Teams Workflows accept it):
/// `{"source":"dexscope","tenant_id","alert","state","severity","summary","text","details","at"}`.
/// The subject, when there is one, is added to `details` as `subject`.
pub fn webhook_body(notice: &Notice, tenant_id: &str) -> Value {
    let mut details = match &notice.details {
        Value::Object(map) => map.clone(),
        Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("value".into(), other.clone());
            map
        }
    };
    if !notice.subject.is_empty() {
        details.insert("subject".into(), Value::String(notice.subject.clone()));
    }
    if notice.notice == NoticeKind::Repeat {
        details.insert("repeat".into(), Value::Bool(true));
    }
    serde_json::json!({
        "source": "dexscope",
        "tenant_id": tenant_id,
        "alert": notice.alert.as_str(),
        "state": notice.state().as_str(),
        "severity": notice.severity.as_str(),
        "summary": notice.summary,
        "text": notice.summary,
        "details": details,
        "at": notice.at.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

/// The log event of a notice, with stable field names `alert`, `state`, `severity`, `summary`
/// (and `subject`, `repeat`): ERROR while firing, INFO when resolved.
pub fn log_notice(notice: &Notice) {
    let alert = notice.alert.as_str();
    let state = notice.state().as_str();
    let severity = notice.severity.as_str();
    let summary = notice.summary.as_str();
    let subject = notice.subject.as_str();
    let repeat = notice.notice == NoticeKind::Repeat;
    match notice.state() {
        AlertState::Firing => tracing::error!(
            alert,
            state,
            severity,
            summary,
            subject,
            repeat,
            "alert firing: {summary}"
        ),
        AlertState::Resolved => tracing::info!(
            alert,
            state,
            severity,
            summary,
            subject,
            repeat,
            "alert resolved: {summary}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks: the webhook sender, the metrics values, and the `Alerter` that ties them to the state.

/// How the webhook is sent. Failures are logged and counted, never fatal.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The URL, a secret: it carries its own access token (Teams Workflows, Slack, …).
    pub url: SecretString,
    /// Attempts per notice (at least one).
    pub max_attempts: u32,
    /// The first backoff delay; doubles each attempt.
    pub base_delay: Duration,
    /// No wait (backoff or `Retry-After`) is longer than this; a longer `Retry-After` gives up.
    pub max_delay: Duration,
    /// Per attempt, in place of the shared client's longer API timeout: a slow receiver must
    /// not hold a pass up for long.
    pub timeout: Duration,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &"[redacted]")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookSettings {
    /// Three attempts, 2 s then 4 s apart, `Retry-After` honoured up to a minute.
    pub fn new(url: SecretString) -> Self {
        WebhookSettings {
            url,
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a webhook notice was not delivered. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "the alert webhook URL is not a valid URL; check the file named by alerts.webhook_url_file"
    )]
    BadUrl,
    #[error(
        "the alert webhook answered {status} after {attempts} attempt(s); check the receiving workflow"
    )]
    Status { status: u16, attempts: u32 },
    #[error(
        "the alert webhook asked to wait {} (Retry-After), longer than allowed; notice dropped",
        crate::text::duration(*wait)
    )]
    RetryAfterTooLong { wait: Duration },
    #[error("sending to the alert webhook failed after {attempts} attempt(s): {source}")]
    Send {
        attempts: u32,
        // `without_url()` is applied before this is built: the URL never reaches a message.
        #[source]
        source: reqwest::Error,
    },
}

/// Posts webhook bodies with a small bounded retry (429/5xx/network errors; `Retry-After`
/// honoured). Only the HTTP layer retries API calls; the webhook is not an API surface with
/// quotas or tokens, so it carries its own few attempts here.
#[derive(Clone)]
pub struct Webhook {
    settings: WebhookSettings,
    url: url::Url,
    client: reqwest::Client,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Webhook {
    /// A webhook sent with `client`: the process's one `reqwest::Client` (built by
    /// [`crate::http::Client::build_reqwest`]), so its TLS settings, proxy (from the environment)
    /// and user agent apply to alerts as to API calls.
    pub fn new(settings: WebhookSettings, client: reqwest::Client) -> Result<Self, WebhookError> {
        let url =
            url::Url::parse(settings.url.expose_secret()).map_err(|_| WebhookError::BadUrl)?;
        Ok(Webhook {
            settings,
            url,
            client,
        })
    }

    /// Posts one body; returns the attempts made. Bounded: at most `max_attempts` requests.
    pub async fn send(&self, body: &Value) -> Result<u32, WebhookError> {
        let max = self.settings.max_attempts.max(1);
        let mut delay = self.settings.base_delay;
        for attempt in 1..=max {
            let result = self
                .client
                .post(self.url.clone())
                .timeout(self.settings.timeout)
                .json(body)
                .send()
                .await;
            let wait = match result {
                Ok(resp) if resp.status().is_success() => return Ok(attempt),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retryable = status == 429 || status >= 500;
                    if !retryable || attempt == max {
                        return Err(WebhookError::Status {
                            status,
                            attempts: attempt,
                        });
                    }
                    let asked = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| crate::http::parse_retry_after(v, SystemTime::now()));
                    match asked {
                        Some(wait) if wait > self.settings.max_delay => {
                            return Err(WebhookError::RetryAfterTooLong { wait });
                        }
                        // Never earlier than asked.
                        Some(wait) => wait.max(delay.min(self.settings.max_delay)),
                        None => delay.min(self.settings.max_delay),
                    }
                }
                Err(e) if attempt == max => {
                    return Err(WebhookError::Send {
                        attempts: attempt,
                        source: e.without_url(),
                    });
                }
                Err(_) => delay.min(self.settings.max_delay),
            };
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2);
        }
        unreachable!("the loop returns on its last attempt")
    }
}

/// Alert figures for the metrics endpoint, kept as plain values: per kind, how many alerts are
/// firing now (a gauge) and how many notices of each kind were sent (counters); webhook
/// deliveries and failures (counters).
#[derive(Debug, Default)]
pub struct AlertMetrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    /// Firing alerts by kind and subject (the gauge counts them per kind).
    firing: BTreeSet<(AlertKind, String)>,
    notices: BTreeMap<(AlertKind, NoticeKind), u64>,
    webhook_sent: u64,
    webhook_failed: u64,
}

/// A copy of the alert figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AlertMetricsSnapshot {
    /// Every kind, in [`AlertKind::ALL`] order.
    pub kinds: Vec<KindFigures>,
    pub webhook_sent: u64,
    pub webhook_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindFigures {
    pub kind: AlertKind,
    /// Alerts of this kind firing now (gauge).
    pub firing: u64,
    pub firing_notices: u64,
    pub repeat_notices: u64,
    pub resolved_notices: u64,
}

impl AlertMetricsSnapshot {
    pub fn kind(&self, kind: AlertKind) -> &KindFigures {
        self.kinds
            .iter()
            .find(|k| k.kind == kind)
            .expect("every kind is in a snapshot")
    }

    /// Alerts firing now, of any kind.
    pub fn firing_total(&self) -> u64 {
        self.kinds.iter().map(|k| k.firing).sum()
    }
}

impl AlertMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, r: &AlertRecord) {
        let key = (r.kind, r.subject.clone());
        let mut m = self.lock();
        match r.state {
            AlertState::Firing => m.firing.insert(key),
            AlertState::Resolved => m.firing.remove(&key),
        };
    }

    fn count_notice(&self, n: &Notice) {
        *self.lock().notices.entry((n.alert, n.notice)).or_default() += 1;
    }

    fn count_webhook(&self, ok: bool) {
        let mut m = self.lock();
        if ok {
            m.webhook_sent += 1;
        } else {
            m.webhook_failed += 1;
        }
    }

    pub fn snapshot(&self) -> AlertMetricsSnapshot {
        let m = self.lock();
        let n = |k, kind| m.notices.get(&(k, kind)).copied().unwrap_or(0);
        AlertMetricsSnapshot {
            kinds: AlertKind::ALL
                .into_iter()
                .map(|k| KindFigures {
                    kind: k,
                    firing: m.firing.iter().filter(|(fk, _)| *fk == k).count() as u64,
                    firing_notices: n(k, NoticeKind::Firing),
                    repeat_notices: n(k, NoticeKind::Repeat),
                    resolved_notices: n(k, NoticeKind::Resolved),
                })
                .collect(),
            webhook_sent: m.webhook_sent,
            webhook_failed: m.webhook_failed,
        }
    }
}

/// Steps an alert, persists it and notifies every sink. One per process; cheap to share.
#[derive(Debug)]
pub struct Alerter {
    state: Arc<State>,
    tenant_id: String,
    renotify_every: TimeDelta,
    webhook: Option<Webhook>,
    metrics: Arc<AlertMetrics>,
}

impl Alerter {
    /// Builds the alerter and loads the stored alerts into the gauges, so a restart shows the
    /// alerts still firing at once.
    pub fn new(
        state: Arc<State>,
        tenant_id: impl Into<String>,
        renotify_every: Duration,
        webhook: Option<Webhook>,
    ) -> Result<Self, StateError> {
        let metrics = Arc::new(AlertMetrics::default());
        for r in state.alerts()? {
            metrics.set_state(&r);
        }
        Ok(Alerter {
            state,
            tenant_id: tenant_id.into(),
            renotify_every: TimeDelta::from_std(renotify_every).unwrap_or(TimeDelta::MAX),
            webhook,
            metrics,
        })
    }

    /// The alerter the config describes (webhook from `alerts.webhook_url_file`), sending with
    /// the process's shared `client`.
    pub fn from_config(
        state: Arc<State>,
        config: &Config,
        client: &reqwest::Client,
    ) -> Result<Self, AlerterError> {
        let webhook = config
            .alerts
            .webhook_url
            .clone()
            .map(|url| Webhook::new(WebhookSettings::new(url), client.clone()))
            .transpose()
            .map_err(AlerterError::Webhook)?;
        Alerter::new(
            state,
            config.tenant.tenant_id.to_string(),
            config.alerts.renotify_every,
            webhook,
        )
        .map_err(AlerterError::State)
    }

    pub fn metrics(&self) -> Arc<AlertMetrics> {
        self.metrics.clone()
    }

    /// Folds one observation into its stored alert and sends the notice it makes due (log,
    /// webhook, counters); returns that notice.
    ///
    /// Idempotent per observation and restart-safe: the previous record is read from the state
    /// database, so a new process neither repeats a notice already sent nor forgets a firing
    /// alert. The notice is sent before the record is written, so a crash between the two
    /// sends it once more rather than never (at least once); a webhook failure is logged and
    /// counted, and the record is still written, so the next notice comes at the repeat
    /// interval and a broken webhook never floods the log.
    pub async fn observe(
        &self,
        observed: Observation,
        now: DateTime<Utc>,
    ) -> Result<Option<Notice>, StateError> {
        let prev = self.state.load_alert(observed.kind, &observed.subject)?;
        let (record, notice) = step(prev.as_ref(), observed, now, self.renotify_every);
        if let Some(n) = &notice {
            log_notice(n);
            self.metrics.count_notice(n);
            if let Some(webhook) = &self.webhook {
                let body = webhook_body(n, &self.tenant_id);
                match webhook.send(&body).await {
                    Ok(_) => self.metrics.count_webhook(true),
                    Err(e) => {
                        self.metrics.count_webhook(false);
                        tracing::warn!(
                            alert = n.alert.as_str(),
                            state = n.state().as_str(),
                            error = %e,
                            "alert webhook not delivered"
                        );
                    }
                }
            }
        }
        if prev.as_ref() != Some(&record) {
            self.state.save_alert(&record)?;
        }
        self.metrics.set_state(&record);
        Ok(notice)
    }
}

/// Why the alerter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    #[error("cannot set up the alert webhook: {0}")]
    Webhook(#[source] WebhookError),
    #[error("cannot read the stored alerts: {0}")]
    State(#[source] StateError),
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use expect_test::expect;

    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + TimeDelta::minutes(minutes)
    }

    fn bad(severity: AlertSeverity, summary: &str) -> Observation {
        Observation::bad(
            AlertKind::RemovalGuardTripped,
            "users",
            severity,
            summary,
            serde_json::json!({ "removals": 200 }),
        )
    }

    fn good() -> Observation {
        Observation::good(AlertKind::RemovalGuardTripped, "users")
    }

    const W: AlertSeverity = AlertSeverity::Warning;
    const C: AlertSeverity = AlertSeverity::Critical;

    /// Runs observations at the given minutes through `step` (renotify every 6 h) and returns,
    /// per step, the notice (or `-`) and the record's state.
    fn run(steps: Vec<(i64, Observation)>) -> Vec<String> {
        let mut rec: Option<AlertRecord> = None;
        steps
            .into_iter()
            .map(|(minute, obs)| {
                let (r, n) = step(rec.as_ref(), obs, t(minute), TimeDelta::hours(6));
                let notice = n.map_or("-".to_string(), |n| {
                    format!("{:?}({})", n.notice, n.summary)
                });
                let out = format!("{minute}: {notice} {}", r.state.as_str());
                rec = Some(r);
                out
            })
            .collect()
    }

    #[test]
    fn transitions() {
        type Steps = Vec<(i64, Observation)>;
        let cases: Vec<(&str, Steps, Vec<&str>)> = vec![
            (
                "good stays silent",
                vec![(0, good()), (10, good())],
                vec!["0: - resolved", "10: - resolved"],
            ),
            (
                "fires once, repeats every 6 h, resolves once",
                vec![
                    (0, good()),
                    (5, bad(C, "a")),
                    (10, bad(C, "a")),
                    (364, bad(C, "a")),
                    (365, bad(C, "b")),
                    (400, bad(C, "b")),
                    (725, bad(C, "b")),
                    (730, good()),
                    (740, good()),
                ],
                vec![
                    "0: - resolved",
                    "5: Firing(a) firing",
                    "10: - firing",
                    "364: - firing",
                    "365: Repeat(b) firing",
                    "400: - firing",
                    "725: Repeat(b) firing",
                    "730: Resolved(resolved: b) resolved",
                    "740: - resolved",
                ],
            ),
            (
                "fires again after resolving",
                vec![(0, bad(W, "a")), (1, good()), (2, bad(W, "c"))],
                vec![
                    "0: Firing(a) firing",
                    "1: Resolved(resolved: a) resolved",
                    "2: Firing(c) firing",
                ],
            ),
            (
                "escalation to critical notifies at once; de-escalation does not",
                vec![(0, bad(W, "a")), (1, bad(C, "a")), (2, bad(W, "a"))],
                vec!["0: Firing(a) firing", "1: Firing(a) firing", "2: - firing"],
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(run(steps), want, "case {name:?}");
        }
    }

    #[test]
    fn record_keeps_since_and_ignores_foreign_records() {
        let (fired, _) = step(None, bad(C, "a"), t(0), TimeDelta::hours(6));
        let (still, _) = step(Some(&fired), bad(C, "a"), t(30), TimeDelta::hours(6));
        assert_eq!(still.since, t(0));
        assert_eq!(still.last_notified, Some(t(0)));

        // A record of another subject is not this alert's history: this one fires fresh.
        let other = Observation::bad(
            AlertKind::RemovalGuardTripped,
            "devices",
            C,
            "x",
            Value::Null,
        );
        let (_, n) = step(Some(&fired), other, t(31), TimeDelta::hours(6));
        assert_eq!(n.unwrap().notice, NoticeKind::Firing);

        // Repeats off.
        let (_, n) = step(Some(&fired), bad(C, "a"), t(10_000), TimeDelta::zero());
        assert!(n.is_none());
    }

    #[test]
    fn kind_names_are_stable() {
        let names: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "priority_misconfigured",
                "removal_guard_tripped",
                "invalid_desired_state",
                "auth_failure",
                "missing_permission",
                "loop_failing"
            ]
        );
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(AlertKind::parse("nope"), None);
    }

    #[test]
    fn webhook_bodies() {
        let (fired, n) = step(
            None,
            bad(C, "200 removals refused"),
            t(0),
            TimeDelta::hours(6),
        );
        let body = webhook_body(&n.unwrap(), "00000000-0000-0000-0000-000000000001");
        expect![[r#"
            {
              "alert": "removal_guard_tripped",
              "at": "2026-12-01T00:00:00Z",
              "details": {
                "removals": 200,
                "subject": "users"
              },
              "severity": "critical",
              "source": "dexscope",
              "state": "firing",
              "summary": "200 removals refused",
              "tenant_id": "00000000-0000-0000-0000-000000000001",
              "text": "200 removals refused"
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&body).unwrap());

        let (_, n) = step(Some(&fired), good(), t(90), TimeDelta::hours(6));
        let body = webhook_body(&n.unwrap(), "t");
        assert_eq!(body["state"], "resolved");
        assert_eq!(body["summary"], "resolved: 200 removals refused");
        assert_eq!(body["text"], body["summary"]);
        assert_eq!(body["at"], "2026-12-01T01:30:00Z");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_events_have_stable_fields() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let (fired, n1) = step(None, bad(C, "guard"), t(0), TimeDelta::hours(6));
        let (_, n2) = step(Some(&fired), good(), t(1), TimeDelta::hours(6));
        tracing::subscriber::with_default(subscriber, || {
            log_notice(&n1.unwrap());
            log_notice(&n2.unwrap());
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["level"], "ERROR");
        assert_eq!(events[0]["fields"]["alert"], "removal_guard_tripped");
        assert_eq!(events[0]["fields"]["state"], "firing");
        assert_eq!(events[0]["fields"]["severity"], "critical");
        assert_eq!(events[0]["fields"]["summary"], "guard");
        assert_eq!(events[1]["level"], "INFO");
        assert_eq!(events[1]["fields"]["state"], "resolved");
    }
}
