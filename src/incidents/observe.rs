//! What an incident pass's report means beyond the pass: the evidence alert (an in-scope
//! device seen in another device group) and the figures recorded with the pass. Pure
//! functions of the report.

use serde_json::json;

use super::PollReport;
use crate::alerts::{AlertKind, AlertSeverity, Observation};
use crate::metrics::VerdictReached;
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
