//! Member writes under the service's write window with several `$batch` envelopes in flight:
//! every change lands once, no call is throttled or early, and every audit row is settled.
//! Request counts come from the simulator's counters; nothing here measures wall-clock time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dexscope::auth::TokenCache;
use dexscope::config::Config;
use dexscope::defender::DefenderClient;
use dexscope::desired::{self, Mode};
use dexscope::graph::GraphClient;
use dexscope::http::{self, Rate};
use dexscope::reconcile::{self, Context};
use dexscope::sim::{self, QuotaConfig, SeedSpec, SimOptions};
use dexscope::state::{ChangeResult, Operation, State};
use dexscope::tenant::{self, Tenant};
use secrecy::ExposeSecret;

const BATCH: &str = "POST /v1.0/$batch";
const PATCH_GROUP: &str = "PATCH /v1.0/groups/{id}";
const ADD_REF: &str = "POST /v1.0/groups/{id}/members/$ref";
const REMOVE_REF: &str = "DELETE /v1.0/groups/{id}/members/{id}/$ref";

/// The simulated tenant's write window: the documented 3,000 per 150 s shrunk by `SCALE` in
/// budget and length alike is 12 writes per 0.6 s; ×5 in budget gives 60 per 0.6 s, three
/// envelopes of 20 PATCHes. Reads are left practically unlimited (this is about writes).
const SCALE: f64 = 0.004;
const WRITES_PER_WINDOW: u32 = 60;
const WINDOW: Duration = Duration::from_millis(600);

fn sim_options(users: usize, scoped: usize) -> SimOptions {
    SimOptions {
        seed: 3,
        generate: SeedSpec {
            users,
            devices: 10,
            incidents: 0,
            scoped_users: scoped,
            tagged_share: 0.0,
            nested: false,
        },
        quotas: QuotaConfig {
            enabled: true,
            scale: SCALE,
            graph_ru_per_10s: 100_000_000,
            graph_writes_per_150s: 15_000,
            ..QuotaConfig::default()
        },
        ..SimOptions::default()
    }
}

/// A pass with `in_flight` write envelopes at once and a client write window the size of the
/// simulated tenant's; returns the pass report and the state database.
async fn pass(
    sim: &sim::SimHandle,
    dir: &tempfile::TempDir,
    desired_upns: &[String],
    in_flight: u32,
) -> (reconcile::ReconcileReport, State) {
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
             prune = true\nmax_removals = 100000\n\
             [state]\npath = \"state.db\"\n\
             [limits]\ngraph_directory_write_batches_in_flight = {in_flight}\n"
        ),
    )
    .unwrap();
    let list: String = desired_upns.iter().map(|u| format!("  {u:?},\n")).collect();
    std::fs::write(
        dir.path().join("desired.toml"),
        format!("users = [\n{list}]\n"),
    )
    .unwrap();
    let secret = sim.client_secret().expose_secret().to_string();
    let config = Config::load(
        &dir.path().join("config.toml"),
        [("DEXSCOPE_CLIENT_SECRET", secret.as_str())],
    )
    .unwrap();
    let mut settings = tenant::http_settings(&config);
    assert_eq!(settings.write_batches_in_flight, in_flight as usize);
    settings.quotas.graph_writes = Rate::new(WRITES_PER_WINDOW, WINDOW);
    let reqwest = http::Client::build_reqwest(&settings).unwrap();
    let tokens = Arc::new(
        TokenCache::new(tenant::token_settings(&config).unwrap(), reqwest.clone()).unwrap(),
    );
    let http = http::Client::with_reqwest(settings, tokens.clone(), reqwest);
    let tenant = Tenant {
        graph: GraphClient::new(http.clone()),
        defender: DefenderClient::new(http.clone()),
        tokens,
        http,
    };
    let desired = desired::load(
        std::slice::from_ref(&config.scope.desired_state),
        Utc::now().date_naive(),
        Mode::Runtime,
    )
    .unwrap()
    .state;
    let state = State::open(&config.state.path).unwrap();
    let ctx = Context {
        tenant: &tenant,
        state: &state,
        user_group: &config.scope.user_group_id,
        device_tag: "DEX-Scoped",
        member_resync: config.scope.member_resync,
    };
    let settings = reconcile::settings_from_config(&config, true);
    let report = reconcile::reconcile_once(ctx, &desired, &settings, Utc::now())
        .await
        .unwrap();
    (report, state)
}

fn user_upns(sim: &sim::SimHandle) -> Vec<(String, String)> {
    let state = sim.state();
    let t = state.lock().unwrap();
    t.directory
        .users
        .iter()
        .flatten()
        .map(|u| (u.id.to_string(), u.upn.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_and_removes_with_envelopes_in_flight_stay_in_the_window_and_audit_exactly() {
    // 4,000 users to add: 200 PATCHes in 10 envelopes against 60 writes per window, so the
    // pass waits for the window three times with up to 4 envelopes in flight.
    let sim = sim::start(sim_options(4_200, 0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = user_upns(&sim);
    let wanted: Vec<String> = users[..4_000].iter().map(|(_, u)| u.clone()).collect();
    sim.reset_stats();

    let (report, state) = pass(&sim, &dir, &wanted, 4).await;

    assert!(report.converged(), "{report}");
    let members: HashSet<String> = sim
        .group_members(&sim.user_group_id())
        .into_iter()
        .collect();
    let expected: HashSet<String> = users[..4_000].iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(members, expected);
    let stats = sim.stats();
    // Each member written once, 20 per PATCH: no PATCH retried, none fell back to single adds.
    assert_eq!(stats.calls(PATCH_GROUP), 200, "{stats:?}");
    assert_eq!(stats.calls(ADD_REF), 0, "{stats:?}");
    // The client's window is the tenant's and counts a call from its answer: envelopes in
    // flight together never meet a full window, so nothing is throttled, nothing early.
    assert_eq!(stats.throttled_total(), 0, "{stats:?}");
    assert_eq!(stats.early_retries_total(), 0, "{stats:?}");
    // 4,000 UPNs: 267 `in` filters → 14 lookup envelopes; 10 write envelopes.
    assert_eq!(stats.http_by_route[BATCH], 14 + 10, "{stats:?}");
    // The writes took at least the three window waits the quota imposes.
    let log = sim.writes();
    let span = (log.last().unwrap().at - log.first().unwrap().at)
        .to_std()
        .unwrap();
    assert!(span >= WINDOW * 3 - Duration::from_millis(5), "{span:?}");

    // Every add has exactly one row, settled ok, in plan order per round.
    let audit = state.recent_changes(10_000).unwrap();
    assert_eq!(audit.len(), 4_000);
    assert!(
        audit
            .iter()
            .all(|a| a.operation == Operation::Add && a.result == ChangeResult::Ok)
    );
    let ids: HashSet<&str> = audit.iter().map(|a| a.object_id.as_str()).collect();
    assert_eq!(ids.len(), 4_000);
    assert!(state.pending_changes().unwrap().is_empty());

    // Then 200 of them removed: 10 DELETE envelopes of 20, several in flight. The new
    // connection's window starts empty, so the tenant's clock first moves past the adds'.
    sim.advance(WINDOW * 2);
    sim.reset_stats();
    let keep: Vec<String> = wanted[200..].to_vec();
    let (report, state) = pass(&sim, &dir, &keep, 4).await;
    assert!(report.converged(), "{report}");
    assert_eq!(sim.group_members(&sim.user_group_id()).len(), 3_800);
    let stats = sim.stats();
    assert_eq!(stats.calls(REMOVE_REF), 200, "{stats:?}");
    assert_eq!(stats.throttled_total(), 0, "{stats:?}");
    assert_eq!(stats.early_retries_total(), 0, "{stats:?}");
    assert!(stats.violations.is_empty(), "{stats:?}");
    let audit = state.recent_changes(10_000).unwrap();
    let removed: Vec<_> = audit
        .iter()
        .filter(|a| a.operation == Operation::Remove)
        .collect();
    assert_eq!(removed.len(), 200);
    assert!(removed.iter().all(|a| a.result == ChangeResult::Ok));
    assert!(state.pending_changes().unwrap().is_empty());
    sim.shutdown().await;
}
