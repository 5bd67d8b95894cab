//! Reconcile the scoped groups: the pure planner, the executor and `reconcile_once`.
//!
//! One pass is level-triggered: it reads the desired state's entries and the tenant afresh
//! ([`resolve`]), computes a [`plan::Plan`] with a pure function, records the removal guard's
//! decision, carries the plan out ([`apply`]) and re-reads the tenant to say what converged.
//! A pass with nothing to change makes only reads: with a member snapshot from an earlier pass,
//! one membership delta request and the machine pages. The `plan` and `apply` commands live here.

pub mod apply;
pub mod observe;
pub mod plan;
pub mod resolve;

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::desired::{self, DesiredState, Mode};
use crate::model::ObjectId;
use crate::scope::{
    self, GroupKind, MemberSource, Members, ResolveError, Unresolved, UnresolvedKind,
};
use crate::selectors;
use crate::state::{GuardRefusal, State, StateError};
use crate::telemetry::trace_memory;
use crate::tenant::Tenant;

use apply::{Applied, AppliedResult, NotConverged, Target};
use plan::{Plan, PlanSettings};

/// `plan`: no changes pending.
pub const EXIT_NO_CHANGES: u8 = 0;
/// `plan`: changes pending (like `terraform plan -detailed-exitcode`).
pub const EXIT_CHANGES: u8 = 2;
/// `apply`: the removal guard refused removals.
pub const EXIT_GUARD: u8 = 3;
/// `apply` exit code: not converged because the service throttled until the pass deadline.
pub const EXIT_THROTTLED: u8 = 4;

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
    /// `[scope] member_resync`: the longest a member snapshot stands in for a full read.
    pub member_resync: Duration,
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
    /// Group sizes the pass saw before its changes (for `status`).
    pub counts: PassCounts,
    /// Set when the pass deadline came while the service was still throttling.
    pub throttled: Option<ThrottledEnd>,
}

/// A pass ended by its deadline while the service throttled: "not converged: throttled".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThrottledEnd {
    /// Changes that did not land (failed or do not show).
    pub remaining: usize,
    /// Per surface the service throttled: what it granted per window, as learned.
    pub granted: Vec<Granted>,
}

/// The rate one API surface was granted, as learned from the service's answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Granted {
    pub surface: String,
    /// Calls (or resource units) per second granted.
    pub per_second: f64,
    /// The configured rate per second.
    pub budget_per_second: f64,
}

impl Granted {
    /// Every surface of `stats` the service throttles below the budget.
    pub fn below_budget(stats: &crate::http::Stats) -> Vec<Granted> {
        crate::http::Surface::ALL
            .iter()
            .map(|s| (s, stats.surface(*s)))
            .filter(|(_, st)| st.granted_per_s < st.budget_per_s)
            .map(|(s, st)| Granted {
                surface: s.as_str().to_string(),
                per_second: st.granted_per_s,
                budget_per_second: st.budget_per_s,
            })
            .collect()
    }
}

/// Group sizes one pass saw: desired entries resolved, and what the tenant held before the pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PassCounts {
    pub desired_users: usize,
    pub desired_devices: usize,
    /// Direct members of the user group (any type).
    pub members: usize,
    /// Machines carrying the tag.
    pub tagged: usize,
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
        if !self.converged() && self.throttled.is_some() {
            EXIT_THROTTLED
        } else if !self.converged() {
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
        } else if let Some(t) = &self.throttled {
            let granted: Vec<String> = t
                .granted
                .iter()
                .map(|g| {
                    format!(
                        "{} {:.2}/s of {:.2}/s configured",
                        g.surface, g.per_second, g.budget_per_second
                    )
                })
                .collect();
            writeln!(
                f,
                "not converged: throttled ({} changes remain; the service granted {}); the next \
                 pass carries on",
                t.remaining,
                if granted.is_empty() {
                    "the configured budgets".to_string()
                } else {
                    granted.join(", ")
                }
            )
        } else {
            writeln!(
                f,
                "not converged ({} changes do not show); the next pass tries again",
                self.not_converged.len()
            )
        }
    }
}

/// Reads the tenant, resolves the desired state and plans: what `plan` shows. The only write
/// is the member snapshot, and only when `members.store` says so.
pub async fn plan_once(
    tenant: &Tenant,
    user_group: &ObjectId,
    device_tag: &str,
    desired: &DesiredState,
    settings: &PlanSettings,
    members: MemberSource<'_>,
) -> Result<Plan, ReconcileError> {
    let desired = Cow::Borrowed(desired);
    Ok(read_and_plan(
        tenant, user_group, device_tag, desired, settings, members, None,
    )
    .await?
    .0)
}

/// What a pass that writes adds to [`read_and_plan`]: the state whose pending audit rows it
/// settles, and where user adds found safe while lookups run are handed to the writer.
struct Writing<'a> {
    state: &'a State,
    feed: resolve::AddFeed,
}

/// Reads, resolves and plans. An owned `desired` is dropped once resolved (see
/// [`resolve::resolve`]); only what the plan still needs of it is kept.
async fn read_and_plan(
    tenant: &Tenant,
    user_group: &ObjectId,
    device_tag: &str,
    desired: Cow<'_, DesiredState>,
    settings: &PlanSettings,
    members: MemberSource<'_>,
    writing: Option<Writing<'_>>,
) -> Result<(Plan, Members, PassCounts), ReconcileError> {
    let now = members.now;
    let expansion = if desired.selectors.is_empty() {
        None
    } else {
        let state = members.state;
        let clients = selectors::Clients {
            graph: &tenant.graph,
            defender: &tenant.defender,
        };
        Some(selectors::expand_selectors(clients, state, members.store, &desired).await)
    };
    // The desired state's own hold, for when the selectors were expanded.
    let own_hold = desired.removals_held.clone();
    let mut read = scope::read_members(&tenant.graph, user_group, members).await?;
    // Rows an interrupted pass left pending, taken before this pass's adds write their own.
    let (settle, feed) = match writing {
        Some(w) => (Some((w.state, w.state.pending_changes()?)), w.feed),
        None => (None, None),
    };
    // Moved, not cloned: the caller needs only how the members were read. An owned desired
    // state goes along and is dropped there.
    let r = resolve::resolve(
        &tenant.graph,
        &tenant.defender,
        std::mem::take(&mut read.members),
        device_tag,
        desired,
        feed,
    )
    .await?;
    let mut r = r;
    if let Some(expansion) = &expansion {
        selectors_into(&mut r.desired, own_hold, expansion);
    }
    trace_memory("resolve");
    if let Some((state, pending)) = settle {
        // By the tenant as read now. A change an interrupted pass made may not show yet in the
        // membership delta (its processing lags); such a row settles as not applied and the
        // plan below re-sends the change, which the tenant answers "already" and audits again.
        apply::settle_pending(state, &pending, &r.actual, now)?;
    }
    let counts = PassCounts {
        desired_users: r.desired.users.len(),
        desired_devices: r.desired.devices.len(),
        members: r.actual.members.len(),
        tagged: r.actual.tagged.len(),
    };
    let mut plan = plan::plan(&r.desired, &r.actual, settings);
    if let Some(expansion) = expansion {
        plan.selectors = expansion.findings;
    }
    trace_memory("plan");
    Ok((plan, read, counts))
}

/// Joins what the selectors yielded to the resolved desired users. Removals stay held when a
/// selector is not expanded or could not be read without a last good expansion (what it keeps
/// in scope is unknown); otherwise the selectors' users count as listed, so the empty-state
/// hold applies only when nothing at all is in scope.
fn selectors_into(
    resolved: &mut plan::ResolvedDesired,
    own_hold: Option<String>,
    expansion: &selectors::Expansion,
) {
    let mut have: std::collections::HashSet<crate::model::UserId> =
        resolved.users.iter().map(|u| u.id.clone()).collect();
    for u in &expansion.users {
        if have.insert(u.id.clone()) {
            resolved.users.push(u.clone());
        }
    }
    resolved.users.sort_by(|a, b| a.label.cmp(&b.label));
    let mut have: std::collections::HashSet<crate::model::MachineId> =
        resolved.devices.iter().map(|d| d.id.clone()).collect();
    for d in &expansion.devices {
        if have.insert(d.id.clone()) {
            resolved.devices.push(d.clone());
        }
    }
    resolved.listed_nothing = resolved.users.is_empty() && resolved.devices.is_empty();
    resolved.removals_held = own_hold;
    resolved.selector_hold = expansion.held_by.clone();
}

/// One reconcile pass: read, settle audit rows an interrupted pass left pending, plan, record
/// the guard's decision, apply, verify. Level-triggered: the tenant and `desired` decide; the
/// member snapshot only saves reads of members that did not change, and applied changes are
/// written into it (see [`scope::snapshot`]).
pub async fn reconcile_once(
    ctx: Context<'_>,
    desired: &DesiredState,
    settings: &PlanSettings,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, ReconcileError> {
    reconcile_desired(ctx, Cow::Borrowed(desired), settings, now).await
}

/// [`reconcile_once`] with a desired state of the pass's own, dropped part by part once
/// resolved (see [`resolve::resolve`]): the daemon's passes, each with its own parse of the
/// kept texts.
pub async fn reconcile_owned(
    ctx: Context<'_>,
    desired: DesiredState,
    settings: &PlanSettings,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, ReconcileError> {
    reconcile_desired(ctx, Cow::Owned(desired), settings, now).await
}

/// [`reconcile_once`] with the desired state borrowed or owned (the `apply` command and the
/// daemon, which drop it once it is resolved).
async fn reconcile_desired(
    ctx: Context<'_>,
    desired: Cow<'_, DesiredState>,
    settings: &PlanSettings,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, ReconcileError> {
    // Throttled requests are retried without an attempt cap until this deadline (an outer
    // one, the daemon's interval, wins when earlier).
    let own = tokio::time::Instant::now() + ctx.tenant.http.settings().pass_deadline;
    let deadline = crate::http::current_deadline().map_or(own, |outer| outer.min(own));
    let before = ctx.tenant.http.stats().throttled_at_deadline;
    let mut report = crate::http::with_deadline(
        deadline,
        reconcile_within_deadline(ctx, desired, settings, now, before),
    )
    .await?;
    let stats = ctx.tenant.http.stats();
    if !report.converged() && stats.throttled_at_deadline > before {
        let remaining = report.failed().count() + report.not_converged.len();
        let granted = Granted::below_budget(&stats);
        let rates: Vec<String> = granted
            .iter()
            .map(|g| {
                format!(
                    "{} {:.2}/s of {:.2}/s configured",
                    g.surface, g.per_second, g.budget_per_second
                )
            })
            .collect();
        tracing::warn!(
            remaining,
            granted = rates.join(", "),
            "pass deadline reached while the service throttles: not converged: throttled"
        );
        report.throttled = Some(ThrottledEnd { remaining, granted });
    }
    Ok(report)
}

/// The pass itself; `throttled_before` is the client's count of requests ended by the
/// deadline when the pass began.
async fn reconcile_within_deadline(
    ctx: Context<'_>,
    desired: Cow<'_, DesiredState>,
    settings: &PlanSettings,
    now: DateTime<Utc>,
    throttled_before: u64,
) -> Result<ReconcileReport, ReconcileError> {
    let source = MemberSource {
        state: Some(ctx.state),
        store: true,
        resync_every: ctx.member_resync,
        now,
    };
    let commit = desired.commit.clone();
    let target = Target {
        graph: &ctx.tenant.graph,
        defender: &ctx.tenant.defender,
        state: ctx.state,
        user_group: ctx.user_group,
        device_tag: ctx.device_tag,
        commit: commit.as_deref(),
    };
    // Adds start while the lookups run: each lookup round hands its safe adds to the writer,
    // then the full plan hands over all of its adds (the writer skips those it has) and the
    // channel closes. Removals wait for the writer and the full plan with its guard.
    let (feed, fed) = futures::channel::mpsc::unbounded();
    let planned = async {
        let writing = Writing {
            state: ctx.state,
            feed: Some(feed.clone()),
        };
        let planned = read_and_plan(
            ctx.tenant,
            ctx.user_group,
            ctx.device_tag,
            desired,
            settings,
            source,
            Some(writing),
        )
        .await;
        if let Ok((plan, ..)) = &planned {
            record_guard(ctx.state, plan, now)?;
            let _ = feed.unbounded_send(plan.users.add.clone());
        }
        drop(feed);
        planned
    };
    let (planned, added) = futures::join!(planned, apply::add_users_fed(target, fed, now));
    let (plan, read, counts) = planned?;
    let mut applied = added?;
    apply::apply_after_adds(target, &plan, now, &mut applied).await?;
    trace_memory("apply");
    if read.snapshot_stored {
        note_applied(ctx.state, &applied);
    }
    // A pass the deadline ended while the service throttles does not re-read the tenant to
    // verify: the service holds the surface past the deadline, and the changes left are the
    // failed ones, which the next pass plans again from a fresh read.
    let deadline_hit = ctx.tenant.http.stats().throttled_at_deadline > throttled_before;
    let not_converged = if plan.change_count() == 0 || deadline_hit {
        Vec::new()
    } else {
        apply::verify(target, &plan).await?
    };
    let report = ReconcileReport {
        plan,
        applied,
        not_converged,
        commit,
        counts,
        throttled: None,
    };
    tracing::info!(
        changes = report.applied.len(),
        failed = report.failed().count(),
        not_converged = report.not_converged.len(),
        unresolved = report.plan.unresolved.len(),
        members_read = %read.how,
        "reconcile pass done"
    );
    Ok(report)
}

/// Writes the applied user changes into the member snapshot, so the next pass sees them even
/// before the membership delta does (its processing lags). Idempotent set operations: the
/// delta link stays where it was, so the next round replays these changes harmlessly, and a
/// crash before this write loses nothing (the replay brings them). When the write fails the
/// snapshot is dropped: the next pass reads in full rather than trust a snapshot that misses
/// our own changes.
fn note_applied(state: &State, applied: &[Applied]) {
    let (present, removed) = apply::snapshot_changes(applied);
    if present.is_empty() && removed.is_empty() {
        return;
    }
    if let Err(e) = state.update_member_snapshot(None, &present, &removed) {
        tracing::warn!(error = %e, "updating the member snapshot after the changes failed; dropping it");
        let _ = state.clear_member_snapshot();
    }
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
                alert = "removal_guard_tripped",
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
    // The snapshot of an earlier pass, when the state database exists: `plan` never creates
    // the database and never moves the daemon's delta link (see `MemberSource::store`).
    let state = config
        .state
        .path
        .exists()
        .then(|| State::open(&config.state.path))
        .and_then(|r| {
            r.inspect_err(|e| {
                let _ = writeln!(err, "warning: {e}; reading the members in full");
            })
            .ok()
        });
    let members = MemberSource {
        state: state.as_ref(),
        store: false,
        resync_every: config.scope.member_resync,
        now: Utc::now(),
    };
    // Owned: the desired state is dropped once resolved, before the plan is made.
    let planned = read_and_plan(
        &tenant,
        &group,
        &config.scope.device_tag,
        Cow::Owned(desired),
        &settings,
        members,
        None,
    )
    .await;
    match planned.map(|(plan, ..)| plan) {
        Ok(plan) => {
            warn_unresolved(&plan.unresolved, err);
            warn_selectors(&plan.selectors, err);
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
        member_resync: config.scope.member_resync,
    };
    let settings = settings_from_config(config, allow_mass_removal);
    // Owned: the desired state is dropped once resolved, before the plan is made.
    match reconcile_desired(ctx, Cow::Owned(desired), &settings, now).await {
        Ok(report) => {
            warn_unresolved(&report.plan.unresolved, err);
            warn_selectors(&report.plan.selectors, err);
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
    let loaded = match &config.scope.git {
        None => desired::load(
            std::slice::from_ref(&config.scope.desired_state),
            today,
            Mode::Runtime,
        ),
        Some(git) => match desired::source::read_head(&git.source) {
            Ok((commit, files)) => {
                let texts: Vec<(&std::path::Path, &str)> = files
                    .iter()
                    .map(|(p, t)| (p.as_path(), t.as_str()))
                    .collect();
                desired::parse_files(&texts, today, Mode::Runtime)
                    .into_result()
                    .map(|mut loaded| {
                        loaded.state.commit = Some(commit.to_string());
                        loaded
                    })
            }
            Err(e) => {
                let _ = writeln!(err, "dexscope: {e}; nothing was changed");
                return None;
            }
        },
    };
    let loaded = match loaded {
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
    trace_memory("desired load");
    match Tenant::from_config(config) {
        Ok(t) => Some((loaded.state, t, config.scope.user_group_id.clone())),
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            None
        }
    }
}

/// Names each selector that could not be read, yielded nothing or was not expanded.
fn warn_selectors(findings: &[selectors::Finding], err: &mut dyn Write) {
    for w in findings.iter().filter_map(selectors::Finding::warning) {
        let _ = writeln!(err, "warning: {w}");
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
