//! The incident poller against the simulated tenant over loopback: every incident gets exactly
//! one verdict comment, across restarts, killed processes and comment POSTs that time out after
//! the server stored them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use dexscope::config::Config;
use dexscope::incidents::comment::parse_marker;
use dexscope::incidents::poll::{self, Handled, PollSettings};
use dexscope::sim::model::{DEVICE_GROUP_NAME, DEVICE_TAG};
use dexscope::sim::{
    self, FaultConfig, IncidentSpec, QuotaConfig, SeedSpec, SimHandle, SimOptions,
};
use dexscope::state::State;
use dexscope::tenant::Tenant;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;

pub(super) const POST_ROUTE: &str = "POST /v1.0/security/incidents/{id}/comments";
pub(super) const LIST_ROUTE: &str = "GET /v1.0/security/incidents";
const GET_ROUTE: &str = "GET /v1.0/security/incidents/{id}";

/// A simulated tenant with incidents of every kind and no quotas in the way (quotas are not
/// what these tests are about; the http tests cover them).
pub(super) async fn start_sim(incidents: usize, faults: FaultConfig) -> SimHandle {
    sim::start(SimOptions {
        generate: SeedSpec {
            incidents,
            tagged_share: 0.3,
            ..SeedSpec::default()
        },
        quotas: QuotaConfig {
            enabled: false,
            ..QuotaConfig::default()
        },
        faults,
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

/// Writes a config pointed at the simulator; returns its path.
pub(super) fn write_config(
    sim: &SimHandle,
    dir: &Path,
    post_comments: bool,
    timeout: &str,
) -> PathBuf {
    let path = dir.join("config.toml");
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        &path,
        format!(
            "{head}device_tag = \"{DEVICE_TAG}\"\n\
             desired_state = \"desired.toml\"\n\
             [schedule]\nincidents_every = \"1s\"\n\
             [incidents]\npost_comments = {post_comments}\nlookback = \"30d\"\noverlap = \"5m\"\n\
             [limits]\ngraph_security_per_minute = 100000\ndefender_per_minute = 100000\n\
             defender_per_hour = 100000\n\
             [http]\ntimeout = \"{timeout}\"\n\
             [state]\npath = \"{}\"\n",
            dir.join("state.db").display(),
        ),
    )
    .unwrap();
    path
}

pub(super) struct Poller {
    pub(super) tenant: Tenant,
    pub(super) state: State,
    pub(super) settings: PollSettings,
}

pub(super) fn poller(sim: &SimHandle, config: &Path) -> Poller {
    let secret = sim.client_secret().expose_secret().to_string();
    let config = Config::load(config, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())]).unwrap();
    Poller {
        tenant: Tenant::from_config(&config).unwrap(),
        state: State::open(&config.state.path).unwrap(),
        settings: PollSettings::from_config(&config),
    }
}

impl Poller {
    pub(super) async fn pass(&self) -> poll::PollReport {
        self.pass_at(Utc::now()).await
    }

    /// A pass that takes `now` as the local clock's time (the simulator keeps its own).
    pub(super) async fn pass_at(&self, now: chrono::DateTime<Utc>) -> poll::PollReport {
        poll::poll_once(&self.tenant, &self.state, &self.settings, now)
            .await
            .unwrap()
    }
}

/// Every incident of the simulator: id → (redirected, outcomes of the verdict markers among its
/// comments, oldest first).
fn comments_by_incident(sim: &SimHandle) -> BTreeMap<String, (bool, Vec<&'static str>)> {
    let ids: Vec<(String, bool)> = {
        let s = sim.state();
        let t = s.lock().unwrap();
        t.incidents
            .list
            .iter()
            .map(|i| {
                (
                    i.id.to_string(),
                    i.status.eq_ignore_ascii_case("redirected"),
                )
            })
            .collect()
    };
    ids.into_iter()
        .map(|(id, redirected)| {
            let outcomes = sim
                .comments(&id)
                .iter()
                .filter_map(|c| parse_marker(c))
                .map(|m| {
                    if m.in_scope {
                        "in_scope"
                    } else {
                        "out_of_scope"
                    }
                })
                .collect();
            (id, (redirected, outcomes))
        })
        .collect()
}

/// Every incident that is not redirected carries exactly one verdict marker; redirected ones
/// carry none. Returns the outcome per incident.
fn assert_exactly_one_each(sim: &SimHandle) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for (id, (redirected, outcomes)) in comments_by_incident(sim) {
        if redirected {
            assert!(
                outcomes.is_empty(),
                "redirected incident {id} got {outcomes:?}"
            );
        } else {
            assert_eq!(outcomes.len(), 1, "incident {id}: {outcomes:?}");
            out.insert(id, outcomes[0]);
        }
    }
    out
}

/// Assets to build incidents with known verdicts from.
pub(super) struct Picks {
    pub(super) scoped_upn: String,
    pub(super) unscoped_upn: String,
    pub(super) tagged_windows: String,
    pub(super) untagged_windows: String,
}

pub(super) fn picks(sim: &SimHandle) -> Picks {
    let s = sim.state();
    let t = s.lock().unwrap();
    let members: HashSet<_> = t
        .group_members(&t.ids.user_group_id)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let user = |scoped: bool| {
        t.directory
            .users
            .iter()
            .flatten()
            .find(|u| members.contains(&u.id) == scoped)
            .map(|u| u.upn.to_string())
            .unwrap()
    };
    let windows = |tagged: bool| {
        t.mde
            .machines
            .iter()
            .filter_map(|m| t.machine_view(&m.id_hex()))
            .find(|m| {
                m.os_platform.starts_with("Windows")
                    && m.tags.iter().any(|x| x == DEVICE_TAG) == tagged
                    && (m.rbac_group_name == DEVICE_GROUP_NAME) == tagged
            })
            .map(|m| m.dns_name)
            .unwrap()
    };
    Picks {
        scoped_upn: user(true),
        unscoped_upn: user(false),
        tagged_windows: windows(true),
        untagged_windows: windows(false),
    }
}

/// Hand-made incidents whose verdict is known by construction: (id, expected marker outcome,
/// or `None` for no comment).
fn known_incidents(sim: &SimHandle, p: &Picks) -> Vec<(String, Option<&'static str>)> {
    let spec = |f: &dyn Fn(&mut IncidentSpec)| {
        let mut s = IncidentSpec::default();
        f(&mut s);
        s
    };
    let cases: Vec<(IncidentSpec, Option<&'static str>)> = vec![
        (
            spec(&|s| s.devices = vec![p.tagged_windows.clone()]),
            Some("in_scope"),
        ),
        (
            spec(&|s| {
                s.severity = "medium".into();
                s.users = vec![p.scoped_upn.clone()];
            }),
            Some("in_scope"),
        ),
        (
            spec(&|s| s.mailboxes = vec![p.scoped_upn.clone()]),
            Some("in_scope"),
        ),
        (
            spec(&|s| {
                s.devices = vec![p.untagged_windows.clone()];
                s.users = vec![p.unscoped_upn.clone()];
            }),
            Some("out_of_scope"),
        ),
        (
            spec(&|s| {
                s.service_source = "dataLossPrevention".into();
                s.detection_source = "microsoftDataLossPrevention".into();
                s.users = vec![p.scoped_upn.clone()];
            }),
            Some("out_of_scope"),
        ),
        (
            spec(&|s| {
                s.severity = "low".into();
                s.devices = vec![p.tagged_windows.clone()];
            }),
            Some("out_of_scope"),
        ),
        (
            spec(&|s| {
                s.mixed_case = true;
                s.devices = vec![p.tagged_windows.clone()];
            }),
            Some("in_scope"),
        ),
        (
            spec(&|s| {
                s.status = "redirected".into();
                s.redirect_to = Some(1000);
                s.devices = vec![p.tagged_windows.clone()];
            }),
            None,
        ),
    ];
    cases
        .into_iter()
        .map(|(s, want)| (sim.create_incident(&s), want))
        .collect()
}

/// Seeded incidents whose kind alone decides the verdict (see `sim::seed::KINDS`): low,
/// informational, DLP, custom detection, insider risk, Sentinel, iOS only, unknown evidence
/// only, no alerts, outranked, unassigned are out of scope; the redirected one gets nothing.
fn seeded_out_of_scope() -> Vec<String> {
    [2, 3, 4, 5, 6, 7, 10, 15, 19, 22, 23]
        .iter()
        .map(|n| (1000 + n).to_string())
        .collect()
}

fn check_known(got: &BTreeMap<String, &'static str>, known: &[(String, Option<&'static str>)]) {
    for (id, want) in known {
        assert_eq!(got.get(id).copied(), *want, "incident {id}");
    }
    for id in seeded_out_of_scope() {
        assert_eq!(
            got.get(&id).copied(),
            Some("out_of_scope"),
            "seeded incident {id}"
        );
    }
    assert_eq!(
        got.get("1014"),
        None,
        "the seeded redirected incident gets no comment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_incident_gets_exactly_one_comment_with_the_right_verdict() {
    let sim = start_sim(40, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let p = poller(&sim, &config);
    let mut known = known_incidents(&sim, &picks(&sim));

    let first = p.pass().await;
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert_eq!(first.listed, 48);
    let posted = first.count(Handled::Posted);
    assert_eq!(posted, 46, "48 listed, 2 redirected: {first:?}");
    let stats = sim.stats();
    assert_eq!(stats.calls(POST_ROUTE), 46);
    assert_eq!(stats.calls(GET_ROUTE), 0, "the list carries the alerts");
    // The outranked and unassigned seeded devices (when tagged) are priority findings.
    for f in &first.priority_findings {
        assert!(["1022", "1023"].contains(&f.incident_id.as_str()), "{f:?}");
    }

    // A second pass (a restart with the same state) re-reads the overlap and posts nothing.
    let again = poller(&sim, &config).pass().await;
    assert!(again.failed.is_empty());
    assert_eq!(again.count(Handled::Posted), 0, "{again:?}");
    assert_eq!(again.count(Handled::AlreadyPosted), 46, "{again:?}");
    assert_eq!(sim.stats().calls(POST_ROUTE), 46);

    // Nothing new: one list page and the scope (members, tagged machines), no POST.
    sim.reset_stats();
    p.pass().await;
    let stats = sim.stats();
    assert_eq!(stats.http_requests, 3, "{:?}", stats.http_by_route);
    assert_eq!(stats.calls(LIST_ROUTE), 1);
    assert_eq!(stats.calls(POST_ROUTE), 0);

    // New incidents keep arriving; each gets its comment on the next pass.
    sim.advance(Duration::from_secs(600));
    known.extend(known_incidents(&sim, &picks(&sim)));
    let next = p.pass().await;
    assert_eq!(next.count(Handled::Posted), 7, "{next:?}");
    assert_eq!(sim.stats().calls(POST_ROUTE), 7);
    // A quiet tenant: the incidents last touched (by our comments) stay within the overlap and
    // are judged again from the list, which costs the list and the scope, never a POST.
    sim.advance(Duration::from_secs(600));
    let quiet = poller(&sim, &config);
    quiet.pass().await;
    sim.reset_stats();
    let idle = quiet.pass().await;
    assert_eq!(idle.count(Handled::Posted), 0, "{idle:?}");
    assert_eq!(sim.stats().http_requests, 3);

    let got = assert_exactly_one_each(&sim);
    check_known(&got, &known);
    // The report and the comment agree for every incident posted.
    for i in first.incidents.iter().chain(&next.incidents) {
        if i.handled == Handled::Posted {
            assert_eq!(got.get(&i.id).copied(), i.verdict, "incident {}", i.id);
        }
    }
    sim.shutdown().await;
}

/// The user id of `upn` in the simulator.
fn user_id(sim: &SimHandle, upn: &str) -> String {
    let s = sim.state();
    let t = s.lock().unwrap();
    t.directory
        .users
        .iter()
        .flatten()
        .find(|u| u.upn.to_string() == upn)
        .map(|u| u.id.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_comes_from_the_member_snapshot_and_one_delta_round() {
    const DELTA_ROUTE: &str = "GET /v1.0/groups/delta";
    const MEMBERS_ROUTE: &str = "GET /v1.0/groups/{id}/members";
    let sim = start_sim(0, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let p = poller(&sim, &config);
    // The snapshot the reconcile loop keeps: its delta link, then the members listed.
    let group = p.settings.user_group.clone();
    let round = p.tenant.graph.members_delta(&group, None).await.unwrap();
    let members = p.tenant.graph.list_group_members(&group).await.unwrap();
    let sync = dexscope::state::MemberSync {
        group: group.clone(),
        delta_link: round.delta_link,
        link_at: Utc::now(),
        full_at: Utc::now(),
    };
    p.state.replace_member_snapshot(&sync, &members).unwrap();
    let stored = p.state.member_snapshot().unwrap().unwrap().0;

    // A user added to the group after the snapshot: the delta round brings them in, so the
    // incident is in scope although the snapshot does not know them.
    let picked = picks(&sim);
    let added = user_id(&sim, &picked.unscoped_upn);
    assert!(sim.set_member(&sim.user_group_id(), &added, true));
    let id = sim.create_incident(&IncidentSpec {
        title: "Late member".into(),
        users: vec![picked.unscoped_upn.clone()],
        ..IncidentSpec::default()
    });
    sim.reset_stats();
    let report = p.pass().await;
    assert_eq!(report.count(Handled::Posted), 1, "{report:?}");
    let stats = sim.stats();
    // The list, one delta round (one page) instead of the member pages, the user lookup of
    // the new member's UPN, the tagged machines, the POST.
    assert_eq!(stats.calls(MEMBERS_ROUTE), 0, "{:?}", stats.http_by_route);
    assert_eq!(stats.calls(DELTA_ROUTE), 1, "{:?}", stats.http_by_route);
    assert_eq!(stats.calls(LIST_ROUTE), 1);
    assert_eq!(stats.calls(POST_ROUTE), 1);
    let got = assert_exactly_one_each(&sim);
    assert_eq!(got.get(&id).copied(), Some("in_scope"));
    // Read-only: the reconcile loop's snapshot and link are where it left them.
    assert_eq!(p.state.member_snapshot().unwrap().unwrap().0, stored);

    // Without a snapshot the members are read in full, as before.
    p.state.clear_member_snapshot().unwrap();
    sim.advance(Duration::from_secs(60));
    sim.create_incident(&IncidentSpec {
        title: "No snapshot".into(),
        users: vec![picked.scoped_upn.clone()],
        ..IncidentSpec::default()
    });
    sim.reset_stats();
    p.pass().await;
    let stats = sim.stats();
    assert_eq!(stats.calls(DELTA_ROUTE), 0, "{:?}", stats.http_by_route);
    assert!(stats.calls(MEMBERS_ROUTE) >= 1, "{:?}", stats.http_by_route);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_verdict_gets_a_new_comment() {
    let sim = start_sim(0, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let p = poller(&sim, &config);
    let picks = picks(&sim);
    let id = sim.create_incident(&IncidentSpec {
        users: vec![picks.unscoped_upn.clone()],
        ..IncidentSpec::default()
    });
    p.pass().await;
    // The user joins the scoped group; the incident is re-read within the overlap.
    {
        let s = sim.state();
        let mut t = s.lock().unwrap();
        let user = t.directory.user_by_upn(&picks.unscoped_upn).unwrap().id;
        let gid = t.ids.user_group_id;
        t.directory.add_member(&gid, user);
    }
    let report = p.pass().await;
    assert_eq!(report.count(Handled::Posted), 1, "{report:?}");
    p.pass().await;
    let (_, outcomes) = comments_by_incident(&sim).remove(&id).unwrap();
    assert_eq!(outcomes, ["out_of_scope", "in_scope"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_marker_does_not_stop_the_verdict_and_our_own_does_across_a_restart() {
    let sim = start_sim(0, FaultConfig::default()).await;
    let picks = picks(&sim);
    let id = sim.create_incident(&IncidentSpec {
        users: vec![picks.unscoped_upn.clone()],
        ..IncidentSpec::default()
    });
    // Another installation (its own state database, so its own key) posts first; someone with
    // comment rights then copies its marker line without the tag.
    let other = tempfile::tempdir().unwrap();
    let report = poller(&sim, &write_config(&sim, other.path(), true, "30s"))
        .pass()
        .await;
    assert_eq!(report.count(Handled::Posted), 1, "{report:?}");
    let posted = sim.comments(&id).pop().unwrap();
    let marker = parse_marker(&posted).unwrap();
    assert!(marker.tag.is_some(), "{posted}");
    let forged = dexscope::incidents::comment::Marker {
        tag: None,
        ..marker
    };
    {
        let s = sim.state();
        let mut t = s.lock().unwrap();
        let n: u64 = id.parse().unwrap();
        t.incidents
            .get_mut(n)
            .unwrap()
            .comments
            .push(dexscope::sim::model::Comment {
                comment: format!("already handled\n{forged}"),
                created_by: "dexscope".into(),
                created_at: Utc::now(),
            });
    }
    let markers = || {
        sim.comments(&id)
            .iter()
            .filter_map(|c| parse_marker(c))
            .count()
    };
    assert_eq!(markers(), 2);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let report = poller(&sim, &config).pass().await;
    assert_eq!(
        report.count(Handled::Posted),
        1,
        "forged markers do not count: {report:?}"
    );
    assert_eq!(markers(), 3);
    // A restart keeps the key in the state database: its own marker counts, nothing is posted.
    let report = poller(&sim, &config).pass().await;
    assert_eq!(report.count(Handled::Posted), 0, "{report:?}");
    assert_eq!(report.count(Handled::AlreadyPosted), 1, "{report:?}");
    assert_eq!(markers(), 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_posting_off_verdicts_are_logged_only_and_the_cursor_moves() {
    let sim = start_sim(10, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), false, "30s");
    let p = poller(&sim, &config);
    let report = p.pass().await;
    assert_eq!(report.listed, 10);
    assert_eq!(report.count(Handled::LoggedOnly), 10, "{report:?}");
    assert_eq!(sim.stats().calls(POST_ROUTE), 0);
    assert!(p.state.get_cursor(poll::CURSOR).unwrap().is_some());
    assert!(p.state.recent_verdicts(10).unwrap().is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_stored_before_the_post_timed_out_is_not_posted_again() {
    // Every comment POST is stored, then left unanswered past the client's 1 s timeout.
    let faults = FaultConfig {
        comment_timeout_rate: 1.0,
        stall_ms: 1_500,
        ..FaultConfig::default()
    };
    let sim = start_sim(0, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "1s");
    let p = poller(&sim, &config);
    let picks = picks(&sim);
    for devices in [
        vec![picks.tagged_windows.clone()],
        vec![picks.untagged_windows.clone()],
    ] {
        sim.create_incident(&IncidentSpec {
            devices,
            ..IncidentSpec::default()
        });
    }
    let report = p.pass().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Handled::Posted), 2);
    let stats = sim.stats();
    assert_eq!(stats.faults.get("comment_timeout"), Some(&2));
    assert_eq!(stats.calls(POST_ROUTE), 2, "no POST is repeated");
    // The comments are read again after each ambiguous POST.
    assert_eq!(stats.calls(GET_ROUTE), 2);
    // Later passes see the markers and post nothing.
    p.pass().await;
    assert_eq!(sim.stats().calls(POST_ROUTE), 2);
    let got = assert_exactly_one_each(&sim);
    assert_eq!(
        got.values().copied().collect::<Vec<_>>(),
        ["in_scope", "out_of_scope"]
    );
    // The verdicts are recorded for `status`.
    assert_eq!(p.state.recent_verdicts(10).unwrap().len(), 2);
    sim.shutdown().await;
}

/// The real binary, `dexscope poll --once`, killed (SIGKILL) 20 times while incidents keep
/// arriving, then run to completion: no duplicate comment, no missed incident.
///
/// Each kill lands at a point chosen by request count, not by time: after the run's first
/// request (while it reads), or while the simulator holds its first or second comment POST
/// (stored, then left unanswered for a second), so most kills fall between two comments of one
/// pass at any machine speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_poller_at_random_points_never_duplicates_or_misses() {
    let stalling = FaultConfig {
        comment_timeout_rate: 1.0,
        stall_ms: 1_000,
        surfaces: vec![sim::Surface::GraphSecurity],
        ..FaultConfig::default()
    };
    let sim = start_sim(40, stalling).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let secret = sim.client_secret().expose_secret().to_string();
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
            .arg("--config")
            .arg(&config)
            .args(["poll", "--once"])
            .env("DEXSCOPE_CLIENT_SECRET", &secret)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let mut known = Vec::new();
    let mut posted_by_killed = Vec::new();
    for round in 0..20 {
        // A stream: new incidents of every known kind before each run.
        known.extend(known_incidents(&sim, &picks(&sim)));
        let pending = comments_by_incident(&sim)
            .values()
            .filter(|(redirected, outcomes)| !redirected && outcomes.is_empty())
            .count() as u64;
        // 0: after the first request; n: while the n-th comment POST is held.
        let posts: u64 = rng.random_range(0..=2);
        let (requests_before, posts_before) = {
            let s = sim.stats();
            (s.http_requests, s.calls(POST_ROUTE))
        };
        let reached = || {
            let s = sim.stats();
            if posts == 0 {
                s.http_requests > requests_before
            } else {
                s.calls(POST_ROUTE) >= posts_before + posts
            }
        };
        let mut child = run();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reached() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("run {round} ended ({status}) before its kill point ({posts} posts)");
            }
            assert!(
                Instant::now() < deadline,
                "run {round} did not reach its kill point ({posts} posts) within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().await.unwrap();
        let posted = sim.stats().calls(POST_ROUTE) - posts_before;
        posted_by_killed.push((posted, pending));
        eprintln!(
            "run {round}: killed at {posts} posts, {posted} of {pending} pending comments posted"
        );
    }
    // Two clean runs, answered at once: the first finishes whatever the kills left, the second
    // finds nothing.
    sim.set_faults(FaultConfig::default());
    for _ in 0..2 {
        let status = tokio::time::timeout(Duration::from_secs(60), run().wait())
            .await
            .expect("a pass ends within a minute")
            .unwrap();
        assert!(status.success());
    }
    eprintln!("(posted, pending) per killed run: {posted_by_killed:?}");
    // Some kills landed between two comments of one pass.
    assert!(
        posted_by_killed
            .iter()
            .any(|&(n, pending)| n > 0 && n < pending),
        "{posted_by_killed:?}"
    );
    let got = assert_exactly_one_each(&sim);
    assert_eq!(got.len(), 40 - 1 + known.len() - known.len() / 8);
    check_known(&got, &known);
    sim.shutdown().await;
}

/// Latency from an incident's creation in the simulator to its comment, with passes every
/// second (the `[schedule] incidents_every = "1s"` loop). Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures wall-clock latency; run with --ignored --nocapture"]
async fn latency_from_incident_to_comment() {
    let sim = start_sim(0, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), true, "30s");
    let p = poller(&sim, &config);
    let picks = picks(&sim);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                p.pass().await;
            }
        })
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut latencies = Vec::new();
    for _ in 0..10 {
        // Arrive at a random point of the poll interval.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
        let id = sim.create_incident(&IncidentSpec {
            devices: vec![picks.tagged_windows.clone()],
            ..IncidentSpec::default()
        });
        let created = Instant::now();
        let deadline = created + Duration::from_secs(10);
        while sim.comments(&id).is_empty() {
            assert!(Instant::now() < deadline, "no comment on {id} within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(created.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looping.await.unwrap();
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    eprintln!(
        "incident → comment latency over {} incidents, 1 s poll interval: min {:?}, mean {:?}, max {:?}",
        latencies.len(),
        latencies[0],
        mean,
        latencies[latencies.len() - 1]
    );
    assert!(latencies[latencies.len() - 1] <= Duration::from_secs(3));
    sim.shutdown().await;
}

fn incident_file(dir: &Path, status: &str, upn: &str) -> PathBuf {
    let path = dir.join(format!("incident-{status}-{upn}.json"));
    let json = serde_json::json!({
        "id": "77", "createdDateTime": "2025-01-01T00:00:00Z", "severity": "High",
        "status": status, "redirectIncidentId": "12", "comments": [],
        "alerts": [{
            "id": "a1", "serviceSource": "microsoftDefenderForEndpoint",
            "detectionSource": "microsoftDefenderForEndpoint",
            "evidence": [{
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "roles": ["compromised"],
                "userAccount": {"userPrincipalName": upn}
            }]
        }]
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

async fn dexscope(args: &[&std::ffi::OsStr], secret: &str) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .args(args)
        .env("DEXSCOPE_CLIENT_SECRET", secret)
        .env_remove("DEXSCOPE_CONFIG")
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdict_command_offline_and_live() {
    let dir = tempfile::tempdir().unwrap();
    let desired = dir.path().join("desired.toml");
    std::fs::write(&desired, "users = [\"alice@contoso.com\"]\n").unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    let missing = dir.path().join("no-such-config.toml");
    let offline = |file: PathBuf, format: &str| {
        vec![
            os("--config"),
            missing.clone().into_os_string(),
            os("verdict"),
            os("--file"),
            file.into_os_string(),
            os("--desired"),
            desired.clone().into_os_string(),
            os("--format"),
            os(format),
        ]
    };
    let args = offline(
        incident_file(dir.path(), "active", "ALICE@contoso.com"),
        "json",
    );
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, out) = dexscope(&args, "").await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "in_scope", "{v}");
    assert!(v["comment"].as_str().unwrap().starts_with("IN SCOPE"));

    let args = offline(
        incident_file(dir.path(), "active", "bob@contoso.com"),
        "text",
    );
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, out) = dexscope(&args, "").await;
    assert!(ok);
    assert!(out.starts_with("verdict: out_of_scope"), "{out}");
    assert!(out.contains("\nOUT OF SCOPE for Defender Experts"), "{out}");

    let args = offline(
        incident_file(dir.path(), "Redirected", "alice@contoso.com"),
        "text",
    );
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, out) = dexscope(&args, "").await;
    assert!(ok);
    assert_eq!(out, "skipped: redirected to 12\n");

    // Live, posted twice: one comment.
    let sim = start_sim(0, FaultConfig::default()).await;
    let config = write_config(&sim, dir.path(), true, "30s");
    let picks = picks(&sim);
    let id = sim.create_incident(&IncidentSpec {
        users: vec![picks.scoped_upn.clone()],
        ..IncidentSpec::default()
    });
    let secret = sim.client_secret().expose_secret().to_string();
    let live = [
        os("--config"),
        config.into_os_string(),
        os("verdict"),
        os("--incident"),
        os(&id),
        os("--post"),
    ];
    let live: Vec<&std::ffi::OsStr> = live.iter().map(|a| a.as_os_str()).collect();
    let (ok, first) = dexscope(&live, &secret).await;
    assert!(ok, "{first}");
    assert!(first.starts_with("verdict: in_scope"), "{first}");
    assert!(first.contains("posted: yes"), "{first}");
    let (ok, second) = dexscope(&live, &secret).await;
    assert!(ok);
    assert!(
        second.contains("posted: no, a comment with this marker is already there"),
        "{second}"
    );
    assert_eq!(sim.comments(&id).len(), 1);
    sim.shutdown().await;
}
