//! Alerts: one path from what a pass observed to every sink.
//!
//! Each pass turns what it saw into an [`Observation`]; the [`Alerter`] is the only way one is
//! folded in: it reads the stored [`AlertRecord`], steps it with the pure [`step`]
//! (`transition`), saves the new record, and only then hands the [`Notice`] that fell due to
//! every sink (`sinks`): the log event, the webhook, the alert figures of the metrics endpoint.
//! There is no way to observe without delivering: [`Alerter::observe`] does both.

pub mod observe;
mod sinks;
mod transition;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::Config;
use crate::state::{State, StateError};

pub use crate::state::{AlertKind, AlertRecord, AlertSeverity, AlertState};
pub use sinks::{
    AlertMetrics, AlertMetricsSnapshot, KindFigures, Webhook, WebhookError, WebhookSettings,
    log_notice, webhook_body,
};
pub use transition::{Condition, Notice, NoticeKind, Observation, step};

/// Folds observations into the stored alerts and delivers the notices due to every sink. One
/// per config generation; shared by the loops.
#[derive(Debug)]
pub struct Alerter {
    state: Arc<State>,
    tenant_id: String,
    renotify_every: TimeDelta,
    webhook: Option<Webhook>,
    metrics: Arc<AlertMetrics>,
    /// Folding is serialized: two loops observing the same alert must not both step from the
    /// same stored record. Delivery happens outside it, so a slow webhook holds no one up.
    folding: Mutex<()>,
}

impl Alerter {
    /// Builds the alerter and loads the stored alerts into the figures, so a restart shows the
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
            folding: Mutex::new(()),
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

    /// The alert figures (firing now, notices sent, webhook deliveries) the metrics export.
    pub fn metrics(&self) -> Arc<AlertMetrics> {
        self.metrics.clone()
    }

    /// Folds each observation into its stored alert, saves the records, then delivers every
    /// notice that fell due to every sink (log, metrics, webhook); returns those notices.
    ///
    /// Restart-safe: the previous record is read from the state database, so a new process
    /// neither repeats a notice already sent nor forgets a firing alert. The record is saved
    /// before the notice is delivered, so a crash between the two loses that one notice rather
    /// than repeating it, and the next comes at the repeat interval. A state database or
    /// webhook failure is logged (never the URL) and never fails the caller.
    pub async fn observe(
        &self,
        observations: impl IntoIterator<Item = Observation>,
        now: DateTime<Utc>,
    ) -> Vec<Notice> {
        let notices = self.fold(observations, now);
        for notice in &notices {
            self.deliver(notice).await;
        }
        notices
    }

    fn fold(
        &self,
        observations: impl IntoIterator<Item = Observation>,
        now: DateTime<Utc>,
    ) -> Vec<Notice> {
        let _serial = self.folding.lock().unwrap_or_else(|p| p.into_inner());
        let mut notices = Vec::new();
        for obs in observations {
            let prev = match self.state.load_alert(obs.kind, &obs.subject) {
                Ok(prev) => prev,
                Err(e) => {
                    tracing::error!(alert = obs.kind.as_str(), error = %e, "cannot read the alert state");
                    None
                }
            };
            let (record, notice) = step(prev.as_ref(), obs, now, self.renotify_every);
            if prev.as_ref() != Some(&record)
                && let Err(e) = self.state.save_alert(&record)
            {
                tracing::error!(alert = record.kind.as_str(), error = %e, "cannot save the alert state");
            }
            self.metrics.set_state(&record);
            notices.extend(notice);
        }
        notices
    }

    async fn deliver(&self, notice: &Notice) {
        log_notice(notice);
        self.metrics.count_notice(notice);
        let Some(webhook) = &self.webhook else {
            return;
        };
        let body = webhook_body(notice, &self.tenant_id);
        match webhook.send(&body).await {
            Ok(_) => self.metrics.count_webhook(true),
            Err(e) => {
                self.metrics.count_webhook(false);
                tracing::warn!(
                    alert = notice.alert.as_str(),
                    state = notice.state().as_str(),
                    error = %e,
                    "alert webhook not delivered"
                );
            }
        }
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
