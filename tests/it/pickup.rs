//! Closing the loop with Defender Experts against the simulated tenant: the daemon's real
//! incident pass (`incidents_pass`) at a `now` taken from the simulator's clock (moved forward,
//! never slept), its observations through the real `Alerter` to a webhook on loopback, its
//! figures into the real metrics registry. Incidents taken and not taken by Defender Experts
//! (the simulator assigns them at a planned poll), `coverage_gap` and `scope_mismatch` firing
//! and resolving, the agreement metrics, `status` and `check`, and no request a poll would not
//! send without the feature.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dexscope::alerts::Alerter;
use dexscope::check::{self, Status};
use dexscope::config::Config;
use dexscope::daemon::{DesiredWatch, PassContext, PassSummary, incidents_pass};
use dexscope::incidents::comment::parse_marker;
use dexscope::metrics::{Metrics, PassFigures};
use dexscope::sim::model::{DEVICE_GROUP_NAME, DEVICE_TAG, IncidentChange};
use dexscope::sim::{self, IncidentSpec, QuotaConfig, SeedSpec, SimHandle, SimOptions};
use dexscope::state::State;
use dexscope::status;
use dexscope::tenant::Tenant;
use secrecy::ExposeSecret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const POST_ROUTE: &str = "POST /v1.0/security/incidents/{id}/comments";
const GET_ROUTE: &str = "GET /v1.0/security/incidents/{id}";

/// Requests of one pass, by route.
type Requests = BTreeMap<String, u64>;

/// What one run of the story saw.
struct Run {
    sim: SimHandle,
    state: Arc<State>,
    hook: MockServer,
    metrics: Metrics,
    config: Arc<Config>,
    /// Taken IN SCOPE, never taken IN SCOPE, taken OUT OF SCOPE, never taken OUT OF SCOPE,
    /// already taken IN SCOPE when first listed, another never taken OUT OF SCOPE.
    ids: [String; 6],
    /// Requests of each pass.
    requests: Vec<Requests>,
    /// The sim's clock at each pass.
    times: Vec<DateTime<Utc>>,
    /// The `check` line after each pass (run after the pass's requests were counted).
    checks: Vec<String>,
    _dir: tempfile::TempDir,
}

fn sim_now(sim: &SimHandle) -> DateTime<Utc> {
    sim.state().lock().unwrap().now()
}

/// A tagged Windows device in the scoped group (IN SCOPE) and an untagged one (OUT OF SCOPE).
fn devices(sim: &SimHandle) -> (String, String) {
    let s = sim.state();
    let t = s.lock().unwrap();
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
    (windows(true), windows(false))
}

fn write_config(sim: &SimHandle, dir: &Path, hook: &MockServer, assignee: &str) -> Config {
    std::fs::write(dir.join("desired.toml"), "users = []\nallow_empty = true\n").unwrap();
    super::support::write_secret(&dir.join("hook.url"), format!("{}/hook", hook.uri()));
    let head = super::support::sim_config_head(sim);
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{head}device_tag = \"{DEVICE_TAG}\"\ndesired_state = \"desired.toml\"\n\
             [schedule]\nincidents_every = \"1m\"\n\
             [incidents]\nlookback = \"1d\"\noverlap = \"5m\"\n\
             pickup_assignee = \"{assignee}\"\npickup_within = \"2h\"\n\
             [limits]\ngraph_security_per_minute = 100000\ndefender_per_minute = 100000\n\
             defender_per_hour = 100000\n\
             [state]\npath = \"state.db\"\n\
             [alerts]\nwebhook_url_file = \"hook.url\"\n",
        ),
    )
    .unwrap();
    let secret = sim.client_secret().expose_secret().to_string();
    Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())]).unwrap()
}

/// The story, with Defender Experts' name as dexscope is told it (`assignee`): six incidents;
/// at the third poll, 30 minutes after creation, Defender Experts take one IN SCOPE and one
/// OUT OF SCOPE incident (assigned, In Progress); 2 hours later the untaken IN SCOPE one is a
/// coverage gap; then the customer resolves the gap and Defender Experts resolve the
/// mismatch. Every pass goes through the real alert path and metrics.
async fn story(assignee: &str) -> Run {
    let sim = sim::start(SimOptions {
        generate: SeedSpec {
            incidents: 0,
            tagged_share: 0.3,
            ..SeedSpec::default()
        },
        quotas: QuotaConfig {
            enabled: false,
            ..QuotaConfig::default()
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    // The clock moves hours forward: a token must outlive it, or a refresh adds requests.
    sim.set_token_lifetime(30 * 24 * 3600);
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&hook)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(write_config(&sim, dir.path(), &hook, assignee));
    let (scoped, unscoped) = devices(&sim);
    let incident = |device: &str, assigned_to: Option<&str>| {
        sim.create_incident(&IncidentSpec {
            devices: vec![device.to_string()],
            assigned_to: assigned_to.map(str::to_string),
            ..IncidentSpec::default()
        })
    };
    let ids = [
        incident(&scoped, None),
        incident(&scoped, None),
        incident(&unscoped, None),
        incident(&unscoped, None),
        incident(&scoped, Some("Defender Experts")),
        incident(&unscoped, None),
    ];
    let take = IncidentChange {
        assigned_to: Some("Defender Experts".into()),
        status: Some("inProgress".into()),
    };
    for id in [&ids[0], &ids[2]] {
        assert!(sim.plan_incident_change(id, 3, take.clone()));
    }
    let state = Arc::new(State::open(&config.state.path).unwrap());
    let desired = DesiredWatch::new(config.scope.desired_state.clone());
    let ctx = PassContext {
        tenant: Tenant::from_config(&config).unwrap(),
        state: state.clone(),
        desired: dexscope::daemon::DesiredSource::Files(Arc::new(desired)),
        config: config.clone(),
    };
    let alerter =
        Alerter::from_config(state.clone(), &config, &super::support::shared_reqwest()).unwrap();
    let metrics = Metrics::new();
    metrics.set_loops(&[("incidents", Duration::from_secs(60))]);
    let mut run = Run {
        sim,
        state,
        hook,
        metrics,
        config,
        ids,
        requests: Vec::new(),
        times: Vec::new(),
        checks: Vec::new(),
        _dir: dir,
    };
    let minutes = |m: u64| Duration::from_secs(m * 60);
    // 1: everything judged. 2 (10 minutes on, past the overlap): a quiet pass. 3 (30 minutes
    // after creation): the pickups are seen. 4 (2 hours later): the gap. 5: the gap and the
    // mismatch end.
    for (advance, resolve) in [
        (minutes(0), false),
        (minutes(10), false),
        (minutes(20), false),
        (minutes(120), false),
        (minutes(1), true),
    ] {
        run.sim.advance(advance);
        if resolve {
            let resolved = |status: &str| IncidentChange {
                assigned_to: None,
                status: Some(status.into()),
            };
            assert!(
                run.sim
                    .plan_incident_change(&run.ids[1], 0, resolved("resolved"))
            );
            assert!(
                run.sim
                    .plan_incident_change(&run.ids[2], 0, resolved("resolved"))
            );
        }
        run.pass(&ctx, &alerter).await;
    }
    run
}

impl Run {
    async fn pass(&mut self, ctx: &PassContext, alerter: &Alerter) -> PassSummary {
        let now = sim_now(&self.sim);
        self.sim.reset_stats();
        let summary = incidents_pass(ctx, now).await.unwrap();
        self.requests.push(self.sim.stats().http_by_route);
        self.times.push(now);
        self.metrics.record_pass(
            "incidents",
            &PassFigures {
                ok: true,
                finished: now,
                verdicts: summary.verdicts.clone(),
                pickups: summary.pickups.clone(),
                ..PassFigures::default()
            },
        );
        alerter.observe(summary.observations.clone(), now).await;
        self.checks
            .push(check::run_with(&self.config, now).await.line);
        summary
    }

    /// (alert, state, subject) of every webhook delivery, in order.
    async fn deliveries(&self) -> Vec<(String, String, String)> {
        self.hook
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter(|b| ["coverage_gap", "scope_mismatch"].contains(&b["alert"].as_str().unwrap()))
            .map(|b| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (s(&b["alert"]), s(&b["state"]), s(&b["details"]["subject"]))
            })
            .collect()
    }

    /// The value of one sample of the metrics text.
    fn sample(&self, name_and_labels: &str) -> f64 {
        let text = self.metrics.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name_and_labels} ")))
            .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickups_raise_and_resolve_alerts_count_agreement_and_cost_no_request() {
    let run = story("Defender Experts").await;
    let [taken, gap, mismatch, ignored, _, _] = run.ids.clone();
    let pair = |alert: &str, state: &str, subject: &str| {
        (alert.to_string(), state.to_string(), subject.to_string())
    };
    // Firing and resolving reached the webhook, each once, naming the incident.
    assert_eq!(
        run.deliveries().await,
        [
            pair("scope_mismatch", "firing", &mismatch),
            pair("coverage_gap", "firing", &gap),
            pair("coverage_gap", "resolved", &gap),
            pair("scope_mismatch", "resolved", &mismatch),
        ]
    );

    // The comment on the OUT OF SCOPE incident they took says so instead of contradicting them;
    // the one taken IN SCOPE keeps its single comment.
    let comments = run.sim.comments(&mismatch);
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert!(
        comments[1].contains(
            "Defender Experts are handling this incident, though dexscope judged it out of scope"
        ),
        "{}",
        comments[1]
    );
    assert!(parse_marker(&comments[1]).is_some());
    assert_eq!(run.sim.comments(&taken).len(), 1);

    // Agreement, each incident counted once; two pickups seen happening, 30 minutes after
    // creation (the one already taken when first listed has no known pickup time).
    let agreement = |verdict: &str, pickup: &str| {
        run.sample(&format!(
            "dexscope_pickup_agreement_total{{verdict=\"{verdict}\",pickup=\"{pickup}\"}}"
        ))
    };
    assert_eq!(agreement("in_scope", "taken"), 2.0);
    assert_eq!(agreement("in_scope", "not_taken"), 1.0);
    assert_eq!(agreement("out_of_scope", "taken"), 1.0);
    assert_eq!(agreement("out_of_scope", "not_taken"), 2.0);
    assert_eq!(run.sample("dexscope_pickup_latency_seconds_count"), 2.0);
    let sum = run.sample("dexscope_pickup_latency_seconds_sum");
    assert!((3_600.0..3_700.0).contains(&sum), "{sum}");
    assert_eq!(
        run.sample("dexscope_pickup_latency_seconds_bucket{le=\"1800.0\"}"),
        0.0
    );
    assert_eq!(
        run.sample("dexscope_pickup_latency_seconds_bucket{le=\"3600.0\"}"),
        2.0
    );

    // check warns while the gap fires (after the fourth pass), and only then.
    let warns = |line: &String| {
        line.contains(&format!(
            "1 IN SCOPE incident not taken by Defender Experts within pickup_within ({gap})"
        ))
    };
    let warned: Vec<bool> = run.checks.iter().map(warns).collect();
    assert_eq!(
        warned,
        [false, false, false, true, false],
        "{:#?}",
        run.checks
    );

    // status: the last 7 days' agreement.
    let now = *run.times.last().unwrap();
    let inputs = status::gather(&run.state, now).unwrap();
    let summary = status::summarize(&inputs, &status::Settings::from_config(&run.config), now);
    let text = summary.to_string();
    assert!(
        text.contains(
            "pickups (7d):     in scope 2 taken, 1 not taken; out of scope 1 taken, 2 not taken"
        ),
        "{text}"
    );
    let ignored_row = run.state.pickup(&ignored).unwrap().unwrap();
    assert_eq!(ignored_row.taken_at, None);
    let taken_row = run.state.pickup(&taken).unwrap().unwrap();
    assert_eq!(taken_row.status, "inProgress");
    assert_eq!(taken_row.taken_at, Some(taken_row.status_at));

    // No request a poll without the feature would not send: the same story told with a name
    // Defender Experts never use sees no pickup, and its passes send the same requests, but
    // for the one comment that answers Defender Experts taking an OUT OF SCOPE incident.
    let control = story("Nobody At All").await;
    assert!(
        control
            .deliveries()
            .await
            .iter()
            .all(|d| d.0 != "scope_mismatch")
    );
    assert_eq!(run.requests.len(), control.requests.len());
    for (pass, (with, without)) in run.requests.iter().zip(&control.requests).enumerate() {
        let mut with = with.clone();
        if pass == 2 {
            // The mismatch comment: one POST, preceded by the read every POST has.
            let first = &run.requests[0];
            let per_post = first.get(GET_ROUTE).copied().unwrap_or(0) / first[POST_ROUTE];
            *with.get_mut(POST_ROUTE).unwrap() -= 1;
            *with.entry(GET_ROUTE.into()).or_default() -= per_post;
            with.retain(|_, n| *n > 0);
        }
        assert_eq!(&with, without, "pass {}", pass + 1);
    }
    // And in figures: each pass is one incident list (alerts and comments inline, no read per
    // incident), one read of the user group and one of the tagged machines, plus the comments
    // posted (six verdicts, then the one answer to the pickup); the first pass also gets the
    // two tokens. The review of the pickup records reads nothing.
    let expected = |posts: u64, tokens: u64| {
        let mut r: Requests = [
            ("GET /api/machines", 1),
            ("GET /v1.0/groups/{id}/members", 1),
            ("GET /v1.0/security/incidents", 1),
            (POST_ROUTE, posts),
            ("POST /{tenant}/oauth2/v2.0/token", tokens),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        r.retain(|_, n| *n > 0);
        r
    };
    let want = [
        expected(6, 2),
        expected(0, 0),
        expected(1, 0),
        expected(0, 0),
        expected(0, 0),
    ];
    assert_eq!(run.requests, want);
    run.sim.shutdown().await;
    control.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_while_a_coverage_gap_fires() {
    let base = check::Inputs {
        device_group_name: "G".into(),
        ..check::Inputs::default()
    };
    let now = Utc::now();
    assert_eq!(check::evaluate(&base, now).status, Status::Ok);
    let gaps = check::Inputs {
        coverage_gaps: vec!["1001".into(), "1002".into()],
        alerts_firing: 2,
        ..base
    };
    let out = check::evaluate(&gaps, now);
    assert_eq!(out.status, Status::Warning, "{}", out.line);
    assert!(
        out.line.contains(
            "2 IN SCOPE incidents not taken by Defender Experts within pickup_within (1001, 1002)"
        ),
        "{}",
        out.line
    );
}

#[test]
fn pickup_within_is_validated_against_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let load = |every: &str, within: &str| {
        std::fs::write(
            &path,
            format!(
                "[tenant]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
                 client_id = \"00000000-0000-0000-0000-000000000002\"\n\
                 [scope]\nuser_group_id = \"00000000-0000-0000-0000-000000000003\"\n\
                 device_tag = \"DEX-Scoped\"\n\
                 [schedule]\nincidents_every = \"{every}\"\n\
                 [incidents]\npickup_within = \"{within}\"\n"
            ),
        )
        .unwrap();
        Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", "s")]).map(|c| c.incidents.pickup_within)
    };
    assert_eq!(load("1m", "2m").unwrap(), Duration::from_secs(120));
    let err = load("1m", "90s").unwrap_err().to_string();
    assert!(
        err.contains(
            "[incidents] pickup_within is 1m 30s, less than twice [schedule] incidents_every (1m)"
        ) && err.contains("use at least 2m"),
        "{err}"
    );
    let err = load("1s", "30s").unwrap_err().to_string();
    assert!(err.contains("below the minimum of 1m"), "{err}");
    let err = load("1m", "soon").unwrap_err().to_string();
    assert!(
        err.contains("[incidents] pickup_within") && err.contains("is not a duration"),
        "{err}"
    );
    // The default: 2 hours.
    let text = std::fs::read_to_string(&path).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("pickup_within"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, without).unwrap();
    let config = Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", "s")]).unwrap();
    assert_eq!(
        config.incidents.pickup_within,
        Duration::from_secs(2 * 3600)
    );
}

/// `dexscope sim` users plan the same changes over HTTP: at once, or before a later poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_takes_planned_changes_over_http() {
    let sim = sim::start(SimOptions {
        generate: SeedSpec {
            incidents: 0,
            ..SeedSpec::default()
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let id = sim.create_incident(&IncidentSpec::default());
    let http = super::support::shared_reqwest();
    let base = sim.base_url();
    let change = |id: &str, body: serde_json::Value| {
        http.post(format!("{base}/_sim/incidents/{id}/change"))
            .json(&body)
            .send()
    };
    let incident = || {
        let s = sim.state();
        let t = s.lock().unwrap();
        let i = t.incidents.get(id.parse().unwrap()).unwrap();
        (i.assigned_to.clone(), i.status.clone(), i.last_update)
    };
    let before = incident();
    let r = change(&id, serde_json::json!({"assigned_to": "Defender Experts"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let now = incident();
    assert_eq!(now.0.as_deref(), Some("Defender Experts"));
    assert!(now.2 > before.2, "the change moves lastUpdateDateTime");
    // Planned for the second poll from now: a poll is a listing's first page.
    let r = change(
        &id,
        serde_json::json!({"after_polls": 2, "status": "awaitingAction"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let polls = sim.state().lock().unwrap().incidents.polls;
    for _ in 0..2 {
        assert_eq!(incident().1, "active");
        sim.state().lock().unwrap().incidents.poll(Utc::now());
    }
    assert_eq!(incident().1, "awaitingAction");
    assert_eq!(sim.state().lock().unwrap().incidents.polls, polls + 2);
    // Unknown incidents and fields are refused, saying what is wrong.
    let r = change("999999", serde_json::json!({"status": "resolved"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = change(&id, serde_json::json!({"assignee": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("assignee"));
    sim.shutdown().await;
}
