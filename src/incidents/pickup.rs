//! Closing the loop with Defender Experts: a verdict is a prediction, their pickup is the
//! outcome. Pure functions over the pickup record of one incident (`state::PickupRecord`): fold
//! in what a pass saw of the incident, settle the agreement once, and say whether the record is
//! a coverage gap or a scope mismatch now. `now` is a parameter.
//!
//! Everything comes from the incidents the poll already lists: Defender Experts set
//! `assignedTo` to their name when they take an incident and then change its status (In
//! Progress, Awaiting Customer Action), and every such change bumps `lastUpdateDateTime`, so
//! the next poll lists the incident again. An IN SCOPE incident that nobody updates is still
//! reviewed from its record, without a request.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::model::{Incident, IncidentStatus};
use crate::state::PickupRecord;

/// The `settled` value of an incident Defender Experts took within `pickup_within`.
pub const TAKEN: &str = "taken";
/// The `settled` value of an incident not taken within `pickup_within` (or closed untaken).
pub const NOT_TAKEN: &str = "not_taken";

/// What one pass saw of a judged incident.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// `in_scope` | `out_of_scope`.
    pub verdict: &'static str,
    /// Assigned to Defender Experts (the policy's pickup assignee).
    pub taken: bool,
    pub incident: &'a Incident,
}

/// An agreement settled in a pass: the verdict then, and whether Defender Experts took the
/// incident within `pickup_within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settled {
    pub incident_id: String,
    pub verdict: String,
    pub taken: bool,
}

/// An IN SCOPE incident not taken by Defender Experts within `pickup_within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub incident_id: String,
    pub created_at: DateTime<Utc>,
    pub status: String,
}

/// An incident Defender Experts took that dexscope judges OUT OF SCOPE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub incident_id: String,
    pub taken_at: DateTime<Utc>,
    pub status: String,
}

/// Folds what a pass saw into the incident's record. Returns the new record and, when this
/// pass saw the pickup happen (the incident was judged untaken before), the pickup latency:
/// from the incident's creation to its `lastUpdateDateTime` when first seen taken, the update
/// the assignment made (an upper bound when something else updated it since).
pub fn observe(
    prev: Option<&PickupRecord>,
    seen: Seen<'_>,
    now: DateTime<Utc>,
) -> (PickupRecord, Option<Duration>) {
    let incident = seen.incident;
    let updated = incident.last_update_at.min(now);
    let status = incident.status.as_wire().to_owned();
    let closed = IncidentStatus::parse(incident.status.as_wire()) == IncidentStatus::Resolved;
    let mut record = prev.cloned().unwrap_or_else(|| PickupRecord {
        incident_id: incident.id.clone(),
        verdict: seen.verdict.to_owned(),
        created_at: incident.created_at,
        judged_at: now,
        taken_at: None,
        status: status.clone(),
        status_at: updated,
        closed_at: None,
        settled: None,
    });
    record.verdict = seen.verdict.to_owned();
    if record.status != status {
        record.status = status;
        record.status_at = updated;
    }
    let mut latency = None;
    if seen.taken && record.taken_at.is_none() {
        record.taken_at = Some(updated);
        if prev.is_some() {
            latency = Some((updated - record.created_at).to_std().unwrap_or_default());
        }
    }
    if closed && record.closed_at.is_none() {
        record.closed_at = Some(updated);
    }
    (record, latency)
}

/// The record of an incident that left the queue without being resolved: merged into another
/// (redirected) or deleted. Nothing is left to pick up.
pub fn closed(prev: &PickupRecord, at: DateTime<Utc>) -> PickupRecord {
    PickupRecord {
        closed_at: prev.closed_at.or(Some(at)),
        ..prev.clone()
    }
}

/// When an incident must have been taken by: its creation plus `within`.
pub fn deadline(record: &PickupRecord, within: Duration) -> DateTime<Utc> {
    record.created_at + TimeDelta::from_std(within).unwrap_or(TimeDelta::MAX)
}

/// Settles the agreement once: `taken` when Defender Experts took the incident by the
/// deadline; `not_taken` once the deadline passed, or the incident closed, without a pickup
/// (a later pickup is still a latency, never a second count). `None` while undecided or when
/// settled before.
pub fn settle(record: &mut PickupRecord, within: Duration, now: DateTime<Utc>) -> Option<Settled> {
    if record.settled.is_some() {
        return None;
    }
    let deadline = deadline(record, within);
    let taken = match record.taken_at {
        Some(at) => at <= deadline,
        None if record.closed_at.is_some() || now >= deadline => false,
        None => return None,
    };
    let pickup = if taken { TAKEN } else { NOT_TAKEN };
    record.settled = Some((record.verdict.clone(), pickup.to_owned(), now));
    Some(Settled {
        incident_id: record.incident_id.clone(),
        verdict: record.verdict.clone(),
        taken,
    })
}

/// A coverage gap: judged IN SCOPE, still open, not taken, and the deadline has passed. It
/// ends when Defender Experts take the incident, when it is resolved, merged or deleted
/// (nothing is left to pick up), or when a new verdict judges it OUT OF SCOPE.
pub fn gap(record: &PickupRecord, within: Duration, now: DateTime<Utc>) -> Option<Gap> {
    let open = record.verdict == "in_scope"
        && record.taken_at.is_none()
        && record.closed_at.is_none()
        && now >= deadline(record, within);
    open.then(|| Gap {
        incident_id: record.incident_id.clone(),
        created_at: record.created_at,
        status: record.status.clone(),
    })
}

/// A scope mismatch: taken by Defender Experts, judged OUT OF SCOPE, still open. It ends when
/// a new verdict agrees (IN SCOPE: the scope caught up) or the incident is closed.
pub fn mismatch(record: &PickupRecord) -> Option<Mismatch> {
    match record.taken_at {
        Some(taken_at) if record.verdict == "out_of_scope" && record.closed_at.is_none() => {
            Some(Mismatch {
                incident_id: record.incident_id.clone(),
                taken_at,
                status: record.status.clone(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap()
    }

    fn incident(status: &str, assigned: Option<&str>, updated: i64) -> Incident {
        let mut i = crate::graph::parse_incident(&serde_json::json!({
            "id": "7", "createdDateTime": "2027-01-15T08:00:00Z", "severity": "high",
            "status": status, "assignedTo": assigned, "alerts": []
        }))
        .unwrap();
        i.created_at = t(0);
        i.last_update_at = t(updated);
        i
    }

    const WITHIN: Duration = Duration::from_secs(120 * 60);

    #[test]
    fn a_pickup_seen_happening_has_a_latency_and_settles_taken_once() {
        let new = incident("active", None, 0);
        let seen = |i| Seen {
            verdict: "in_scope",
            taken: false,
            incident: i,
        };
        let (mut r, latency) = observe(None, seen(&new), t(1));
        assert_eq!(latency, None);
        assert_eq!(settle(&mut r, WITHIN, t(1)), None);
        assert_eq!(gap(&r, WITHIN, t(119)), None);
        let taken = incident("inProgress", Some("Defender Experts"), 45);
        let (mut r, latency) = observe(
            Some(&r),
            Seen {
                taken: true,
                ..seen(&taken)
            },
            t(46),
        );
        assert_eq!(latency, Some(Duration::from_secs(45 * 60)));
        assert_eq!((r.status.as_str(), r.status_at), ("inProgress", t(45)));
        let s = settle(&mut r, WITHIN, t(46)).unwrap();
        assert!(s.taken && s.verdict == "in_scope");
        assert_eq!(settle(&mut r, WITHIN, t(300)), None, "counted once");
        assert_eq!(gap(&r, WITHIN, t(300)), None);
        // Already taken when first seen: no latency (the assignment time is unknown).
        let (_, latency) = observe(None, seen(&taken), t(46));
        assert_eq!(latency, None);
    }

    #[test]
    fn an_untaken_in_scope_incident_is_a_gap_from_its_deadline_until_taken_or_closed() {
        let new = incident("active", None, 0);
        let seen = |i, taken| Seen {
            verdict: "in_scope",
            taken,
            incident: i,
        };
        let (mut r, _) = observe(None, seen(&new, false), t(1));
        assert_eq!(gap(&r, WITHIN, t(119)), None);
        assert!(gap(&r, WITHIN, t(120)).is_some());
        let s = settle(&mut r, WITHIN, t(120)).unwrap();
        assert!(!s.taken);
        // Taken late: the gap ends, the agreement stays as settled, the latency is seen.
        let late = incident("active", Some("defender experts"), 200);
        let (mut taken, latency) = observe(Some(&r), seen(&late, true), t(201));
        assert_eq!(latency, Some(Duration::from_secs(200 * 60)));
        assert_eq!(gap(&taken, WITHIN, t(201)), None);
        assert_eq!(settle(&mut taken, WITHIN, t(201)), None);
        // Resolved untaken, or merged: no gap either.
        let resolved = incident("resolved", None, 130);
        let (r2, _) = observe(Some(&r), seen(&resolved, false), t(131));
        assert_eq!(gap(&r2, WITHIN, t(131)), None);
        assert_eq!(gap(&closed(&r, t(131)), WITHIN, t(131)), None);
        // Judged OUT OF SCOPE on a later update: no gap.
        let (r3, _) = observe(
            Some(&r),
            Seen {
                verdict: "out_of_scope",
                ..seen(&new, false)
            },
            t(131),
        );
        assert_eq!(gap(&r3, WITHIN, t(131)), None);
    }

    #[test]
    fn a_taken_out_of_scope_incident_is_a_mismatch_until_it_agrees_or_closes() {
        let taken = incident("inProgress", Some("Defender Experts"), 10);
        let seen = |i, verdict| Seen {
            verdict,
            taken: true,
            incident: i,
        };
        let (mut r, _) = observe(None, seen(&taken, "out_of_scope"), t(11));
        assert!(mismatch(&r).is_some());
        let s = settle(&mut r, WITHIN, t(11)).unwrap();
        assert!(s.taken && s.verdict == "out_of_scope");
        let (agrees, _) = observe(Some(&r), seen(&taken, "in_scope"), t(20));
        assert_eq!(mismatch(&agrees), None);
        let resolved = incident("resolved", Some("Defender Experts"), 30);
        let (done, _) = observe(Some(&r), seen(&resolved, "out_of_scope"), t(31));
        assert_eq!(mismatch(&done), None);
        assert_eq!(done.closed_at, Some(t(30)));
    }
}
