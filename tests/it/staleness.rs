//! One staleness rule: `check`, `status` and `/readyz` agree, second by second around the
//! boundary, about whether a loop's last success is stale, and each agrees with the rule itself.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use dexscope::check::{self, Status};
use dexscope::config::Schedule;
use dexscope::daemon::{self, PassSummary};
use dexscope::metrics::{Health, LoopHealth};
use dexscope::state::records;
use dexscope::status;

fn now() -> DateTime<Utc> {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

fn schedule() -> Schedule {
    Schedule {
        reconcile_every: Duration::from_secs(300),
        priority_every: Duration::from_secs(900),
        incidents_every: Duration::from_secs(60),
    }
}

/// Whether each of `check`, `status` and `/readyz` calls the reconcile loop stale when its
/// last (successful) pass finished `age` seconds before now.
fn verdicts(age: i64) -> (bool, bool, bool) {
    let every = schedule().reconcile_every;
    let finished = now() - TimeDelta::seconds(age);
    let pass = daemon::pass_record(
        daemon::RECONCILE,
        finished - TimeDelta::seconds(1),
        finished,
        &Ok(PassSummary::default()),
        None,
    );
    let probe = check::evaluate(
        &check::Inputs {
            passes: vec![pass.clone()],
            schedule: Some(schedule()),
            ..check::Inputs::default()
        },
        now(),
    );
    let by_check = probe.status == Status::Warning && probe.line.contains("is stale");
    assert!(
        by_check || probe.status == Status::Ok,
        "age {age}: {}",
        probe.line
    );
    let summary = status::summarize(
        &status::Inputs {
            passes: vec![pass],
            ..status::Inputs::default()
        },
        &status::Settings {
            loops: vec![(daemon::RECONCILE, every)],
        },
        now(),
    );
    let by_status = summary.loops[0].stale;
    let health = Health {
        token_at: Some(now()),
        loops: [(
            daemon::RECONCILE.to_string(),
            LoopHealth {
                every,
                last_success: Some(finished),
            },
        )]
        .into(),
    };
    let by_readyz = health.readiness(now()).is_err();
    (by_check, by_status, by_readyz)
}

#[test]
fn check_status_and_readyz_agree_at_the_boundary() {
    let limit = records::stale_after(schedule().reconcile_every).as_secs() as i64;
    for age in [0, 299, 600, limit - 1, limit, limit + 1, 899, 901, 3600] {
        let want = age > limit;
        assert_eq!(
            verdicts(age),
            (want, want, want),
            "age {age}s (limit {limit}s): (check, status, readyz)"
        );
    }
}
