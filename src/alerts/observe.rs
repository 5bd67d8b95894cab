//! What the daemon's own findings mean as alerts: credentials and permissions at start, the
//! desired state read from files or from git. Pure: the daemon reports what it saw (and `now`),
//! these functions decide the alert kind, severity and wording, as `reconcile::observe` and
//! `incidents::observe` do for the passes.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::transition::Observation;
use crate::auth::RolesReport;
use crate::state::{AlertKind, AlertSeverity};

/// `missing_permission` for one resource whose token was obtained.
pub fn permissions(resource: &str, report: &RolesReport) -> Observation {
    if report.is_complete() {
        return Observation::good(AlertKind::MissingPermission, resource);
    }
    Observation::bad(
        AlertKind::MissingPermission,
        resource,
        AlertSeverity::Critical,
        report.message.clone(),
        json!({ "missing": report.missing }),
    )
}

/// `auth_failure`: resolved once any token was obtained, else firing with every resource's
/// error (`errors` are `resource: error` texts, free of secrets as every error of `auth` is).
pub fn auth(got_a_token: bool, errors: &[String]) -> Observation {
    if got_a_token {
        return Observation::good(AlertKind::AuthFailure, "");
    }
    Observation::bad(
        AlertKind::AuthFailure,
        "",
        AlertSeverity::Critical,
        format!("cannot obtain a token: {}", errors.join("; ")),
        json!({}),
    )
}

/// How many failed passes in a row make a loop's failure an alert: one failure is retried by
/// the next tick and is routine (a network blip, a throttled answer).
pub const FAILURES_BEFORE_ALERT: u32 = 2;

/// `loop_failing` after a pass: resolved by a success (`failures` 0), firing from
/// [`FAILURES_BEFORE_ALERT`] failures in a row, nothing to say in between.
pub fn loop_failing(name: &str, failures: u32, error: &str) -> Option<Observation> {
    if failures == 0 {
        return Some(Observation::good(AlertKind::LoopFailing, name));
    }
    (failures >= FAILURES_BEFORE_ALERT).then(|| {
        Observation::bad(
            AlertKind::LoopFailing,
            name,
            AlertSeverity::Warning,
            format!("the {name} loop failed {failures} times in a row: {error}"),
            json!({ "loop": name, "failures": failures }),
        )
    })
}

/// `invalid_desired_state` for a desired state read from files: `error` is the last read's
/// refusal, already saying what is kept and what to fix.
pub fn desired_files(error: Option<&str>, path: &Path) -> Observation {
    match error {
        None => Observation::good(AlertKind::InvalidDesiredState, ""),
        Some(error) => Observation::bad(
            AlertKind::InvalidDesiredState,
            "",
            AlertSeverity::Critical,
            error.to_string(),
            json!({ "path": path.display().to_string() }),
        ),
    }
}

/// What the git source's last refresh found, for its three alerts.
#[derive(Debug, Clone, Copy)]
pub struct GitFindings<'a> {
    /// `branch:path at url`, to name the source.
    pub source: &'a str,
    /// The commit applied now, if any.
    pub applied: Option<&'a str>,
    /// A fetched commit whose files are invalid, and why.
    pub invalid: Option<(&'a str, &'a str)>,
    /// A head refused by signature verification, and why.
    pub refused: Option<(&'a str, &'a str)>,
    /// The last fetch error, and since when no fetch has reached the repository.
    pub failing: Option<(&'a str, DateTime<Utc>)>,
    pub stale_after: Duration,
}

/// `invalid_desired_state`, `unverified_desired_state` and `desired_state_stale` for a git
/// source. A failing fetch is only stale after `stale_after`: one failed fetch is routine.
pub fn desired_git(f: &GitFindings<'_>, now: DateTime<Utc>) -> Vec<Observation> {
    let applied = f.applied.unwrap_or("(none)");
    let invalid = match f.invalid {
        None => Observation::good(AlertKind::InvalidDesiredState, ""),
        Some((commit, message)) => Observation::bad(
            AlertKind::InvalidDesiredState,
            "",
            AlertSeverity::Critical,
            format!(
                "{message} (commit {commit} of {}); keeping the last valid desired state \
                 (commit {applied}): fix it and commit",
                f.source
            ),
            json!({ "commit": commit, "applied": f.applied }),
        ),
    };
    let refused = match f.refused {
        None => Observation::good(AlertKind::UnverifiedDesiredState, ""),
        Some((commit, reason)) => Observation::bad(
            AlertKind::UnverifiedDesiredState,
            "",
            AlertSeverity::Critical,
            format!(
                "head commit {commit} of {} refused: {reason}; keeping the last verified \
                 desired state (commit {applied}): sign the commit with a key allowed_signers \
                 lists",
                f.source
            ),
            json!({ "commit": commit, "reason": reason, "applied": f.applied }),
        ),
    };
    vec![invalid, refused, git_staleness(f, now)]
}

fn git_staleness(f: &GitFindings<'_>, now: DateTime<Utc>) -> Observation {
    let good = Observation::good(AlertKind::DesiredStateStale, "");
    let Some((error, since)) = f.failing else {
        return good;
    };
    let age = (now - since).to_std().unwrap_or_default();
    if age < f.stale_after {
        return good;
    }
    Observation::bad(
        AlertKind::DesiredStateStale,
        "",
        AlertSeverity::Warning,
        format!(
            "the desired state has not been fetched from {} for {}: {error}; keeping the last \
             good state (commit {})",
            f.source,
            crate::text::duration(age),
            f.applied.unwrap_or("(none)")
        ),
        json!({ "error": error, "applied": f.applied, "since": since }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_git_fetch_is_stale_only_after_its_bound() {
        let since = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = GitFindings {
            source: "main:scope at file:///repo",
            applied: Some("abc"),
            invalid: None,
            refused: None,
            failing: Some(("cannot fetch", since)),
            stale_after: Duration::from_secs(180),
        };
        let firing = |now: DateTime<Utc>| {
            desired_git(&f, now)
                .iter()
                .filter(|o| o.kind == AlertKind::DesiredStateStale && o.is_bad())
                .count()
        };
        assert_eq!(firing(since + chrono::TimeDelta::seconds(179)), 0);
        assert_eq!(firing(since + chrono::TimeDelta::seconds(180)), 1);
    }
}
