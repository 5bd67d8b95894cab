//! The alert transition: what a pass observed, folded into the stored record of the alert,
//! says whether a notice is due. Pure: no I/O, and `now` is a parameter.
//!
//! `Firing` on the transition to bad (or an escalation to critical), `Repeat` every
//! `renotify_every` while still bad, `Resolved` once when fixed, nothing otherwise.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::state::{AlertKind, AlertRecord, AlertSeverity, AlertState};

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
        summary: record.summary.clone(),
        details: record.details.clone(),
        since: record.since,
        at: now,
    });
    (record, notice)
}

#[cfg(test)]
mod tests {
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
                    "730: Resolved(b) resolved",
                    "740: - resolved",
                ],
            ),
            (
                "fires again after resolving",
                vec![(0, bad(W, "a")), (1, good()), (2, bad(W, "c"))],
                vec![
                    "0: Firing(a) firing",
                    "1: Resolved(a) resolved",
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
                "loop_failing",
                "unverified_desired_state",
                "desired_state_stale",
                "coverage_gap",
                "scope_mismatch",
                "selector_unresolved"
            ]
        );
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(AlertKind::parse("nope"), None);
    }
}
