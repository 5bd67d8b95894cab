//! A service that grants a quarter of the budget dexscope is configured with, answering with
//! fractional `Retry-After` values of 0.5 to 2 s: `dexscope apply` (the real binary) and
//! `dexscope poll --once` still converge exactly, never call before a `Retry-After` elapsed and
//! never call into a surface the service holds. Counts come from the simulator; nothing here
//! measures wall-clock time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dexscope::sim::{
    self, FaultConfig, QuotaConfig, RouteFault, SeedSpec, SimHandle, SimOptions, Surface,
};
use secrecy::ExposeSecret;

const TAG: &str = "DEX-Scoped";
const PATCH_GROUP: &str = "PATCH /v1.0/groups/{id}";

/// The simulator's windows are the documented ones shrunk by this factor in budget and length
/// alike (150 s becomes 0.6 s), so a test waits for many windows in a few seconds.
const SCALE: f64 = 0.004;

/// The service's budgets before `factor`: its rate then equals the configured one
/// (dexscope's windows are the documented lengths, the simulator's `SCALE` of them).
fn service(factor: f64) -> QuotaConfig {
    QuotaConfig {
        enabled: true,
        scale: SCALE,
        graph_ru_per_10s: 100_000_000,
        graph_writes_per_150s: 12_000,
        security_per_min: 2_000,
        mde_per_min: 2_000,
        mde_per_hour: 120_000,
        factor,
        retry_after_ms: Some((500, 2_000)),
        ..QuotaConfig::default()
    }
}

/// dexscope's `[limits]`: the same rates as `service(1.0)`, with the default four write
/// envelopes in flight.
const LIMITS: &str = "[limits]\ngraph_directory_writes_per_150s = 12000\n\
                      graph_directory_write_batches_in_flight = 4\n\
                      graph_directory_reads_per_10s = 100000\n\
                      graph_security_per_minute = 2000\ndefender_per_minute = 2000\n\
                      defender_per_hour = 120000\npass_deadline = \"5m\"\n";

fn options(users: usize, devices: usize, incidents: usize, quotas: QuotaConfig) -> SimOptions {
    SimOptions {
        seed: 5,
        generate: SeedSpec {
            users,
            devices,
            incidents,
            scoped_users: 0,
            tagged_share: 0.0,
            nested: false,
        },
        quotas,
        ..SimOptions::default()
    }
}

/// Writes config.toml and desired.toml into `dir`; returns the config path.
fn write_config(dir: &Path, sim: &SimHandle, users: &[String], devices: &[String]) -> PathBuf {
    write_config_with(dir, sim, users, devices, LIMITS)
}

/// Like [`write_config`], with `tail` (the `[limits]` and any further sections) instead of
/// [`LIMITS`].
fn write_config_with(
    dir: &Path,
    sim: &SimHandle,
    users: &[String],
    devices: &[String],
    tail: &str,
) -> PathBuf {
    let head = super::support::sim_config_head(sim);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"{TAG}\"\ndesired_state = \"{}\"\nprune = false\n\
             [state]\npath = \"{}\"\n[incidents]\npost_comments = true\nlookback = \"8760h\"\n{tail}",
            dir.join("desired.toml").display(),
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    let list = |v: &[String]| v.iter().map(|u| format!("  {u:?},\n")).collect::<String>();
    std::fs::write(
        dir.join("desired.toml"),
        format!(
            "users = [\n{}]\ndevices = [\n{}]\n",
            list(users),
            list(devices)
        ),
    )
    .unwrap();
    config
}

/// Runs `dexscope --config <config> ARGS`; returns the exit code and stdout.
async fn run(sim: &SimHandle, config: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env(
            "DEXSCOPE_CLIENT_SECRET",
            sim.client_secret().expose_secret(),
        )
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the command finishes")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(sim.client_secret().expose_secret()),
        "the secret leaked"
    );
    (
        out.status.code().unwrap(),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

fn upns(sim: &SimHandle, n: usize) -> Vec<String> {
    let state = sim.state();
    let t = state.lock().unwrap();
    t.directory
        .users
        .iter()
        .flatten()
        .take(n)
        .map(|u| u.upn.to_string())
        .collect()
}

fn machine_ids(sim: &SimHandle, n: usize) -> Vec<String> {
    let state = sim.state();
    let t = state.lock().unwrap();
    (0..t.mde.machines.len().min(n) as u32)
        .map(|i| t.view_of(i).id)
        .collect()
}

/// The service was made to throttle, and the client never called early or into a hold.
fn assert_polite(sim: &SimHandle, what: &str) {
    let s = sim.stats();
    assert!(
        s.throttled_total() > 0,
        "{what}: the service throttled: {s:?}"
    );
    assert_eq!(s.early_retries_total(), 0, "{what}: early calls: {s:?}");
    assert!(s.violations.is_empty(), "{what}: violations: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_adds_converge_when_the_service_grants_a_quarter_of_the_budget() {
    let sim = sim::start(options(2_100, 5, 0, service(0.25)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = upns(&sim, 2_000);
    let config = write_config(dir.path(), &sim, &users, &[]);
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(sim.group_members(&sim.user_group_id()).len(), 2_000);
    // 2,000 members at 20 per PATCH: 100 PATCHes admitted, each member once.
    let s = sim.stats();
    let admitted = s.calls(PATCH_GROUP) - s.throttled.get("graph_directory").copied().unwrap_or(0);
    assert!(admitted >= 100, "{s:?}");
    assert_polite(&sim, "user adds");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_writes_converge_when_the_service_grants_a_quarter_of_the_budget() {
    // MDE at a quarter of 8 calls per 0.24 s: 2 per window, so the reads and the tag calls
    // meet the window again and again.
    let quotas = QuotaConfig {
        mde_per_min: 2_000,
        ..service(0.25)
    };
    let sim = sim::start(options(10, 1_200, 0, quotas)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = machine_ids(&sim, 1_200);
    let config = write_config(dir.path(), &sim, &[], &ids);
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(sim.machines_with_tag(TAG).len(), 1_200, "{out}");
    assert_polite(&sim, "tag writes");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_posts_converge_when_the_service_grants_a_quarter_of_the_budget() {
    let sim = sim::start(options(10, 10, 30, service(0.25)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &[], &[]);
    let (code, out) = run(&sim, &config, &["poll", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    let incidents: Vec<String> = {
        let state = sim.state();
        let t = state.lock().unwrap();
        t.incidents.list.iter().map(|i| i.id.to_string()).collect()
    };
    let commented = incidents
        .iter()
        .filter(|id| !sim.comments(id).is_empty())
        .count();
    // Every incident in the lookback got its verdict once (redirected shells get none).
    assert!(commented >= 20, "{commented} of {}: {out}", incidents.len());
    for id in &incidents {
        assert!(
            sim.comments(id).len() <= 1,
            "incident {id}: duplicate comment"
        );
    }
    assert_polite(&sim, "comment posts");
    sim.shutdown().await;
}

/// A bearer token for MDE from the simulator's token endpoint.
async fn mde_token(http: &reqwest::Client, sim: &SimHandle) -> String {
    let v: serde_json::Value = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.base_url(),
            sim.tenant_id()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &sim.client_id()),
            ("client_secret", sim.client_secret().expose_secret()),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// The simulator's judge of early calls, driven by a plain client: a call sent while a
/// throttled answer was still on its way is not early, however the answer's timing falls; a
/// client that repeats the refused call before `Retry-After` elapsed is, and so is every call
/// it sends to the held surface after that. Ordering comes from a slowed answer and the
/// simulator's own throttle count, not from timing the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_excuses_calls_in_flight_and_catches_a_client_that_ignores_retry_after() {
    let quotas = QuotaConfig {
        mde_per_min: 1,
        retry_after_ms: Some((30_000, 30_000)),
        ..QuotaConfig::default()
    };
    let sim = sim::start(options(10, 10, 0, quotas)).await.unwrap();
    let http = reqwest::Client::new();
    let token = mde_token(&http, &sim).await;
    let get = |top: u32| {
        http.get(format!("{}/api/machines?$top={top}", sim.base_url()))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get(1).await.unwrap().status(), 200, "the window's one call");
    // Every MDE answer now waits 2 s before it is written.
    sim.set_faults(FaultConfig {
        slow_rate: 1.0,
        slow_ms: 2_000,
        surfaces: vec![Surface::Mde],
        ..FaultConfig::default()
    });
    let a = tokio::spawn(get(2));
    let mut polls = 0;
    while sim.stats().throttled_total() == 0 {
        polls += 1;
        assert!(polls < 2_000, "the simulator throttled the second call");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Throttled, its answer not yet written: a call sent now was on its way.
    assert!(
        !a.is_finished(),
        "the answer is held back by the slow fault"
    );
    let b = get(3).await.unwrap();
    assert_eq!(b.status(), 429);
    assert_eq!(sim.stats().early_retries_total(), 0, "in flight, not early");
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status(), 429);
    assert_eq!(a.headers()["retry-after"], "30.000");
    sim.set_faults(FaultConfig::default());
    // A client that ignores Retry-After: it repeats the refused call at once, then calls the
    // held surface again.
    assert_eq!(get(2).await.unwrap().status(), 429);
    assert_eq!(sim.stats().early_retries_total(), 1, "the repeat is early");
    assert_eq!(get(4).await.unwrap().status(), 429);
    let s = sim.stats();
    assert_eq!(
        s.early_retries_total(),
        2,
        "a call into the held surface is early"
    );
    let kinds: Vec<&str> = s.violations.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(kinds, ["early_retry", "early_retry"], "{:?}", s.violations);
    sim.shutdown().await;
}

/// A service granting 5 writes (`PATCH`es of 20 members: 100 adds) per 150 s window against
/// dexscope's configured 3,000, and a pass deadline of 2 s: each pass writes the window's 100 adds, meets a `Retry-After` of about
/// 150 s that ends past its deadline and stops there. What each pass writes is fixed by the
/// window's count, not by timing; the simulator's clock is moved on between passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_the_throttling_outlasts_ends_not_converged_throttled_and_the_next_carries_on() {
    let quotas = QuotaConfig {
        enabled: true,
        graph_ru_per_10s: 100_000_000,
        graph_writes_per_150s: 5,
        ..QuotaConfig::default()
    };
    let sim = sim::start(options(400, 5, 0, quotas)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = upns(&sim, 300);
    let config = write_config_with(
        dir.path(),
        &sim,
        &users,
        &[],
        "[limits]\npass_deadline = \"2s\"\n[schedule]\nreconcile_every = \"1h\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    );
    let members = || sim.group_members(&sim.user_group_id()).len();

    // First pass: `apply` writes one window's 100 adds and exits 4.
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(
            "not converged: throttled (200 changes remain; the service granted graph_write"
        ),
        "{out}"
    );
    assert_eq!(members(), 100);

    // Second pass, by the daemon once the window and the wait have passed: 100 more, then the
    // same end, recorded for `status`, `check` and `/metrics`.
    sim.advance(Duration::from_secs(151));
    let daemon = Daemon::start(&sim, &config);
    let metrics = daemon
        .metrics_when("dexscope_passes_total{loop=\"reconcile\"", 1.0)
        .await;
    assert_eq!(members(), 200);
    let granted = sample(
        &metrics,
        "dexscope_granted_rate_per_second{surface=\"graph_write\"}",
    );
    assert!(
        granted.is_some_and(|g| g < 20.0),
        "learned below 3,000 per 150 s:\n{metrics}"
    );
    let throttled = sample(
        &metrics,
        "dexscope_throttled_requests_total{surface=\"graph_write\"}",
    );
    assert!(throttled.is_some_and(|t| t > 0.0), "{metrics}");
    daemon.stop();
    let line = "not converged: throttled (100 changes remain; the service granted graph_write";
    let (_, status) = run(&sim, &config, &["status"]).await;
    assert!(status.contains(line), "{status}");
    let (_, check) = run(&sim, &config, &["check"]).await;
    assert!(check.contains(line), "{check}");

    // Third pass: the last 100 fit the next window and the pass converges.
    sim.advance(Duration::from_secs(151));
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("converged"), "{out}");
    assert_eq!(members(), 300);
    let s = sim.stats();
    assert_eq!(s.early_retries_total(), 0, "{s:?}");
    assert!(s.violations.is_empty(), "{s:?}");
    sim.shutdown().await;
}

/// The value of the first sample of `series` (a name with the start of its labels) in the
/// metrics text, summed over the samples that start so.
fn sample(text: &str, series: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A `dexscope run` child and its JSON log lines.
struct Daemon {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(sim: &SimHandle, config: &Path) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("DEXSCOPE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env(
                "DEXSCOPE_CLIENT_SECRET",
                sim.client_secret().expose_secret(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls `/metrics` (at most 600 times, 100 ms apart) until `series` sums to at least
    /// `value`; returns the text.
    async fn metrics_when(&self, series: &str, value: f64) -> String {
        let http = reqwest::Client::new();
        for _ in 0..600 {
            let address = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| Some(v.get("address")?.as_str()?.to_string()));
            if let Some(address) = address {
                let text = http
                    .get(format!("http://{address}/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                if sample(&text, series).is_some_and(|v| v >= value) {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{series} never reached {value}:\n{}", self.log_text());
    }

    /// SIGTERM to this child, then waits for it to exit.
    fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("no exit after SIGTERM:\n{}", self.log_text());
    }
}

const LOOKUP: &str = "GET /v1.0/users";
const REMOVE_REF: &str = "DELETE /v1.0/groups/{id}/members/{id}/$ref";
const BATCH: &str = "POST /v1.0/$batch";

/// A tenant of 12,200 users, 40 of them in the group, without quotas; every response is held
/// back 40 ms after the call is served, so the 40 lookup rounds of 300 UPNs take a while
/// however fast the machine is. The desired state keeps 20 members, adds 12,000 users and
/// lists one UPN nobody has: 12,000 adds, 20 removals. `prune` is on.
async fn streaming_setup(faults: FaultConfig) -> (SimHandle, tempfile::TempDir, PathBuf) {
    let sim = sim::start(SimOptions {
        seed: 7,
        generate: SeedSpec {
            users: 12_200,
            devices: 5,
            incidents: 0,
            scoped_users: 40,
            tagged_share: 0.0,
            nested: false,
        },
        quotas: QuotaConfig {
            enabled: false,
            ..QuotaConfig::default()
        },
        placement_delay_secs: 0.0,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let (kept, added) = {
        let members: std::collections::HashSet<String> = sim
            .group_members(&sim.user_group_id())
            .into_iter()
            .collect();
        let state = sim.state();
        let t = state.lock().unwrap();
        let all: Vec<_> = t.directory.users.iter().flatten().collect();
        let (kept, added): (Vec<_>, Vec<_>) = all
            .iter()
            .partition(|u| members.contains(&u.id.to_string()));
        let upns = |v: Vec<&&sim::model::User>, n| -> Vec<String> {
            v.iter().take(n).map(|u| u.upn.to_string()).collect()
        };
        (upns(kept, 20), upns(added, 12_000))
    };
    let mut users = kept;
    users.extend(added);
    users.push("nobody.here@contoso.com".to_string());
    let dir = tempfile::tempdir().unwrap();
    let head = super::support::sim_config_head(&sim);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"{TAG}\"\ndesired_state = \"{}\"\nprune = true\n\
             max_removals = 500\n[state]\npath = \"{}\"\n{LIMITS}",
            dir.path().join("desired.toml").display(),
            dir.path().join("state.db").display()
        ),
    )
    .unwrap();
    let list = users
        .iter()
        .map(|u| format!("  {u:?},\n"))
        .collect::<String>();
    std::fs::write(
        dir.path().join("desired.toml"),
        format!("users = [\n{list}]\n"),
    )
    .unwrap();
    sim.set_faults(FaultConfig {
        slow_rate: 1.0,
        slow_ms: 40,
        surfaces: vec![Surface::GraphDirectory],
        ..faults
    });
    (sim, dir, config)
}

/// Adds go out while lookups still run; removals only once the last lookup is answered and
/// the full plan with its guard is made; the requests are those of resolving everything first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_start_while_lookups_run_and_removals_wait_for_the_last_lookup() {
    let (sim, _dir, config) = streaming_setup(FaultConfig::default()).await;
    // `plan` resolves every entry before it is done and writes nothing: the lookups and
    // envelopes of a pass that resolves first.
    let (code, out) = run(&sim, &config, &["plan"]).await;
    assert_eq!(code, 2, "{out}");
    let planned = sim.stats();
    sim.reset_stats();

    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nobody.here@contoso.com"), "{out}");
    assert_eq!(sim.group_members(&sim.user_group_id()).len(), 12_020);
    let s = sim.stats();
    let (_, last_lookup) = s.span(LOOKUP).expect("lookups");
    let (first_add, _) = s.span(PATCH_GROUP).expect("adds");
    let (first_removal, _) = s.span(REMOVE_REF).expect("removals");
    assert!(
        first_add < last_lookup,
        "the first add (call {first_add}) goes before the last lookup (call {last_lookup})"
    );
    assert!(
        first_removal > last_lookup,
        "no removal (first at call {first_removal}) before the last lookup (call {last_lookup})"
    );
    // 12,001 UPNs in 801 filters, 41 envelopes, as when resolving first; 12,000 adds in 600
    // PATCHes of 20 and 30 envelopes of 20; 20 removals in one envelope.
    assert_eq!(s.calls(LOOKUP), planned.calls(LOOKUP), "{s:?}");
    assert_eq!(s.calls(LOOKUP), 801);
    assert_eq!(s.calls(PATCH_GROUP), 600, "{s:?}");
    assert_eq!(s.calls(REMOVE_REF), 20, "{s:?}");
    let envelopes = |s: &sim::Stats| s.http_by_route.get(BATCH).copied().unwrap_or(0);
    assert_eq!(envelopes(&s), envelopes(&planned) + 30 + 1, "{s:?}");

    // Nothing left: the next pass looks up only the unknown UPN and writes nothing.
    sim.reset_stats();
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    let s = sim.stats();
    assert_eq!(s.calls(LOOKUP), 1, "{s:?}");
    assert_eq!(s.calls(PATCH_GROUP) + s.calls(REMOVE_REF), 0, "{s:?}");
    sim.shutdown().await;
}

/// A lookup refused for good after 400 filters (6,000 UPNs) fails the pass with the lookup's
/// error. The adds already found went out and were audited, no member was removed, and the
/// next pass, with the lookups answered again, converges writing no member twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_fails_the_pass_after_safe_adds_and_removes_nothing() {
    let refused = FaultConfig {
        route_fails: Some(RouteFault {
            route: LOOKUP.to_string(),
            after: 400,
            status: 403,
        }),
        ..FaultConfig::default()
    };
    let (sim, dir, config) = streaming_setup(refused).await;
    let before: std::collections::HashSet<String> = sim
        .group_members(&sim.user_group_id())
        .into_iter()
        .collect();
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("looking up users (userPrincipalName in 15 values) failed with status 403"),
        "{out}"
    );
    let s = sim.stats();
    assert_eq!(s.calls(REMOVE_REF), 0, "no removal: {s:?}");
    let after: std::collections::HashSet<String> = sim
        .group_members(&sim.user_group_id())
        .into_iter()
        .collect();
    assert!(after.is_superset(&before), "every member stays");
    assert!(after.len() > before.len(), "the adds found first went out");
    let state = dexscope::state::State::open(dir.path().join("state.db")).unwrap();
    assert_eq!(
        state.pending_changes().unwrap(),
        vec![],
        "every add audited"
    );
    drop(state);

    sim.set_faults(FaultConfig {
        slow_rate: 1.0,
        slow_ms: 40,
        surfaces: vec![Surface::GraphDirectory],
        ..FaultConfig::default()
    });
    let (code, out) = run(&sim, &config, &["apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(sim.group_members(&sim.user_group_id()).len(), 12_020);
    let adds: Vec<String> = sim
        .writes()
        .into_iter()
        .filter(|w| w.op == "add")
        .map(|w| w.object)
        .collect();
    let distinct: std::collections::HashSet<&String> = adds.iter().collect();
    assert_eq!((adds.len(), distinct.len()), (12_000, 12_000));
    sim.shutdown().await;
}
