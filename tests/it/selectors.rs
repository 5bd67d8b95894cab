//! Selectors end to end against the simulated tenant over loopback: a nested group tree with a
//! cycle and non-user members, attribute selectors with and without advanced queries, an
//! exclusion, a deleted source group, shrinkage past the removal guard and a UPN rename.
//! Request counts come from the simulator's counters; nothing here measures time.

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::Utc;
use dexscope::alerts::{Alerter, NoticeKind};
use dexscope::config::Config;
use dexscope::desired::{self, Mode};
use dexscope::reconcile::{self, Context, ReconcileReport};
use dexscope::scope::MemberSource;
use dexscope::selectors::Status;
use dexscope::sim::model::{Machine, ObjKind, Os, User, UserAttrs};
use dexscope::sim::{self, SeedSpec, SimHandle, SimOptions};
use dexscope::state::State;
use dexscope::tenant::Tenant;
use secrecy::ExposeSecret;
use uuid::Uuid;

const MEMBERS: &str = "GET /v1.0/groups/{id}/members";
const DELTA: &str = "GET /v1.0/groups/delta";
const GROUP: &str = "GET /v1.0/groups/{id}";
const USERS: &str = "GET /v1.0/users";
const REMOVE_REF: &str = "DELETE /v1.0/groups/{id}/members/{id}/$ref";

struct Env {
    sim: SimHandle,
    dir: tempfile::TempDir,
}

/// Ids of the tree: Berlin-Staff › SOC-Tier2 › Deep › Berlin-Staff (a cycle).
struct Tree {
    root: Uuid,
    soc: Uuid,
    /// Enabled users reachable from the root.
    users: Vec<Uuid>,
    disabled: Uuid,
}

impl Env {
    async fn start() -> Env {
        let generate = SeedSpec {
            users: 0,
            devices: 0,
            incidents: 0,
            scoped_users: 0,
            tagged_share: 0.0,
            nested: false,
        };
        let sim = sim::start(SimOptions {
            generate,
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let env = Env { sim, dir };
        env.write_config("");
        env
    }

    fn write_config(&self, scope: &str) {
        let head = super::support::sim_config_head(&self.sim);
        std::fs::write(
            self.dir.path().join("config.toml"),
            format!(
                "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n{scope}\n\
                 [state]\npath = \"state.db\"\n"
            ),
        )
        .unwrap();
    }

    fn config(&self) -> Config {
        let secret = self.sim.client_secret().expose_secret().to_string();
        Config::load(
            &self.dir.path().join("config.toml"),
            [("DEXSCOPE_CLIENT_SECRET", secret.as_str())],
        )
        .unwrap()
    }

    /// `dexscope status` as text, read from the state database only.
    fn status(&self) -> String {
        use dexscope::status;
        let state = State::open(self.dir.path().join("state.db")).unwrap();
        let inputs = status::gather(&state, Utc::now()).unwrap();
        let settings = status::Settings::from_config(&self.config());
        status::summarize(&inputs, &settings, Utc::now()).to_string()
    }

    fn write_desired(&self, text: &str) {
        std::fs::write(self.desired_path(), text).unwrap();
    }

    fn desired_path(&self) -> PathBuf {
        self.dir.path().join("desired.toml")
    }

    fn user(&self, n: u32, attrs: UserAttrs) -> Uuid {
        let id = Uuid::from_u128(0x5e1_0000 + u128::from(n));
        let state = self.sim.state();
        let mut t = state.lock().unwrap();
        t.directory.add_user(User {
            id,
            upn: format!("user{n}@contoso.com").into(),
            display_name: format!("User {n}").into(),
        });
        t.directory.user_attrs.insert(id, attrs);
        id
    }

    fn group(&self, n: u32, name: &str, members: &[Uuid]) -> Uuid {
        let id = Uuid::from_u128(0x6e0_0000 + u128::from(n));
        let state = self.sim.state();
        let mut t = state.lock().unwrap();
        t.directory.add_group(id, name);
        for m in members {
            t.directory.add_member(&id, *m);
        }
        id
    }

    /// Three levels with a cycle; besides users the tree holds a contact, a service principal
    /// and an Entra device.
    fn tree(&self) -> Tree {
        let u: Vec<Uuid> = (1..=5)
            .map(|n| self.user(n, UserAttrs::default()))
            .collect();
        let disabled = self.user(
            6,
            UserAttrs {
                disabled: true,
                ..UserAttrs::default()
            },
        );
        let (contact, sp) = (Uuid::from_u128(0xc0), Uuid::from_u128(0x5b));
        {
            let state = self.sim.state();
            let mut t = state.lock().unwrap();
            t.directory.others.insert(contact, ObjKind::Contact);
            t.directory.others.insert(sp, ObjKind::ServicePrincipal);
            t.directory.add_device(sim::model::EntraDevice {
                id: Uuid::from_u128(0xde),
                device_id: Uuid::from_u128(0xdf),
                display_name: "ws-ber-0001".into(),
            });
        }
        let deep = self.group(3, "Deep", &[u[4], contact, Uuid::from_u128(0xde)]);
        let soc = self.group(2, "SOC-Tier2", &[u[2], u[3], disabled, deep, sp]);
        let root = self.group(1, "Berlin-Staff", &[u[0], u[1], soc]);
        // The cycle: the deepest group contains the root again.
        self.sim
            .state()
            .lock()
            .unwrap()
            .directory
            .add_member(&deep, root);
        Tree {
            root,
            soc,
            users: u,
            disabled,
        }
    }

    /// An MDE machine; `aad` is its Entra device id (none: not Entra-joined).
    fn machine(&self, n: u8, dns: &str, os: Os, tags: &[&str], aad: Option<Uuid>) -> String {
        let state = self.sim.state();
        let mut t = state.lock().unwrap();
        let tags = tags.iter().map(|tag| t.mde.intern_tag(tag)).collect();
        let m = Machine {
            id: [n; 20],
            dns: dns.into(),
            aad_device_id: aad,
            os,
            tags,
            first_seen_min: 60,
            reported_group: sim::model::UNASSIGNED_GROUP_ID,
            pending_since: None,
        };
        let id = m.id_hex();
        t.mde.add_machine(m);
        id
    }

    fn tagged(&self) -> HashSet<String> {
        self.sim
            .machines_with_tag("DEX-Scoped")
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    fn members(&self) -> HashSet<String> {
        self.sim
            .group_members(&self.sim.user_group_id())
            .into_iter()
            .collect()
    }

    async fn pass(&self) -> ReconcileReport {
        let config = self.config();
        let tenant = Tenant::from_config(&config).unwrap();
        let state = State::open(self.dir.path().join("state.db")).unwrap();
        let ctx = Context {
            tenant: &tenant,
            state: &state,
            user_group: &config.scope.user_group_id,
            device_tag: &config.scope.device_tag,
            member_resync: config.scope.member_resync,
        };
        let desired = desired::load(
            &[self.desired_path()],
            Utc::now().date_naive(),
            Mode::Runtime,
        )
        .unwrap()
        .state;
        let settings = reconcile::settings_from_config(&config, false);
        reconcile::reconcile_once(ctx, &desired, &settings, Utc::now())
            .await
            .unwrap()
    }

    async fn plan(&self) -> reconcile::plan::Plan {
        let config = self.config();
        let tenant = Tenant::from_config(&config).unwrap();
        let state = State::open(self.dir.path().join("state.db")).unwrap();
        let desired = desired::load(
            &[self.desired_path()],
            Utc::now().date_naive(),
            Mode::Runtime,
        )
        .unwrap()
        .state;
        let members = MemberSource {
            state: Some(&state),
            store: false,
            resync_every: config.scope.member_resync,
            now: Utc::now(),
        };
        reconcile::plan_once(
            &tenant,
            &config.scope.user_group_id,
            "DEX-Scoped",
            &desired,
            &reconcile::settings_from_config(&config, false),
            members,
        )
        .await
        .unwrap()
    }
}

fn ids(v: &[Uuid]) -> HashSet<String> {
    v.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn a_nested_group_with_a_cycle_yields_its_enabled_users_once() {
    let env = Env::start().await;
    let tree = env.tree();
    env.write_desired(&format!(
        "users = [{{ group = \"{}\", note = \"Berlin-Staff and everything in it\" }}]\n",
        tree.root
    ));
    env.sim.reset_stats();
    let report = env.pass().await;
    assert_eq!(env.members(), ids(&tree.users));
    assert!(!env.members().contains(&tree.disabled.to_string()));
    let stats = env.sim.stats();
    // One members page per group of the tree (root, SOC-Tier2, Deep) besides the scoped
    // group's own two reads, the root's name, and one groups/delta subscription for the tree
    // besides the scoped group's own first round.
    assert_eq!(stats.calls(MEMBERS), 3 + 2, "{:?}", stats.calls_by_route);
    assert_eq!(stats.calls(DELTA), 1 + 1, "{:?}", stats.calls_by_route);
    assert_eq!(stats.calls(GROUP), 1, "{:?}", stats.calls_by_route);
    let f = &report.plan.selectors[0];
    assert_eq!(f.status, Status::Expanded);
    assert_eq!(f.identities, 5);
    assert_eq!(f.skipped_disabled, 1);
    // SOC-Tier2, Deep, the contact, the service principal and the device.
    assert_eq!(f.skipped_other_types, 5);
    let text = report.plan.to_string();
    assert!(
        text.contains("user1@contoso.com (via group Berlin-Staff)"),
        "{text}"
    );
    // A member of a nested group says the path to it; the cycle back to the root does not
    // make a longer one.
    assert!(
        text.contains("user3@contoso.com (via group Berlin-Staff › SOC-Tier2)"),
        "{text}"
    );
    assert!(
        text.contains("user5@contoso.com (via group Berlin-Staff › SOC-Tier2 › Deep)"),
        "{text}"
    );
    // The audit log carries the same origin.
    let audit = State::open(env.dir.path().join("state.db"))
        .unwrap()
        .recent_changes(10)
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.object_label == "user3@contoso.com (via group Berlin-Staff › SOC-Tier2)"),
        "{audit:?}"
    );
    let json = serde_json::to_value(&report.plan).unwrap();
    assert_eq!(json["selectors"][0]["skipped_other_types"], 5);
    assert!(
        json.to_string()
            .contains("user3@contoso.com (via group Berlin-Staff › SOC-Tier2)"),
        "{json}"
    );
    let _ = tree.soc;

    let status = env.status();
    assert!(
        status.contains("selectors:        group Berlin-Staff 5 users (tree of 3 groups)"),
        "{status}"
    );
    // Converged: the next pass changes nothing, and reads the unchanged tree with one
    // groups/delta round for its three groups (plus the scoped group's own round).
    env.sim.reset_stats();
    let again = env.pass().await;
    assert_eq!(again.plan.change_count(), 0, "{}", again.plan);
    let stats = env.sim.stats();
    assert_eq!(stats.calls(MEMBERS), 0, "{:?}", stats.calls_by_route);
    assert_eq!(stats.calls(DELTA), 2, "{:?}", stats.calls_by_route);
    assert_eq!(again.plan.selectors[0].skipped_other_types, 5);
    assert_eq!(again.plan.selectors[0].skipped_disabled, 1);
    assert!(
        env.status()
            .contains("selectors:        group Berlin-Staff 5 users (tree of 3 groups)"),
        "the unchanged pass keeps the summary"
    );

    // With include_disabled the disabled account is taken too.
    env.write_desired(&format!(
        "users = [{{ group = \"{}\", include_disabled = true }}]\n",
        tree.root
    ));
    env.pass().await;
    assert!(env.members().contains(&tree.disabled.to_string()));
}

/// Each pass opens the state and the tenant anew, as a restarted daemon would: the stored
/// links are what make the second pass cheap.
#[tokio::test]
async fn an_unchanged_tree_of_sixty_groups_costs_two_delta_rounds_after_a_restart() {
    let env = Env::start().await;
    let children: Vec<Uuid> = (0..59)
        .map(|n| {
            let u = env.user(100 + n, UserAttrs::default());
            env.group(100 + n, &format!("Team-{n}"), &[u])
        })
        .collect();
    let root = env.group(99, "Everyone", &children);
    env.write_desired(&format!("users = [{{ group = \"{root}\" }}]\n"));
    env.sim.reset_stats();
    env.pass().await;
    assert_eq!(env.members().len(), 59);
    // 60 groups: two subscriptions (50 + 10 ids) besides the scoped group's own round.
    assert_eq!(env.sim.stats().calls(DELTA), 2 + 1);
    env.sim.reset_stats();
    let report = env.pass().await;
    assert_eq!(report.plan.change_count(), 0, "{}", report.plan);
    let stats = env.sim.stats();
    assert_eq!(stats.calls(DELTA), 2 + 1, "{:?}", stats.calls_by_route);
    assert_eq!(stats.calls(MEMBERS), 0, "{:?}", stats.calls_by_route);
    assert_eq!(stats.calls(GROUP), 0, "{:?}", stats.calls_by_route);
    assert_eq!(report.plan.selectors[0].identities, 59);
    assert_eq!(report.plan.selectors[0].skipped_other_types, 59);
}

#[tokio::test]
async fn a_change_in_a_grandchild_group_is_seen_and_applied() {
    let env = Env::start().await;
    let tree = env.tree();
    env.write_desired(&format!("users = [{{ group = \"{}\" }}]\n", tree.root));
    env.pass().await;
    let newcomer = env.user(7, UserAttrs::default());
    let deep = Uuid::from_u128(0x6e0_0003);
    env.sim
        .state()
        .lock()
        .unwrap()
        .directory
        .add_member(&deep, newcomer);
    env.sim.reset_stats();
    let report = env.pass().await;
    assert!(env.members().contains(&newcomer.to_string()));
    assert!(
        report
            .plan
            .to_string()
            .contains("user7@contoso.com (via group Berlin-Staff › SOC-Tier2 › Deep)"),
        "{}",
        report.plan
    );
    // Seen by the tree's delta round, then the tree read again: the root's name is read only
    // by a full read.
    assert_eq!(env.sim.stats().calls(GROUP), 1);
    // Leaving the grandchild group is seen the same way.
    env.sim
        .state()
        .lock()
        .unwrap()
        .directory
        .remove_member(&deep, &newcomer);
    env.pass().await;
    assert!(!env.members().contains(&newcomer.to_string()));
    assert_eq!(env.members(), ids(&tree.users));
}

#[tokio::test]
async fn a_nested_group_added_and_removed_is_seen() {
    let env = Env::start().await;
    let tree = env.tree();
    env.write_desired(&format!("users = [{{ group = \"{}\" }}]\n", tree.root));
    env.pass().await;
    let joiner = env.user(8, UserAttrs::default());
    let new = env.group(4, "Night-Shift", &[joiner]);
    let add = |g: &Uuid, m: Uuid, on: bool| {
        let state = env.sim.state();
        let mut t = state.lock().unwrap();
        if on {
            t.directory.add_member(g, m);
        } else {
            t.directory.remove_member(g, &m);
        }
    };
    add(&tree.soc, new, true);
    let report = env.pass().await;
    assert!(env.members().contains(&joiner.to_string()));
    assert!(
        report
            .plan
            .to_string()
            .contains("user8@contoso.com (via group Berlin-Staff › SOC-Tier2 › Night-Shift)"),
        "{}",
        report.plan
    );
    // A change inside the new group is followed too: it was subscribed with the tree.
    let second = env.user(10, UserAttrs::default());
    add(&new, second, true);
    env.pass().await;
    assert!(env.members().contains(&second.to_string()));
    add(&tree.soc, new, false);
    env.pass().await;
    assert_eq!(env.members(), ids(&tree.users));
}

#[tokio::test]
async fn an_expired_delta_link_means_the_tree_is_read_again() {
    use dexscope::sim::model::DeltaRefusal;
    for how in [DeltaRefusal::Gone, DeltaRefusal::SyncStateNotFound] {
        let env = Env::start().await;
        let tree = env.tree();
        env.write_desired(&format!("users = [{{ group = \"{}\" }}]\n", tree.root));
        env.pass().await;
        {
            let state = env.sim.state();
            state.lock().unwrap().directory.expire_delta_links(how);
        }
        env.sim.reset_stats();
        let report = env.pass().await;
        assert_eq!(report.plan.change_count(), 0, "{how:?}: {}", report.plan);
        assert_eq!(report.plan.selectors[0].status, Status::Expanded);
        let stats = env.sim.stats();
        // The root's name is read only by a full read of the tree.
        assert_eq!(stats.calls(GROUP), 1, "{how:?}: {:?}", stats.calls_by_route);
        assert_eq!(env.members(), ids(&tree.users));
        // Subscribed afresh: the pass after it is cheap again.
        env.sim.reset_stats();
        env.pass().await;
        assert_eq!(env.sim.stats().calls(GROUP), 0, "{how:?}");
        assert_eq!(env.sim.stats().calls(MEMBERS), 0, "{how:?}");
    }
}

#[tokio::test]
async fn attribute_selectors_with_and_without_advanced_queries() {
    let env = Env::start().await;
    let attrs = |dept: &str, country: &str, company: &str| UserAttrs {
        department: Some(dept.into()),
        country: Some(country.into()),
        company_name: Some(company.into()),
        ..UserAttrs::default()
    };
    let fin_de = env.user(1, attrs("Finance", "DE", "Contoso GmbH"));
    let fin_at = env.user(2, attrs("Finance", "AT", "Contoso GmbH"));
    let hr_de = env.user(3, attrs("HR", "DE", "Fabrikam"));
    env.write_desired("users = [{ where = { department = \"Finance\", country = \"DE\" } }]\n");
    env.sim.reset_stats();
    env.pass().await;
    assert_eq!(env.members(), ids(&[fin_de]));
    assert_eq!(env.sim.stats().calls(USERS), 1);

    // companyName filters only as an advanced query; the sim refuses it otherwise, so a
    // member set that matches proves the header and $count were sent.
    env.write_desired(
        "users = [{ where = { company_name = [\"Contoso GmbH\", \"Fabrikam\"] } }]\n",
    );
    let report = env.pass().await;
    assert_eq!(report.plan.selectors[0].status, Status::Expanded);
    assert_eq!(env.members(), ids(&[fin_de, fin_at, hr_de]));
}

#[tokio::test]
async fn an_exclusion_takes_a_user_out_of_what_the_selector_yields() {
    let env = Env::start().await;
    let tree = env.tree();
    env.write_desired(&format!(
        "users = [{{ group = \"{}\" }}]\nexclude_users = [\"USER2@contoso.com\"]\n",
        tree.root
    ));
    let report = env.pass().await;
    let mut want = ids(&tree.users);
    want.remove(&tree.users[1].to_string());
    assert_eq!(env.members(), want);
    assert_eq!(report.plan.selectors[0].excluded, 1);
}

#[tokio::test]
async fn a_deleted_source_group_removes_nothing_and_warns() {
    let env = Env::start().await;
    let tree = env.tree();
    // A single entry besides the selector: the state is not empty even if the selector
    // yielded nothing, so only the kept expansion stands between the tree and a removal.
    let other = env.user(9, UserAttrs::default());
    env.write_desired(&format!(
        "users = [\"user9@contoso.com\", {{ group = \"{}\" }}]\n",
        tree.root
    ));
    env.pass().await;
    let mut all = tree.users.clone();
    all.push(other);
    assert_eq!(env.members(), ids(&all));

    env.sim
        .state()
        .lock()
        .unwrap()
        .directory
        .delete_group(&tree.root);
    env.sim.reset_stats();
    let report = env.pass().await;
    assert_eq!(env.members(), ids(&all), "nothing removed");
    assert_eq!(env.sim.stats().calls(REMOVE_REF), 0);
    match &report.plan.selectors[0].status {
        Status::Unresolved { why, kept } => {
            assert_eq!(*kept, 5);
            assert!(why.contains("404"), "{why}");
        }
        other => panic!("expected unresolved, got {other:?}"),
    }
    let text = report.plan.to_string();
    assert!(text.contains("could not be read"), "{text}");
    // The daemon's alert path: the pass's observation folded by the Alerter fires a notice.
    let state = std::sync::Arc::new(State::open(env.dir.path().join("state.db")).unwrap());
    let alerter = Alerter::new(state, "t", std::time::Duration::from_secs(3600), None).unwrap();
    let obs = reconcile::observe::selector_observation(&report.plan);
    let notices = alerter.observe([obs], Utc::now()).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        notices[0].alert,
        dexscope::state::AlertKind::SelectorUnresolved
    );
    assert_eq!(notices[0].notice, NoticeKind::Firing);
    assert!(
        notices[0].summary.contains("could not be read"),
        "{notices:?}"
    );
    // `plan` says the same without writing.
    let plan = env.plan().await;
    assert!(plan.to_string().contains("keeping the 5 users"), "{plan}");
    // `status` sums it up from the state alone, and `check` gives it a WARNING line of its own.
    let status = env.status();
    assert!(
        status.contains("selectors:        1 unresolved (kept 5 from last expansion)"),
        "{status}"
    );
    let check = dexscope::check::run_with(&env.config(), Utc::now())
        .await
        .render(dexscope::check::CheckFormat::Text);
    assert!(
        check.starts_with("DEXSCOPE WARNING") && check.contains("could not be read"),
        "{check}"
    );
}

#[tokio::test]
async fn a_selector_never_read_holds_removals_with_its_own_reason() {
    let env = Env::start().await;
    let listed = env.user(9, UserAttrs::default());
    let stray = env.user(11, UserAttrs::default());
    let scoped = Uuid::parse_str(&env.sim.user_group_id()).unwrap();
    env.sim
        .state()
        .lock()
        .unwrap()
        .directory
        .add_member(&scoped, stray);
    let missing = Uuid::from_u128(0x6e0_0404);
    env.write_desired(&format!(
        "users = [\"user9@contoso.com\", {{ group = \"{missing}\" }}]\n"
    ));
    env.sim.reset_stats();
    let report = env.pass().await;
    assert_eq!(env.sim.stats().calls(REMOVE_REF), 0);
    assert_eq!(env.members(), ids(&[listed, stray]));
    let text = report.plan.to_string();
    assert!(
        text.contains(&format!(
            "selector users: group {missing} at {}",
            env.desired_path().display()
        )) && text.contains("unresolved and never expanded before"),
        "{text}"
    );
    assert!(!text.contains("vanished"), "{text}");
    let json = serde_json::to_value(&report.plan).unwrap().to_string();
    assert!(json.contains("\"selector_unresolved\""), "{json}");
}

#[tokio::test]
async fn shrinking_past_max_removals_is_refused_by_the_guard() {
    let env = Env::start().await;
    env.write_config("max_removals = 2\n");
    let tree = env.tree();
    env.write_desired(&format!("users = [{{ group = \"{}\" }}]\n", tree.root));
    env.pass().await;
    assert_eq!(env.members().len(), 5);
    // Three users leave the tree: SOC-Tier2 (and Deep below it) is taken out of the root.
    {
        let state = env.sim.state();
        let mut t = state.lock().unwrap();
        t.directory.remove_member(&tree.root, &tree.soc);
    }
    env.sim.reset_stats();
    let report = env.pass().await;
    assert!(report.plan.guard_tripped(), "{}", report.plan);
    assert_eq!(env.sim.stats().calls(REMOVE_REF), 0);
    assert_eq!(env.members().len(), 5);
}

#[tokio::test]
async fn a_upn_rename_in_the_source_group_changes_nothing_but_the_label() {
    let env = Env::start().await;
    let tree = env.tree();
    env.write_desired(&format!("users = [{{ group = \"{}\" }}]\n", tree.root));
    env.pass().await;
    env.sim
        .state()
        .lock()
        .unwrap()
        .directory
        .rename_user(&tree.users[0], "renamed@contoso.com");
    env.sim.reset_stats();
    let report = env.pass().await;
    assert_eq!(report.plan.change_count(), 0, "{}", report.plan);
    assert_eq!(env.members(), ids(&tree.users));
    assert_eq!(env.sim.stats().calls(REMOVE_REF), 0);
}

/// Four machines: two Berlin servers (one tagged Berlin), a Berlin workstation tagged Berlin,
/// and a Munich server that is not Entra-joined.
fn fleet(env: &Env) -> [String; 4] {
    let aad = |n: u128| Some(Uuid::from_u128(0xaad0 + n));
    [
        env.machine(
            1,
            "srv-ber-01.contoso.local",
            Os::WindowsServer2022,
            &["Berlin"],
            aad(1),
        ),
        env.machine(
            2,
            "srv-ber-02.contoso.local",
            Os::WindowsServer2019,
            &[],
            aad(2),
        ),
        env.machine(
            3,
            "ws-ber-0099.contoso.local",
            Os::Windows11,
            &["Berlin"],
            aad(3),
        ),
        env.machine(
            4,
            "srv-muc-01.contoso.local",
            Os::WindowsServer2022,
            &["Munich"],
            None,
        ),
    ]
}

#[tokio::test]
async fn device_selectors_by_mde_filter_with_an_exclusion() {
    let env = Env::start().await;
    let [m1, m2, m3, _] = fleet(&env);
    env.write_desired(
        "devices = [\n  { where = { name_prefix = \"srv-ber-\", os = [\"WindowsServer2019\", \
         \"WindowsServer2022\"] } },\n]\n",
    );
    let report = env.pass().await;
    assert_eq!(env.tagged(), HashSet::from([m1.clone(), m2.clone()]));
    assert_eq!(report.plan.selectors[0].status, Status::Expanded);
    assert!(
        report.plan.to_string().contains("srv-ber-02.contoso.local"),
        "{}",
        report.plan
    );

    // By tag (served by the machine list's filter), with the workstation excluded: the
    // servers that no longer match are untagged, the excluded one never tagged.
    env.write_desired(
        "devices = [{ where = { tag = \"Berlin\" } }]\n\
         exclude_devices = [\"ws-ber-0099.contoso.local\"]\n",
    );
    let report = env.pass().await;
    assert_eq!(env.tagged(), HashSet::from([m1]));
    assert_eq!(report.plan.selectors[0].excluded, 1);
    assert!(!env.tagged().contains(&m3));
}

#[tokio::test]
async fn device_selectors_by_health_and_onboarding_status_are_served_by_the_service() {
    use dexscope::sim::model::MachineStatus;
    let env = Env::start().await;
    let [m1, _m2, _m3, m4] = fleet(&env);
    {
        let state = env.sim.state();
        let mut t = state.lock().unwrap();
        let index = |t: &dexscope::sim::model::Tenant, n: u8| t.mde.by_id[&[n; 20]];
        let (i2, i3) = (index(&t, 2), index(&t, 3));
        let inactive = MachineStatus {
            health: "Inactive",
            ..MachineStatus::default()
        };
        let not_onboarded = MachineStatus {
            onboarding: "CanBeOnboarded",
            ..MachineStatus::default()
        };
        t.mde.status.insert(i2, inactive);
        t.mde.status.insert(i3, not_onboarded);
    }
    // The inactive Berlin server is left out by the service's healthStatus filter.
    env.write_desired(
        "devices = [{ where = { name_prefix = \"srv-\", health_status = \"Active\" } }]\n",
    );
    let report = env.pass().await;
    assert_eq!(report.plan.selectors[0].status, Status::Expanded);
    assert_eq!(env.tagged(), HashSet::from([m1.clone(), m4]));

    // Tag and onboarding status: two filtered reads, intersected.
    env.write_desired(
        "devices = [{ where = { tag = \"Berlin\", onboarding_status = \"Onboarded\" } }]\n",
    );
    let report = env.pass().await;
    assert_eq!(report.plan.selectors[0].identities, 1, "{}", report.plan);
    assert_eq!(env.tagged(), HashSet::from([m1.clone()]));

    // A value the service does not document is refused by `validate`, with a hint.
    env.write_desired("devices = [{ where = { health_status = \"Activ\" } }]\n");
    let refused = desired::load(
        &[env.desired_path()],
        Utc::now().date_naive(),
        Mode::Runtime,
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains(
            "`health_status` value `Activ` is not one the machine list knows (did you mean \
             `Active`?)"
        ),
        "{refused}"
    );
    assert_eq!(env.tagged(), HashSet::from([m1]));
}

#[tokio::test]
async fn a_device_selector_by_entra_device_group_joins_on_the_entra_device_id() {
    let env = Env::start().await;
    let [_, m2, ..] = fleet(&env);
    let user = env.user(1, UserAttrs::default());
    {
        let state = env.sim.state();
        let mut t = state.lock().unwrap();
        for (n, device_id) in [(0xd2, 0xaad0 + 2), (0xd9, 0xaad0 + 9)] {
            t.directory.add_device(sim::model::EntraDevice {
                id: Uuid::from_u128(n),
                device_id: Uuid::from_u128(device_id),
                display_name: format!("dev-{n}"),
            });
        }
    }
    let group = env.group(
        7,
        "Berlin-Servers",
        &[Uuid::from_u128(0xd2), Uuid::from_u128(0xd9), user],
    );
    env.write_desired(&format!("devices = [{{ group = \"{group}\" }}]\n"));
    let report = env.pass().await;
    assert_eq!(env.tagged(), HashSet::from([m2]));
    let f = &report.plan.selectors[0];
    // The device whose Entra id no machine carries is unresolved; the user is another type.
    assert_eq!(
        (f.identities, f.no_machine, f.skipped_other_types),
        (1, 1, 1)
    );
    assert!(
        report
            .plan
            .to_string()
            .contains("via device group Berlin-Servers"),
        "{}",
        report.plan
    );
}

/// `verdict --desired` cannot expand a selector offline and says so; with a config it expands
/// the selector live and finds the incident's user in scope through it.
#[tokio::test]
async fn verdict_with_selectors_says_offline_is_impossible_and_expands_them_live() {
    use dexscope::incidents::command::{self, OutputFormat, VerdictArgs};
    let env = Env::start().await;
    let pat = Uuid::parse_str("7b2a1c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d").unwrap();
    {
        let state = env.sim.state();
        let mut t = state.lock().unwrap();
        t.directory.add_user(User {
            id: pat,
            upn: "patricia.doe@contoso.com".into(),
            display_name: "Pat".into(),
        });
    }
    let group = env.group(8, "Finance-Berlin", &[pat]);
    env.write_desired(&format!("users = [{{ group = \"{group}\" }}]\n"));
    let args = VerdictArgs {
        incident: None,
        file: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/incidents/two_upns.json"),
        ),
        desired: Some(env.desired_path()),
        post: false,
        format: OutputFormat::Json,
    };
    let mut out = Vec::new();
    let offline = command::verdict(&args, None, &mut out).await.unwrap_err();
    assert!(
        offline.to_string().contains("cannot be expanded offline"),
        "{offline}"
    );

    let mut out = Vec::new();
    command::verdict(&args, Some(&env.config()), &mut out)
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(v["verdict"], "in_scope", "{v}");
}
