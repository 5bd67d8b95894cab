//! The Graph and Defender clients end to end against the simulated tenant, with and without
//! injected faults: every operation converges exactly, no request is sent before a
//! `Retry-After` elapsed, and nothing the service counts as a violation happens.

use std::sync::Arc;
use std::time::Duration;

use dexscope::auth::TokenCache;
use dexscope::config::Config;
use dexscope::defender::{DefenderClient, TagAction};
use dexscope::graph::{GraphClient, IncidentQuery};
use dexscope::http;
use dexscope::model::{GroupMember, MachineId, ObjectId, Upn};
use dexscope::sim::{self, FaultConfig, SimHandle, SimOptions};
use dexscope::tenant;
use secrecy::ExposeSecret;

const TAG: &str = "DEX-Scoped";

struct Clients {
    graph: GraphClient,
    defender: DefenderClient,
}

fn config_for(sim: &SimHandle, dir: &std::path::Path) -> Config {
    let path = dir.join("config.toml");
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        &path,
        format!(
            "{head}device_tag = \"{TAG}\"\n\
             [http]\ntimeout = \"2s\"\nmax_attempts = 12\n",
        ),
    )
    .unwrap();
    let secret = sim.client_secret().expose_secret().to_string();
    Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())]).unwrap()
}

/// The clients as `Tenant::from_config` builds them, with short exponential delays so a run
/// with injected faults stays quick (Retry-After waits are still honoured in full).
fn clients(config: &Config) -> Clients {
    let mut settings = tenant::http_settings(config);
    settings.retry.base_delay = Duration::from_millis(20);
    settings.retry.max_delay = Duration::from_millis(200);
    let reqwest = http::Client::build_reqwest(&settings).unwrap();
    let tokens = TokenCache::new(tenant::token_settings(config).unwrap(), reqwest.clone()).unwrap();
    let http = http::Client::with_reqwest(settings, Arc::new(tokens), reqwest);
    Clients {
        graph: GraphClient::new(http.clone()),
        defender: DefenderClient::new(http),
    }
}

/// `n` users of the tenant that are not in the scoped group.
fn outsiders(sim: &SimHandle, n: usize) -> Vec<Upn> {
    let members = sim.group_members(&sim.user_group_id());
    let state = sim.state();
    let tenant = state.lock().unwrap();
    tenant
        .directory
        .users
        .iter()
        .flatten()
        .filter(|u| !members.contains(&u.id.to_string()))
        .take(n)
        .map(|u| Upn::parse(&u.upn).unwrap())
        .collect()
}

async fn exercise(sim: &SimHandle, clients: &Clients) {
    let group = ObjectId::parse(&sim.user_group_id()).unwrap();

    // Resolve 60 outsiders (4 `in` filters, one $batch), add them, check the group.
    let upns = outsiders(sim, 60);
    let found = clients.graph.users_by_upn(&upns).await.unwrap();
    assert_eq!(found.len(), upns.len(), "every seeded UPN resolves");
    let ids: Vec<ObjectId> = found
        .values()
        .map(|id| ObjectId::parse(id.as_str()).unwrap())
        .collect();
    let outcomes = clients.graph.add_members(&group, &ids).await.unwrap();
    assert!(outcomes.iter().all(|o| o.is_success()), "{outcomes:?}");

    let members = clients.graph.list_group_members(&group).await.unwrap();
    let member_ids: Vec<String> = members
        .iter()
        .map(|m| match m {
            GroupMember::User { id, .. } => id.to_string(),
            GroupMember::Other { id, .. } => id.to_string(),
        })
        .collect();
    let mut want = sim.group_members(&sim.user_group_id());
    let mut got = member_ids.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the listing is the group, whole");
    for id in &ids {
        assert!(member_ids.contains(&id.to_string()), "{id} was added");
    }

    // Adding again is a success ("already a member"); removing half leaves the other half.
    let again = clients.graph.add_members(&group, &ids).await.unwrap();
    assert!(again.iter().all(|o| o.is_success()), "{again:?}");
    let (gone, kept) = ids.split_at(30);
    let removed = clients.graph.remove_members(&group, gone).await.unwrap();
    assert!(removed.iter().all(|o| o.is_success()), "{removed:?}");
    let after = sim.group_members(&sim.user_group_id());
    assert!(gone.iter().all(|id| !after.contains(&id.to_string())));
    assert!(kept.iter().all(|id| after.contains(&id.to_string())));

    // Tag every untagged machine, then take the tag off again.
    let all = clients.defender.all_machines().await.unwrap();
    let untagged: Vec<MachineId> = all
        .iter()
        .filter(|m| !m.tags.iter().any(|t| t.eq_ignore_ascii_case(TAG)))
        .map(|m| m.id.clone())
        .collect();
    let before = sim.machines_with_tag(TAG).len();
    clients
        .defender
        .tag_machines(TAG, TagAction::Add, &untagged)
        .await
        .unwrap();
    assert_eq!(sim.machines_with_tag(TAG).len(), all.len());
    let tagged = clients.defender.machines_by_tag(TAG).await.unwrap();
    assert_eq!(tagged.len(), all.len());
    clients
        .defender
        .tag_machines(TAG, TagAction::Remove, &untagged)
        .await
        .unwrap();
    assert_eq!(sim.machines_with_tag(TAG).len(), before);

    // Incidents: every seeded one comes back (pages of 50), and a comment lands exactly once
    // even when the POST's answer is lost: an ambiguous failure is resolved by re-reading.
    let since = chrono::Utc::now() - chrono::Duration::days(30);
    let query = IncidentQuery {
        top: 50,
        expand_alerts: true,
    };
    let incidents = clients.graph.list_incidents(since, query).await.unwrap();
    assert!(!incidents.is_empty());
    let first = incidents.iter().flatten().next().unwrap().id.clone();
    let text = "dexscope end-to-end check";
    // The loop knows only what the client tells it, as the poller does; the simulator is
    // asked once, afterwards.
    let mut posted = false;
    for _ in 0..5 {
        match clients.graph.post_comment(&first, text).await {
            Ok(_) => posted = true,
            Err(e) if e.is_ambiguous() => {
                let incident = clients.graph.get_incident(&first).await.unwrap();
                posted = incident.comments.iter().any(|c| c.comment == text);
            }
            Err(e) => panic!("comment: {e}"),
        }
        if posted {
            break;
        }
    }
    assert!(posted, "the comment was not confirmed within 5 attempts");
    let count = sim.comments(&first).iter().filter(|c| *c == text).count();
    assert_eq!(count, 1, "exactly one comment");
}

fn assert_clean(sim: &SimHandle) {
    let stats = sim.stats();
    assert_eq!(stats.early_retries_total(), 0, "early retries: {stats:?}");
    assert!(stats.violations.is_empty(), "violations: {stats:?}");
}

#[tokio::test]
async fn clients_converge_against_the_simulated_tenant() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clients = clients(&config_for(&sim, dir.path()));
    exercise(&sim, &clients).await;
    assert_clean(&sim);
    sim.shutdown().await;
}

#[tokio::test]
async fn clients_converge_under_ten_percent_injected_faults() {
    // 10% of API calls fail (429/500/503/504 with Retry-After on 429 and 503, or a dropped
    // connection), a few are slow, and half of the comment POSTs are stored and then never
    // answered. The seed makes the run repeatable.
    let faults = FaultConfig {
        error_rate: 0.07,
        drop_rate: 0.03,
        slow_rate: 0.02,
        slow_ms: 50,
        comment_timeout_rate: 0.5,
        stall_ms: 2_500,
        ..FaultConfig::default()
    };
    let sim = sim::start(SimOptions {
        faults,
        seed: 7,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clients = clients(&config_for(&sim, dir.path()));
    exercise(&sim, &clients).await;
    let stats = sim.stats();
    let injected: u64 = stats.faults.values().sum();
    assert!(injected > 0, "faults were injected: {stats:?}");
    assert_clean(&sim);
    sim.shutdown().await;
}

/// A tenant of the size dexscope targets (100,000 users, 50,000 machines) seeds and serves:
/// the scoped group's 10,000 members come back whole in pages of 999, and every machine in
/// pages of 10,000 — request counts, not speed, are asserted.
#[tokio::test]
async fn a_100k_user_50k_machine_tenant_seeds_and_serves() {
    let sim = sim::start(SimOptions {
        generate: sim::SeedSpec {
            users: 100_000,
            devices: 50_000,
            incidents: 50,
            scoped_users: 10_000,
            tagged_share: 0.1,
            nested: true,
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clients = clients(&config_for(&sim, dir.path()));
    let group = ObjectId::parse(&sim.user_group_id()).unwrap();
    let members = clients.graph.list_group_members(&group).await.unwrap();
    assert_eq!(members.len(), sim.group_members(&sim.user_group_id()).len());
    assert!(members.len() >= 10_000);
    let machines = clients.defender.all_machines().await.unwrap();
    assert_eq!(machines.len(), 50_000);
    let stats = sim.stats();
    assert_eq!(
        stats.calls("GET /v1.0/groups/{id}/members") as usize,
        members.len().div_ceil(999),
        "{stats:?}"
    );
    assert_eq!(stats.calls("GET /api/machines"), 5, "{stats:?}");
    sim.shutdown().await;
}
