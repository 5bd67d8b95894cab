//! Selector rows: the first expansion of a 100,000-user nested group (requests, wall time and
//! peak RSS of the `apply` process) and the pass after it with nothing changed.

use std::time::Instant;

use uuid::Uuid;

use crate::Row;
use crate::env::{Env, Running, seeded, sim_quotas, token_requests};

const USERS: usize = 100_000;
/// Graph's largest `members` page.
const PAGE: usize = 999;

/// All 100k users already members of the scoped group (so the rows measure the reads, not
/// 100k adds), spread over a tree of three groups: the root holds 50k users and group A, A
/// holds 40k users and group B, B holds 10k users and the root again (a cycle).
async fn nested_tenant() -> (Env, usize) {
    let env = Env::start(seeded(USERS, USERS, 0, 0.0, 0, sim_quotas(1))).await;
    let (root, a, b) = (
        Uuid::from_u128(0x5e1_0001),
        Uuid::from_u128(0x5e1_0002),
        Uuid::from_u128(0x5e1_0003),
    );
    let groups = 3;
    {
        let state = env.sim.state();
        let mut t = state.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<Uuid> = t.directory.users.iter().flatten().map(|u| u.id).collect();
        t.directory.add_group(root, "Berlin-Staff");
        t.directory.add_group(a, "SOC-Tier2");
        t.directory.add_group(b, "SOC-Night");
        for (i, id) in ids.iter().enumerate() {
            let g = match i {
                0..50_000 => root,
                50_000..90_000 => a,
                _ => b,
            };
            t.directory.add_member(&g, *id);
        }
        t.directory.add_member(&root, a);
        t.directory.add_member(&a, b);
        t.directory.add_member(&b, root);
    }
    std::fs::write(
        env.path("desired.toml"),
        format!("users = [{{ group = \"{root}\", note = \"Berlin-Staff\" }}]\n"),
    )
    .expect("desired state written");
    (env, groups)
}

pub async fn nested_group_100k() -> Vec<Row> {
    let (env, groups) = nested_tenant().await;
    env.sim.reset_stats();
    let started = Instant::now();
    let first = Running::spawn(env.bin("apply1", &["apply"])).wait().await;
    let wall = started.elapsed();
    let s = env.sim.stats();
    // Every members page read: the tree's and the scoped group's own.
    let pages = s.calls("GET /v1.0/groups/{id}/members");
    let requests = s.http_requests;
    assert_eq!(
        first.code,
        Some(0),
        "first apply: {}",
        env.stderr_tail("apply1")
    );

    env.sim.reset_stats();
    let second = Running::spawn(env.bin("apply2", &["apply"])).wait().await;
    let s2 = env.sim.stats();
    let unchanged: Vec<String> = s2
        .http_by_route
        .iter()
        .filter(|(r, _)| !r.contains("oauth2"))
        .map(|(r, n)| format!("{n} × {r}"))
        .collect();
    let budget = 10 + groups.div_ceil(50) as u64;
    env.sim.shutdown().await;
    // Direct members per group: the root 50k users + A, A 40k + B, B 10k + the root; at most
    // one partial page per group more than a flat read of the whole tree.
    let tree_budget = (USERS + 2).div_ceil(PAGE) as u64 + groups as u64;
    // The scoped group's own first full read of its 100k members shares the route.
    let scoped = USERS.div_ceil(PAGE) as u64;
    vec![
        Row::new(
            "first expansion of a 100k-user nested group: members pages (the tree's and the \
             scoped group's own read)",
            format!(
                "{pages} ({requests} requests in all, {} tokens)",
                token_requests(&s)
            ),
            format!("≤ tree ⌈N/999⌉ + 1 per group = {tree_budget}, + scoped group {scoped}"),
            Some(pages <= tree_budget + scoped),
        ),
        Row::new(
            "first expansion of a 100k-user nested group: wall time of the `apply` process",
            format!("{:.1} s", wall.as_secs_f64()),
            "—",
            None,
        ),
        Row::new(
            "first expansion of a 100k-user nested group: peak RSS of the `apply` process",
            format!("{:.1} MiB", first.rss_mib()),
            "—",
            None,
        ),
        Row::new(
            format!("unchanged pass with that selector ({groups} groups in the tree)"),
            format!("{} ({})", s2.http_requests, unchanged.join(", ")),
            format!("≤ {budget} (10 + 1 per 50 groups)"),
            Some(second.code == Some(0) && s2.http_requests <= budget),
        ),
    ]
}
