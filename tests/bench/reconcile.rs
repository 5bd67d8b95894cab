//! Reconcile rows: requests per converged change against the batching minimum, wall time to
//! converge under throttling against the quota minimum, and the naive client for comparison.

use std::time::{Duration, Instant};

use crate::Row;
use crate::env::{
    BULK_TAG, Env, LARGE_TENANT_LIMITS, PATCH_GROUP, REMOVE_REF, client_quotas, secs, seeded,
    sim_quotas, sim_unlimited, token_requests, write_round_trips,
};
use crate::naive;

/// Rates × this for the throttled rows: Graph directory writes get 3,000 per 18.75 s.
pub const K_THROTTLE: u32 = 8;
/// Client limiter speed-up for the rows that only count requests (the simulator has no quotas
/// there, so this only keeps the client's own pacing short).
const K_COUNT: u32 = 64;

/// What one library pass cost, measured at the simulated tenant.
struct PassCost {
    write_round_trips: u64,
    reads: u64,
    tokens: u64,
    items: u64,
    throttled: u64,
    converged: bool,
}

impl PassCost {
    fn describe(&self) -> String {
        format!(
            "{} write round trips + {} reads ({} tokens; {} write items; {} throttled)",
            self.write_round_trips, self.reads, self.tokens, self.items, self.throttled
        )
    }
}

/// Plans once (the reads the pass starts with, counted for the `$batch` lookups), then runs
/// one reconcile pass and counts its requests by kind.
async fn measured_pass(env: &Env, k_client: u32, write_route: &str) -> PassCost {
    let tenant = env.tenant(client_quotas(k_client));
    let desired = env.desired();
    env.sim.reset_stats();
    env.plan(&tenant).await;
    let lookups = env
        .sim
        .stats()
        .http_by_route
        .get(crate::env::BATCH)
        .copied();
    env.sim.reset_stats();
    let report = env.pass(&tenant, &desired).await;
    let s = env.sim.stats();
    let writes = write_round_trips(&s, lookups.unwrap_or(0));
    let tokens = token_requests(&s);
    PassCost {
        write_round_trips: writes,
        reads: s.http_requests - writes - tokens,
        tokens,
        items: s.calls(write_route),
        throttled: s.throttled_total(),
        converged: report.converged() && report.plan.change_count() > 0,
    }
}

/// N user adds: at most ⌈N/400⌉ write round trips (20 PATCHes of 20 members per `$batch`).
pub async fn adds_requests(n: usize) -> Vec<Row> {
    let env = Env::start(seeded(n + 200, 0, 10, 0.0, 0, sim_unlimited())).await;
    let users = env.upns(n);
    env.write_desired(&users, &[]);
    let cost = measured_pass(&env, K_COUNT, PATCH_GROUP).await;
    let min = n.div_ceil(400) as u64;
    let ok = cost.converged && env.member_count() == n && cost.write_round_trips <= min;
    env.sim.shutdown().await;
    vec![Row::new(
        format!("requests to converge {n} user adds"),
        cost.describe(),
        format!("≤ {min} write round trips + reads"),
        Some(ok),
    )]
}

/// N member removals: one `DELETE …/$ref` per member, 20 per `$batch`: ⌈N/20⌉ round trips.
pub async fn removals_requests(n: usize) -> Vec<Row> {
    let keep = 100;
    let env = Env::start(seeded(n + keep, n + keep, 10, 0.0, 0, sim_unlimited())).await;
    let members = env.member_upns();
    assert_eq!(members.len(), n + keep, "every seeded user is a member");
    env.write_desired(&members[..keep], &[]);
    let cost = measured_pass(&env, K_COUNT, REMOVE_REF).await;
    let min = n.div_ceil(20) as u64;
    let ok = cost.converged && env.member_count() == keep && cost.write_round_trips <= min;
    env.sim.shutdown().await;
    vec![Row::new(
        format!("requests to converge {n} user removals"),
        cost.describe(),
        format!("≤ {min} write round trips (20 per $batch) + reads"),
        Some(ok),
    )]
}

/// N device tags: `AddOrRemoveTagForMultipleMachines` takes 500 ids: ⌈N/500⌉ calls.
pub async fn tags_requests(n: usize) -> Vec<Row> {
    let env = Env::start(seeded(10, 0, n + 100, 0.0, 0, sim_unlimited())).await;
    let machines = env.machine_ids(n);
    env.write_desired(&[], &machines);
    let cost = measured_pass(&env, K_COUNT, BULK_TAG).await;
    let min = n.div_ceil(500) as u64;
    let tagged = env.sim.machines_with_tag(crate::env::TAG).len();
    let ok = cost.converged && tagged == n && cost.write_round_trips <= min;
    env.sim.shutdown().await;
    vec![Row::new(
        format!("requests to converge {n} device tags"),
        cost.describe(),
        format!("≤ {min} bulk tag calls (500 ids each) + reads"),
        Some(ok),
    )]
}

/// The shortest time the simulated tenant's sliding window admits `calls` calls in:
/// call `j` (from 0) cannot be admitted before `⌊j / budget⌋ × window`.
fn quota_minimum(calls: u64, budget: u64, window: Duration) -> Duration {
    window * (calls.saturating_sub(1) / budget) as u32
}

/// 100,000 user adds at realistic quotas × K_THROTTLE: 5,000 writes of 20 members against a
/// write quota of 3,000 per window, so the pass must wait for the window at least once.
///
/// The simulated tenant has 100,000 users, so it gets the large-tenant read budget, and
/// dexscope is configured the way that tenant's operator would configure it
/// ([`LARGE_TENANT_LIMITS`]); every other limit is the shipped default.
pub async fn throttled_converge() -> Vec<Row> {
    let n = 100_000;
    let k = K_THROTTLE;
    let env = Env::start(seeded(n, 0, 10, 0.0, 0, sim_quotas(k))).await;
    env.write_config(LARGE_TENANT_LIMITS);
    let quotas = env.configured_quotas(k);
    let in_flight = env
        .tenant(quotas.clone())
        .http
        .settings()
        .write_batches_in_flight;
    let users = env.upns(n);
    env.write_desired(&users, &[]);
    let desired = env.desired();
    let tenant = env.tenant(quotas.clone());
    // The reads alone (what the pass does before its first write), timed on their own; then
    // the read windows are let pass so the pass starts from full budgets.
    let started = Instant::now();
    env.plan(&tenant).await;
    let reads_alone = started.elapsed();
    tokio::time::sleep(Duration::from_secs(10) / k * 2).await;
    let tenant = env.tenant(quotas.clone());
    env.sim.reset_stats();
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let report = env.pass(&tenant, &desired).await;
    let wall = started.elapsed();
    let ended_at = chrono::Utc::now();
    let s = env.sim.stats();
    // The re-read that verifies the pass, timed on its own with fresh budgets: what the time
    // after the last write costs as work rather than waiting.
    tokio::time::sleep(Duration::from_secs(10) / k * 2).await;
    let group = env.config().scope.user_group_id;
    let started = Instant::now();
    let reread = env.tenant(quotas).graph.list_group_members(&group).await;
    let reread_alone = started.elapsed();
    assert_eq!(
        reread.map(|m| m.len()).ok(),
        Some(n),
        "the re-read sees every member"
    );
    let writes = s.calls(PATCH_GROUP);
    let window = Duration::from_secs(150) / k;
    let min = quota_minimum(n.div_ceil(20) as u64, 3_000, window);
    let ratio = wall.as_secs_f64() / min.as_secs_f64();
    // The pass in three parts on the simulator's clock (the system clock; nothing moves it
    // here): up to the first member added, first to last, and after the last (the re-read).
    let log = env.sim.writes();
    let span = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
        (b - a).to_std().unwrap_or_default()
    };
    let (before, write_span, after) = match (log.first(), log.last()) {
        (Some(a), Some(b)) => (
            span(started_at, a.at),
            span(a.at, b.at),
            span(b.at, ended_at),
        ),
        _ => (Duration::ZERO, Duration::ZERO, Duration::ZERO),
    };
    let converged = report.converged() && env.member_count() == n;
    env.sim.shutdown().await;
    vec![
        Row::new(
            format!(
                "wall time to converge {n} user adds under throttling (rates × {k}; \
                 large-tenant read budget)"
            ),
            format!(
                "{} = {ratio:.2} × the minimum {} (reads before the first write {} alone, {} \
                 in the pass; first to last write {} = {:.2} ×, {in_flight} envelopes in \
                 flight; after the last write {}, the verifying re-read alone {}; {writes} \
                 PATCHes, {} throttled, {} requests)",
                secs(wall),
                secs(min),
                secs(reads_alone),
                secs(before),
                secs(write_span),
                write_span.as_secs_f64() / min.as_secs_f64(),
                secs(after),
                secs(reread_alone),
                s.throttled_total(),
                s.http_requests
            ),
            "≤ 1.1 × the minimum the quotas allow",
            Some(converged && ratio <= 1.1),
        ),
        Row::new(
            "requests sent before a Retry-After elapsed (throttled converge)",
            s.early_retries_total().to_string(),
            "0",
            Some(s.early_retries_total() == 0 && s.violations.is_empty()),
        ),
    ]
}

/// The same N adds by dexscope and by a naive client (one request per member, no `$batch`,
/// no limiter, `Retry-After` honoured), each against a fresh tenant at quotas × K_THROTTLE.
pub async fn naive_comparison(n: usize) -> Vec<Row> {
    let k = K_THROTTLE;
    let opts = || seeded(n + 200, 0, 10, 0.0, 0, sim_quotas(k));

    let env = Env::start(opts()).await;
    let users = env.upns(n);
    env.write_desired(&users, &[]);
    let desired = env.desired();
    let tenant = env.tenant(client_quotas(k));
    env.sim.reset_stats();
    let started = Instant::now();
    let report = env.pass(&tenant, &desired).await;
    let ours = (started.elapsed(), env.sim.stats().http_requests);
    let ours_ok = report.converged() && env.member_count() == n;
    env.sim.shutdown().await;

    let env = Env::start(opts()).await;
    let users = env.upns(n);
    env.sim.reset_stats();
    let started = Instant::now();
    let result = naive::converge(&env, &users, Duration::from_secs(240)).await;
    let theirs = (started.elapsed(), env.sim.stats().http_requests);
    let theirs_ok = result.is_ok() && env.member_count() == n;
    let early = env.sim.stats().early_retries_total();
    env.sim.shutdown().await;

    let measured = format!(
        "naive {} requests, {}{}; dexscope {} requests, {}; ratio {:.0}× requests, {:.1}× time",
        theirs.1,
        secs(theirs.0),
        match &result {
            Ok(()) if theirs_ok => String::new(),
            Ok(()) => " (did not converge)".into(),
            Err(e) => format!(" (failed: {e})"),
        },
        ours.1,
        secs(ours.0),
        theirs.1 as f64 / ours.1.max(1) as f64,
        theirs.0.as_secs_f64() / ours.0.as_secs_f64().max(1e-9),
    );
    vec![Row::new(
        format!("naive client vs dexscope, {n} user adds (rates × {k})"),
        measured,
        "comparison (no target)",
        if ours_ok && theirs_ok && early == 0 {
            None
        } else {
            Some(false)
        },
    )]
}
