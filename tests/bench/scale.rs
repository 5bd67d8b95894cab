//! Rows at 100,000 users and 50,000 machines: requests and CPU of a pass with nothing to change,
//! peak RSS and CPU of the `plan` and `apply` processes, the desired-state parse and the pure
//! planner's CPU; and `plan`'s peak RSS at 1,000,000 users / 200,000 machines, with the growth
//! per 100,000 users.

use std::time::Duration;

use chrono::Utc;
use dexscope::desired::{self, Mode};
use dexscope::model::{GroupMember, Machine, MachineId, Upn, UserId};
use dexscope::reconcile::plan::ResolvedDesired;
use dexscope::reconcile::plan::{self, Actual, PlanSettings};
use dexscope::scope::{DesiredDeviceRef, DesiredUserRef};

use crate::Row;
use crate::env::{
    Env, Measured, Running, TAG, secs, seeded, sim_quotas, sim_unlimited, thread_cpu,
    token_requests,
};

const USERS: usize = 100_000;
const MACHINES: usize = 50_000;
const RSS_TARGET_MIB: f64 = 64.0;

/// A tenant where all 100k users are members and all 50k machines tagged, and a desired state
/// that lists exactly them.
async fn converged_tenant() -> Env {
    let env = Env::start(seeded(USERS, USERS, MACHINES, 1.0, 0, sim_quotas(1))).await;
    let users = env.member_upns();
    let machines = env.machine_ids(MACHINES);
    assert_eq!(users.len(), USERS);
    assert_eq!(env.sim.machines_with_tag(TAG).len(), MACHINES);
    env.write_desired(&users, &machines);
    env
}

/// A peak RSS row; a process that failed fails the row, whatever its memory.
fn rss_row(what: &str, m: &Measured, tail: &str) -> Row {
    let failed = m.code != Some(0);
    Row::new(
        format!("peak RSS of {what} at 100k users / 50k machines"),
        format!(
            "{:.1} MiB (CPU {}){}",
            m.rss_mib(),
            secs(m.cpu),
            if failed {
                format!("; exit {:?}: {tail}", m.code)
            } else {
                String::new()
            }
        ),
        format!("≤ {RSS_TARGET_MIB} MiB"),
        Some(!failed && m.rss_mib() <= RSS_TARGET_MIB),
    )
}

/// `plan` with no earlier state (every member read in full), `apply` twice through the binary
/// (the first leaves its state), then `plan` again: the second apply is the pass with nothing
/// to change, the second plan the warm one.
pub async fn unchanged_pass_at_scale() -> Vec<Row> {
    let env = converged_tenant().await;
    let cold = Running::spawn(env.bin("plan0", &["plan"])).wait().await;
    let first = Running::spawn(env.bin("apply1", &["apply"])).wait().await;
    assert_eq!(
        first.code,
        Some(0),
        "first apply: {}",
        env.stderr_tail("apply1")
    );

    env.sim.reset_stats();
    let second = Running::spawn(env.bin("apply2", &["apply"])).wait().await;
    let s = env.sim.stats();
    let reads: Vec<String> = s
        .http_by_route
        .iter()
        .filter(|(r, _)| !r.contains("oauth2"))
        .map(|(r, n)| format!("{n} × {r}"))
        .collect();
    let requests = s.http_requests;

    env.sim.reset_stats();
    let plan = Running::spawn(env.bin("plan", &["plan"])).wait().await;
    let plan_requests = env.sim.stats().http_requests;
    let tails = ["plan0", "apply2", "plan"].map(|name| env.stderr_tail(name));
    env.sim.shutdown().await;

    let ok_code = |m: &Measured| m.code == Some(0);
    vec![
        Row::new(
            "requests for a pass with nothing to change (100k users / 50k machines, second `apply`)",
            format!(
                "{requests} ({}; {} tokens)",
                reads.join(", "),
                token_requests(&s)
            ),
            "≤ 10",
            Some(ok_code(&second) && requests <= 10),
        ),
        Row::new(
            "CPU of that `apply` process (utime + stime)",
            secs(second.cpu),
            "≤ 1 s (as a whole `plan`)",
            Some(ok_code(&second) && second.cpu <= Duration::from_secs(1)),
        ),
        rss_row("`apply` with nothing to change", &second, &tails[1]),
        Row::new(
            "CPU of a whole `plan` process at 100k / 50k with earlier state (utime + stime)",
            format!("{} ({plan_requests} requests)", secs(plan.cpu)),
            "≤ 1 s",
            Some(ok_code(&plan) && plan.cpu <= Duration::from_secs(1)),
        ),
        rss_row(
            "`plan` with the state an earlier pass left",
            &plan,
            &tails[2],
        ),
        rss_row("`plan` with no earlier state", &cold, &tails[0]),
    ]
}

/// Client limits for the growth rows: the service quotas are off there, and the row measures
/// memory, not time, so the client's own windows are widened as far as the config allows
/// (the figures the 64× backlog row uses).
const WIDE_LIMITS: &str = "[limits]\ngraph_directory_reads_per_10s = 224000\n\
                           defender_per_minute = 6400\ndefender_per_hour = 96000\n";

/// `plan` with no earlier state against a converged tenant of `users` users (all members) and
/// `machines` tagged machines, desired state = the tenant: its peak RSS, CPU and requests.
async fn cold_plan(users: usize, machines: usize) -> (Measured, u64, String) {
    let env = Env::start(seeded(users, users, machines, 1.0, 0, sim_unlimited())).await;
    env.write_config(WIDE_LIMITS);
    let upns = env.member_upns();
    assert_eq!(upns.len(), users);
    env.write_desired(&upns, &env.machine_ids(machines));
    drop(upns);
    env.sim.reset_stats();
    let m = Running::spawn(env.bin("plan", &["plan"])).wait().await;
    let requests = env.sim.stats().http_requests;
    let tail = env.stderr_tail("plan");
    env.sim.shutdown().await;
    (m, requests, tail)
}

/// `plan`'s peak RSS at 1,000,000 users / 200,000 machines, and the slope from the
/// 100,000 / 50,000 figure taken the same way: MiB per 100,000 users (machines grow 4× along,
/// so the slope includes their share).
pub async fn plan_rss_growth() -> Vec<Row> {
    const BIG_USERS: usize = 1_000_000;
    const BIG_MACHINES: usize = 200_000;
    let (small, _, small_tail) = cold_plan(USERS, MACHINES).await;
    let (big, requests, big_tail) = cold_plan(BIG_USERS, BIG_MACHINES).await;
    let ok = small.code == Some(0) && big.code == Some(0);
    let slope = (big.rss_mib() - small.rss_mib()) / ((BIG_USERS - USERS) as f64 / 100_000.0);
    vec![Row::new(
        "peak RSS of `plan` (no earlier state) at 1,000,000 users / 200,000 machines",
        if ok {
            format!(
                "{:.1} MiB (CPU {}, {requests} requests); {:.1} MiB at 100k / 50k; slope \
                 {slope:.2} MiB per 100,000 users",
                big.rss_mib(),
                secs(big.cpu),
                small.rss_mib(),
            )
        } else {
            format!(
                "failed: exit {:?} / {:?}: {small_tail} {big_tail}",
                small.code, big.code
            )
        },
        "reported: growth per 100,000 users",
        (!ok).then_some(false),
    )]
}

/// The desired-state parse of 100k users and 50k devices, in process: the share of the `plan`
/// process that is not network. Best of 3, thread CPU.
pub async fn desired_parse_cpu() -> Vec<Row> {
    let env = converged_tenant().await;
    let path = env.path("desired.toml");
    env.sim.shutdown().await;
    let best = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| {
                let t0 = thread_cpu();
                let loaded = desired::load(
                    std::slice::from_ref(&path),
                    Utc::now().date_naive(),
                    Mode::Runtime,
                )
                .expect("valid desired state");
                let t = thread_cpu() - t0;
                assert_eq!(loaded.state.users.len(), USERS);
                t
            })
            .min()
            .expect("three runs")
    })
    .await
    .expect("parse thread");
    vec![Row::new(
        "CPU of the desired-state load, 100k users + 50k devices (thread CPU, best of 3)",
        secs(best),
        "part of the ≤ 1 s `plan` process",
        None,
    )]
}

/// `validate` on the same desired state, through the binary: the parse alone, no network.
pub async fn validate_at_scale() -> Vec<Row> {
    let env = converged_tenant().await;
    let path = env.path("desired.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let m = Running::spawn(env.bin("validate", &["validate", path]))
        .wait()
        .await;
    let tail = env.stderr_tail("validate");
    env.sim.shutdown().await;
    vec![Row::new(
        "`validate` of the 100k-user / 50k-device desired state (the parse alone, a process)",
        format!(
            "CPU {}, peak RSS {:.1} MiB{}",
            secs(m.cpu),
            m.rss_mib(),
            if m.code == Some(0) {
                String::new()
            } else {
                format!(" (exit {:?}: {tail})", m.code)
            }
        ),
        "part of the `plan` figures above",
        (m.code != Some(0)).then_some(false),
    )]
}

fn uuid(n: usize, salt: u8) -> String {
    format!("{salt:02x}{:06x}-0000-4000-8000-{:012x}", n >> 24, n)
}

fn machine_id(n: usize) -> String {
    format!("{n:040x}")
}

/// Desired and actual for the pure planner: 100k users vs 100k members and 50k devices vs
/// 50k tagged machines, 1 % different on each side (1,000 adds + 1,000 removals of users,
/// 500 tags + 500 untags).
fn plan_inputs() -> (ResolvedDesired, Actual) {
    let users = (0..USERS)
        .map(|n| DesiredUserRef {
            id: UserId::parse(&uuid(n, 0xa0)).expect("uuid"),
            label: format!("user{n}@contoso.com"),
        })
        .collect();
    let members = (USERS / 100..USERS + USERS / 100)
        .map(|n| GroupMember::User {
            id: UserId::parse(&uuid(n, 0xa0)).expect("uuid"),
            upn: Some(Upn::parse(&format!("user{n}@contoso.com")).expect("upn")),
        })
        .collect();
    let devices = (0..MACHINES)
        .map(|n| DesiredDeviceRef {
            id: MachineId::parse(&machine_id(n)).expect("machine id"),
            label: machine_id(n),
        })
        .collect();
    let tagged = (MACHINES / 100..MACHINES + MACHINES / 100)
        .map(|n| Machine {
            id: MachineId::parse(&machine_id(n)).expect("machine id"),
            dns_name: None,
            aad_device_id: None,
            os_platform: Some("Windows11".into()),
            tags: vec![TAG.into()],
            rbac_group_id: None,
            rbac_group_name: None,
        })
        .collect();
    (
        ResolvedDesired {
            users,
            devices,
            ..ResolvedDesired::default()
        },
        Actual { members, tagged },
    )
}

/// `reconcile::plan::plan` for 100k desired vs 100k actual users (and 50k vs 50k devices):
/// thread CPU, best of 5.
pub async fn pure_plan_cpu() -> Vec<Row> {
    let (best, changes) = tokio::task::spawn_blocking(|| {
        let (desired, actual) = plan_inputs();
        let settings = PlanSettings {
            prune: true,
            max_removals: u32::MAX,
            allow_mass_removal: false,
            user_group: "bench".into(),
            device_tag: TAG.into(),
        };
        let mut best = Duration::MAX;
        let mut changes = 0;
        for _ in 0..5 {
            let t0 = thread_cpu();
            let p = plan::plan(&desired, &actual, &settings);
            best = best.min(thread_cpu() - t0);
            changes = p.change_count();
        }
        (best, changes)
    })
    .await
    .expect("plan thread");
    vec![Row::new(
        "CPU of the pure plan, 100k desired vs 100k actual users + 50k vs 50k devices (best of 5)",
        format!("{:.1} ms ({changes} changes)", best.as_secs_f64() * 1e3),
        "≤ 100 ms",
        Some(best <= Duration::from_millis(100) && changes == 3_000),
    )]
}
