//! The priority pass and the alerter against the simulated tenant over loopback: a higher-ranked
//! group captures tagged servers, the alert fires once, repeats at the interval, survives a
//! restart and resolves once; a webhook receiver (wiremock) counts the notices. `now` is
//! injected; the simulated clock is moved with `advance`, nothing sleeps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use dexscope::alerts::{AlertKind, Alerter, Notice, NoticeKind, Webhook, WebhookSettings};
use dexscope::check::{self as probe, Inputs, Status};
use dexscope::config::Config;
use dexscope::model::MachineId;
use dexscope::priority::check::{self, Sighting};
use dexscope::priority::{PriorityInput, PriorityReport, priority_once};
use dexscope::sim::{self, GroupRule, Scenario, SimHandle, SimOptions};
use dexscope::state::State;
use dexscope::tenant::Tenant;
use secrecy::{ExposeSecret, SecretString};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const GROUP: &str = "Defender_Experts_Scoped_Coverage_Devices";
pub const TAG: &str = "DEX-Scoped";
const MACHINES: &str = "GET /api/machines";

/// Three tagged servers, two tagged workstations, one untagged server; only the scoped group.
pub fn scenario() -> Scenario {
    let machine = |name: &str, os: &str, tagged: bool| {
        format!(
            "[[machines]]\nname = \"{name}\"\nos = \"{os}\"\ntags = [{}]\n",
            if tagged { "\"DEX-Scoped\"" } else { "" }
        )
    };
    let text = [
        "placement_delay_secs = 60.0\n".to_string(),
        "[generate]\nusers = 3\ndevices = 0\nincidents = 0\nscoped_users = 0\n".into(),
        machine("srv-01.contoso.local", "WindowsServer2022", true),
        machine("srv-02.contoso.local", "WindowsServer2022", true),
        machine("srv-03.contoso.local", "WindowsServer2019", true),
        machine("ws-01.contoso.local", "Windows11", true),
        machine("ws-02.contoso.local", "Windows11", true),
        machine("srv-04.contoso.local", "WindowsServer2022", false),
        format!("[[device_groups]]\nname = \"{GROUP}\"\nrank = 1\ntags = [\"{TAG}\"]\n"),
    ]
    .concat();
    toml::from_str(&text).unwrap()
}

pub async fn start_sim(opts: SimOptions) -> SimHandle {
    sim::start(SimOptions {
        scenario: Some(scenario()),
        ..opts
    })
    .await
    .unwrap()
}

/// The group that captures every `srv-` machine when ranked above the scoped group.
pub fn add_servers_group(sim: &SimHandle) -> i64 {
    sim.add_device_group(
        "Servers-Tier0",
        1,
        GroupRule {
            name_prefixes: vec!["srv-".into()],
            ..GroupRule::default()
        },
    )
}

/// Writes config.toml and desired.toml (the five tagged machines) into `dir`.
pub fn write_config(dir: &Path, sim: &SimHandle, extra: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("desired.toml"),
        "devices = [\"srv-01.contoso.local\", \"srv-02.contoso.local\", \"srv-03.contoso.local\", \
         \"ws-01.contoso.local\", \"ws-02.contoso.local\"]\n",
    )
    .unwrap();
    let path = dir.join("config.toml");
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        &path,
        format!(
            "{head}device_tag = \"{TAG}\"\ndevice_group_name = \"{GROUP}\"\n\
             desired_state = \"desired.toml\"\npropagation_grace = \"2h\"\n\
             [state]\npath = \"{}\"\n{extra}",
            dir.join("state.db").display(),
        ),
    )
    .unwrap();
    path
}

pub fn secret(sim: &SimHandle) -> String {
    sim.client_secret().expose_secret().to_string()
}

fn t(base: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    base + TimeDelta::minutes(minutes)
}

struct Rig {
    sim: SimHandle,
    config: Config,
    tenant: Tenant,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim, "[alerts]\nrenotify_every = \"6h\"\n");
    let s = secret(&sim);
    let config = Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", s.as_str())]).unwrap();
    let tenant = Tenant::from_config(&config).unwrap();
    Rig {
        sim,
        config,
        tenant,
        _dir: dir,
    }
}

impl Rig {
    async fn pass(
        &self,
        state: &State,
        sightings: &[Sighting],
        now: DateTime<Utc>,
    ) -> PriorityReport {
        let input = PriorityInput {
            desired_devices: None,
            sightings,
        };
        priority_once(&self.tenant.defender, state, &self.config.scope, input, now)
            .await
            .unwrap()
    }
}

fn webhook(server: &MockServer) -> Webhook {
    Webhook::new(
        WebhookSettings {
            base_delay: Duration::from_millis(5),
            ..WebhookSettings::new(SecretString::from(format!(
                "{}/hook/sig=s3cr3t",
                server.uri()
            )))
        },
        super::support::shared_reqwest(),
    )
    .unwrap()
}

/// The notice one observation made due (never more than one).
fn one(notices: Vec<Notice>) -> Option<Notice> {
    assert!(notices.len() <= 1, "{notices:?}");
    notices.into_iter().next()
}

async fn bodies(server: &MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn outranked_group_fires_repeats_survives_a_restart_and_resolves() {
    let rig = rig().await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&receiver)
        .await;
    let state = Arc::new(State::open(&rig.config.state.path).unwrap());
    let alerter = Alerter::new(
        state.clone(),
        rig.sim.tenant_id(),
        rig.config.alerts.renotify_every,
        Some(webhook(&receiver)),
    )
    .unwrap();
    let t0 = Utc::now();
    let calls_before = rig.sim.stats().calls(MACHINES);

    // First pass: every tagged machine first seen now, all in the scoped group.
    let r = rig.pass(&state, &[], t0).await;
    assert_eq!((r.tagged, r.newly_seen, r.counts.in_group), (5, 5, 5));
    let obs = check::observation(&r.findings);
    assert_eq!(one(alerter.observe([obs], t0).await), None);

    // A higher-ranked group appears; MDE has not re-placed the servers yet.
    let servers = add_servers_group(&rig.sim);
    let r = rig.pass(&state, &[], t(t0, 10)).await;
    assert_eq!(r.counts.in_group, 5, "{:?}", r.findings);

    // After the placement delay, within the grace period: pending, not an alarm.
    rig.sim.advance(Duration::from_secs(61));
    let r = rig.pass(&state, &[], t(t0, 60)).await;
    assert_eq!((r.counts.pending, r.counts.outranked), (3, 0));
    assert_eq!(check::worst(&r.findings), check::Severity::Ok);
    let outcome = probe::evaluate(
        &Inputs {
            tagged: r.tagged,
            findings: r.findings.clone(),
            ..Inputs::default()
        },
        t(t0, 60),
    );
    assert_eq!(outcome.status, Status::Warning, "{}", outcome.line);
    assert!(
        outcome
            .line
            .contains("3 tagged devices pending propagation"),
        "{}",
        outcome.line
    );
    let obs = check::observation(&r.findings);
    assert_eq!(one(alerter.observe([obs], t(t0, 60)).await), None);

    // The first pass past the grace: outranked, naming the winner and the devices.
    let now = t(t0, 121);
    let r = rig.pass(&state, &[], now).await;
    assert_eq!((r.counts.outranked, r.counts.in_group), (3, 2));
    let n = one(alerter
        .observe([check::observation(&r.findings)], now)
        .await)
    .expect("a firing notice");
    assert_eq!(n.notice, NoticeKind::Firing);
    assert!(
        n.summary.contains("outranked by Servers-Tier0"),
        "{}",
        n.summary
    );
    assert!(
        n.summary
            .contains("srv-01.contoso.local, srv-02.contoso.local, srv-03.contoso.local"),
        "{}",
        n.summary
    );
    assert_eq!(
        alerter
            .metrics()
            .snapshot()
            .kind(AlertKind::PriorityMisconfigured)
            .firing,
        1
    );

    // Still bad: silent until the repeat interval, then one repeat.
    for (minute, want) in [
        (180, None),
        (121 + 359, None),
        (121 + 360, Some(NoticeKind::Repeat)),
    ] {
        let now = t(t0, minute);
        let r = rig.pass(&state, &[], now).await;
        let got = one(alerter
            .observe([check::observation(&r.findings)], now)
            .await);
        assert_eq!(got.map(|n| n.notice), want, "minute {minute}");
    }

    // A restart: a new alerter on the same database neither repeats nor forgets.
    drop(alerter);
    let state = Arc::new(State::open(&rig.config.state.path).unwrap());
    let alerter = Alerter::new(
        state.clone(),
        rig.sim.tenant_id(),
        rig.config.alerts.renotify_every,
        Some(webhook(&receiver)),
    )
    .unwrap();
    assert_eq!(
        alerter.metrics().snapshot().firing_total(),
        1,
        "the gauge comes back from the database"
    );
    let now = t(t0, 121 + 400);
    let r = rig.pass(&state, &[], now).await;
    assert_eq!(
        one(alerter
            .observe([check::observation(&r.findings)], now)
            .await),
        None
    );

    // The group is removed; once MDE re-places the servers the alert resolves, once.
    assert!(rig.sim.remove_device_group(servers));
    rig.sim.advance(Duration::from_secs(61));
    for (minute, want) in [(121 + 410, Some(NoticeKind::Resolved)), (121 + 420, None)] {
        let now = t(t0, minute);
        let r = rig.pass(&state, &[], now).await;
        let got = one(alerter
            .observe([check::observation(&r.findings)], now)
            .await);
        assert_eq!(got.map(|n| n.notice), want, "minute {minute}");
    }
    assert_eq!(alerter.metrics().snapshot().firing_total(), 0);

    let got = bodies(&receiver).await;
    let states: Vec<(&str, bool)> = got
        .iter()
        .map(|b| (b["state"].as_str().unwrap(), b["details"]["repeat"] == true))
        .collect();
    assert_eq!(
        states,
        [("firing", false), ("firing", true), ("resolved", false)]
    );
    for b in &got {
        assert_eq!(b["source"], "dexscope");
        assert_eq!(b["alert"], "priority_misconfigured");
        assert_eq!(b["tenant_id"], rig.sim.tenant_id());
        assert_eq!(b["details"]["findings"][0]["by_group"], "Servers-Tier0");
        assert_eq!(b["text"], b["summary"]);
    }
    assert_eq!(got[2]["severity"], "critical");
    assert!(
        got[2]["summary"]
            .as_str()
            .unwrap()
            .starts_with("resolved: ")
    );
    // One machines request per pass (10 passes), nothing else.
    assert_eq!(rig.sim.stats().calls(MACHINES) - calls_before, 10);
    rig.sim.shutdown().await;
}

#[tokio::test]
async fn incident_evidence_feeds_the_same_finding() {
    let rig = rig().await;
    let state = State::open(&rig.config.state.path).unwrap();
    let t0 = Utc::now();
    rig.pass(&state, &[], t0).await;
    let ws01 = rig
        .sim
        .machines_with_tag(TAG)
        .into_iter()
        .find(|m| m.dns_name.starts_with("ws-01"))
        .unwrap();
    let sighting = Sighting {
        machine: MachineId::parse(&ws01.id).unwrap(),
        label: ws01.dns_name.clone(),
        rbac_group_name: "Kiosks".into(),
        incident_id: "4711".into(),
    };
    // Within the grace of its tag time the evidence is no finding; past it, outranked.
    let r = rig
        .pass(&state, std::slice::from_ref(&sighting), t(t0, 30))
        .await;
    assert_eq!(r.counts.outranked, 0);
    let r = rig.pass(&state, &[sighting], t(t0, 130)).await;
    let f = &r.findings[0];
    assert_eq!(
        f.kind,
        check::FindingKind::Outranked {
            by_group: "Kiosks".into()
        }
    );
    assert_eq!(
        (f.count, f.incidents.clone()),
        (1, vec!["4711".to_string()])
    );
    assert_eq!(check::worst(&r.findings), check::Severity::Critical);
    rig.sim.shutdown().await;
}

#[tokio::test]
async fn webhook_retries_honour_retry_after_and_failures_are_not_fatal() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let hook = webhook(&receiver);
    assert_eq!(hook.send(&serde_json::json!({"x": 1})).await.unwrap(), 2);

    // A permanent refusal is not retried, and its error does not carry the URL.
    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&refusing)
        .await;
    let err = webhook(&refusing)
        .send(&serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(refusing.received_requests().await.unwrap().len(), 1);
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("/hook"),
        "{text}"
    );

    // An unreachable receiver: bounded attempts, the error names no URL, the alert still fires.
    let (_refusing, closed) = super::support::refusing_addr();
    let dead = Webhook::new(
        WebhookSettings {
            base_delay: Duration::from_millis(5),
            ..WebhookSettings::new(SecretString::from(format!(
                "http://{closed}/hook/sig=s3cr3t"
            )))
        },
        super::support::shared_reqwest(),
    )
    .unwrap();
    let err = dead.send(&serde_json::json!({})).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("3 attempt"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("/hook"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(dir.path().join("state.db")).unwrap());
    let alerter = Alerter::new(state.clone(), "t", Duration::from_secs(3600), Some(dead)).unwrap();
    let obs = dexscope::alerts::Observation::bad(
        AlertKind::AuthFailure,
        "",
        dexscope::alerts::AlertSeverity::Critical,
        "cannot authenticate",
        serde_json::Value::Null,
    );
    let n = one(alerter.observe([obs], Utc::now()).await);
    assert_eq!(n.map(|n| n.notice), Some(NoticeKind::Firing));
    let m = alerter.metrics().snapshot();
    assert_eq!((m.webhook_sent, m.webhook_failed), (0, 1));
    assert_eq!(m.kind(AlertKind::AuthFailure).firing_notices, 1);
    assert_eq!(
        state.alerts().unwrap().len(),
        1,
        "the record is written despite the failure"
    );
    assert!(!format!("{alerter:?}").contains("s3cr3t"));
}

/// The daemon's pass reads the machine list once for both the desired devices and the check
/// (one page here), and finds exactly what a pass that reads the list twice finds.
#[tokio::test]
async fn one_machine_read_serves_the_desired_devices_and_the_check() {
    let rig = rig().await;
    add_servers_group(&rig.sim);
    let dir = tempfile::tempdir().unwrap();
    let desired = dexscope::desired::parse_str(
        Path::new("desired.toml"),
        "devices = [\"srv-01.contoso.local\", \"srv-02.contoso.local\", \"srv-03.contoso.local\", \
         \"ws-01.contoso.local\", \"ws-02.contoso.local\", \"srv-04.contoso.local\"]\n",
        Utc::now().date_naive(),
        dexscope::desired::Mode::Runtime,
    )
    .unwrap()
    .state;
    let defender = &rig.tenant.defender;
    let scope = &rig.config.scope;
    let now = Utc::now();

    let twice = State::open(dir.path().join("twice.db")).unwrap();
    let all = defender.machines_for_scope(TAG).await.unwrap();
    let (devices, _) = dexscope::priority::resolve_devices(&desired, &all);
    let input = PriorityInput {
        desired_devices: Some(&devices),
        sightings: &[],
    };
    let want = priority_once(defender, &twice, scope, input, now)
        .await
        .unwrap();

    rig.sim.reset_stats();
    let once = State::open(dir.path().join("once.db")).unwrap();
    let (devices, tagged) = dexscope::priority::machines_for_check(defender, &desired, TAG)
        .await
        .unwrap();
    let input = PriorityInput {
        desired_devices: Some(&devices),
        sightings: &[],
    };
    let got = dexscope::priority::priority_once_with(&once, scope, input, tagged, now).unwrap();
    let reads = rig.sim.stats().http_by_route.get(MACHINES).copied();

    assert_eq!(reads, Some(1), "one read of the machine list");
    assert_eq!((got.tagged, got.counts.missing_tag), (5, 1));
    assert_eq!(got, want);
    rig.sim.shutdown().await;
}
