//! `dexscope run` as a process against the in-process simulated tenant, with a systemd-style
//! notify socket: READY=1, watchdog pings, a desired-state change starting a reconcile pass, an
//! invalid change alerting, SIGTERM exiting 0 with a consistent state database; SIGHUP reloading
//! the config and desired state, and keeping the running config when the new one is broken.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimOptions};
use secrecy::ExposeSecret;
use tokio::net::UnixDatagram;

use super::metrics::{check_openmetrics, client};
use super::support::{collect_lines, daemon_command};

/// Waits until a notify datagram with the line `want` has been received (bounded).
async fn wait_for(seen: &Mutex<Vec<String>>, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.lines().any(|l| l == want))
    {
        assert!(
            Instant::now() < deadline,
            "no {want} within {limit:?}; got {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pings(seen: &Mutex<Vec<String>>) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

/// The `{name} pass: …` summary events among the log lines (one per finished pass).
fn pass_events(log: &Mutex<Vec<String>>, name: &str) -> Vec<serde_json::Value> {
    let prefix = format!("{name} pass: ");
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&prefix))
        })
        .collect()
}

/// A user of the simulated tenant outside the scoped group: (UPN, object id).
fn outsiders(sim: &sim::SimHandle, n: usize) -> Vec<(String, String)> {
    let ids = sim.group_members(&sim.user_group_id());
    let state = sim.state();
    let tenant = state.lock().unwrap();
    tenant
        .directory
        .users
        .iter()
        .flatten()
        .map(|u| (u.upn.to_string(), u.id.to_string()))
        .filter(|(_, id)| !ids.contains(id))
        .take(n)
        .collect()
}

/// Waits until `id` is a direct member of the scoped group (bounded).
async fn wait_member(sim: &sim::SimHandle, id: &str, limit: Duration, log: &Mutex<Vec<String>>) {
    let deadline = Instant::now() + limit;
    while !sim
        .group_members(&sim.user_group_id())
        .iter()
        .any(|m| m == id)
    {
        assert!(
            Instant::now() < deadline,
            "{id} not added within {limit:?}; log:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample line in the metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `series` reaches `value` (bounded).
async fn wait_metric(
    base: &str,
    series: &str,
    value: f64,
    limit: Duration,
    log: &Mutex<Vec<String>>,
) -> String {
    let c = client();
    let deadline = Instant::now() + limit;
    loop {
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, series) == Some(value) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {value} within {limit:?}:\n{text}\nlog:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_systemd_follows_the_desired_state_and_stops_cleanly_on_sigterm() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let desired = dir.path().join("desired.toml");
    std::fs::write(&desired, "users = [\"ann@contoso.com\"]\n").unwrap();
    let config = dir.path().join("config.toml");
    let head = super::support::sim_config_head(&sim);
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\n\
             desired_state = \"desired.toml\"\n\
             [schedule]\nreconcile_every = \"1h\"\npriority_every = \"2s\"\n\
             [state]\npath = \"state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n",
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let Daemon {
        mut child,
        seen,
        log,
        drain,
        reader,
    } = Daemon::start_with(&sim, &config, &socket_path, &[("WATCHDOG_USEC", "1000000")]);

    wait_for(&seen, "READY=1", Duration::from_secs(10)).await;
    let address = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| Some(v.get("address")?.as_str()?.to_string()))
        .expect("the start-up log names the metrics address");
    let metrics_base = format!("http://{address}");
    // Two watchdog pings (every 0.5 s) after READY: the loops are making progress.
    let before = pings(&seen);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pings(&seen) < before + 2 {
        assert!(
            Instant::now() < deadline,
            "too few watchdog pings: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.lock().unwrap().iter().any(|m| m.contains("STATUS=")),
        "{seen:?}"
    );

    // The first passes: readiness turns 200, the metrics carry every family.
    let ok = |l: &str| format!("dexscope_passes_total{{loop=\"{l}\",result=\"ok\"}}");
    wait_metric(
        &metrics_base,
        &ok("reconcile"),
        1.0,
        Duration::from_secs(10),
        &log,
    )
    .await;
    let text = wait_metric(
        &metrics_base,
        &ok("priority"),
        2.0,
        Duration::from_secs(10),
        &log,
    )
    .await;
    check_openmetrics(&text);
    assert!(
        sample(
            &text,
            "dexscope_http_requests_total{surface=\"defender\",status=\"2xx\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    let ready = client()
        .get(format!("{metrics_base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "{}",
        ready.text().await.unwrap()
    );

    // A valid change starts a reconcile pass long before its 1 h interval.
    std::fs::write(
        &desired,
        "users = [\"ann@contoso.com\", \"bob@contoso.com\"]\n",
    )
    .unwrap();
    wait_metric(
        &metrics_base,
        &ok("reconcile"),
        2.0,
        Duration::from_secs(10),
        &log,
    )
    .await;
    // An invalid change keeps the last valid state and fires the alert; no pass starts.
    std::fs::write(&desired, "users = [\"ann@contoso.com\", 17]\n").unwrap();
    let text = wait_metric(
        &metrics_base,
        "dexscope_alerts_firing{alert=\"invalid_desired_state\"}",
        1.0,
        Duration::from_secs(10),
        &log,
    )
    .await;
    assert_eq!(sample(&text, &ok("reconcile")), Some(2.0), "{text}");
    // A pass the invalid change started would run before any later one (the loop runs its
    // passes one at a time). So a later valid change adding a user is the event to count
    // after: once its pass has added the user, exactly three passes have finished.
    let (outsider_upn, outsider_id) = outsiders(&sim, 1).remove(0);
    let changing_passes = || {
        pass_events(&log, "reconcile")
            .iter()
            .filter(|v| v["changes"].as_u64().is_some_and(|n| n > 0))
            .count()
    };
    let changed_before = changing_passes();
    std::fs::write(
        &desired,
        format!("users = [\"ann@contoso.com\", \"bob@contoso.com\", {outsider_upn:?}]\n"),
    )
    .unwrap();
    wait_member(&sim, &outsider_id, Duration::from_secs(20), &log).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while changing_passes() == changed_before {
        assert!(Instant::now() < deadline, "the adding pass was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pass_events(&log, "reconcile").len(),
        3,
        "the invalid change started a pass"
    );

    // SIGTERM: STOPPING=1 and exit 0 within 10 s.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().join("\n");
    assert_eq!(code.code(), Some(0), "{log}");
    wait_for(&seen, "STOPPING=1", Duration::from_secs(1)).await;
    // JSON logs: every line is one object; one summary event per pass.
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert!(log.contains("reconcile pass: "), "{log}");
    assert!(
        !log.contains(sim.client_secret().expose_secret()),
        "the log carries the secret"
    );

    // Nothing half-written: the database opens, passes integrity checks and holds the passes.
    let db = dir.path().join("state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);
    let state = dexscope::state::State::open(&db).unwrap();
    let passes = state.last_passes().unwrap();
    let names: Vec<&str> = passes.iter().map(|p| p.loop_name.as_str()).collect();
    for name in ["incidents", "priority", "reconcile"] {
        assert!(names.contains(&name), "{name} recorded its pass: {names:?}");
    }
    assert!(passes.iter().all(|p| p.ok), "{passes:?}");
    let alerts = state.alerts().unwrap();
    // Fired by the invalid change (the later valid one may have resolved it since).
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == dexscope::alerts::AlertKind::InvalidDesiredState),
        "{alerts:?}"
    );

    // Requests, counted by the tenant: one token per resource, and the members read by each of
    // the three reconcile passes (before, and again to verify when something was planned).
    let stats = sim.stats();
    assert_eq!(stats.tokens_issued, 2, "{stats:?}");
    let member_reads: u64 = stats
        .http_by_route
        .iter()
        .filter(|(route, _)| route.starts_with("GET ") && route.ends_with("/members"))
        .map(|(_, n)| n)
        .sum();
    assert!((3..=9).contains(&member_reads), "{:?}", stats.http_by_route);
    drain.abort();
    sim.shutdown().await;
}

/// A `dexscope run` child with its notify socket and log (JSON lines) collected as they come.
struct Daemon {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<Vec<String>>>,
    drain: tokio::task::JoinHandle<()>,
    reader: std::thread::JoinHandle<()>,
}

impl Daemon {
    fn start(sim: &sim::SimHandle, config: &std::path::Path, socket: &std::path::Path) -> Self {
        Self::start_with(sim, config, socket, &[])
    }

    /// Like systemd, the test reads the notify socket all along; `env` adds variables (e.g.
    /// `WATCHDOG_USEC`).
    fn start_with(
        sim: &sim::SimHandle,
        config: &std::path::Path,
        socket: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let sock = UnixDatagram::bind(socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let drain = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = sock.recv(&mut buf).await {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            })
        };
        let mut child = daemon_command(sim, config)
            .env("NOTIFY_SOCKET", socket)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, reader) = collect_lines(child.stderr.take().unwrap());
        Daemon {
            child,
            seen,
            log,
            drain,
            reader,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The `message` of every log event that contains `needle`.
    fn messages(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some(v.get("message")?.as_str()?.to_string()))
            .filter(|m| m.contains(needle))
            .collect()
    }

    /// Waits until a log event's message contains `needle` (bounded).
    async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.messages(needle).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no log event with {needle:?} within {limit:?}:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Notify lines (e.g. `STATUS=…`) received so far, in order.
    fn notes(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    /// SIGTERM, then the exit code (bounded).
    fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let started = Instant::now();
        let code = loop {
            if let Some(code) = self.child.try_wait().unwrap() {
                break code;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit within 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reader.join().unwrap();
        self.drain.abort();
        code.code()
    }
}

/// `users = [...]` for a desired-state file.
fn users_file(upns: &[String]) -> String {
    let quoted: Vec<String> = upns.iter().map(|u| format!("{u:?}")).collect();
    format!("users = [{}]\n", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_desired_state_and_keeps_the_running_config_when_broken() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let group = sim.user_group_id();
    // The group's members as they are, plus outsiders: one to add at start, one after reload.
    let (members, outsiders) = {
        let ids = sim.group_members(&group);
        let state = sim.state();
        let tenant = state.lock().unwrap();
        let (inside, outside): (Vec<_>, Vec<_>) = tenant
            .directory
            .users
            .iter()
            .flatten()
            .map(|u| (u.upn.to_string(), u.id.to_string()))
            .partition(|(_, id)| ids.contains(id));
        (inside, outside.into_iter().take(3).collect::<Vec<_>>())
    };
    let (first, second, third) = (&outsiders[0], &outsiders[1], &outsiders[2]);
    let mut wanted: Vec<String> = members.iter().map(|(upn, _)| upn.clone()).collect();
    wanted.push(first.0.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("desired-a.toml"), users_file(&wanted)).unwrap();
    wanted.push(second.0.clone());
    std::fs::write(dir.path().join("desired-b.toml"), users_file(&wanted)).unwrap();

    // Every interval an hour: each generation runs each loop exactly once within the test.
    let head = super::support::sim_config_head(&sim);
    let config_text = |desired: &str, extra: &str| {
        format!(
            "{head}device_tag = \"DEX-Scoped\"\n\
             desired_state = \"{desired}\"\n\
             [schedule]\nreconcile_every = \"1h\"\npriority_every = \"1h\"\n\
             incidents_every = \"1h\"\n{extra}\
             [state]\npath = \"state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n",
        )
    };
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text("desired-a.toml", "")).unwrap();
    let daemon = Daemon::start(&sim, &config, &dir.path().join("notify.sock"));
    wait_for(&daemon.seen, "READY=1", Duration::from_secs(10)).await;
    let address = daemon
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| Some(v.get("address")?.as_str()?.to_string()))
        .expect("the start-up log names the metrics address");
    let base = format!("http://{address}");
    let passes = |l: &str| format!("dexscope_passes_total{{loop=\"{l}\",result=\"ok\"}}");
    for name in ["reconcile", "priority", "incidents"] {
        wait_metric(
            &base,
            &passes(name),
            1.0,
            Duration::from_secs(10),
            &daemon.log,
        )
        .await;
    }
    let in_group = |id: &str| sim.group_members(&group).iter().any(|m| m == id);
    assert!(in_group(&first.1) && !in_group(&second.1));
    assert_eq!(sim.stats().tokens_issued, 2);
    let dev_secret = "using the client secret from DEXSCOPE_CLIENT_SECRET";
    assert_eq!(daemon.messages(dev_secret).len(), 1);

    // Point the config at the other desired-state file and add a setting that warns; SIGHUP.
    std::fs::write(
        &config,
        config_text(
            "desired-b.toml",
            "[incidents]\nexcluded_sources = [\"NoSuchSource\"]\n",
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_for(&daemon.seen, "RELOADING=1", Duration::from_secs(10)).await;
    wait_for(
        &daemon.seen,
        "STATUS=running (config reloaded)",
        Duration::from_secs(10),
    )
    .await;
    // The new generation: a fresh token per resource and one pass of each loop, the reconcile
    // pass following the new file; the load warnings are logged again, the new one with them.
    for name in ["reconcile", "priority", "incidents"] {
        wait_metric(
            &base,
            &passes(name),
            2.0,
            Duration::from_secs(10),
            &daemon.log,
        )
        .await;
    }
    assert!(in_group(&first.1) && in_group(&second.1));
    assert_eq!(sim.stats().tokens_issued, 4);
    assert_eq!(daemon.messages(dev_secret).len(), 2);
    assert_eq!(daemon.messages("excluded_sources holds").len(), 1);
    assert!(
        daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("desired-b.toml") && l.contains("desired state read")),
        "the new desired-state file was read"
    );

    // A broken config: logged, shown in the status, the running generation kept.
    std::fs::write(
        &config,
        config_text("desired-b.toml", "")
            .replace("reconcile_every = \"1h\"", "reconcile_every = \"soon\""),
    )
    .unwrap();
    let before = sim.stats();
    daemon.signal("HUP");
    daemon
        .wait_log(
            "config is invalid, keeping the running one",
            Duration::from_secs(10),
        )
        .await;
    let refused = daemon.messages("config is invalid, keeping the running one");
    assert!(refused[0].contains("reconcile_every"), "{refused:?}");
    // The status datagram may arrive after the log line that goes with it.
    let refused_status =
        |n: &String| n.starts_with("STATUS=config reload refused") && n.contains("reconcile_every");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.notes().iter().any(refused_status) {
        assert!(Instant::now() < deadline, "{:?}", daemon.notes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes = daemon.notes();
    assert_eq!(
        notes.iter().filter(|n| *n == "RELOADING=1").count(),
        1,
        "{notes:?}"
    );
    // The refusal is decided as the signal arrives: no new generation, no pass, no token. A
    // desired-state change taken up afterwards is the later event to count after: the loop
    // runs its passes one at a time, so a pass the refusal started would have finished before
    // the one that adds the user; and a generation the refusal started would have taken its
    // tokens before any pass of its own.
    assert_eq!(before.tokens_issued, 4);
    let changing_passes = || {
        pass_events(&daemon.log, "reconcile")
            .iter()
            .filter(|v| v["changes"].as_u64().is_some_and(|n| n > 0))
            .count()
    };
    let changed_before = changing_passes();
    wanted.push(third.0.clone());
    std::fs::write(dir.path().join("desired-b.toml"), users_file(&wanted)).unwrap();
    wait_member(&sim, &third.1, Duration::from_secs(20), &daemon.log).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while changing_passes() == changed_before {
        assert!(Instant::now() < deadline, "the adding pass was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let passes_now = |name| pass_events(&daemon.log, name).len();
    assert_eq!(passes_now("reconcile"), 3, "the refusal started a pass");
    assert_eq!(passes_now("priority"), 2, "the refusal started a pass");
    assert_eq!(passes_now("incidents"), 2, "the refusal started a pass");
    assert_eq!(sim.stats().tokens_issued, 4, "the refusal took tokens");
    let notes = daemon.notes();
    assert_eq!(
        notes.iter().filter(|n| *n == "RELOADING=1").count(),
        1,
        "{notes:?}"
    );

    let log = daemon.log.clone();
    let code = daemon.stop();
    let log = log.lock().unwrap().join("\n");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains(sim.client_secret().expose_secret()),
        "the log carries the secret"
    );
    sim.shutdown().await;
}

/// The desired state a pass uses is the one kept when it was valid, read back from its file in
/// the state directory: after the desired file turns invalid, a reconcile pass still adds the
/// user the last valid state named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_uses_the_kept_state_after_the_desired_file_turned_invalid() {
    use dexscope::daemon::{DesiredSource, DesiredWatch, PassContext, Refresh};

    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("var");
    let config_path = dir.path().join("config.toml");
    let head = super::support::sim_config_head(&sim);
    std::fs::write(
        &config_path,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
             [state]\npath = \"var/state.db\"\n"
        ),
    )
    .unwrap();
    let members = sim.group_members(&sim.user_group_id());
    // Desired: the scoped group and the tagged machines as they are, plus one user.
    let (upns, tagged): (Vec<String>, Vec<String>) = {
        let tenant = sim.state();
        let tenant = tenant.lock().unwrap();
        let upns = tenant
            .directory
            .users
            .iter()
            .flatten()
            .filter(|u| members.contains(&u.id.to_string()))
            .map(|u| u.upn.to_string())
            .collect();
        let tag = tenant.mde.tag_id("DEX-Scoped").unwrap();
        let tagged = tenant
            .mde
            .machines
            .iter()
            .filter(|m| m.tags.contains(&tag))
            .map(|m| m.id_hex())
            .collect();
        (upns, tagged)
    };
    assert!(!upns.is_empty() && !tagged.is_empty());
    let (outsider_upn, outsider_id) = outsiders(&sim, 1).remove(0);
    let desired = dir.path().join("desired.toml");
    let entries: String = upns
        .iter()
        .chain([&outsider_upn])
        .map(|u| format!("  {u:?},\n"))
        .collect();
    let devices: String = tagged.iter().map(|d| format!("  {d:?},\n")).collect();
    std::fs::write(
        &desired,
        format!("users = [\n{entries}]\ndevices = [\n{devices}]\n"),
    )
    .unwrap();

    let secret = sim.client_secret().expose_secret().to_string();
    let config =
        dexscope::config::Config::load(&config_path, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())])
            .unwrap();
    let state = Arc::new(dexscope::state::State::open(&config.state.path).unwrap());
    assert_eq!(dexscope::daemon::state_dir(&state), state_dir);
    let watch = DesiredWatch::new(config.scope.desired_state.clone())
        .spill_to(dexscope::daemon::state_dir(&state));
    let today = chrono::Utc::now().date_naive();
    let pause = Duration::from_millis(20);
    assert_eq!(watch.settle(today, pause, 20), Refresh::Loaded);
    let kept = watch.current().unwrap();
    assert!(kept.is_spilled());
    assert_eq!(kept.users(), upns.len() + 1);

    // The file turns invalid: the watch keeps the last valid state, still in its file.
    std::fs::write(&desired, "users = [\"ann@contoso.com\", 17]\n").unwrap();
    assert!(matches!(
        watch.settle(today, pause, 20),
        Refresh::Invalid(_)
    ));
    assert!(std::sync::Arc::ptr_eq(&watch.current().unwrap(), &kept));
    drop(kept);

    let ctx = PassContext {
        tenant: dexscope::tenant::Tenant::from_config(&config).unwrap(),
        state,
        desired: DesiredSource::Files(Arc::new(watch)),
        config: Arc::new(config),
    };
    sim.reset_stats();
    let summary = dexscope::daemon::reconcile_pass(&ctx, chrono::Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        summary.changes_applied, 1,
        "{}\n{:#?}",
        summary.text, summary.lines
    );
    let after = sim.group_members(&sim.user_group_id());
    assert!(after.contains(&outsider_id), "{}", summary.text);
    assert_eq!(after.len(), members.len() + 1, "{}", summary.text);
    // Nothing named in the state directory but the database's own files.
    let names: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("state.db")), "{names:?}");
}
