//! What a reconcile pass's report means beyond the pass: the `removal_guard_tripped` alert
//! and the figures recorded for `status` and `check`. Pure functions of the report.

use serde_json::json;

use super::ReconcileReport;
use super::apply::AppliedResult;
use super::plan::Plan;
use crate::alerts::{AlertKind, AlertSeverity, Observation};
use crate::scope::GroupKind;
use crate::state::Operation;
use crate::state::records::{
    GrantedRate, GroupFigures, ReconcileFigures, ThrottledPass, UnresolvedEntry,
};

/// The alert subject of the removal guard.
pub const GUARD_SUBJECT: &str = "reconcile";

/// The removal guard alert: bad while the plan's guard refuses removals, naming each refused
/// group and how to go ahead when the removals are intended.
pub fn guard_observation(plan: &Plan) -> Observation {
    if !plan.guard_tripped() {
        return Observation::good(AlertKind::RemovalGuardTripped, GUARD_SUBJECT);
    }
    let refused: Vec<String> = plan
        .refusals()
        .iter()
        .map(|(group, count, max)| format!("{count} removals from {group} (max {max})"))
        .collect();
    Observation::bad(
        AlertKind::RemovalGuardTripped,
        GUARD_SUBJECT,
        AlertSeverity::Critical,
        format!(
            "removal guard refused {}; run `dexscope apply --allow-mass-removal` if intended",
            refused.join(", ")
        ),
        json!({ "refused": refused }),
    )
}

/// The alert subject of the selectors.
pub const SELECTOR_SUBJECT: &str = "selectors";

/// `selector_unresolved`: bad while some selector's source cannot be read, yields nothing or
/// is not expanded (its users are kept, removals may be held), naming each one.
pub fn selector_observation(plan: &Plan) -> Observation {
    let warnings: Vec<String> = plan.selectors.iter().filter_map(|f| f.warning()).collect();
    if warnings.is_empty() {
        return Observation::good(AlertKind::SelectorUnresolved, SELECTOR_SUBJECT);
    }
    Observation::bad(
        AlertKind::SelectorUnresolved,
        SELECTOR_SUBJECT,
        AlertSeverity::Warning,
        warnings.join("; "),
        json!({ "selectors": plan.selectors }),
    )
}

/// Changes that took effect in the pass.
pub fn applied_count(report: &ReconcileReport) -> u64 {
    report.applied.iter().filter(|a| a.is_success()).count() as u64
}

/// The figures the pass records: changes pending (failed or not converged), entries
/// unresolved, and per group the desired count, the size after the pass and the drift.
pub fn figures(report: &ReconcileReport) -> ReconcileFigures {
    let plan = &report.plan;
    let pending = report.not_converged.len() + report.failed().count();
    ReconcileFigures {
        pending_changes: pending as u64,
        unresolved: plan.unresolved.len() as u64,
        applied: applied_count(report),
        commit: report.commit.clone(),
        users: group_figures(report, GroupKind::Users),
        devices: group_figures(report, GroupKind::Devices),
        unresolved_entries: plan
            .unresolved
            .iter()
            .map(|u| UnresolvedEntry {
                entry: u.entry.clone(),
                problem: serde_json::to_value(&u.problem).unwrap_or_default(),
            })
            .collect(),
        throttled: report.throttled.as_ref().map(|t| ThrottledPass {
            remaining: t.remaining as u64,
            granted: t
                .granted
                .iter()
                .map(|g| GrantedRate {
                    surface: g.surface.clone(),
                    per_second: g.per_second,
                    budget_per_second: g.budget_per_second,
                })
                .collect(),
        }),
    }
}

/// One group's figures: desired entries resolved, the group's size after the pass (before,
/// plus adds, minus removals that took effect), drift.
fn group_figures(report: &ReconcileReport, group: GroupKind) -> GroupFigures {
    let c = &report.counts;
    let (desired, before, drift) = match group {
        GroupKind::Users => (c.desired_users, c.members, report.plan.users.drift_count()),
        GroupKind::Devices => (
            c.desired_devices,
            c.tagged,
            report.plan.devices.drift_count(),
        ),
    };
    let took = |ops: [Operation; 2]| {
        report
            .applied
            .iter()
            .filter(|a| a.group == group && ops.contains(&a.operation))
            .filter(|a| a.result == AppliedResult::Ok)
            .count()
    };
    let effective = (before + took([Operation::Add, Operation::Tag]))
        .saturating_sub(took([Operation::Remove, Operation::Untag]));
    GroupFigures {
        desired: desired as u64,
        effective: effective as u64,
        drift: drift as u64,
    }
}
