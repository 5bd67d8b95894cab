//! The typed pass records the daemon writes with each loop pass and `status`, `check` and
//! `metrics` read back, and the one rule that says when a loop's last success is stale.
//!
//! The database keeps a pass's summary as JSON (`loop_pass.summary`); these structs are its
//! only shape. A successful pass stores a [`PassOk`], a failed one a [`PassFailed`] carrying
//! the time of the last success forward (the table keeps one pass per loop).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::LoopPass;

/// Names of the three loops (state database keys, metrics labels).
pub const RECONCILE: &str = "reconcile";
pub const PRIORITY: &str = "priority";
pub const INCIDENTS: &str = "incidents";

/// A loop's last success is stale once it is older than twice the loop's interval plus this.
pub const STALE_SLACK: Duration = Duration::from_secs(60);

/// The age past which a loop's last success is stale: twice its interval plus
/// [`STALE_SLACK`]. One pass may be late by a whole interval (a slow pass, a back-off after one
/// failure) without an alarm; missing two is a loop that stopped.
pub fn stale_after(every: Duration) -> Duration {
    every.saturating_mul(2).saturating_add(STALE_SLACK)
}

/// Whether a loop that runs `every` and last succeeded at `last_success` is stale at `now`
/// (a loop that never succeeded is). Pure: `now` is a parameter. `check`, `status`, the
/// metrics and `/readyz` all decide with this.
pub fn is_stale(every: Duration, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_success.is_none_or(|at| age(at, now) > stale_after(every))
}

/// How long ago `at` was, zero when in the future.
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - at).to_std().unwrap_or_default()
}

/// What a successful pass records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassOk {
    /// One line: what the pass saw and did.
    pub text: String,
    pub changes_applied: u64,
    /// Objects out of line with the desired state, when the pass looks.
    pub drift: Option<u64>,
    pub details: PassDetails,
}

/// What a failed pass records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassFailed {
    pub error: String,
    /// The last successful pass of the loop, carried forward from the row this one replaced.
    pub last_success: Option<DateTime<Utc>>,
}

/// The figures of one kind of pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PassDetails {
    Reconcile(ReconcileFigures),
    Priority(PriorityFigures),
    Incidents(IncidentFigures),
    /// Anything else (a pass that records no figures stores `null`).
    Other(Value),
}

impl Default for PassDetails {
    fn default() -> Self {
        PassDetails::Other(Value::Null)
    }
}

/// What a reconcile pass leaves for `status` and `check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileFigures {
    /// Changes that failed or did not show in the tenant after the pass.
    pub pending_changes: u64,
    pub unresolved: u64,
    pub applied: u64,
    /// The desired state's git commit the pass applied.
    pub commit: Option<String>,
    pub users: GroupFigures,
    pub devices: GroupFigures,
    pub unresolved_entries: Vec<UnresolvedEntry>,
    /// Set when the pass deadline came while the service was throttling: "not converged:
    /// throttled", not failed; the next pass carries on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<ThrottledPass>,
}

/// A reconcile pass the service's throttling outlasted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThrottledPass {
    /// Changes that did not land.
    pub remaining: u64,
    /// Per surface throttled below its budget: the rate the service granted, per second.
    pub granted: Vec<GrantedRate>,
}

/// The rate one API surface was granted, as learned from the service's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantedRate {
    pub surface: String,
    pub per_second: f64,
    pub budget_per_second: f64,
}

impl ThrottledPass {
    /// One line for people: "not converged: throttled (N changes remain; …)".
    pub fn line(&self) -> String {
        let granted: Vec<String> = self
            .granted
            .iter()
            .map(|g| {
                format!(
                    "{} {:.2}/s of {:.2}/s configured",
                    g.surface, g.per_second, g.budget_per_second
                )
            })
            .collect();
        format!(
            "not converged: throttled ({} changes remain; the service granted {})",
            self.remaining,
            if granted.is_empty() {
                "the configured budgets".to_string()
            } else {
                granted.join(", ")
            }
        )
    }
}

/// One group's figures after a reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupFigures {
    /// Desired entries resolved.
    pub desired: u64,
    /// The group's size after the pass: before, plus adds, minus removals that took effect.
    pub effective: u64,
    pub drift: u64,
}

/// A desired entry the pass could not resolve, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnresolvedEntry {
    pub entry: String,
    /// The planner's reason, as it serializes (`{"kind": "unknown_user", …}`).
    pub problem: Value,
}

impl UnresolvedEntry {
    /// The reason's kind (`unknown_user`, …), when it names one.
    pub fn problem_kind(&self) -> Option<&str> {
        self.problem.get("kind")?.as_str()
    }
}

/// What a priority pass leaves for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorityFigures {
    pub findings: Vec<FindingRecord>,
    /// The placement counts, as the priority check serializes them.
    pub counts: Value,
}

/// One priority finding: the severity and summary `status` shows, and the rest of the finding
/// as the priority check serializes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingRecord {
    /// `ok`, `warning` or `critical`.
    pub severity: String,
    pub summary: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// What an incident pass leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentFigures {
    pub listed: u64,
    /// Incidents that could not be handled: (id, one-line error).
    pub failed: Vec<(String, String)>,
}

impl ReconcileFigures {
    pub fn unresolved_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.unresolved_entries
            .iter()
            .map(|u| match u.problem_kind() {
                Some(kind) => format!("{} ({})", u.entry, kind.replace('_', " ")),
                None => u.entry.clone(),
            })
    }
}

impl LoopPass {
    /// The row a successful pass leaves.
    pub fn succeeded(
        loop_name: &str,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        record: &PassOk,
    ) -> Self {
        LoopPass {
            loop_name: loop_name.to_string(),
            started,
            finished,
            ok: true,
            summary: to_value(record),
        }
    }

    /// The row a failed pass leaves.
    pub fn failed(
        loop_name: &str,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        record: &PassFailed,
    ) -> Self {
        LoopPass {
            loop_name: loop_name.to_string(),
            started,
            finished,
            ok: false,
            summary: to_value(record),
        }
    }

    /// The record of a successful pass (`None` for a failed one, or a summary of another shape).
    pub fn ok_record(&self) -> Option<PassOk> {
        self.ok
            .then(|| serde_json::from_value(self.summary.clone()).ok())
            .flatten()
    }

    /// The record of a failed pass (`None` for a successful one).
    pub fn failed_record(&self) -> Option<PassFailed> {
        (!self.ok)
            .then(|| serde_json::from_value(self.summary.clone()).ok())
            .flatten()
    }

    /// The loop's last success: this pass when it succeeded, else the one it carries forward.
    pub fn last_success(&self) -> Option<DateTime<Utc>> {
        if self.ok {
            Some(self.finished)
        } else {
            self.failed_record().and_then(|f| f.last_success)
        }
    }

    /// The reconcile figures of a successful reconcile pass.
    pub fn reconcile_figures(&self) -> Option<ReconcileFigures> {
        match self.ok_record()?.details {
            PassDetails::Reconcile(f) => Some(f),
            _ => None,
        }
    }

    /// The priority figures of a successful priority pass.
    pub fn priority_figures(&self) -> Option<PriorityFigures> {
        match self.ok_record()?.details {
            PassDetails::Priority(f) => Some(f),
            _ => None,
        }
    }
}

fn to_value<T: Serialize>(record: &T) -> Value {
    // Plain structs of strings, numbers and maps with string keys: serializing cannot fail.
    serde_json::to_value(record).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_stale_boundary_is_twice_the_interval_plus_a_minute() {
        let now = at("2026-11-22T12:00:00Z");
        let every = Duration::from_secs(300);
        assert!(!is_stale(every, Some(at("2026-11-22T11:49:00Z")), now));
        assert!(is_stale(every, Some(at("2026-11-22T11:48:59Z")), now));
        assert!(is_stale(every, None, now));
        assert!(!is_stale(every, Some(at("2026-11-22T12:05:00Z")), now));
    }

    #[test]
    fn records_keep_the_stored_shape() {
        let failed = LoopPass::failed(
            "incidents",
            at("2026-11-22T11:00:00Z"),
            at("2026-11-22T11:00:01Z"),
            &PassFailed {
                error: "x".into(),
                last_success: Some(at("2026-11-22T09:30:00Z")),
            },
        );
        assert_eq!(
            failed.summary,
            serde_json::json!({"error": "x", "last_success": "2026-11-22T09:30:00Z"})
        );
        assert_eq!(failed.last_success(), Some(at("2026-11-22T09:30:00Z")));
        let details = serde_json::json!({ "listed": 3, "failed": [["7", "boom"]] });
        let ok = LoopPass {
            summary: serde_json::json!({
                "text": "t", "changes_applied": 0, "drift": null, "details": details
            }),
            ok: true,
            ..failed
        };
        let record = ok.ok_record().unwrap();
        assert_eq!(
            record.details,
            PassDetails::Incidents(IncidentFigures {
                listed: 3,
                failed: vec![("7".into(), "boom".into())]
            })
        );
        assert_eq!(to_value(&record), ok.summary);
    }
}
