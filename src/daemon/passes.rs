//! The pass adapters: the one place that says which pass runs in which loop. Each adapter runs
//! its `*_once` function and hands the report to the pure functions beside that pass (its
//! `observe` module) for the alerts and the recorded figures; it decides nothing itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::Notify;

use super::gitwatch::DesiredSource;
use super::schedule::{Loop, PassError, PassSummary};
use super::{INCIDENTS, PRIORITY, RECONCILE};
use crate::config::Config;
use crate::incidents::{observe as incident_observe, poll};
use crate::priority;
use crate::priority::check as priority_check;
use crate::reconcile;
use crate::reconcile::observe as reconcile_observe;
use crate::state::State;
use crate::state::records::{PassDetails, PriorityFigures};
use crate::tenant::Tenant;

/// Everything a pass may use, built once per config generation.
#[derive(Clone)]
pub struct PassContext {
    pub config: Arc<Config>,
    pub tenant: Tenant,
    pub state: Arc<State>,
    pub desired: DesiredSource,
}

/// The three loops with their passes: `reconcile_once`, `priority_once` and `poll_once`, each
/// reading the world afresh. A file-watch event may start a reconcile pass early, never steer it.
pub fn build_loops(ctx: &PassContext, reconcile_trigger: Arc<Notify>) -> Vec<Loop> {
    let schedule = &ctx.config.schedule;
    let reconcile = {
        let ctx = ctx.clone();
        Loop::new(RECONCILE, schedule.reconcile_every, move || {
            let ctx = ctx.clone();
            async move { reconcile_pass(&ctx, Utc::now()).await }.boxed()
        })
        .with_trigger(reconcile_trigger)
    };
    let priority = {
        let ctx = ctx.clone();
        Loop::new(PRIORITY, schedule.priority_every, move || {
            let ctx = ctx.clone();
            async move { priority_pass(&ctx, Utc::now()).await }.boxed()
        })
    };
    let incidents = {
        let ctx = ctx.clone();
        Loop::new(INCIDENTS, schedule.incidents_every, move || {
            let ctx = ctx.clone();
            async move { incidents_pass(&ctx, Utc::now()).await }.boxed()
        })
    };
    vec![reconcile, priority, incidents]
}

/// One reconcile pass against the last valid desired state. A tripped removal guard raises the
/// `removal_guard_tripped` alert (the refusal itself is recorded by the pass, so `check` sees it).
pub async fn reconcile_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let Some(desired) = ctx.desired.current() else {
        return Err(PassError::new(format!(
            "no valid desired state yet: fix {} (dexscope validate shows why)",
            ctx.desired.describe()
        )));
    };
    let scope = &ctx.config.scope;
    let rctx = reconcile::Context {
        tenant: &ctx.tenant,
        state: &ctx.state,
        user_group: &scope.user_group_id,
        device_tag: &scope.device_tag,
        member_resync: scope.member_resync,
    };
    let settings = reconcile::settings_from_config(&ctx.config, false);
    // This pass's own copy, dropped part by part as it is resolved.
    let desired = desired.state().map_err(|e| {
        PassError::new(format!(
            "reconcile pass failed: the kept desired state: {e}"
        ))
    })?;
    // A pass never runs into the next one's slot.
    let deadline = tokio::time::Instant::now() + ctx.config.schedule.reconcile_every;
    let pass = reconcile::reconcile_owned(rctx, desired, &settings, now);
    let result = crate::http::with_deadline(deadline, pass).await;
    release_freed_memory();
    let report = result.map_err(|e| PassError::new(format!("reconcile pass failed: {e}")))?;
    let plan = &report.plan;
    let applied = reconcile_observe::applied_count(&report);
    let failed = report.failed().count();
    let drift = (plan.users.drift_count() + plan.devices.drift_count()) as u64;
    let text = format!(
        "{} changes planned, {applied} applied, {failed} failed, {} not converged, {} unresolved",
        plan.change_count(),
        report.not_converged.len(),
        plan.unresolved.len()
    );
    Ok(PassSummary {
        text,
        lines: plan.to_string().lines().map(str::to_string).collect(),
        changes_applied: applied,
        drift: Some(drift),
        observations: vec![
            reconcile_observe::guard_observation(plan),
            reconcile_observe::selector_observation(plan),
        ],
        details: PassDetails::Reconcile(reconcile_observe::figures(&report)),
        ..PassSummary::default()
    })
}

/// Hands the memory a pass freed back to the kernel. glibc keeps freed heap pages mapped
/// (only the top of the heap is trimmed, past `M_TRIM_THRESHOLD`); a pass frees tens of
/// megabytes in the middle of the heap at 100k users, which `malloc_trim(0)` returns with
/// `madvise`, so the daemon's resident size between passes is what it really holds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's own heap to the
    // kernel; it takes the allocator's lock like any `malloc` call.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
    crate::telemetry::trace_memory("after a pass, freed memory returned");
}

/// One priority pass: tagged machines' placement (and desired devices missing the tag).
pub async fn priority_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let scope = &ctx.config.scope;
    let failed = |e: priority::PriorityError| PassError::new(format!("priority pass failed: {e}"));
    let report = match ctx.desired.current() {
        Some(kept) if kept.devices() > 0 => {
            let mut full = kept.state().map_err(|e| {
                PassError::new(format!("priority pass failed: the kept desired state: {e}"))
            })?;
            drop(kept);
            // Only the device entries are used: the rest goes before the machine list is read.
            let desired = crate::desired::DesiredState {
                devices: std::mem::take(&mut full.devices),
                ..Default::default()
            };
            drop(full);
            // One read of the machine list serves both the desired devices and the check,
            // so the pass never holds two lists.
            let (devices, tagged) =
                priority::machines_for_check(&ctx.tenant.defender, &desired, &scope.device_tag)
                    .await
                    .map_err(failed)?;
            let input = priority::PriorityInput {
                desired_devices: Some(&devices),
                sightings: &[],
            };
            priority::priority_once_with(&ctx.state, scope, input, tagged, now).map_err(failed)?
        }
        _ => {
            let input = priority::PriorityInput::default();
            priority::priority_once(&ctx.tenant.defender, &ctx.state, scope, input, now)
                .await
                .map_err(failed)?
        }
    };
    release_freed_memory();
    let worst = match priority_check::worst(&report.findings) {
        priority_check::Severity::Ok => "ok",
        priority_check::Severity::Warning => "warning",
        priority_check::Severity::Critical => "critical",
    };
    let figures = PriorityFigures {
        findings: serde_json::to_value(&report.findings)
            .and_then(serde_json::from_value)
            .unwrap_or_default(),
        counts: serde_json::to_value(report.counts).unwrap_or_default(),
    };
    Ok(PassSummary {
        text: format!(
            "{} tagged machines checked; worst finding: {worst}",
            report.tagged
        ),
        lines: report.findings.iter().map(|f| f.summary.clone()).collect(),
        observations: vec![priority_check::observation(&report.findings)],
        details: PassDetails::Priority(figures),
        ..PassSummary::default()
    })
}

/// One incident pass: new and updated incidents judged, each verdict posted once. Evidence that
/// shows an in-scope device in another group raises the priority alert too; Defender Experts'
/// pickups raise and resolve `coverage_gap` and `scope_mismatch`.
pub async fn incidents_pass(
    ctx: &PassContext,
    now: DateTime<Utc>,
) -> Result<PassSummary, PassError> {
    let settings = poll::PollSettings::from_config(&ctx.config);
    let result = poll::poll_once(&ctx.tenant, &ctx.state, &settings, now).await;
    release_freed_memory();
    let report = result.map_err(|e| PassError::new(format!("incident pass failed: {e}")))?;
    let evidence =
        incident_observe::evidence_observation(&report, &ctx.config.scope.device_group_name);
    let mut observations = vec![evidence];
    observations.extend(incident_observe::pickup_observations(
        &report,
        settings.pickup_within,
    ));
    Ok(PassSummary {
        text: format!(
            "{} incidents listed, {} handled, {} failed",
            report.listed,
            report.incidents.len(),
            report.failed.len()
        ),
        lines: report
            .incidents
            .iter()
            .filter_map(|i| {
                i.verdict
                    .map(|v| format!("incident {}: {v} ({})", i.id, handled_words(i.handled)))
            })
            .collect(),
        verdicts: incident_observe::verdicts(&report),
        pickups: incident_observe::pickups(&report),
        observations,
        details: PassDetails::Incidents(incident_observe::figures(&report)),
        ..PassSummary::default()
    })
}

/// What became of an incident's comment, in the words of `poll`'s summary line.
fn handled_words(handled: poll::Handled) -> &'static str {
    match handled {
        poll::Handled::Posted => "comment posted",
        poll::Handled::AlreadyPosted => "comment already posted",
        poll::Handled::LoggedOnly => "logged only, posting is off",
        poll::Handled::Redirected => "merged into another incident",
        poll::Handled::Gone => "incident gone",
        poll::Handled::Malformed => "malformed, skipped",
    }
}
