//! The member snapshot and the membership delta end to end against the simulated tenant: a
//! first pass reads in full and stores the snapshot, an unchanged pass costs one delta request,
//! out-of-band changes arrive through the delta, and refused or stale links end in one full
//! resync. Request counts come from the simulator's counters; no wall-clock measurement.

use std::path::PathBuf;

use chrono::{DateTime, Duration as Days, Utc};
use dexscope::config::Config;
use dexscope::desired::{self, DesiredState, Mode};
use dexscope::reconcile::plan::Reason;
use dexscope::reconcile::{self, Context, ReconcileReport};
use dexscope::scope::MemberSource;
use dexscope::sim::{self, DeltaRefusal, SeedSpec, SimHandle, SimOptions, Stats};
use dexscope::state::State;
use dexscope::tenant::Tenant;
use secrecy::ExposeSecret;

const TAG: &str = "DEX-Scoped";
const DELTA: &str = "GET /v1.0/groups/delta";
const LIST_MEMBERS: &str = "GET /v1.0/groups/{id}/members";
const MACHINES: &str = "GET /api/machines";
const BATCH: &str = "POST /v1.0/$batch";

/// 5,050 users of which the first 5,000 are members and desired; 2,000 tagged machines, all
/// desired.
const USERS: usize = 5_050;
const MEMBERS: usize = 5_000;
/// A full read: ⌈5,000 / 500⌉ delta pages for the link, ⌈5,000 / 999⌉ member pages.
const FULL_DELTA_PAGES: u64 = 10;
const FULL_MEMBER_PAGES: u64 = 6;
/// An unchanged pass with the snapshot: 2 tokens, 1 delta request, 1 machine page.
const UNCHANGED_PASS: u64 = 4;

struct Env {
    sim: SimHandle,
    dir: tempfile::TempDir,
    users: Vec<(String, String)>,
}

impl Env {
    async fn start() -> Env {
        let sim = sim::start(SimOptions {
            seed: 11,
            generate: SeedSpec {
                users: USERS,
                devices: 2_000,
                incidents: 0,
                scoped_users: MEMBERS,
                tagged_share: 1.0,
                nested: false,
            },
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let users = {
            let state = sim.state();
            let t = state.lock().unwrap();
            t.directory
                .users
                .iter()
                .flatten()
                .map(|u| (u.id.to_string(), u.upn.to_string()))
                .collect()
        };
        let env = Env { sim, dir, users };
        let head = super::support::sim_config_head(&env.sim);
        std::fs::write(
            env.dir.path().join("config.toml"),
            format!(
                "{head}device_tag = \"{TAG}\"\ndesired_state = \"desired.toml\"\n\
                 [state]\npath = \"state.db\"\n"
            ),
        )
        .unwrap();
        let machines: Vec<String> = env
            .sim
            .machines_with_tag(TAG)
            .into_iter()
            .map(|m| format!("{:?}", m.id))
            .collect();
        assert_eq!(machines.len(), 2_000);
        let users: Vec<String> = env.users[..MEMBERS]
            .iter()
            .map(|(_, upn)| format!("{upn:?}"))
            .collect();
        std::fs::write(
            env.dir.path().join("desired.toml"),
            format!(
                "users = [{}]\ndevices = [{}]\n",
                users.join(","),
                machines.join(",")
            ),
        )
        .unwrap();
        assert_eq!(
            env.sim.group_members(&env.sim.user_group_id()).len(),
            MEMBERS
        );
        env
    }

    fn config(&self) -> Config {
        let secret = self.sim.client_secret().expose_secret().to_string();
        Config::load(
            &self.dir.path().join("config.toml"),
            [("DEXSCOPE_CLIENT_SECRET", secret.as_str())],
        )
        .unwrap()
    }

    fn desired(&self) -> DesiredState {
        let path: PathBuf = self.dir.path().join("desired.toml");
        desired::load(&[path], Utc::now().date_naive(), Mode::Runtime)
            .unwrap()
            .state
    }

    fn state(&self) -> State {
        State::open(self.dir.path().join("state.db")).unwrap()
    }

    /// One pass as the daemon runs it, at `now`; returns the report and the requests it made.
    async fn pass_at(&self, now: DateTime<Utc>) -> (ReconcileReport, Stats) {
        let config = self.config();
        let tenant = Tenant::from_config(&config).unwrap();
        let state = self.state();
        let ctx = Context {
            tenant: &tenant,
            state: &state,
            user_group: &config.scope.user_group_id,
            device_tag: &config.scope.device_tag,
            member_resync: config.scope.member_resync,
        };
        let settings = reconcile::settings_from_config(&config, false);
        self.sim.reset_stats();
        let report = reconcile::reconcile_once(ctx, &self.desired(), &settings, now)
            .await
            .unwrap();
        (report, self.sim.stats())
    }

    async fn pass(&self) -> (ReconcileReport, Stats) {
        self.pass_at(Utc::now()).await
    }

    fn group(&self) -> String {
        self.sim.user_group_id()
    }
}

fn writes(stats: &Stats) -> Vec<&String> {
    stats
        .calls_by_route
        .keys()
        .filter(|r| !r.starts_with("GET ") && r.as_str() != BATCH && !r.contains("token"))
        .collect()
}

/// The first pass reads in full; the full read's requests, exactly.
async fn first_pass(env: &Env) {
    let (report, stats) = env.pass().await;
    assert!(report.plan.is_empty(), "{}", report.plan);
    assert_eq!(stats.calls(DELTA), FULL_DELTA_PAGES, "{stats:?}");
    assert_eq!(stats.calls(LIST_MEMBERS), FULL_MEMBER_PAGES, "{stats:?}");
    assert_eq!(stats.calls(MACHINES), 1);
    assert_eq!(
        stats.http_requests,
        2 + FULL_DELTA_PAGES + FULL_MEMBER_PAGES + 1
    );
    let (sync, members) = env.state().member_snapshot().unwrap().expect("stored");
    assert_eq!(members.len(), MEMBERS);
    assert_eq!(sync.group.as_str(), env.group());
}

/// An unchanged pass: one delta request, no member listing, no lookup, no write.
fn assert_unchanged(report: &ReconcileReport, stats: &Stats) {
    assert!(report.plan.is_empty(), "{}", report.plan);
    assert!(report.applied.is_empty());
    assert!(writes(stats).is_empty(), "{stats:?}");
    assert_eq!(stats.calls(DELTA), 1, "{stats:?}");
    assert_eq!(stats.calls(LIST_MEMBERS), 0, "{stats:?}");
    assert_eq!(stats.http_by_route.get(BATCH), None, "{stats:?}");
    assert_eq!(stats.http_requests, UNCHANGED_PASS, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_pass_with_state_costs_one_delta_request() {
    let env = Env::start().await;
    first_pass(&env).await;

    let (report, stats) = env.pass().await;
    assert_unchanged(&report, &stats);
    let (again, stats) = env.pass().await;
    assert_unchanged(&again, &stats);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_changes_arrive_through_the_delta_and_are_reverted() {
    let env = Env::start().await;
    first_pass(&env).await;
    let group = env.group();
    let (gone_id, gone_upn) = env.users[17].clone();
    let (extra_id, extra_upn) = env.users[MEMBERS + 3].clone();
    assert!(env.sim.set_member(&group, &gone_id, false));
    assert!(env.sim.set_member(&group, &extra_id, true));

    let (report, stats) = env.pass().await;

    // The delta names both; the added user's UPN is looked up by id, the removed
    // desired member is added back and the stranger removed (prune is on).
    assert!(report.converged(), "{report}");
    let adds: Vec<(&str, &str)> = report
        .plan
        .users
        .add
        .iter()
        .map(|c| (c.id.as_str(), c.label.as_str()))
        .collect();
    assert_eq!(adds, vec![(gone_id.as_str(), gone_upn.as_str())]);
    let removes: Vec<(&str, &str, Reason)> = report
        .plan
        .users
        .remove
        .iter()
        .map(|c| (c.id.as_str(), c.label.as_str(), c.reason))
        .collect();
    assert_eq!(
        removes,
        vec![(extra_id.as_str(), extra_upn.as_str(), Reason::NotDesired)]
    );
    assert_eq!(stats.calls(DELTA), 1);
    // Two lookups: the newcomer by id (for its UPN), the desired user who is no longer a
    // member by UPN (as for any desired non-member).
    assert_eq!(stats.calls("GET /v1.0/users"), 2, "{stats:?}");
    // Only the re-read after the writes lists the members.
    assert_eq!(stats.calls(LIST_MEMBERS), FULL_MEMBER_PAGES);
    let members = env.sim.group_members(&group);
    assert!(members.contains(&gone_id) && !members.contains(&extra_id));

    // The next pass sees its own writes (the delta replays them): nothing to do, no write.
    let (report, stats) = env.pass().await;
    assert_unchanged(&report, &stats);
    let (_, snapshot) = env.state().member_snapshot().unwrap().unwrap();
    assert_eq!(snapshot.len(), MEMBERS);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_delta_links_cause_one_full_resync_each() {
    let env = Env::start().await;
    first_pass(&env).await;
    for (how, status) in [
        (DeltaRefusal::SyncStateNotFound, 400),
        (DeltaRefusal::Gone, 410),
    ] {
        env.sim.expire_delta_links(how);
        // A member removed meanwhile must come back through the resync.
        let (id, _) = env.users[100].clone();
        assert!(env.sim.set_member(&env.group(), &id, false));

        let (report, stats) = env.pass().await;

        assert!(report.converged(), "{how:?}: {report}");
        assert_eq!(report.plan.users.add.len(), 1, "{how:?}");
        assert!(report.plan.users.remove.is_empty(), "{how:?}");
        assert_eq!(stats.statuses.get(&status), Some(&1), "{how:?}: {stats:?}");
        // The refused request, then a fresh round and the listing; the re-read after the add.
        assert_eq!(stats.calls(DELTA), 1 + FULL_DELTA_PAGES, "{how:?}");
        assert_eq!(stats.calls(LIST_MEMBERS), 2 * FULL_MEMBER_PAGES, "{how:?}");
        assert!(env.sim.group_members(&env.group()).contains(&id));

        let (report, stats) = env.pass().await;
        assert_unchanged(&report, &stats);
    }
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_snapshot_is_replaced_by_a_full_read_and_plan_moves_no_link() {
    let env = Env::start().await;
    first_pass(&env).await;
    let (before, _) = env.state().member_snapshot().unwrap().unwrap();

    // `plan` with the state: the same single delta request, and the stored link stays.
    let config = env.config();
    let tenant = Tenant::from_config(&config).unwrap();
    let state = env.state();
    env.sim.reset_stats();
    let plan = reconcile::plan_once(
        &tenant,
        &config.scope.user_group_id,
        TAG,
        &env.desired(),
        &reconcile::settings_from_config(&config, false),
        MemberSource {
            state: Some(&state),
            store: false,
            resync_every: config.scope.member_resync,
            now: Utc::now(),
        },
    )
    .await
    .unwrap();
    assert!(plan.is_empty());
    let stats = env.sim.stats();
    assert_eq!((stats.calls(DELTA), stats.calls(LIST_MEMBERS)), (1, 0));
    assert_eq!(env.state().member_snapshot().unwrap().unwrap().0, before);

    // Past `member_resync` (24 h by default) the snapshot is not continued: a full read.
    let later = Utc::now() + Days::hours(25);
    let (report, stats) = env.pass_at(later).await;
    assert!(report.plan.is_empty());
    assert_eq!(stats.calls(DELTA), FULL_DELTA_PAGES);
    assert_eq!(stats.calls(LIST_MEMBERS), FULL_MEMBER_PAGES);
    let (after, _) = env.state().member_snapshot().unwrap().unwrap();
    assert_eq!(after.full_at.timestamp_micros(), later.timestamp_micros());
    assert_eq!(after.link_at.timestamp_micros(), later.timestamp_micros());
    assert!(before.full_at < after.full_at);

    let (report, stats) = env.pass_at(later + Days::minutes(5)).await;
    assert_unchanged(&report, &stats);
    env.sim.shutdown().await;
}
