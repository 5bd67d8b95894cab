//! Converging against a service that grants less than dexscope is configured for, or changes
//! its grant mid-run: wall time to converge as a ratio to the minimum the service's own quota
//! allows (its grant over time, replayed greedily), with the throttled and early calls.

use std::time::{Duration, Instant};

use dexscope::sim::quota::QuotaStep;

use crate::Row;
use crate::env::{Env, LARGE_TENANT_LIMITS, PATCH_GROUP, secs, seeded, sim_quotas};

/// Rates × this: Graph directory writes get 3,000 per 18.75 s at the documented quota.
const K: u32 = 8;

/// The least time `calls` writes take when the service admits `budget × share(t)` per sliding
/// `window`, the first at 0 and each as soon as the window lets it: the service's own minimum.
fn service_minimum(
    calls: u64,
    budget: u64,
    window: Duration,
    steps: &[(Duration, f64)],
) -> Duration {
    let share_at = |t: Duration| {
        steps
            .iter()
            .rev()
            .find(|(at, _)| t >= *at)
            .map_or(1.0, |(_, f)| *f)
    };
    let mut admitted: std::collections::VecDeque<Duration> = Default::default();
    let mut t = Duration::ZERO;
    for _ in 0..calls {
        loop {
            while admitted.front().is_some_and(|a| *a + window <= t) {
                admitted.pop_front();
            }
            let limit = ((budget as f64) * share_at(t)).floor().max(1.0) as usize;
            if admitted.len() < limit {
                admitted.push_back(t);
                break;
            }
            // Next instant something changes: the oldest call leaves, or the next step starts.
            let leave = admitted[admitted.len() - limit] + window;
            let next_step = steps.iter().map(|(at, _)| *at).find(|at| *at > t);
            t = next_step
                .map_or(leave, |s| s.min(leave))
                .max(t + Duration::from_micros(1));
        }
    }
    t
}

/// `n` user adds against a service granting `factor` of the documented write quota, changing
/// as `steps` say (offsets from the first call); dexscope configured at the documented quota.
async fn converge(
    n: usize,
    factor: f64,
    steps: &[(Duration, f64)],
    figure: String,
    target: (&str, f64),
) -> Vec<Row> {
    let mut quotas = sim_quotas(K);
    quotas.factor = factor;
    quotas.schedule = steps
        .iter()
        .map(|(at, f)| QuotaStep {
            after_requests: None,
            after_ms: Some(at.as_millis() as i64),
            factor: *f,
        })
        .collect();
    let env = Env::start(seeded(n, 0, 10, 0.0, 0, quotas)).await;
    env.write_config(LARGE_TENANT_LIMITS);
    let users = env.upns(n);
    env.write_desired(&users, &[]);
    let desired = env.desired();
    let tenant = env.tenant(env.configured_quotas(K));
    env.sim.reset_stats();
    let started = Instant::now();
    let report = env.pass(&tenant, &desired).await;
    let wall = started.elapsed();
    let s = env.sim.stats();
    let window = Duration::from_secs(150) / K;
    let mut grant: Vec<(Duration, f64)> = vec![(Duration::ZERO, factor)];
    grant.extend_from_slice(steps);
    let min = service_minimum(n.div_ceil(20) as u64, 3_000, window, &grant);
    let ratio = wall.as_secs_f64() / min.as_secs_f64();
    let converged = report.converged() && env.member_count() == n;
    let granted = tenant.http.stats();
    env.sim.shutdown().await;
    let w = granted.surface(dexscope::http::Surface::GraphWrite);
    vec![Row::new(
        figure,
        format!(
            "{} = {ratio:.2} × the service's minimum {} ({} PATCHes, {} throttled, {} early; \
             learned {:.0} writes/s of {:.0} configured)",
            secs(wall),
            secs(min),
            s.calls(PATCH_GROUP),
            s.throttled_total(),
            s.early_retries_total(),
            w.granted_per_s,
            w.budget_per_s,
        ),
        target.0,
        Some(converged && ratio <= target.1),
    )]
}

/// The service grants a quarter of the configured write budget from the start.
pub async fn quarter_of_budget() -> Vec<Row> {
    let n = 30_000;
    converge(
        n,
        0.25,
        &[],
        format!("wall time to converge {n} user adds, the service granting a quarter of the configured write budget (rates × {K})"),
        ("≤ 1.2 × the service's own minimum", 1.2),
    )
    .await
}

/// The service halves its grant a few seconds in and restores it a window later.
pub async fn quota_changes_mid_run() -> Vec<Row> {
    let n = 100_000;
    let window = Duration::from_secs(150) / K;
    converge(
        n,
        1.0,
        &[(Duration::from_secs(2), 0.5), (Duration::from_secs(2) + window, 1.0)],
        format!("wall time to converge {n} user adds, the service's write quota halved then restored mid-run (rates × {K})"),
        ("≤ 1.25 × the service's own minimum", 1.25),
    )
    .await
}
