//! The sinks every notice reaches: the log event, the webhook (through the HTTP layer's retry)
//! and the alert figures the metrics endpoint exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use chrono::SecondsFormat;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

use super::transition::{Notice, NoticeKind};
use crate::http::{self, OutboundError, RetrySettings};
use crate::state::{AlertKind, AlertRecord, AlertState};

// ---------------------------------------------------------------------------------------------
// The log event and the webhook body.

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
    // A chat message shows `text` alone, so it says that the alert is over.
    let text = match notice.state() {
        AlertState::Firing => notice.summary.clone(),
        AlertState::Resolved => format!("resolved: {}", notice.summary),
    };
    serde_json::json!({
        "source": "dexscope",
        "tenant_id": tenant_id,
        "alert": notice.alert.as_str(),
        "state": notice.state().as_str(),
        "severity": notice.severity.as_str(),
        "summary": text,
        "text": text,
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

// The webhook.

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

/// Posts webhook bodies through the HTTP layer's retry ([`crate::http::post_json`]): a few
/// attempts on 429, 5xx and network errors, `Retry-After` honoured up to `max_delay`.
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
        let s = &self.settings;
        let retry = RetrySettings {
            max_attempts: s.max_attempts.max(1),
            base_delay: s.base_delay,
            factor: 2.0,
            max_delay: s.max_delay,
            jitter: false,
            ..RetrySettings::default()
        };
        http::post_json(&self.client, &self.url, body, s.timeout, &retry)
            .await
            .map_err(|e| match e {
                OutboundError::Status { status, attempts } => {
                    WebhookError::Status { status, attempts }
                }
                OutboundError::RetryAfterTooLong { wait } => {
                    WebhookError::RetryAfterTooLong { wait }
                }
                OutboundError::Send { attempts, source } => WebhookError::Send { attempts, source },
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The alert figures.

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

    pub(super) fn set_state(&self, r: &AlertRecord) {
        let key = (r.kind, r.subject.clone());
        let mut m = self.lock();
        match r.state {
            AlertState::Firing => m.firing.insert(key),
            AlertState::Resolved => m.firing.remove(&key),
        };
    }

    pub(super) fn count_notice(&self, n: &Notice) {
        *self.lock().notices.entry((n.alert, n.notice)).or_default() += 1;
    }

    pub(super) fn count_webhook(&self, ok: bool) {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::{DateTime, TimeDelta, Utc};
    use expect_test::expect;

    use super::*;
    use crate::alerts::transition::{Observation, step};
    use crate::state::AlertSeverity;

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

    const C: AlertSeverity = AlertSeverity::Critical;

    /// Runs observations at the given minutes through `step` (renotify every 6 h) and returns,

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
        // The line says "resolved" once: the summary is the alert's own, the verb the line's.
        assert_eq!(events[0]["fields"]["message"], "alert firing: guard");
        assert_eq!(events[1]["fields"]["message"], "alert resolved: guard");
        assert_eq!(events[1]["fields"]["summary"], "guard");
    }
}
