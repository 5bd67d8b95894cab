//! The coverage verdict for one incident: a pure function of the incident, the effective scope and
//! the policy. No I/O, no clock (`now` is a parameter), no async.
//!
//! An incident is in scope when its severity is covered, its alerts are not of a kind Defender
//! Experts excludes, and at least one impacted device or user is in the scope. Where the
//! service documentation is silent (mixed incidents, which evidence roles count, the list of
//! `osPlatform` values) the behaviour is a [`Policy`] knob with a documented default, and the
//! verdict records the choice it made in its reasons.
//!
//! The parts: `scope` (the effective scope and its lookups), `policy` (the coverage policy and
//! the alert-kind eligibility rule), `assets` (the facts the evidence gives about each impacted
//! device and user), `coverage` (each asset judged against the scope and the device group's
//! placement) and `types` (the verdict, its reasons, its digest and its JSON form).

mod assets;
mod coverage;
mod policy;
mod scope;
mod types;

use chrono::{DateTime, Utc};

use crate::model::{Incident, IncidentStatus, Severity};

use coverage::judge_assets;
use policy::judge_alert_kinds;
use types::finish;

pub use policy::{DEFAULT_PICKUP_ASSIGNEE, ExcludedKind, MixedIncidents, PlatformClass, Policy};
pub use scope::{DesiredDevice, DesiredUser, Scope, ScopeSource, ScopedDevice, ScopedUser};
pub use types::{
    Asset, AssetKind, AssetReason, Outcome, PriorityFinding, PriorityProblem, Reason, Verdict,
};

/// Hex characters of SHA-256 kept in a verdict digest (128 bits: collisions are not a concern
/// for telling one verdict of one incident from the next).
pub const DIGEST_HEX_LEN: usize = 32;

/// Decides whether Defender Experts covers `incident` under `scope` and `policy` at `now`.
pub fn verdict(incident: &Incident, scope: &Scope, policy: &Policy, now: DateTime<Utc>) -> Verdict {
    if IncidentStatus::parse(incident.status.as_wire()) == IncidentStatus::Redirected {
        let to = incident.redirect_incident_id.clone();
        return finish(
            incident,
            Outcome::Skipped {
                redirected_to: to.clone(),
            },
            Vec::new(),
            vec![Reason::Redirected { to }],
            Vec::new(),
            false,
        );
    }

    let mut reasons = Vec::new();
    let severity = Severity::parse(incident.severity.as_wire());
    let severity_ok = policy.eligible_severities.contains(&severity);
    if !severity_ok {
        reasons.push(Reason::SeverityNotCovered {
            severity: incident.severity.as_wire().to_owned(),
        });
    }
    let kinds_ok = judge_alert_kinds(&incident.alerts, policy, &mut reasons);

    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let assets = judge_assets(incident, scope, policy, now, &mut findings, &mut notes);
    let any_covered = assets.iter().any(|asset| asset.covered);
    if incident.alerts.is_empty() {
        reasons.push(Reason::NoAlerts);
    } else if assets.is_empty() {
        reasons.push(Reason::NoImpactedAsset);
    } else if !any_covered {
        reasons.push(Reason::NoCoveredAsset);
    }
    reasons.extend(notes);

    let outcome = if severity_ok && kinds_ok && any_covered {
        Outcome::InScope
    } else {
        Outcome::OutOfScope
    };
    let taken = policy.taken_by_experts(incident.assigned_to.as_deref());
    finish(incident, outcome, assets, reasons, findings, taken)
}
