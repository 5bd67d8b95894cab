//! The crash loop: a `dexscope sim` process (its state outlives every daemon) seeded with a
//! desired state needing hundreds of user and device changes, a stream of new incidents, and
//! the real `dexscope run` binary SIGKILLed at a random point, N times. A point is a number of
//! requests the simulator has served since the start, not a time, so the kills land inside
//! the work at any machine speed. Then one run is left to finish and the tenant, the sim's
//! write log and the audit log are checked: exact convergence, a verdict comment on every
//! incident and no marker posted twice, an audit row for every change the tenant saw, and no
//! desired member or device ever removed.
//!
//! N = 25 by default; `DEXSCOPE_CRASH_CYCLES=100 cargo test --test it crashloop -- --nocapture`
//! is the extended mode. The seed is fixed, so every run kills at the same points;
//! `DEXSCOPE_TEST_SEED` (or `DEXSCOPE_CRASH_SEED`) chooses another, and a failure names it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dexscope::incidents::comment::MARKER_PREFIX;
use dexscope::sim::{self, Scenario, SimOptions};
use dexscope::state::{ChangeResult, State};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const TAG: &str = "DEX-Scoped";
const SEVERITIES: [&str; 3] = ["high", "medium", "low"];

/// 2,000 users (200 in the scoped group), 300 machines (20% tagged), no seeded incidents.
/// Quotas at 1/100 of their windows (directory writes at 4 per second), so the
/// 600 user changes take several throttled write windows and kills land mid-pass.
const SCENARIO: &str = r#"
seed = 4242
placement_delay_secs = 0.0

[generate]
users = 2000
devices = 300
incidents = 0
scoped_users = 200
tagged_share = 0.2
nested = false

[quotas]
scale = 0.01
graph_writes_per_150s = 600
mde_per_min = 1000
mde_per_hour = 100000
security_per_min = 1500
"#;

/// Kills the process on drop, so a failed assertion leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The seed of every random choice: fixed, unless the environment names another.
const DEFAULT_SEED: u64 = 20_251_207;

fn seed() -> u64 {
    ["DEXSCOPE_TEST_SEED", "DEXSCOPE_CRASH_SEED"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("the seed {v:?} is not a number"))
        })
        .unwrap_or(DEFAULT_SEED)
}

/// Prints the seed when the test fails, whichever assertion failed.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash loop failed with seed {0}; replay with DEXSCOPE_TEST_SEED={0}",
                self.0
            );
        }
    }
}

/// Requests a run may serve before it is killed: enough for several passes, writes among them.
const MAX_KILL_AFTER_REQUESTS: u64 = 40;

struct Desired {
    users: HashSet<String>,
    upns: Vec<String>,
    machines: HashSet<String>,
    names: Vec<String>,
}

/// Keeps half of the seeded members, adds 500 outsiders (so about 100 removals and 500 adds),
/// and tags 150 machines (tagging the untagged ones, untagging the other tagged ones).
fn desired_from(t: &dexscope::sim::Tenant) -> Desired {
    let gid = t.ids.user_group_id;
    let members: HashSet<uuid::Uuid> = t.group_members(&gid).into_iter().map(|m| m.0).collect();
    let users: Vec<&dexscope::sim::model::User> = t.directory.users.iter().flatten().collect();
    let kept = users.iter().filter(|u| members.contains(&u.id)).step_by(2);
    let added = users.iter().filter(|u| !members.contains(&u.id)).take(500);
    let chosen: Vec<&&dexscope::sim::model::User> = kept.chain(added).collect();
    let machines: Vec<_> = t.mde.machines.iter().take(150).collect();
    Desired {
        users: chosen.iter().map(|u| u.id.to_string()).collect(),
        upns: chosen.iter().map(|u| u.upn.to_string()).collect(),
        machines: machines.iter().map(|m| m.id_hex()).collect(),
        // By machine id: the seeded tenant has machines sharing a name on purpose.
        names: machines.iter().map(|m| m.id_hex()).collect(),
    }
}

fn write_files(dir: &Path, base: &str, t: &dexscope::sim::Tenant, d: &Desired) -> PathBuf {
    let list = |v: &[String]| v.iter().map(|s| format!("  {s:?},\n")).collect::<String>();
    std::fs::write(
        dir.join("desired.toml"),
        format!(
            "users = [\n{}]\ndevices = [\n{}]\n",
            list(&d.upns),
            list(&d.names)
        ),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[tenant]\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
             [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
             [scope]\nuser_group_id = \"{}\"\ndevice_tag = \"{TAG}\"\n\
             desired_state = \"desired.toml\"\nprune = true\nmax_removals = 1000\n\
             [schedule]\nreconcile_every = \"1s\"\npriority_every = \"1s\"\nincidents_every = \"1s\"\n\
             [incidents]\nlookback = \"1h\"\nseverities = [\"high\", \"medium\", \"low\", \"informational\"]\n\
             [state]\npath = \"state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n\
             [http]\ntimeout = \"5s\"\nmax_retry_time = \"2m\"\n",
            t.ids.tenant_id, t.ids.client_id, t.ids.user_group_id,
        ),
    )
    .unwrap();
    config
}

/// API requests the simulator has served so far (its inspection requests not counted).
async fn served(http: &reqwest::Client, base: &str) -> u64 {
    get(http, format!("{base}/_sim/stats")).await["http_requests"]
        .as_u64()
        .expect("the statistics count requests")
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap()
}

struct Tenantview {
    members: HashSet<String>,
    tagged: HashSet<String>,
    comments: BTreeMap<String, u64>,
}

async fn view(http: &reqwest::Client, base: &str, group: &str) -> Tenantview {
    let members = get(http, format!("{base}/_sim/groups/{group}/members")).await;
    let tagged = get(http, format!("{base}/_sim/machines?tag={TAG}")).await;
    let comments = get(http, format!("{base}/_sim/comments")).await;
    Tenantview {
        members: members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect(),
        tagged: tagged
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect(),
        comments: serde_json::from_value(comments).unwrap(),
    }
}

/// The warnings and errors of the daemon runs, last first, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(15)
        .collect();
    lines.join("\n")
}

fn spawn_run(config: &Path, secret: &str, log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dexscope"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("DEXSCOPE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("DEXSCOPE_CLIENT_SECRET", secret)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_at_random_points_converges_exactly_without_duplicates_or_lost_audit() {
    let cycles: usize = std::env::var("DEXSCOPE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed = seed();
    let _report = SeedOnFailure(seed);
    println!("crash loop: {cycles} cycles, DEXSCOPE_TEST_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let scenario_path = dir.path().join("scenario.toml");
    std::fs::write(&scenario_path, SCENARIO).unwrap();
    // The same scenario built in-process tells the ids, the secret and the seeded tenant.
    let tenant = sim::build_tenant(&SimOptions {
        scenario: Some(Scenario::load(&scenario_path).unwrap()),
        ..SimOptions::default()
    });
    let desired = desired_from(&tenant);
    let secret = tenant.ids.client_secret.expose_secret().to_string();
    let group = tenant.ids.user_group_id.to_string();

    // Port 0: the simulator binds a free port itself and names it in its config snippet.
    let mut sim_proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_dexscope"))
            .args(["sim", "--listen", "127.0.0.1:0", "--scenario"])
            .arg(&scenario_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = sim_proc.0.stdout.take().unwrap();
    let (base_tx, base_rx) = std::sync::mpsc::channel();
    let ready = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let base = lines.by_ref().map_while(Result::ok).find_map(|l| {
            let url = l
                .strip_prefix("# inspection: ")?
                .strip_suffix("/_sim/stats")?;
            Some(url.to_string())
        });
        let _ = base_tx.send(base);
        // Keep draining so the simulator never blocks on a full pipe.
        for _ in lines {}
    });
    let base = base_rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("the simulator names its address within 60 s");
    let config = write_files(dir.path(), &base, &tenant, &desired);
    drop(tenant);
    if let Err(diags) = dexscope::desired::load(
        &[dir.path().join("desired.toml")],
        chrono::Utc::now().date_naive(),
        dexscope::desired::Mode::Runtime,
    ) {
        panic!("the desired state is valid: {diags}: {:?}", diags.0);
    }
    let http = reqwest::Client::new();
    let before = view(&http, &base, &group).await;
    let removals = before.members.difference(&desired.users).count();
    let adds = desired.users.difference(&before.members).count();
    println!(
        "work: {adds} user adds, {removals} removals, {} tags, {} untags",
        desired.machines.difference(&before.tagged).count(),
        before.tagged.difference(&desired.machines).count()
    );
    assert!(adds + removals >= 500, "hundreds of user changes");

    let mut incidents: Vec<String> = Vec::new();
    let new_incident = |rng: &mut ChaCha8Rng| {
        let n = rng.random_range(0..desired.upns.len());
        let m = rng.random_range(0..desired.names.len());
        json!({
            "title": format!("crash loop incident {n}"),
            "severity": SEVERITIES[n % 3],
            "users": [desired.upns[n]],
            "devices": [desired.names[m]],
        })
    };
    let log_path = dir.path().join("run.log");
    let mut kill_points = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        // A steady stream: one or two new incidents before every start.
        for _ in 0..rng.random_range(1..=2) {
            let spec = new_incident(&mut rng);
            let r: Value = http
                .post(format!("{base}/_sim/incidents"))
                .json(&spec)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            incidents.push(r["id"].as_str().unwrap().to_string());
        }
        let kill_after = rng.random_range(1..=MAX_KILL_AFTER_REQUESTS);
        kill_points.push(kill_after);
        let served_before = served(&http, &base).await;
        let mut run = spawn_run(&config, &secret, &log_path);
        // Bounded only so that a daemon making no progress fails the test instead of hanging it.
        let deadline = Instant::now() + Duration::from_secs(120);
        while served(&http, &base).await < served_before + kill_after {
            if let Some(status) = run.0.try_wait().unwrap() {
                panic!(
                    "the daemon exited by itself ({status}); log:\n{}",
                    log_tail(&log_path)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon served fewer than {kill_after} requests in 120 s; log:\n{}",
                log_tail(&log_path)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SIGKILL: no shutdown path runs.
        run.0.kill().unwrap();
        run.0.wait().unwrap();
    }
    let mid = view(&http, &base, &group).await;
    println!(
        "after {cycles} kills: {} of {} desired members, {} of {} incidents commented",
        mid.members.intersection(&desired.users).count(),
        desired.users.len(),
        mid.comments.len(),
        incidents.len()
    );

    // One last run is left to finish.
    let state_path = dir.path().join("state.db");
    let run = spawn_run(&config, &secret, &log_path);
    let deadline = Instant::now() + Duration::from_secs(180);
    let last = loop {
        let v = view(&http, &base, &group).await;
        let pending = State::open(&state_path)
            .map(|s| s.pending_changes().unwrap().len())
            .unwrap_or(usize::MAX);
        if v.members == desired.users
            && v.tagged == desired.machines
            && incidents.iter().all(|i| v.comments.contains_key(i))
            && pending == 0
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within 180 s (seed {seed}): {} members missing, {} extra, {} \
             tags off, {} incidents without a comment, {pending} pending audit rows; log:\n{}",
            desired.users.difference(&v.members).count(),
            v.members.difference(&desired.users).count(),
            v.tagged.symmetric_difference(&desired.machines).count(),
            incidents
                .iter()
                .filter(|i| !v.comments.contains_key(*i))
                .count(),
            log_tail(&log_path)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // One more pass interval, so a write in flight would show; then stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(run);
    let last_again = view(&http, &base, &group).await;
    assert_eq!(
        last_again.members, last.members,
        "no change after convergence"
    );
    assert_eq!(last_again.tagged, desired.machines);

    // Every incident has its verdict comment, and no marker twice. A verdict that changed as
    // the scope converged (a device got its tag, a user joined) gets a new comment with a new
    // marker, as designed; the same verdict posted twice would repeat its marker.
    let mut duplicates = 0;
    let mut comments = 0;
    for id in &incidents {
        let texts: Vec<String> = serde_json::from_value(
            get(&http, format!("{base}/_sim/incidents/{id}/comments")).await,
        )
        .unwrap();
        let markers: Vec<&str> = texts
            .iter()
            .filter_map(|c| c.lines().find(|l| l.starts_with(MARKER_PREFIX)))
            .collect();
        assert_eq!(markers.len(), texts.len(), "only verdict comments on {id}");
        assert!(!markers.is_empty(), "incident {id} has no verdict comment");
        let unique: HashSet<&str> = markers.iter().copied().collect();
        duplicates += markers.len() - unique.len();
        comments += markers.len();
    }
    assert_eq!(duplicates, 0, "duplicate verdict comments (seed {seed})");

    // The write log: no desired member or machine was ever removed; every change the tenant
    // saw has its audit row, settled.
    let writes = get(&http, format!("{base}/_sim/writes")).await;
    assert_eq!(writes["dropped"], 0);
    let writes = writes["writes"].as_array().unwrap();
    let state = State::open(&state_path).unwrap();
    let audit = state.recent_changes(1_000_000).unwrap();
    let mut audited: HashMap<(&str, &str), usize> = HashMap::new();
    for a in &audit {
        assert_ne!(a.result, ChangeResult::Pending, "{a:?}");
        if matches!(a.result, ChangeResult::Ok | ChangeResult::Already) {
            *audited
                .entry((a.operation.as_str(), a.object_id.as_str()))
                .or_default() += 1;
        }
    }
    let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
    for w in writes {
        let op = w["op"].as_str().unwrap();
        let object = w["object"].as_str().unwrap();
        *by_op.entry(op).or_default() += 1;
        match op {
            "remove" => assert!(
                !desired.users.contains(object),
                "desired member {object} was removed (seed {seed})"
            ),
            "untag" => assert!(
                !desired.machines.contains(object),
                "desired machine {object} was untagged (seed {seed})"
            ),
            _ => {}
        }
        assert!(
            audited.contains_key(&(op, object)),
            "{op} {object} reached the tenant without an audit row (seed {seed})"
        );
    }
    // And no row claims a change the tenant never saw.
    let seen: HashSet<(&str, &str)> = writes
        .iter()
        .map(|w| (w["op"].as_str().unwrap(), w["object"].as_str().unwrap()))
        .collect();
    for a in audit.iter().filter(|a| a.result == ChangeResult::Ok) {
        assert!(
            seen.contains(&(a.operation.as_str(), a.object_id.as_str())),
            "audit row {a:?} has no write in the tenant (seed {seed})"
        );
    }
    let settled = audit
        .iter()
        .filter(|a| matches!(&a.result, ChangeResult::Failed(m) if m.contains("settled")))
        .count();
    let mut kp = kill_points.clone();
    kp.sort_unstable();
    println!(
        "crash loop done in {:.1?}: {cycles} kills (median after {} requests), {} writes seen by the \
         tenant {by_op:?}, {} audit rows ({settled} settled as not applied), {} incidents \
         with {comments} verdict comments, 0 duplicates, 0 desired members removed",
        started.elapsed(),
        kp.get(kp.len() / 2).copied().unwrap_or(0),
        writes.len(),
        audit.len(),
        incidents.len()
    );
    drop(sim_proc);
    ready.join().unwrap();
}
