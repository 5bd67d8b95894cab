//! `dexscope status`: one screen that says whether scoped coverage is healthy, read from the
//! state database only (no tenant call, no token): the last pass of each loop and its summary,
//! the alert records, the removal guard's refusals, the posted verdicts and how Defender
//! Experts' pickups agreed with them over the last 7 days.
//!
//! [`gather`] reads the database into [`Inputs`]; [`summarize`] decides everything from them
//! and `now` (pure); [`Status`] prints as text for a terminal or as JSON for scripts.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::alerts::{AlertRecord, AlertState};
use crate::config::Config;
use crate::selectors::Finding;
use crate::state::GitSourceRecord;
use crate::state::records::{self, PriorityFigures, ReconcileFigures};
use crate::state::records::{INCIDENTS, PRIORITY, RECONCILE};
use crate::state::{AgreementCount, GuardRefusal, LoopPass, State, StateError};

pub use crate::state::records::GroupFigures;

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StatusFormat {
    #[default]
    Text,
    Json,
}

/// What the summary is decided from, as read from the state database.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub passes: Vec<LoopPass>,
    pub alerts: Vec<AlertRecord>,
    pub refusals: Vec<GuardRefusal>,
    /// Verdicts posted in the last 24 hours, by verdict.
    pub verdicts_24h: Vec<(String, u64)>,
    /// Pickup agreements settled in the last 7 days: (verdict, `taken`|`not_taken`, count).
    pub pickup_7d: Vec<AgreementCount>,
    /// The git source's last fetch, when the daemon reads one.
    pub git: Option<GitSourceRecord>,
    /// How each selector fared in the last pass that stored them.
    pub selectors: Vec<Finding>,
}

/// The loops and their intervals (a loop is stale by [`records::is_stale`], the rule `check`
/// and `/readyz` use).
#[derive(Debug, Clone)]
pub struct Settings {
    pub loops: Vec<(&'static str, Duration)>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let s = &config.schedule;
        Settings {
            loops: vec![
                (RECONCILE, s.reconcile_every),
                (PRIORITY, s.priority_every),
                (INCIDENTS, s.incidents_every),
            ],
        }
    }
}

/// The whole summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub healthy: bool,
    /// One line per reason it is not healthy, worst first.
    pub problems: Vec<String>,
    /// From the last successful reconcile pass.
    pub coverage: Option<Coverage>,
    /// From the last successful priority pass.
    pub priority: Option<Priority>,
    pub alerts_firing: Vec<Firing>,
    pub guard_refusals: Vec<Refusal>,
    pub loops: Vec<LoopStatus>,
    pub verdicts_24h: Vec<VerdictCount>,
    /// Judged incidents of the last 7 days by verdict and whether Defender Experts took them
    /// within `pickup_within`.
    pub pickup_7d: Vec<Agreement>,
    /// The git source: applied commit, verified or refused head, last fetch.
    pub git_source: Option<GitSourceRecord>,
    /// How each selector fared in the last pass that stored them (what it yields, its origin,
    /// whether it is unresolved and what it keeps).
    pub selectors: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    pub users: GroupFigures,
    pub devices: GroupFigures,
    /// Desired entries that could not be resolved, with why.
    pub unresolved: Vec<String>,
    pub pending_changes: u64,
    /// The desired state's commit the pass applied.
    pub commit: Option<String>,
    /// "not converged: throttled (…)" when the service's throttling outlasted the last pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Priority {
    /// `ok`, `warning` or `critical`.
    pub worst: String,
    pub findings: Vec<FindingLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingLine {
    pub severity: String,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Firing {
    pub alert: String,
    pub subject: String,
    pub severity: String,
    pub since: DateTime<Utc>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    pub group: String,
    pub removals: u64,
    pub max_removals: u32,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopStatus {
    pub name: String,
    pub every_secs: u64,
    pub last_pass: Option<DateTime<Utc>>,
    pub last_pass_ok: Option<bool>,
    pub last_error: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_success_age_secs: Option<i64>,
    pub stale: bool,
}

/// How many incidents of one verdict Defender Experts took (or did not) within `pickup_within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub verdict: String,
    /// `taken` | `not_taken`.
    pub pickup: String,
    pub count: u64,
}

/// The window of the pickup agreement `status` shows.
pub const AGREEMENT_WINDOW: TimeDelta = TimeDelta::days(7);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictCount {
    pub verdict: String,
    pub count: u64,
}

/// Reads what `status` needs from the database. Read-only.
pub fn gather(state: &State, now: DateTime<Utc>) -> Result<Inputs, StateError> {
    Ok(Inputs {
        passes: state.last_passes()?,
        alerts: state.alerts()?,
        refusals: state.guard_refusals()?,
        verdicts_24h: state.verdict_counts(now - TimeDelta::hours(24))?,
        pickup_7d: state.pickup_agreement(now - AGREEMENT_WINDOW)?,
        git: state.git_source()?,
        selectors: crate::selectors::last_findings(state),
    })
}

/// Decides the summary. Pure: `now` is a parameter.
pub fn summarize(inputs: &Inputs, settings: &Settings, now: DateTime<Utc>) -> Status {
    let pass = |name: &str| inputs.passes.iter().find(|p| p.loop_name == name);
    let coverage = pass(RECONCILE)
        .and_then(LoopPass::reconcile_figures)
        .map(|f| coverage(&f));
    let priority = pass(PRIORITY)
        .and_then(LoopPass::priority_figures)
        .map(|f| priority(&f));
    let loops: Vec<LoopStatus> = settings
        .loops
        .iter()
        .map(|(name, every)| loop_status(name, *every, pass(name), now))
        .collect();
    let alerts_firing = firing(&inputs.alerts);
    let guard_refusals: Vec<Refusal> = inputs
        .refusals
        .iter()
        .map(|r| Refusal {
            group: r.group.as_str().into(),
            removals: r.removals,
            max_removals: r.max_removals,
            at: r.at,
        })
        .collect();

    let mut problems = Vec::new();
    if let Some(p) = priority.as_ref().filter(|_| priority_critical(&priority)) {
        for f in p.findings.iter().filter(|f| f.severity == "critical") {
            problems.push(format!("priority: {}", f.summary));
        }
    }
    for r in &guard_refusals {
        problems.push(format!(
            "removal guard refused {} removals from {} (max {}); review, then `dexscope apply --allow-mass-removal`",
            r.removals, r.group, r.max_removals
        ));
    }
    let selector_warnings: Vec<String> = inputs
        .selectors
        .iter()
        .filter_map(Finding::warning)
        .collect();
    problems.extend(selector_warnings.iter().cloned());
    // The priority finding, the guard refusals and the selectors are already said above; their
    // alerts would only repeat them.
    let said = |alert: &str| match alert {
        "priority_misconfigured" => priority_critical(&priority),
        "removal_guard_tripped" => !guard_refusals.is_empty(),
        "selector_unresolved" => !selector_warnings.is_empty(),
        _ => false,
    };
    for a in alerts_firing.iter().filter(|a| !said(&a.alert)) {
        problems.push(format!("alert {} firing: {}", a.alert, a.summary));
    }
    for l in loops.iter().filter(|l| l.stale) {
        problems.push(match l.last_success_age_secs {
            Some(age) => format!(
                "{} loop: last success {} ago",
                l.name,
                crate::text::age(age)
            ),
            None => format!("{} loop: no successful pass recorded", l.name),
        });
    }
    if let Some(c) = &coverage
        && !c.unresolved.is_empty()
    {
        let n = c.unresolved.len();
        problems.push(format!(
            "{n} desired {} unresolved (unknown or ambiguous; see below)",
            if n == 1 { "entry" } else { "entries" }
        ));
    }
    Status {
        at: now,
        healthy: problems.is_empty(),
        problems,
        coverage,
        priority,
        alerts_firing,
        guard_refusals,
        loops,
        verdicts_24h: inputs
            .verdicts_24h
            .iter()
            .map(|(verdict, count)| VerdictCount {
                verdict: verdict.clone(),
                count: *count,
            })
            .collect(),
        pickup_7d: agreements(&inputs.pickup_7d),
        git_source: inputs.git.clone(),
        selectors: inputs.selectors.clone(),
    }
}

/// The alerts that fire now.
fn firing(alerts: &[AlertRecord]) -> Vec<Firing> {
    alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| Firing {
            alert: a.kind.as_str().into(),
            subject: a.subject.clone(),
            severity: a.severity.as_str().into(),
            since: a.since,
            summary: a.summary.clone(),
        })
        .collect()
}

fn agreements(counts: &[AgreementCount]) -> Vec<Agreement> {
    counts
        .iter()
        .map(|(verdict, pickup, count)| Agreement {
            verdict: verdict.clone(),
            pickup: pickup.clone(),
            count: *count,
        })
        .collect()
}

fn priority_critical(priority: &Option<Priority>) -> bool {
    priority.as_ref().is_some_and(|p| p.worst == "critical")
}

fn coverage(f: &ReconcileFigures) -> Coverage {
    Coverage {
        users: f.users,
        devices: f.devices,
        unresolved: f.unresolved_lines().collect(),
        pending_changes: f.pending_changes,
        commit: f.commit.clone(),
        throttled: f.throttled.as_ref().map(|t| t.line()),
    }
}

fn priority(f: &PriorityFigures) -> Priority {
    const RANK: [&str; 3] = ["ok", "warning", "critical"];
    let worst = f
        .findings
        .iter()
        .filter_map(|f| RANK.iter().position(|r| *r == f.severity))
        .max()
        .unwrap_or(0);
    Priority {
        worst: RANK[worst].into(),
        findings: f
            .findings
            .iter()
            .map(|f| FindingLine {
                severity: f.severity.clone(),
                summary: f.summary.clone(),
            })
            .collect(),
    }
}

fn loop_status(
    name: &str,
    every: Duration,
    pass: Option<&LoopPass>,
    now: DateTime<Utc>,
) -> LoopStatus {
    let last_success = pass.and_then(LoopPass::last_success);
    LoopStatus {
        name: name.into(),
        every_secs: every.as_secs(),
        last_pass: pass.map(|p| p.finished),
        last_pass_ok: pass.map(|p| p.ok),
        last_error: pass.and_then(LoopPass::failed_record).map(|f| f.error),
        last_success,
        last_success_age_secs: last_success.map(|t| (now - t).num_seconds().max(0)),
        stale: records::is_stale(every, last_success, now),
    }
}

impl std::fmt::Display for Status {
    /// The terminal summary: the verdict first, then one block per topic.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_verdict(&mut s);
        self.write_coverage(&mut s);
        self.write_git_source(&mut s);
        self.write_priority(&mut s);
        self.write_guard_and_alerts(&mut s);
        self.write_loops(&mut s);
        self.write_verdicts(&mut s);
        self.write_pickups(&mut s);
        f.write_str(&s)
    }
}

impl Status {
    /// Healthy or not, and why not.
    fn write_verdict(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "coverage: {} ({})",
            if self.healthy { "HEALTHY" } else { "UNHEALTHY" },
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        for p in &self.problems {
            let _ = writeln!(s, "  ! {p}");
        }
        s.push('\n');
    }

    /// The groups' figures from the last reconcile pass.
    fn write_coverage(&self, s: &mut String) {
        match &self.coverage {
            Some(c) => {
                let _ = writeln!(s, "groups            desired  effective  drift");
                for (name, g) in [("users", c.users), ("devices", c.devices)] {
                    let _ = writeln!(
                        s,
                        "  {name:<15} {:>7}  {:>9}  {:>5}",
                        g.desired, g.effective, g.drift
                    );
                }
                let _ = writeln!(s, "pending changes:  {}", c.pending_changes);
                if let Some(t) = &c.throttled {
                    let _ = writeln!(s, "                  {t}");
                }
                let _ = writeln!(s, "unresolved:       {}", c.unresolved.len());
                for u in &c.unresolved {
                    let _ = writeln!(s, "  - {u}");
                }
                let _ = writeln!(
                    s,
                    "desired commit:   {}",
                    c.commit.as_deref().unwrap_or("(not in git)")
                );
            }
            None => {
                let _ = writeln!(s, "groups: no successful reconcile pass recorded");
            }
        }
        if !self.selectors.is_empty() {
            let _ = writeln!(
                s,
                "selectors:        {}",
                crate::selectors::expand::summary(&self.selectors)
            );
        }
    }

    /// The git source, when there is one: what is applied, what was refused, the last fetch.
    fn write_git_source(&self, s: &mut String) {
        let Some(g) = &self.git_source else {
            return;
        };
        let _ = writeln!(s, "git source:       {} {}", g.url, g.branch);
        let verified = if g.verified {
            "verified"
        } else {
            "not verified (verify = none)"
        };
        let _ = writeln!(
            s,
            "  applied:        {} ({verified})",
            g.applied.as_deref().unwrap_or("(none)")
        );
        if let Some(r) = &g.refused {
            let _ = writeln!(s, "  refused head:   {}: {}", r.commit, r.reason);
        }
        let age = |t: Option<DateTime<Utc>>| {
            t.map_or("never".into(), |t| {
                format!("{} ago", crate::text::age((self.at - t).num_seconds()))
            })
        };
        let _ = writeln!(s, "  last fetch:     {}", age(g.last_fetch));
        let _ = writeln!(s, "  last good:      {}", age(g.last_ok_fetch));
        if let Some(e) = &g.error {
            let _ = writeln!(s, "  fetch error:    {e}");
        }
    }

    /// The priority findings.
    fn write_priority(&self, s: &mut String) {
        match &self.priority {
            Some(p) => {
                let _ = writeln!(s, "priority:         {}", p.worst);
                for f in &p.findings {
                    let _ = writeln!(s, "  - {}: {}", f.severity, f.summary);
                }
            }
            None => {
                let _ = writeln!(s, "priority:         no successful priority pass recorded");
            }
        }
    }

    /// The removal guard and the alerts firing.
    fn write_guard_and_alerts(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "removal guard:    {}",
            if self.guard_refusals.is_empty() {
                "clear"
            } else {
                "REFUSED"
            }
        );
        for r in &self.guard_refusals {
            let _ = writeln!(
                s,
                "  - {}: {} removals (max {}) at {}",
                r.group,
                r.removals,
                r.max_removals,
                r.at.format("%Y-%m-%d %H:%M")
            );
        }
        let _ = writeln!(s, "alerts firing:    {}", self.alerts_firing.len());
        for a in &self.alerts_firing {
            let subject = if a.subject.is_empty() {
                String::new()
            } else {
                format!(" [{}]", a.subject)
            };
            let _ = writeln!(
                s,
                "  - {} {}{subject} since {}: {}",
                a.severity,
                a.alert,
                a.since.format("%Y-%m-%d %H:%M"),
                a.summary
            );
        }
    }

    /// Each loop's last success and age.
    fn write_loops(&self, s: &mut String) {
        let _ = writeln!(s, "loops             last success       age  every");
        for l in &self.loops {
            let when = l
                .last_success
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "never".into());
            let age = l
                .last_success_age_secs
                .map(crate::text::age)
                .unwrap_or_else(|| "-".into());
            let mark = if l.stale { "  STALE" } else { "" };
            let _ = writeln!(
                s,
                "  {:<15} {when:<16} {age:>6}  {}{mark}",
                l.name,
                crate::text::age(l.every_secs as i64)
            );
            if let Some(e) = &l.last_error {
                let _ = writeln!(s, "    last pass failed: {e}");
            }
        }
    }

    /// Verdicts posted in the last 24 hours.
    fn write_verdicts(&self, s: &mut String) {
        let verdicts = if self.verdicts_24h.is_empty() {
            "none".to_string()
        } else {
            self.verdicts_24h
                .iter()
                .map(|v| format!("{} {}", v.verdict, v.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "verdicts (24h):   {verdicts}");
    }

    /// Whether Defender Experts took what dexscope judged, over the last 7 days: per verdict,
    /// taken and not taken within `pickup_within`.
    fn write_pickups(&self, s: &mut String) {
        if self.pickup_7d.is_empty() {
            let _ = writeln!(s, "pickups (7d):     none settled");
            return;
        }
        let count = |verdict: &str, pickup: &str| {
            self.pickup_7d
                .iter()
                .filter(|a| a.verdict == verdict && a.pickup == pickup)
                .map(|a| a.count)
                .sum::<u64>()
        };
        let _ = writeln!(
            s,
            "pickups (7d):     in scope {} taken, {} not taken; out of scope {} taken, {} not taken",
            count("in_scope", "taken"),
            count("in_scope", "not_taken"),
            count("out_of_scope", "taken"),
            count("out_of_scope", "not_taken"),
        );
    }
}

/// `dexscope status`: reads the state database (never the tenant) and prints the summary.
/// Exit 0 whatever the health (`check` is the probe with health exit codes); 1 when the
/// database cannot be read.
pub fn status_command(
    config: &Config,
    format: StatusFormat,
    now: DateTime<Utc>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let path = &config.state.path;
    let inputs = match State::open_read_only(path).and_then(|state| gather(&state, now)) {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            return 1;
        }
    };
    let status = summarize(&inputs, &Settings::from_config(config), now);
    let printed = match format {
        StatusFormat::Text => write!(out, "{status}"),
        StatusFormat::Json => serde_json::to_string_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|j| writeln!(out, "{j}")),
    };
    match printed {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "dexscope: cannot print the status: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A loop is stale past twice its interval plus the slack, as `/readyz` decides; a failed
    /// last pass is judged by the success it carries forward.
    #[test]
    fn staleness_and_ages() {
        let now = at("2026-11-22T12:00:00Z");
        let every = Duration::from_secs(300);
        let pass = |finished: &str, ok: bool, summary: Value| LoopPass {
            loop_name: "reconcile".into(),
            started: at(finished),
            finished: at(finished),
            ok,
            summary,
        };
        let cases: &[(Option<LoopPass>, bool, Option<&str>)] = &[
            (None, true, None),
            // 2 × 300 s + 60 s = 660 s is the limit.
            (
                Some(pass("2026-11-22T11:49:00Z", true, json!({}))),
                false,
                Some("11m"),
            ),
            (
                Some(pass("2026-11-22T11:48:59Z", true, json!({}))),
                true,
                Some("11m"),
            ),
            (
                Some(pass(
                    "2026-11-22T11:59:00Z",
                    false,
                    json!({"error": "x", "last_success": "2026-11-22T09:30:00Z"}),
                )),
                true,
                Some("2h 30m"),
            ),
            (
                Some(pass("2026-11-22T11:59:00Z", false, json!({"error": "x"}))),
                true,
                None,
            ),
        ];
        for (p, stale, age) in cases {
            let l = loop_status("reconcile", every, p.as_ref(), now);
            assert_eq!(l.stale, *stale, "{p:?}");
            assert_eq!(
                l.last_success_age_secs.map(crate::text::age).as_deref(),
                *age,
                "{p:?}"
            );
        }
        assert_eq!(crate::text::age(59), "59s");
        assert_eq!(crate::text::age(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }
}
