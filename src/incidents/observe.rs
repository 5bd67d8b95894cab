//! What an incident pass's report means beyond the pass: the evidence alert (an in-scope
//! device seen in another device group), the pickup alerts (`coverage_gap`, `scope_mismatch`)
//! and the figures recorded with the pass. Pure functions of the report.

use std::time::Duration;

use serde_json::json;

use super::PollReport;
use crate::alerts::{AlertKind, AlertSeverity, Observation};
use crate::metrics::{PickupFigures, VerdictReached};
use crate::state::records::IncidentFigures;

/// The alert subject of the incident evidence (beside the priority pass's own).
pub const EVIDENCE_SUBJECT: &str = "incident evidence";

/// `priority_misconfigured` from incident evidence: bad when the pass saw in-scope devices
/// placed outside the scoped device group, naming the incidents.
pub fn evidence_observation(report: &PollReport, device_group_name: &str) -> Observation {
    if report.priority_findings.is_empty() {
        return Observation::good(AlertKind::PriorityMisconfigured, EVIDENCE_SUBJECT);
    }
    let ids: Vec<&str> = report
        .priority_findings
        .iter()
        .map(|f| f.incident_id.as_str())
        .collect();
    Observation::bad(
        AlertKind::PriorityMisconfigured,
        EVIDENCE_SUBJECT,
        AlertSeverity::Critical,
        format!(
            "incident evidence places in-scope devices outside {device_group_name} (incidents {})",
            ids.join(", ")
        ),
        json!({ "findings": report.priority_findings }),
    )
}

/// `coverage_gap` and `scope_mismatch`, one alert per incident: bad for each open gap and
/// mismatch, good for each incident whose alert was firing and whose gap or mismatch ended.
pub fn pickup_observations(report: &PollReport, within: Duration) -> Vec<Observation> {
    let p = &report.pickup;
    let within = crate::text::duration(within);
    let mut out: Vec<Observation> = p
        .gaps
        .iter()
        .map(|g| {
            Observation::bad(
                AlertKind::CoverageGap,
                &g.incident_id,
                AlertSeverity::Critical,
                format!(
                    "incident {} was judged IN SCOPE but Defender Experts have not taken it \
                     within {within} of its creation ({}, status {}): open it in the Defender \
                     portal and raise it with Defender Experts",
                    g.incident_id,
                    g.created_at.format("%Y-%m-%d %H:%M UTC"),
                    g.status
                ),
                json!({ "incident": g.incident_id, "created": g.created_at,
                        "status": g.status, "pickup_within": within }),
            )
        })
        .collect();
    out.extend(p.mismatches.iter().map(|m| {
        Observation::bad(
            AlertKind::ScopeMismatch,
            &m.incident_id,
            AlertSeverity::Warning,
            format!(
                "Defender Experts took incident {}, which dexscope judged OUT OF SCOPE: \
                 dexscope's picture of the scope or the service's is wrong (propagation, device \
                 group priority, or a bug); check the incident's assets against the scoped groups",
                m.incident_id
            ),
            json!({ "incident": m.incident_id, "taken": m.taken_at, "status": m.status }),
        )
    }));
    let ended = |firing: &[String], open: &dyn Fn(&str) -> bool, kind| {
        firing
            .iter()
            .filter(|id| !open(id))
            .map(|id| Observation::good(kind, id))
            .collect::<Vec<_>>()
    };
    out.extend(ended(
        &p.firing_gaps,
        &|id| p.gaps.iter().any(|g| g.incident_id == id),
        AlertKind::CoverageGap,
    ));
    out.extend(ended(
        &p.firing_mismatches,
        &|id| p.mismatches.iter().any(|m| m.incident_id == id),
        AlertKind::ScopeMismatch,
    ));
    out
}

/// The pickup figures of the pass: agreements settled (each incident once) and the pickups
/// this pass saw happen, with their latency.
pub fn pickups(report: &PollReport) -> PickupFigures {
    PickupFigures {
        settled: report
            .pickup
            .settled
            .iter()
            .map(|s| (s.verdict.clone(), s.taken))
            .collect(),
        latencies: report
            .incidents
            .iter()
            .filter_map(|i| i.picked_up_after)
            .collect(),
    }
}

/// Verdicts reached in the pass, each with the incident and digest that identify it: an
/// incident listed again in the poll overlap reaches the same verdict again, and the metrics
/// count it once.
pub fn verdicts(report: &PollReport) -> Vec<VerdictReached> {
    report
        .incidents
        .iter()
        .filter_map(|i| {
            Some(VerdictReached {
                kind: i.verdict?,
                incident: i.id.clone(),
                digest: i.digest.clone()?,
            })
        })
        .collect()
}

/// The figures the pass records: incidents listed, and those that could not be handled.
pub fn figures(report: &PollReport) -> IncidentFigures {
    IncidentFigures {
        listed: report.listed as u64,
        failed: report.failed.clone(),
    }
}
