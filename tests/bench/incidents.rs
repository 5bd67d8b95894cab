//! The daemon (`dexscope run`, the real binary) working a 5,000-incident backlog at 100,000
//! users and 50,000 machines: its cost, its peak RSS, and then the latency from a new
//! incident to its verdict comment.

use std::time::{Duration, Instant};

use dexscope::sim::IncidentSpec;

use crate::Row;
use crate::env::{Env, Measured, Running, TAG, secs, seeded, sim_quotas};

/// Rates × this for the backlog: Graph security gets 150 calls per 0.94 s.
const K: u32 = 64;
const INCIDENTS: usize = 5_000;
const POLL_SECS: u64 = 5;
const MARKER: &str = "dexscope-verdict:";

/// (incidents that should get a comment, incidents that have one, incidents with a marker
/// posted twice).
fn comment_counts(env: &Env) -> (usize, usize, usize) {
    let state = env.sim.state();
    let t = state.lock().unwrap_or_else(|p| p.into_inner());
    let mut expected = 0;
    let mut commented = 0;
    let mut duplicated = 0;
    for inc in &t.incidents.list {
        if inc.redirect_to.is_none() {
            expected += 1;
        }
        let mut markers: Vec<&str> = inc
            .comments
            .iter()
            .filter_map(|c| c.comment.lines().find(|l| l.starts_with(MARKER)))
            .collect();
        if !markers.is_empty() {
            commented += 1;
        }
        let n = markers.len();
        markers.sort_unstable();
        markers.dedup();
        if markers.len() < n {
            duplicated += 1;
        }
    }
    (expected, commented, duplicated)
}

fn daemon_config(env: &Env) {
    let k = K;
    env.write_config(&format!(
        "[schedule]\nreconcile_every = \"1h\"\npriority_every = \"1h\"\n\
         incidents_every = \"{POLL_SECS}s\"\n\
         [incidents]\nlookback = \"8d\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\ngraph_directory_writes_per_150s = {}\ngraph_directory_reads_per_10s = {}\n\
         graph_security_per_minute = {}\ndefender_per_minute = {}\ndefender_per_hour = {}\n",
        3_000 * k,
        3_500 * k,
        150 * k,
        100 * k,
        1_500 * k,
    ));
}

/// Waits (bounded by `limit`) until `done` holds, checking every `every`.
async fn wait_until(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    done()
}

/// The backlog, then five new incidents at staggered phases of the poll timer, then SIGTERM.
pub async fn daemon_backlog_latency_rss() -> Vec<Row> {
    let env = Env::start(seeded(
        100_000,
        100_000,
        50_000,
        1.0,
        INCIDENTS,
        sim_quotas(K),
    ))
    .await;
    let users = env.member_upns();
    let machines = env.machine_ids(50_000);
    env.write_desired(&users, &machines);
    daemon_config(&env);
    env.sim.reset_stats();

    let daemon = Running::spawn(env.bin("run", &["run"]));
    let drained = wait_until(Duration::from_secs(300), Duration::from_millis(100), || {
        let (expected, commented, _) = comment_counts(&env);
        commented >= expected
    })
    .await;
    let backlog_wall = daemon.started().elapsed();
    let s = env.sim.stats();
    let (expected, commented, duplicated) = comment_counts(&env);
    let security = s
        .calls_by_surface
        .get("graph_security")
        .copied()
        .unwrap_or(0);
    let window = Duration::from_secs(60) / K;
    let min = window * (security.saturating_sub(1) / 150) as u32;
    let route = |r: &str| s.http_by_route.get(r).copied().unwrap_or(0);
    let backlog = Row::new(
        format!("cost of a {INCIDENTS}-incident backlog (daemon, rates × {K})"),
        format!(
            "{commented} comments posted ({} redirected skipped, {duplicated} duplicated) in {} \
             from start (security-quota minimum {}); {} requests: {} list pages, {} incident \
             reads, {} comment posts, {} other; {} throttled",
            INCIDENTS - expected,
            secs(backlog_wall),
            secs(min),
            s.http_requests,
            route("GET /v1.0/security/incidents"),
            route("GET /v1.0/security/incidents/{id}"),
            route(crate::env::POST_COMMENT),
            s.http_requests - security,
            s.throttled_total(),
        ),
        "every incident but redirected ones commented once",
        Some(drained && commented == expected && duplicated == 0),
    );

    let latency = if drained {
        latency_samples(&env).await
    } else {
        Err("the backlog did not drain".into())
    };
    daemon.terminate();
    let m = daemon.wait().await;
    let tail = env.stderr_tail("run");
    env.sim.shutdown().await;

    let latency_row = match latency {
        Ok(samples) => {
            let max = samples.iter().max().copied().unwrap_or_default();
            let min = samples.iter().min().copied().unwrap_or_default();
            let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
            Row::new(
                format!("new incident → verdict comment (poll interval {POLL_SECS} s)"),
                format!(
                    "min {} / mean {} / max {} over {} incidents",
                    secs(min),
                    secs(mean),
                    secs(max),
                    samples.len()
                ),
                format!("≤ {} s", POLL_SECS + 2),
                Some(max <= Duration::from_secs(POLL_SECS + 2)),
            )
        }
        Err(e) => Row::new(
            "new incident → verdict comment",
            format!("not measured: {e}"),
            format!("≤ {} s", POLL_SECS + 2),
            Some(false),
        ),
    };
    vec![backlog, latency_row, rss_row(&m, &tail)]
}

fn rss_row(m: &Measured, tail: &str) -> Row {
    let clean = m.code == Some(0);
    Row::new(
        "peak RSS of the daemon (`run`) at 100k users / 50k machines / 5k incidents",
        format!(
            "{:.1} MiB (CPU {}{})",
            m.rss_mib(),
            secs(m.cpu),
            if clean {
                String::new()
            } else {
                format!("; exit {:?}: {tail}", m.code)
            }
        ),
        "≤ 64 MiB",
        Some(clean && m.rss_mib() <= 64.0),
    )
}

/// Five new incidents on a tagged machine, created at 0, 1, 2, 3 and 4 s after the previous
/// comment landed, so they fall at different phases of the poll timer.
async fn latency_samples(env: &Env) -> Result<Vec<Duration>, String> {
    let machine = env
        .sim
        .machines_with_tag(TAG)
        .into_iter()
        .next()
        .ok_or("no tagged machine")?;
    let mut samples = Vec::new();
    for phase in 0..5u64 {
        tokio::time::sleep(Duration::from_secs(phase)).await;
        let id = env.sim.create_incident(&IncidentSpec {
            title: format!("Latency probe {phase}"),
            devices: vec![machine.id.clone()],
            ..IncidentSpec::default()
        });
        let created = Instant::now();
        let landed = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            !env.sim.comments(&id).is_empty()
        })
        .await;
        if !landed {
            return Err(format!("incident {id} got no comment within 30 s"));
        }
        samples.push(created.elapsed());
    }
    Ok(samples)
}
