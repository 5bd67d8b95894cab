//! Alert records: the remembered state of each alert, so a restart neither repeats nor forgets
//! one. The record types live here, below the alert transition that produces them.

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{State, StateError, ts};

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
    /// The git branch head is not signed by an allowed signer; the last verified state stays.
    UnverifiedDesiredState,
    /// The git source has not been fetched for longer than `stale_after`.
    DesiredStateStale,
    /// An incident judged IN SCOPE was not taken by Defender Experts within `pickup_within`
    /// (one alert per incident).
    CoverageGap,
    /// Defender Experts took an incident judged OUT OF SCOPE (one alert per incident).
    ScopeMismatch,
    /// A selector's source cannot be read or yields nothing: its last expansion is kept.
    SelectorUnresolved,
}

impl AlertKind {
    pub const ALL: [AlertKind; 11] = [
        AlertKind::PriorityMisconfigured,
        AlertKind::RemovalGuardTripped,
        AlertKind::InvalidDesiredState,
        AlertKind::AuthFailure,
        AlertKind::MissingPermission,
        AlertKind::LoopFailing,
        AlertKind::UnverifiedDesiredState,
        AlertKind::DesiredStateStale,
        AlertKind::CoverageGap,
        AlertKind::ScopeMismatch,
        AlertKind::SelectorUnresolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PriorityMisconfigured => "priority_misconfigured",
            AlertKind::RemovalGuardTripped => "removal_guard_tripped",
            AlertKind::InvalidDesiredState => "invalid_desired_state",
            AlertKind::AuthFailure => "auth_failure",
            AlertKind::MissingPermission => "missing_permission",
            AlertKind::LoopFailing => "loop_failing",
            AlertKind::UnverifiedDesiredState => "unverified_desired_state",
            AlertKind::DesiredStateStale => "desired_state_stale",
            AlertKind::CoverageGap => "coverage_gap",
            AlertKind::ScopeMismatch => "scope_mismatch",
            AlertKind::SelectorUnresolved => "selector_unresolved",
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

impl State {
    /// Stores an alert record (the result of `alerts::step`).
    pub fn save_alert(&self, r: &AlertRecord) -> Result<(), StateError> {
        self.write("save an alert", |tx| {
            tx.execute(
                "insert into alert (kind, subject, state, since, last_notified, severity, \
                 summary, details) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 on conflict (kind, subject) do update set state = excluded.state, \
                 since = excluded.since, last_notified = excluded.last_notified, \
                 severity = excluded.severity, summary = excluded.summary, \
                 details = excluded.details",
                params![
                    r.kind.as_str(),
                    r.subject,
                    r.state.as_str(),
                    ts(r.since),
                    r.last_notified.map(ts),
                    r.severity.as_str(),
                    r.summary,
                    r.details.to_string(),
                ],
            )?;
            Ok(())
        })
    }

    /// The stored record of one alert.
    pub fn load_alert(
        &self,
        kind: AlertKind,
        subject: &str,
    ) -> Result<Option<AlertRecord>, StateError> {
        Ok(self.alerts_where(Some((kind, subject)))?.into_iter().next())
    }

    /// Every stored alert record, by kind and subject.
    pub fn alerts(&self) -> Result<Vec<AlertRecord>, StateError> {
        self.alerts_where(None)
    }

    fn alerts_where(&self, key: Option<(AlertKind, &str)>) -> Result<Vec<AlertRecord>, StateError> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = self.read("read alerts", |conn| {
            let sql = "select kind, subject, state, since, last_notified, severity, summary, \
                       details from alert where (?1 is null or (kind = ?1 and subject = ?2)) \
                       order by kind, subject";
            let mut stmt = conn.prepare(sql)?;
            let (kind, subject) = key.map_or((None, None), |(k, s)| (Some(k.as_str()), Some(s)));
            let rows = stmt.query_map(params![kind, subject], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(
                |(kind, subject, state, since, notified, severity, summary, details)| {
                    Ok(AlertRecord {
                        kind: AlertKind::parse(&kind)
                            .ok_or_else(|| self.corrupt("alert kind", &kind))?,
                        subject,
                        state: AlertState::parse(&state)
                            .ok_or_else(|| self.corrupt("alert state", &state))?,
                        since: self.parse_ts("alert time", &since)?,
                        last_notified: notified
                            .map(|n| self.parse_ts("alert time", &n))
                            .transpose()?,
                        severity: AlertSeverity::parse(&severity)
                            .ok_or_else(|| self.corrupt("alert severity", &severity))?,
                        summary,
                        details: serde_json::from_str(&details)
                            .map_err(|_| self.corrupt("alert details", &details))?,
                    })
                },
            )
            .collect()
    }
}
