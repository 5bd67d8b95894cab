//! Reconcile the scoped groups: the pure planner, the executor and `reconcile_once`.
//!
//! One pass is level-triggered: it reads the desired state's entries and the tenant afresh
//! ([`resolve`]), computes a [`plan::Plan`] with a pure function, records the removal guard's
//! decision, carries the plan out ([`apply`]) and re-reads the tenant to say what converged.
//! A pass with nothing to change makes only reads. The `plan` and `apply` commands live here.

pub mod apply;
pub mod plan;
pub mod resolve;

use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::desired::{self, DesiredState, Mode};
use crate::model::ObjectId;
use crate::state::{GuardRefusal, State, StateError};
use crate::tenant::Tenant;

use apply::{Applied, AppliedResult, NotConverged, Target};
use plan::{GroupKind, Plan, PlanSettings, Unresolved, UnresolvedKind};
use resolve::ResolveError;

/// `plan`: no changes pending.
pub const EXIT_NO_CHANGES: u8 = 0;
/// `plan`: changes pending (like `terraform plan -detailed-exitcode`).
pub const EXIT_CHANGES: u8 = 2;
/// `apply`: the removal guard refused removals.
pub const EXIT_GUARD: u8 = 3;

/// Why a pass failed. Writes already made stay made; the next pass picks up from the tenant.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("re-reading the scoped user group after the changes failed: {0}")]
    Verify(#[source] crate::graph::Error),
    #[error("re-reading the tagged machines after the changes failed: {0}")]
    VerifyMachines(#[source] crate::defender::Error),
    #[error(
        "{0}; the tenant may hold changes without their audit rows, the next pass reconciles them"
    )]
    State(#[from] StateError),
}

/// What a pass works on: the tenant connection, the state database, the two groups.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub tenant: &'a Tenant,
    pub state: &'a State,
    pub user_group: &'a ObjectId,
    pub device_tag: &'a str,
}

/// The plan settings the config describes (`allow_mass_removal` comes from the command line).
pub fn settings_from_config(config: &Config, allow_mass_removal: bool) -> PlanSettings {
    PlanSettings {
        prune: config.scope.prune,
        max_removals: config.scope.max_removals,
        allow_mass_removal,
        user_group: config.scope.user_group_id.to_string(),
        device_tag: config.scope.device_tag.clone(),
    }
}

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub plan: Plan,
    /// Every change applied, with its result (also in the audit table).
    pub applied: Vec<Applied>,
    /// Planned changes the tenant did not show when re-read after the pass.
    pub not_converged: Vec<NotConverged>,
    /// The desired state's git commit.
    pub commit: Option<String>,
}

impl ReconcileReport {
    pub fn failed(&self) -> impl Iterator<Item = &Applied> {
        self.applied.iter().filter(|a| !a.is_success())
    }

    /// Everything resolvable converged (unresolved entries and refused removals aside).
    pub fn converged(&self) -> bool {
        self.not_converged.is_empty() && self.failed().next().is_none()
    }

    /// `apply`'s exit code: 1 when something did not converge, else 3 when the guard refused
    /// removals, else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.converged() {
            1
        } else if self.plan.guard_tripped() {
            EXIT_GUARD
        } else {
            0
        }
    }
}

impl std::fmt::Display for ReconcileReport {
    /// The plan, then one line per change that failed or did not show, then a summary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.plan)?;
        for a in self.failed() {
            writeln!(
                f,
                "failed: {} {} {} ({}): {}",
                a.group,
                a.operation.as_str(),
                a.label,
                a.id,
                a.message.as_deref().unwrap_or("no detail")
            )?;
        }
        for n in &self.not_converged {
            writeln!(
                f,
                "not converged: {} {} {} ({}) does not show in the tenant after the pass",
                n.group,
                n.operation.as_str(),
                n.label,
                n.id
            )?;
        }
        let count = |r: AppliedResult| self.applied.iter().filter(|a| a.result == r).count();
        write!(
            f,
            "applied {} changes ({} already in place, {} failed); ",
            count(AppliedResult::Ok),
            count(AppliedResult::Already),
            count(AppliedResult::Failed)
        )?;
        if self.converged() {
            writeln!(f, "converged")
        } else {
            writeln!(
                f,
                "not converged ({} changes do not show); the next pass tries again",
                self.not_converged.len()
            )
        }
    }
}

/// Reads the tenant, resolves the desired state and plans. Read-only: what `plan` shows.
pub async fn plan_once(
    tenant: &Tenant,
    user_group: &ObjectId,
    device_tag: &str,
    desired: &DesiredState,
    settings: &PlanSettings,
) -> Result<Plan, ReconcileError> {
    let r = resolve::resolve(
        &tenant.graph,
        &tenant.defender,
        user_group,
        device_tag,
        desired,
    )
    .await?;
    Ok(plan::plan(&r.desired, &r.actual, settings))
}

/// One reconcile pass: read, settle audit rows an interrupted pass left pending, plan, record
/// the guard's decision, apply, verify. Level-triggered:
/// nothing is carried over from an earlier pass but what the tenant and `desired` say.
pub async fn reconcile_once(
    ctx: Context<'_>,
    desired: &DesiredState,
    settings: &PlanSettings,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, ReconcileError> {
    let r = resolve::resolve(
        &ctx.tenant.graph,
        &ctx.tenant.defender,
        ctx.user_group,
        ctx.device_tag,
        desired,
    )
    .await?;
    apply::settle_pending(ctx.state, &r.actual, now)?;
    let plan = plan::plan(&r.desired, &r.actual, settings);
    record_guard(ctx.state, &plan, now)?;
    let target = Target {
        graph: &ctx.tenant.graph,
        defender: &ctx.tenant.defender,
        state: ctx.state,
        user_group: ctx.user_group,
        device_tag: ctx.device_tag,
        commit: desired.commit.as_deref(),
    };
    let applied = apply::apply(target, &plan, now).await?;
    let not_converged = if plan.change_count() == 0 {
        Vec::new()
    } else {
        apply::verify(target, &plan).await?
    };
    let report = ReconcileReport {
        plan,
        applied,
        not_converged,
        commit: desired.commit.clone(),
    };
    tracing::info!(
        changes = report.applied.len(),
        failed = report.failed().count(),
        not_converged = report.not_converged.len(),
        unresolved = report.plan.unresolved.len(),
        "reconcile pass done"
    );
    Ok(report)
}

/// Stores the guard's outcome per group: a refusal is kept (and seen by `check` in another
/// process) until a pass that is not refused clears it.
fn record_guard(state: &State, plan: &Plan, now: DateTime<Utc>) -> Result<(), StateError> {
    let refusals = plan.refusals();
    for group in [GroupKind::Users, GroupKind::Devices] {
        let refusal =
            refusals
                .iter()
                .find(|(g, ..)| *g == group)
                .map(|&(group, removals, max_removals)| GuardRefusal {
                    group,
                    removals: removals as u64,
                    max_removals,
                    at: now,
                });
        if let Some(r) = &refusal {
            tracing::error!(
                alert = "removal_guard",
                group = %group,
                removals = r.removals,
                max_removals = r.max_removals,
                "removal guard refused {} removals from {group} (max_removals = {}); review the \
                 desired state, then run `dexscope apply --allow-mass-removal`",
                r.removals,
                r.max_removals
            );
        }
        state.set_guard_refusal(group, refusal.as_ref())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The `plan` and `apply` commands.

/// How `plan` prints the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PlanFormat {
    #[default]
    Text,
    Json,
}

/// `dexscope plan`: prints the changes a pass would make. Exit 0 none, 2 pending, 1 error.
pub async fn plan_command(
    config: &Config,
    format: PlanFormat,
    today: NaiveDate,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Some((desired, tenant, group)) = prepare(config, today, err) else {
        return 1;
    };
    let settings = settings_from_config(config, false);
    match plan_once(
        &tenant,
        &group,
        &config.scope.device_tag,
        &desired,
        &settings,
    )
    .await
    {
        Ok(plan) => {
            warn_unresolved(&plan.unresolved, err);
            let printed = match format {
                PlanFormat::Text => write!(out, "{plan}"),
                PlanFormat::Json => serde_json::to_string_pretty(&plan)
                    .map_err(std::io::Error::other)
                    .and_then(|j| writeln!(out, "{j}")),
            };
            if let Err(e) = printed {
                let _ = writeln!(err, "dexscope: cannot print the plan: {e}");
                return 1;
            }
            if plan.is_empty() {
                EXIT_NO_CHANGES
            } else {
                EXIT_CHANGES
            }
        }
        Err(e) => {
            let _ = writeln!(err, "dexscope: plan failed: {e}");
            1
        }
    }
}

/// `dexscope apply`: one reconcile pass. Exit 0 converged, 1 error, 3 guard refused removals.
pub async fn apply_command(
    config: &Config,
    allow_mass_removal: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Some((desired, tenant, group)) = prepare(config, now.date_naive(), err) else {
        return 1;
    };
    let state = match State::open(&config.state.path) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            return 1;
        }
    };
    let ctx = Context {
        tenant: &tenant,
        state: &state,
        user_group: &group,
        device_tag: &config.scope.device_tag,
    };
    let settings = settings_from_config(config, allow_mass_removal);
    match reconcile_once(ctx, &desired, &settings, now).await {
        Ok(report) => {
            warn_unresolved(&report.plan.unresolved, err);
            let _ = write!(out, "{report}");
            report.exit_code()
        }
        Err(e) => {
            let _ = writeln!(err, "dexscope: apply failed: {e}");
            1
        }
    }
}

/// Loads the desired state (an invalid one is exit 1 before any request) and connects.
fn prepare(
    config: &Config,
    today: NaiveDate,
    err: &mut dyn Write,
) -> Option<(DesiredState, Tenant, ObjectId)> {
    let paths = [config.scope.desired_state.clone()];
    let loaded = match desired::load(&paths, today, Mode::Runtime) {
        Ok(l) => l,
        Err(diags) => {
            for d in &diags.0 {
                let _ = writeln!(err, "{d}");
            }
            let _ = writeln!(err, "dexscope: {diags}; nothing was changed");
            return None;
        }
    };
    for w in &loaded.warnings {
        let _ = writeln!(err, "{w}");
    }
    match Tenant::from_config(config) {
        Ok(t) => Some((loaded.state, t, config.scope.user_group_id.clone())),
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            None
        }
    }
}

/// Names each unresolved entry on stderr: a warning, not a failure.
fn warn_unresolved(unresolved: &[Unresolved], err: &mut dyn Write) {
    for u in unresolved {
        let what = match &u.problem {
            UnresolvedKind::UnknownUser => "unknown user".to_string(),
            UnresolvedKind::UnknownDevice => "unknown device".to_string(),
            UnresolvedKind::AmbiguousName { candidates } => format!(
                "ambiguous, {} machines share it; list it by machine id",
                candidates.len()
            ),
        };
        let _ = writeln!(
            err,
            "warning: desired entry {}: {what}; skipped, nothing removed because of it",
            u.entry
        );
    }
}
