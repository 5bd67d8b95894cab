//! `dexscope check`: a monitoring probe with Nagios/Icinga plugin conventions.
//!
//! One status line with perfdata, and an exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//! It first proves the credential (both tokens and their application permissions), so an
//! operator uses it as the first test of a new installation; then it runs the priority pass
//! live (and resolves the desired devices for "missing tag") and reads the rest from the state
//! database: removal guard refusals, firing alerts, the last pass of each loop. Deciding the
//! status from those values is the pure [`evaluate`].

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::alerts::{AlertKind, AlertState};
use crate::config::{Config, Schedule};
use crate::desired::{self, Mode};
use crate::priority::check::{Finding, FindingKind};
use crate::priority::{self, Counts, PriorityInput};
use crate::reconcile::resolve::resolve_users;
use crate::scope::{GroupKind, Unresolved, UnresolvedKind};
use crate::state::records::{self, GroupFigures};
use crate::state::{GuardRefusal, LoopPass, State};
use crate::tenant::Tenant;

/// The plugin status, ordered: the worst of several is their maximum. UNKNOWN outranks all
/// (nothing else can be trusted when the probe cannot look).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// How the result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CheckFormat {
    /// `DEXSCOPE <STATUS> - <problems> | <perfdata>`.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// Everything the status is decided from, read by [`run`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The scoped device group (for the OK line).
    pub device_group_name: String,
    pub tagged: usize,
    pub findings: Vec<Finding>,
    /// The desired state's refusal (one line), when invalid.
    pub desired_invalid: Option<String>,
    /// Desired devices and users that did not resolve (looked up live).
    pub unresolved: Vec<Unresolved>,
    /// The user group after the last reconcile pass, when there was one.
    pub users: Option<GroupFigures>,
    pub guard_refusals: Vec<GuardRefusal>,
    pub alerts_firing: usize,
    /// Incidents whose `coverage_gap` alert fires: IN SCOPE, not taken by Defender Experts in
    /// time.
    pub coverage_gaps: Vec<String>,
    pub passes: Vec<LoopPass>,
    pub schedule: Option<Schedule>,
    /// How each selector fared in the last pass that stored them.
    pub selectors: Vec<crate::selectors::Finding>,
}

/// One thing wrong, with the status it implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub status: Status,
    pub text: String,
}

/// One perfdata figure, with the thresholds of the status it drives: the Nagios plugin
/// guidelines' `label=value;warn;crit`, a threshold `N` meaning "alert above N".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Perf {
    pub label: &'static str,
    pub value: u64,
    pub warn: Option<u64>,
    pub crit: Option<u64>,
}

impl Perf {
    fn plain(label: &'static str, value: usize) -> Self {
        Perf {
            label,
            value: u64::try_from(value).unwrap_or(u64::MAX),
            warn: None,
            crit: None,
        }
    }

    /// A figure whose any value above 0 is a WARNING.
    fn warn(label: &'static str, value: usize) -> Self {
        Perf {
            warn: Some(0),
            ..Perf::plain(label, value)
        }
    }

    /// A figure whose any value above 0 is CRITICAL.
    fn crit(label: &'static str, value: usize) -> Self {
        Perf {
            crit: Some(0),
            ..Perf::plain(label, value)
        }
    }
}

impl std::fmt::Display for Perf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.label, self.value)?;
        if self.warn.is_none() && self.crit.is_none() {
            return Ok(());
        }
        let t = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let crit = self.crit.map(|_| format!(";{}", t(self.crit)));
        write!(f, ";{}{}", t(self.warn), crit.unwrap_or_default())
    }
}

/// The probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub status: Status,
    /// Worst first.
    pub problems: Vec<Problem>,
    pub perfdata: Vec<Perf>,
    /// The whole status line (text output).
    pub line: String,
}

impl Outcome {
    /// The probe could not look: one UNKNOWN problem, no perfdata.
    pub fn unknown(text: impl Into<String>) -> Self {
        Outcome::only(Status::Unknown, text)
    }

    /// One problem of `status`, no perfdata.
    fn only(status: Status, text: impl Into<String>) -> Self {
        let problem = Problem {
            status,
            text: text.into(),
        };
        Outcome::from_problems(vec![problem], Vec::new(), String::new())
    }

    fn from_problems(mut problems: Vec<Problem>, perfdata: Vec<Perf>, ok_text: String) -> Self {
        // Stable sort: worst first, and within a status in the order found.
        problems.sort_by_key(|p| std::cmp::Reverse(p.status));
        let status = problems.first().map_or(Status::Ok, |p| p.status);
        let body = if problems.is_empty() {
            ok_text
        } else {
            problems
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut line = format!("DEXSCOPE {} - {}", status.label(), one_line(&body));
        if !perfdata.is_empty() {
            let perf: Vec<String> = perfdata.iter().map(Perf::to_string).collect();
            line.push_str(" | ");
            line.push_str(&perf.join(" "));
        }
        Outcome {
            status,
            problems,
            perfdata,
            line,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let perf: serde_json::Map<String, serde_json::Value> = self
            .perfdata
            .iter()
            .map(|p| (p.label.to_string(), json!(p.value)))
            .collect();
        json!({
            "status": self.status,
            "code": self.status.code(),
            "line": self.line,
            "problems": self.problems,
            "perfdata": perf,
        })
    }

    /// The output in `format`, ending with a newline.
    pub fn render(&self, format: CheckFormat) -> String {
        match format {
            CheckFormat::Text => format!("{}\n", self.line),
            CheckFormat::Json => format!("{}\n", self.json()),
        }
    }
}

/// Decides the status. Pure: `now` is a parameter.
pub fn evaluate(inputs: &Inputs, now: DateTime<Utc>) -> Outcome {
    let mut problems = Vec::new();
    let mut add = |status, text: String| problems.push(Problem { status, text });
    if let Some(why) = &inputs.desired_invalid {
        add(Status::Critical, why.clone());
    }
    for r in &inputs.guard_refusals {
        add(
            Status::Critical,
            format!(
                "removal guard refused {} removals from {} (max_removals {}); run apply --allow-mass-removal if intended",
                r.removals,
                r.group.as_str(),
                r.max_removals
            ),
        );
    }
    for f in &inputs.findings {
        if let Some((status, text)) = finding_problem(f) {
            add(status, text);
        }
    }
    if !inputs.unresolved.is_empty() {
        let names: Vec<&str> = inputs
            .unresolved
            .iter()
            .take(3)
            .map(|u| u.entry.as_str())
            .collect();
        add(
            Status::Warning,
            format!(
                "{} unresolved desired entries ({})",
                inputs.unresolved.len(),
                with_more(&names, inputs.unresolved.len())
            ),
        );
    }
    if !inputs.coverage_gaps.is_empty() {
        let n = inputs.coverage_gaps.len();
        let ids: Vec<&str> = inputs
            .coverage_gaps
            .iter()
            .take(3)
            .map(String::as_str)
            .collect();
        add(
            Status::Warning,
            format!(
                "{n} IN SCOPE {} not taken by Defender Experts within pickup_within ({}); \
                 raise {} with Defender Experts",
                if n == 1 { "incident" } else { "incidents" },
                with_more(&ids, n),
                if n == 1 { "it" } else { "them" }
            ),
        );
    }
    // A selector that cannot be read keeps its last expansion: nothing is lost yet, but the
    // desired state no longer follows its source.
    for w in inputs.selectors.iter().filter_map(|f| f.warning()) {
        add(Status::Warning, one_line(&w));
    }
    for p in &inputs.passes {
        if let Some(text) = pass_problem(p, inputs.schedule.as_ref(), now) {
            add(Status::Warning, text);
        }
    }
    let perfdata = perfdata(inputs);
    let ok = format!(
        "{} tagged devices in {}",
        inputs.tagged, inputs.device_group_name
    );
    Outcome::from_problems(problems, perfdata, ok)
}

/// The figures, with the thresholds of the status each one drives in [`evaluate`].
fn perfdata(inputs: &Inputs) -> Vec<Perf> {
    let counts = Counts::of(&inputs.findings);
    let refused = |kind: GroupKind| {
        let r = inputs.guard_refusals.iter().find(|r| r.group == kind);
        r.map_or(0, |r| usize::try_from(r.removals).unwrap_or(usize::MAX))
    };
    let unresolved_users = inputs
        .unresolved
        .iter()
        .filter(|u| u.problem == UnresolvedKind::UnknownUser)
        .count();
    let mut perf = vec![
        Perf::plain("tagged", inputs.tagged),
        Perf::plain("in_group", counts.in_group),
        Perf::crit("outranked", counts.outranked),
        Perf::crit("unmatched", counts.unmatched),
        Perf::warn("pending", counts.pending),
        Perf::warn("missing_tag", counts.missing_tag),
        Perf::warn("unresolved", inputs.unresolved.len()),
        Perf::warn("unresolved_users", unresolved_users),
        Perf::crit("device_removals_refused", refused(GroupKind::Devices)),
        Perf::crit("user_removals_refused", refused(GroupKind::Users)),
    ];
    if let Some(users) = inputs.users {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        perf.push(Perf::plain("users_desired", n(users.desired)));
        perf.push(Perf::plain("users_in_group", n(users.effective)));
    }
    perf.push(Perf::plain("alerts_firing", inputs.alerts_firing));
    perf
}

fn finding_problem(f: &Finding) -> Option<(Status, String)> {
    let devices = |n: usize| if n == 1 { "device" } else { "devices" };
    let sample = with_more(
        &f.sample.iter().map(String::as_str).collect::<Vec<_>>(),
        f.count,
    );
    let evidence = if f.incidents.is_empty() {
        String::new()
    } else {
        format!(", incidents {}", f.incidents.join(", "))
    };
    Some(match &f.kind {
        FindingKind::Outranked { by_group } => (
            Status::Critical,
            format!(
                "outranked by {by_group} ({} {}: {sample}{evidence})",
                f.count,
                devices(f.count)
            ),
        ),
        FindingKind::TagNotMatched => (
            Status::Critical,
            format!(
                "tag not matched by the device group rule ({} {} in UnassignedGroup: {sample}{evidence})",
                f.count,
                devices(f.count)
            ),
        ),
        FindingKind::PlacementUnknown => (
            Status::Warning,
            format!(
                "{} tagged {} report no device group ({sample})",
                f.count,
                devices(f.count)
            ),
        ),
        FindingKind::Pending => (
            Status::Warning,
            format!(
                "{} tagged {} pending propagation ({sample})",
                f.count,
                devices(f.count)
            ),
        ),
        FindingKind::MissingTag => (
            Status::Warning,
            format!(
                "{} desired {} without the tag ({sample})",
                f.count,
                devices(f.count)
            ),
        ),
        FindingKind::Ok => return None,
    })
}

/// A loop whose last pass failed, whose last success is stale (by [`records::is_stale`], the
/// rule `status` and `/readyz` use), or whose last reconcile pass left changes pending.
fn pass_problem(p: &LoopPass, schedule: Option<&Schedule>, now: DateTime<Utc>) -> Option<String> {
    if !p.ok {
        return Some(format!(
            "last {} pass failed at {}",
            p.loop_name,
            p.finished.format("%Y-%m-%d %H:%M:%SZ")
        ));
    }
    let every = schedule.and_then(|s| match p.loop_name.as_str() {
        "reconcile" => Some(s.reconcile_every),
        "priority" => Some(s.priority_every),
        "incidents" => Some(s.incidents_every),
        _ => None,
    })?;
    if records::is_stale(every, p.last_success(), now) {
        return Some(format!(
            "last successful {} pass is stale ({} old)",
            p.loop_name,
            crate::text::duration(records::age(p.finished, now))
        ));
    }
    if p.loop_name == "reconcile" {
        // A pass the service's throttling outlasted says so, with what it granted.
        if let Some(t) = p.reconcile_figures().and_then(|f| f.throttled) {
            return Some(t.line());
        }
        // The reconcile loop records the changes it could not make in its figures.
        let pending = p.reconcile_figures().map(|f| f.pending_changes);
        if let Some(n) = pending.filter(|n| *n > 0) {
            return Some(format!("{n} changes pending (drift)"));
        }
    }
    None
}

fn with_more(names: &[&str], total: usize) -> String {
    let mut s = names.join(", ");
    if total > names.len() {
        s.push_str(&format!(", +{} more", total - names.len()));
    }
    s
}

/// One line for the plugin output: a line break ends the status line and a `|` starts its
/// perfdata (Nagios plugin guidelines), so neither may come from a message.
fn one_line(s: &str) -> String {
    crate::text::one_line(s).replace('|', " ")
}

/// How long the whole probe may take unless `--timeout` says otherwise: 10 s, the default
/// of check_nrpe and of the standard plugins.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the probe with the config at `config_path` (environment passed explicitly), ending
/// within `timeout`. Never fails: whatever stops it from looking is an UNKNOWN outcome naming
/// what to fix (a rejected credential is CRITICAL).
///
/// The Nagios plugin guidelines ask a plugin to end by its timeout, with UNKNOWN, whatever the
/// service does; the HTTP layer's retries (`Retry-After`, back-off) serve the daemon, which
/// can wait, so the whole probe is bounded here rather than each request.
pub async fn run<I, K, V>(
    config_path: &Path,
    env: I,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let config = match Config::load(config_path, env) {
        Ok(c) => c,
        Err(e) => return Outcome::unknown(format!("bad config: {e}")),
    };
    match tokio::time::timeout(timeout, run_with(&config, now)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::unknown(format!(
            "no result within the {} timeout (the tenant answers slowly or throttles); \
             raise --timeout if this is expected",
            crate::text::duration(timeout)
        )),
    }
}

/// [`run`] with a loaded config, unbounded in time.
pub async fn run_with(config: &Config, now: DateTime<Utc>) -> Outcome {
    let tenant = match Tenant::from_config(config) {
        Ok(t) => t,
        Err(e) => return Outcome::unknown(e.to_string()),
    };
    if let Some(problem) = credential_problem(&tenant).await {
        return problem;
    }
    // Read-only: `check` runs beside the daemon (often as another user, from NRPE) and must
    // never create, migrate or write the daemon's database.
    let state = match State::open_read_only(&config.state.path) {
        Ok(s) => s,
        Err(e) => return Outcome::unknown(e.to_string()),
    };
    match gather(config, &tenant, &state, now).await {
        Ok(inputs) => evaluate(&inputs, now),
        Err(why) => Outcome::unknown(why),
    }
}

/// The desired state the daemon applies from its git source: the applied commit the state
/// database names, read from the daemon's cache without the network.
fn applied_from_git(
    source: &crate::config::GitSource,
    state: &State,
    now: DateTime<Utc>,
) -> Result<desired::Loaded, String> {
    use crate::desired::source::{self, CommitId, GitCache};
    let applied = state
        .git_source()
        .map_err(|e| e.to_string())?
        .and_then(|r| r.applied)
        .and_then(|c| CommitId::parse(&c))
        .ok_or("no commit of the git source applied yet: is the daemon running?")?;
    let cache = GitCache::open(
        source.clone(),
        &source::cache_dir(state.path()),
        source::DEFAULT_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    let files = cache.read(&applied).map_err(|e| e.to_string())?;
    source::parse_commit(&applied, &files, now.date_naive(), Mode::Runtime)
        .map_err(|d| d.to_string())
}

/// CRITICAL when the identity platform rejects the credential (bad secret, unknown tenant or
/// client: asking again cannot help, as check_mysql and check_ldap report a refused login);
/// UNKNOWN when a token cannot be had for another reason or lacks a required permission.
async fn credential_problem(tenant: &Tenant) -> Option<Outcome> {
    let mut problems = Vec::new();
    let mut status = Status::Unknown;
    for (resource, report) in tenant.tokens.self_check().await {
        match report {
            Err(e) if e.permanent => {
                status = Status::Critical;
                problems.push(format!("credential rejected by {resource}: {e}"));
            }
            Err(e) => problems.push(format!("cannot authenticate to {resource}: {e}")),
            Ok(r) if !r.is_complete() => problems.push(format!(
                "missing permission {} on {resource}; grant it with admin consent",
                r.missing.join(", ")
            )),
            Ok(_) => {}
        }
    }
    (!problems.is_empty()).then(|| Outcome::only(status, problems.join("; ")))
}

async fn gather(
    config: &Config,
    tenant: &Tenant,
    state: &State,
    now: DateTime<Utc>,
) -> Result<Inputs, String> {
    let desired = match &config.scope.git {
        None => desired::load(
            std::slice::from_ref(&config.scope.desired_state),
            now.date_naive(),
            Mode::Runtime,
        )
        .map_err(|d| d.to_string()),
        Some(git) => applied_from_git(&git.source, state, now),
    };
    let (desired_devices, unresolved, desired_invalid) = match desired {
        Ok(loaded) => {
            let machines = if loaded.state.devices.is_empty() {
                Vec::new()
            } else {
                tenant
                    .defender
                    .all_machines()
                    .await
                    .map_err(|e| format!("cannot list machines: {e}"))?
            };
            let (devices, mut unresolved) = priority::resolve_devices(&loaded.state, &machines);
            unresolved.extend(unresolved_users(tenant, state, &loaded.state).await?);
            (Some(devices), unresolved, None)
        }
        Err(d) => (None, Vec::new(), Some(d)),
    };
    let input = PriorityInput {
        desired_devices: desired_devices.as_deref(),
        sightings: &[],
    };
    let report = priority::priority_peek(&tenant.defender, state, &config.scope, input, now)
        .await
        .map_err(|e| e.to_string())?;
    let read = |e: crate::state::StateError| e.to_string();
    let passes = state.last_passes().map_err(read)?;
    let reconciled = passes
        .iter()
        .find(|p| p.loop_name == "reconcile")
        .and_then(LoopPass::reconcile_figures);
    let firing: Vec<_> = state
        .alerts()
        .map_err(read)?
        .into_iter()
        .filter(|a| a.state == AlertState::Firing)
        .collect();
    let alerts_firing = firing.len();
    let coverage_gaps = firing
        .into_iter()
        .filter(|a| a.kind == AlertKind::CoverageGap)
        .map(|a| a.subject)
        .collect();
    Ok(Inputs {
        device_group_name: config.scope.device_group_name.clone(),
        tagged: report.tagged,
        findings: report.findings,
        desired_invalid,
        unresolved,
        users: reconciled.map(|f| f.users),
        guard_refusals: state.guard_refusals().map_err(read)?,
        alerts_firing,
        coverage_gaps,
        passes,
        schedule: Some(config.schedule.clone()),
        selectors: crate::selectors::last_findings(state),
    })
}

/// The desired users that do not resolve, looked up live. Members of the user group as the
/// daemon last read them (its member snapshot) resolve without a request, so at scale only
/// the users outside the group are looked up.
async fn unresolved_users(
    tenant: &Tenant,
    state: &State,
    desired: &desired::DesiredState,
) -> Result<Vec<Unresolved>, String> {
    if desired.users.is_empty() {
        return Ok(Vec::new());
    }
    let members = state
        .member_snapshot()
        .map_err(|e| e.to_string())?
        .map(|(_, members)| members)
        .unwrap_or_default();
    let (_, unresolved) = resolve_users(&tenant.graph, desired, &members)
        .await
        .map_err(|e| format!("cannot resolve the desired users: {e}"))?;
    Ok(unresolved)
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::priority::check::{Severity, check_priority};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn pass(name: &str, minutes_ago: i64, ok: bool, summary: serde_json::Value) -> LoopPass {
        LoopPass {
            loop_name: name.into(),
            started: now() - TimeDelta::minutes(minutes_ago + 1),
            finished: now() - TimeDelta::minutes(minutes_ago),
            ok,
            summary,
        }
    }

    /// A reconcile pass's summary as the daemon stores it, with `pending` changes pending.
    fn reconcile_summary(pending: u64) -> serde_json::Value {
        let group = json!({ "desired": 0, "effective": 0, "drift": 0 });
        json!({
            "text": "", "changes_applied": 0, "drift": 0,
            "details": {
                "pending_changes": pending, "unresolved": 0, "applied": 0, "commit": null,
                "users": group, "devices": group, "unresolved_entries": []
            }
        })
    }

    fn finding(kind: FindingKind, count: usize) -> Finding {
        let severity = match kind {
            FindingKind::Outranked { .. } | FindingKind::TagNotMatched => Severity::Critical,
            FindingKind::Ok | FindingKind::Pending => Severity::Ok,
            _ => Severity::Warning,
        };
        Finding {
            kind,
            severity,
            count,
            sample: (1..=count.min(2)).map(|n| format!("d{n}")).collect(),
            incidents: Vec::new(),
            summary: String::new(),
        }
    }

    fn schedule() -> Schedule {
        Schedule {
            reconcile_every: Duration::from_secs(300),
            priority_every: Duration::from_secs(900),
            incidents_every: Duration::from_secs(60),
        }
    }

    #[test]
    fn statuses() {
        let base = Inputs {
            device_group_name: "G".into(),
            tagged: 3,
            findings: vec![finding(FindingKind::Ok, 3)],
            schedule: Some(schedule()),
            ..Inputs::default()
        };
        let with = |f: &dyn Fn(&mut Inputs)| {
            let mut i = base.clone();
            f(&mut i);
            i
        };
        let cases: Vec<(&str, Inputs, &str)> = vec![
            ("all fine", base.clone(), "OK - 3 tagged devices in G"),
            (
                "fresh passes are fine",
                with(&|i| i.passes = vec![pass("reconcile", 10, true, json!({}))]),
                "OK - 3 tagged devices in G",
            ),
            (
                "stale after three intervals",
                with(&|i| i.passes = vec![pass("reconcile", 16, true, json!({}))]),
                "WARNING - last successful reconcile pass is stale (16m old)",
            ),
            (
                "a failed pass",
                with(&|i| i.passes = vec![pass("incidents", 0, false, json!({}))]),
                "WARNING - last incidents pass failed at 2026-12-01 12:00:00Z",
            ),
            (
                "drift pending",
                with(&|i| i.passes = vec![pass("reconcile", 1, true, reconcile_summary(4))]),
                "WARNING - 4 changes pending (drift)",
            ),
            (
                "unresolved entries, with more",
                with(&|i| {
                    i.unresolved = (0..5)
                        .map(|n| Unresolved {
                            entry: format!("e{n}"),
                            problem: UnresolvedKind::UnknownDevice,
                        })
                        .collect()
                }),
                "WARNING - 5 unresolved desired entries (e0, e1, e2, +2 more)",
            ),
            (
                "an unknown desired user",
                with(&|i| {
                    i.unresolved = vec![Unresolved {
                        entry: "nobody@contoso.com".into(),
                        problem: UnresolvedKind::UnknownUser,
                    }]
                }),
                "WARNING - 1 unresolved desired entries (nobody@contoso.com)",
            ),
            (
                "critical outranks warning, unmatched named",
                with(&|i| {
                    i.findings = vec![
                        finding(FindingKind::TagNotMatched, 1),
                        finding(FindingKind::Pending, 2),
                    ]
                }),
                "CRITICAL - tag not matched by the device group rule (1 device in UnassignedGroup: d1); 2 tagged devices pending propagation (d1, d2)",
            ),
            (
                "guard and invalid desired state",
                with(&|i| {
                    i.desired_invalid = Some("desired state is invalid (1 error)".into());
                    i.guard_refusals = vec![GuardRefusal {
                        group: GroupKind::Devices,
                        removals: 60,
                        max_removals: 50,
                        at: now(),
                    }];
                }),
                "CRITICAL - desired state is invalid (1 error); removal guard refused 60 removals from devices (max_removals 50); run apply --allow-mass-removal if intended",
            ),
        ];
        for (name, inputs, want) in cases {
            let got = evaluate(&inputs, now());
            let head = got.line.split(" | ").next().unwrap();
            assert_eq!(head, format!("DEXSCOPE {want}"), "case {name}");
        }
    }

    #[test]
    fn perfdata_and_unknown() {
        let p = crate::priority::check::Placement {
            device_group_name: "G".into(),
            propagation_grace: TimeDelta::hours(2),
            tagged: Vec::new(),
            missing_tag: Vec::new(),
            sightings: Vec::new(),
        };
        let out = evaluate(
            &Inputs {
                findings: check_priority(&p, now()),
                alerts_firing: 2,
                ..Inputs::default()
            },
            now(),
        );
        assert!(
            out.line.ends_with(
                "| tagged=0 in_group=0 outranked=0;;0 unmatched=0;;0 pending=0;0 missing_tag=0;0 \
             unresolved=0;0 unresolved_users=0;0 device_removals_refused=0;;0 \
             user_removals_refused=0;;0 alerts_firing=2"
            ),
            "{}",
            out.line
        );
        // Refused user removals and the user group's figures show.
        let out = evaluate(
            &Inputs {
                findings: check_priority(&p, now()),
                users: Some(GroupFigures {
                    desired: 40,
                    effective: 100,
                    drift: 60,
                }),
                guard_refusals: vec![GuardRefusal {
                    group: GroupKind::Users,
                    removals: 60,
                    max_removals: 50,
                    at: now(),
                }],
                ..Inputs::default()
            },
            now(),
        );
        assert_eq!(out.status, Status::Critical);
        assert!(
            out.line.ends_with(
                " device_removals_refused=0;;0 user_removals_refused=60;;0 users_desired=40 \
                 users_in_group=100 alerts_firing=0"
            ),
            "{}",
            out.line
        );
        let u = Outcome::unknown("bad config: x | y\nz");
        assert_eq!(u.line, "DEXSCOPE UNKNOWN - bad config: x   y z");
        assert_eq!(u.status.code(), 3);
        assert_eq!(u.json()["status"], "unknown");
    }
}
