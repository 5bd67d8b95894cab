//! `dexscope status`: a healthy and an unhealthy state built by the daemon's real passes
//! (`reconcile_pass`, `priority_pass`, `incidents_pass`) against the simulated tenant at a
//! pinned `now`, recorded through the real `pass_record` and `State` API; the summary is
//! snapshot-tested. The binary is then run with the tenant unreachable: no request is needed.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use dexscope::alerts;
use dexscope::config::Config;
use dexscope::daemon::{self, DesiredWatch, PassContext, PassError, PassSummary};
use dexscope::sim::{self, Scenario, SimHandle, SimOptions};
use dexscope::state::{PostedVerdict, State};
use dexscope::status::{self, StatusFormat};
use dexscope::tenant::Tenant;
use expect_test::expect;
use secrecy::ExposeSecret;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn now() -> DateTime<Utc> {
    "2026-11-22T12:00:00Z".parse().unwrap()
}

/// Alice and Bob in the group by hand, plus an out-of-band member; three tagged workstations.
/// `outranked`: a "Berlin" group ranked above the scoped group also matches the workstations.
fn scenario(outranked: bool) -> Scenario {
    let mut text = String::from(
        r#"
placement_delay_secs = 0
[generate]
users = 0
devices = 0
incidents = 0
scoped_users = 0
tagged_share = 0.0
[[users]]
upn = "alice@contoso.com"
[[users]]
upn = "bob@contoso.com"
[[users]]
upn = "mallory@contoso.com"
[[users]]
upn = "eve@contoso.com"
[scoped_group]
members = ["alice@contoso.com", "bob@contoso.com"]
[[machines]]
name = "ws-ber-0001.contoso.local"
os = "Windows11"
tags = ["DEX-Scoped"]
[[machines]]
name = "ws-ber-0002.contoso.local"
os = "Windows11"
tags = ["DEX-Scoped"]
"#,
    );
    if outranked {
        text.push_str(
            r#"
[[device_groups]]
name = "Berlin"
rank = 1
name_prefixes = ["ws-ber"]
[[device_groups]]
name = "Defender_Experts_Scoped_Coverage_Devices"
rank = 2
tags = ["DEX-Scoped"]
"#,
        );
    } else {
        text.push_str(
            r#"
[[device_groups]]
name = "Defender_Experts_Scoped_Coverage_Devices"
rank = 1
tags = ["DEX-Scoped"]
[[device_groups]]
name = "Berlin"
rank = 2
name_prefixes = ["ws-ber"]
"#,
        );
    }
    Scenario::parse(&text).unwrap()
}

struct Env {
    sim: SimHandle,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(outranked: bool) -> Env {
        let sim = sim::start(SimOptions {
            scenario: Some(scenario(outranked)),
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), format!("{COMMIT}\n")).unwrap();
        Env { sim, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, scope: &str, users: &[&str]) {
        let head = super::support::sim_config_head(&self.sim);
        std::fs::write(
            self.path("config.toml"),
            format!(
                "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n{scope}\n\
                 [schedule]\nreconcile_every = \"5m\"\npriority_every = \"15m\"\n\
                 incidents_every = \"1m\"\n[state]\npath = \"state.db\"\n"
            ),
        )
        .unwrap();
        let users: String = users.iter().map(|u| format!("  {u:?},\n")).collect();
        std::fs::write(
            self.path("desired.toml"),
            format!(
                "users = [\n{users}]\ndevices = [\"ws-ber-0001.contoso.local\", \
                 \"ws-ber-0002.contoso.local\"]\n"
            ),
        )
        .unwrap();
    }

    fn config(&self) -> Config {
        let secret = self.sim.client_secret().expose_secret().to_string();
        Config::load(
            &self.path("config.toml"),
            [("DEXSCOPE_CLIENT_SECRET", secret.as_str())],
        )
        .unwrap()
    }

    fn context(&self) -> PassContext {
        let config = self.config();
        let desired = DesiredWatch::new(config.scope.desired_state.clone());
        desired.settle(now().date_naive(), std::time::Duration::from_millis(10), 10);
        PassContext {
            tenant: Tenant::from_config(&config).unwrap(),
            state: Arc::new(State::open(&config.state.path).unwrap()),
            desired: dexscope::daemon::DesiredSource::Files(Arc::new(desired)),
            config: Arc::new(config),
        }
    }
}

/// Records a pass as the daemon does: the row, and its observations folded into the alerts.
fn record(
    state: &State,
    name: &str,
    at: DateTime<Utc>,
    result: Result<PassSummary, PassError>,
) -> Result<PassSummary, PassError> {
    let previous = state.last_pass(name).unwrap();
    let started = at - TimeDelta::seconds(2);
    state
        .record_pass(&daemon::pass_record(
            name,
            started,
            at,
            &result,
            previous.as_ref(),
        ))
        .unwrap();
    let observations = match &result {
        Ok(s) => s.observations.clone(),
        Err(e) => e.observations.clone(),
    };
    for obs in observations {
        let prev = state.load_alert(obs.kind, &obs.subject).unwrap();
        let (rec, _) = alerts::step(prev.as_ref(), obs, at, TimeDelta::hours(6));
        state.save_alert(&rec).unwrap();
    }
    result
}

fn verdicts(state: &State) {
    for (id, verdict, hours_ago) in [
        ("101", "in_scope", 1),
        ("102", "in_scope", 5),
        ("103", "out_of_scope", 23),
        ("104", "out_of_scope", 30),
    ] {
        state
            .record_verdict(&PostedVerdict {
                incident_id: id.into(),
                digest: format!("{id:0>16}"),
                verdict: verdict.into(),
                at: now() - TimeDelta::hours(hours_ago),
            })
            .unwrap();
    }
}

fn render(env: &Env, format: StatusFormat) -> String {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = status::status_command(&env.config(), format, now(), &mut out, &mut err);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    String::from_utf8(out).unwrap()
}

fn run_bin(dir: &std::path::Path, secret: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["status", "--format", "json"])
        .env("DEXSCOPE_CLIENT_SECRET", secret)
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn healthy_state_snapshot_and_no_tenant_request() {
    let env = Env::start(false).await;
    env.write("prune = true", &["alice@contoso.com", "bob@contoso.com"]);
    let ctx = env.context();
    let state = &ctx.state;
    let t = now();
    record(
        state,
        "reconcile",
        t - TimeDelta::minutes(2),
        daemon::reconcile_pass(&ctx, t - TimeDelta::minutes(2)).await,
    )
    .unwrap();
    record(
        state,
        "priority",
        t - TimeDelta::minutes(10),
        daemon::priority_pass(&ctx, t - TimeDelta::minutes(10)).await,
    )
    .unwrap();
    record(
        state,
        "incidents",
        t - TimeDelta::seconds(30),
        daemon::incidents_pass(&ctx, t - TimeDelta::seconds(30)).await,
    )
    .unwrap();
    verdicts(state);

    expect![[r#"
        coverage: HEALTHY (2026-11-22 12:00:00 UTC)

        groups            desired  effective  drift
          users                 2          2      0
          devices               2          2      0
        pending changes:  0
        unresolved:       0
        desired commit:   0123456789abcdef0123456789abcdef01234567
        priority:         ok
          - ok: 2 tagged devices in Defender_Experts_Scoped_Coverage_Devices
        removal guard:    clear
        alerts firing:    0
        loops             last success       age  every
          reconcile       2026-11-22 11:58     2m  5m
          priority        2026-11-22 11:50    10m  15m
          incidents       2026-11-22 11:59    30s  1m
        verdicts (24h):   in_scope 2, out_of_scope 1
        pickups (7d):     none settled
    "#]]
    .assert_eq(&render(&env, StatusFormat::Text));

    env.sim.reset_stats();
    let secret = env.sim.client_secret().expose_secret().to_string();
    let out = run_bin(env.dir.path(), &secret);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.sim.stats().http_requests,
        0,
        "status asks the tenant nothing"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["coverage"]["users"]["effective"], 2, "{json:#}");
    assert_eq!(json["coverage"]["commit"], COMMIT, "{json:#}");
    env.sim.shutdown().await;
}

#[tokio::test]
async fn unhealthy_state_snapshot_outranked_guard_tripped_stale_loop() {
    let env = Env::start(true).await;
    // Mallory and Eve joined out of band; ghost@ does not exist; max_removals = 1 trips the
    // guard on the two removals.
    {
        let s = env.sim.state();
        let mut t = s.lock().unwrap();
        let gid = uuid::Uuid::parse_str(&env.sim.user_group_id()).unwrap();
        for upn in ["mallory@contoso.com", "eve@contoso.com"] {
            let id = t.directory.user_by_upn(upn).unwrap().id;
            t.directory.add_member(&gid, id);
        }
    }
    env.write(
        "prune = true\nmax_removals = 1",
        &["alice@contoso.com", "bob@contoso.com", "ghost@contoso.com"],
    );
    let ctx = env.context();
    let state = &ctx.state;
    let t = now();
    // The incident loop last succeeded a day ago and fails since.
    record(
        state,
        "incidents",
        t - TimeDelta::days(1),
        daemon::incidents_pass(&ctx, t - TimeDelta::days(1)).await,
    )
    .unwrap();
    let failed = PassError::new("incident pass failed: reading incidents failed: HTTP 503");
    let _ = record(state, "incidents", t - TimeDelta::minutes(1), Err(failed));
    let _ = record(
        state,
        "incidents",
        t - TimeDelta::seconds(1),
        Err(PassError::new(
            "incident pass failed: reading incidents failed: HTTP 503",
        )),
    );
    // The tags are first seen three hours ago; now the grace period is over.
    record(
        state,
        "priority",
        t - TimeDelta::hours(3),
        daemon::priority_pass(&ctx, t - TimeDelta::hours(3)).await,
    )
    .unwrap();
    record(
        state,
        "priority",
        t - TimeDelta::minutes(5),
        daemon::priority_pass(&ctx, t - TimeDelta::minutes(5)).await,
    )
    .unwrap();
    record(
        state,
        "reconcile",
        t - TimeDelta::minutes(3),
        daemon::reconcile_pass(&ctx, t - TimeDelta::minutes(3)).await,
    )
    .unwrap();
    verdicts(state);

    expect![[r#"
        coverage: UNHEALTHY (2026-11-22 12:00:00 UTC)
          ! priority: device group Defender_Experts_Scoped_Coverage_Devices is outranked by Berlin: 2 tagged devices placed there (ws-ber-0001.contoso.local, ws-ber-0002.contoso.local); give Defender_Experts_Scoped_Coverage_Devices rank 1
          ! removal guard refused 2 removals from users (max 1); review, then `dexscope apply --allow-mass-removal`
          ! incidents loop: last success 1d 0h ago
          ! 1 desired entry unresolved (unknown or ambiguous; see below)

        groups            desired  effective  drift
          users                 2          4      2
          devices               2          2      0
        pending changes:  0
        unresolved:       1
          - ghost@contoso.com (unknown user)
        desired commit:   0123456789abcdef0123456789abcdef01234567
        priority:         critical
          - critical: device group Defender_Experts_Scoped_Coverage_Devices is outranked by Berlin: 2 tagged devices placed there (ws-ber-0001.contoso.local, ws-ber-0002.contoso.local); give Defender_Experts_Scoped_Coverage_Devices rank 1
        removal guard:    REFUSED
          - users: 2 removals (max 1) at 2026-11-22 11:57
        alerts firing:    2
          - critical priority_misconfigured since 2026-11-22 11:55: device group Defender_Experts_Scoped_Coverage_Devices is outranked by Berlin: 2 tagged devices placed there (ws-ber-0001.contoso.local, ws-ber-0002.contoso.local); give Defender_Experts_Scoped_Coverage_Devices rank 1
          - critical removal_guard_tripped [reconcile] since 2026-11-22 11:57: removal guard refused 2 removals from users (max 1); run `dexscope apply --allow-mass-removal` if intended
        loops             last success       age  every
          reconcile       2026-11-22 11:57     3m  5m
          priority        2026-11-22 11:55     5m  15m
          incidents       2026-11-21 12:00  1d 0h  1m  STALE
            last pass failed: incident pass failed: reading incidents failed: HTTP 503
        verdicts (24h):   in_scope 2, out_of_scope 1
        pickups (7d):     none settled
    "#]].assert_eq(&render(&env, StatusFormat::Text));

    // Nothing is reachable any more: status still answers from the database alone.
    let secret = env.sim.client_secret().expose_secret().to_string();
    env.sim.shutdown().await;
    let out = run_bin(env.dir.path(), &secret);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["healthy"], false, "{json:#}");
    assert_eq!(json["guard_refusals"][0]["group"], "users", "{json:#}");
    assert_eq!(json["priority"]["worst"], "critical", "{json:#}");
    let incidents = json["loops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "incidents")
        .unwrap();
    assert_eq!(incidents["stale"], true, "{json:#}");
}

#[test]
fn status_without_a_database_is_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[tenant]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
         client_id = \"00000000-0000-0000-0000-000000000002\"\n\
         [scope]\nuser_group_id = \"00000000-0000-0000-0000-000000000003\"\n\
         device_tag = \"DEX-Scoped\"\ndesired_state = \"d.toml\"\n[state]\npath = \"none/state.db\"\n",
    )
    .unwrap();
    let config = Config::load(
        &dir.path().join("config.toml"),
        [("DEXSCOPE_CLIENT_SECRET", "x")],
    )
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = status::status_command(&config, StatusFormat::Text, now(), &mut out, &mut err);
    assert_eq!(code, 1);
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("no state database at") && err.contains("dexscope run"),
        "{err}"
    );
    assert!(!dir.path().join("none").exists(), "status creates nothing");
}
