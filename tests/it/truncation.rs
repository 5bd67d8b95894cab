//! A desired-state file truncated, removed and rewritten in pieces while `dexscope run` works
//! against the simulated tenant: no member and no tag is ever removed, and once the writer is
//! done the tenant converges to the final content.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dexscope::sim::seed::SeedSpec;
use dexscope::sim::{self, SimHandle, SimOptions};

const TAG: &str = "DEX-Scoped";

/// `users` and `devices` of one desired-state file.
fn file_text(users: &[String], devices: &[String]) -> String {
    let list = |xs: &[String]| xs.iter().map(|x| format!("  {x:?},\n")).collect::<String>();
    format!(
        "# written in pieces by the test\ndevices = [\n{}]\nusers = [\n{}]\n",
        list(devices),
        list(users)
    )
}

/// UPN and object id of the first `n` users, and the first `m` machine ids.
fn identities(sim: &SimHandle, n: usize, m: usize) -> (Vec<(String, String)>, Vec<String>) {
    let state = sim.state();
    let tenant = state.lock().unwrap();
    let users = tenant
        .directory
        .users
        .iter()
        .flatten()
        .take(n)
        .map(|u| (u.upn.to_string(), u.id.to_string()))
        .collect();
    let machines = tenant
        .mde
        .machines
        .iter()
        .take(m)
        .map(|x| x.id_hex())
        .collect();
    (users, machines)
}

/// Sorted member ids and sorted tagged machine ids, as the simulator holds them now.
fn scope(sim: &SimHandle) -> (Vec<String>, Vec<String>) {
    let mut members = sim.group_members(&sim.user_group_id());
    members.sort();
    let mut tagged: Vec<String> = sim
        .machines_with_tag(TAG)
        .into_iter()
        .map(|m| m.id)
        .collect();
    tagged.sort();
    (members, tagged)
}

fn sorted(mut xs: Vec<String>) -> Vec<String> {
    xs.sort();
    xs
}

/// Waits (bounded) until the simulator holds exactly `members` and `tagged`.
async fn converge(sim: &SimHandle, members: &[String], tagged: &[String], log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (m, t) = scope(sim);
        if m == members && t == tagged {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within 60 s: members {m:?} (want {members:?}), tagged {t:?} \
             (want {tagged:?});\nlog:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Truncates `path` and writes `text` a few bytes at a time with a short pause between pieces
/// (a writer that is not atomic). The pauses are far below the daemon's 2 s look interval.
fn write_in_pieces(path: &std::path::Path, text: &str) {
    let mut file = std::fs::File::create(path).unwrap();
    for piece in text.as_bytes().chunks(9) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
}

fn start_daemon(sim: &SimHandle, dir: &std::path::Path) -> Child {
    let config = dir.join("config.toml");
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"{TAG}\"\ndesired_state = \"desired\"\nprune = true\n\
             [schedule]\nreconcile_every = \"1h\"\npriority_every = \"1h\"\n\
             incidents_every = \"1h\"\n\
             [state]\npath = \"state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n",
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    super::support::daemon_command(sim, &config)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_pieces_never_removes_members_or_tags() {
    let sim = sim::start(SimOptions {
        generate: SeedSpec {
            users: 40,
            devices: 20,
            incidents: 0,
            scoped_users: 0,
            tagged_share: 0.0,
            nested: false,
        },
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let (users, machines) = identities(&sim, 13, 7);
    let upns: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
    let ids = |range: std::ops::Range<usize>| -> Vec<String> {
        users[range].iter().map(|(_, id)| id.clone()).collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let desired = dir.path().join("desired");
    std::fs::create_dir(&desired).unwrap();
    std::fs::write(
        desired.join("a.toml"),
        file_text(&upns[0..4], &machines[0..2]),
    )
    .unwrap();
    std::fs::write(
        desired.join("b.toml"),
        file_text(&upns[4..8], &machines[2..4]),
    )
    .unwrap();
    std::fs::write(
        desired.join("c.toml"),
        file_text(&upns[8..12], &machines[4..6]),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = start_daemon(&sim, dir.path());
    converge(
        &sim,
        &sorted(ids(0..12)),
        &sorted(machines[0..6].to_vec()),
        &log,
    )
    .await;
    assert!(sim.writes().iter().all(|w| w.op == "add" || w.op == "tag"));

    // Watch the member set and the tagged set all along, besides the write log.
    let stop = Arc::new(AtomicBool::new(false));
    let shrank = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (sim_members, stop, shrank) = (sim.state(), stop.clone(), shrank.clone());
        let (group, before) = (sim.user_group_id(), ids(0..12));
        let tagged_before = machines[0..6].to_vec();
        std::thread::spawn(move || {
            let group = uuid::Uuid::parse_str(&group).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let (members, tagged): (Vec<String>, Vec<String>) = {
                    let t = sim_members.lock().unwrap();
                    let m = t
                        .group_members(&group)
                        .into_iter()
                        .map(|(m, _)| m.to_string());
                    (
                        m.collect(),
                        t.machines_with_tag(TAG).into_iter().map(|m| m.id).collect(),
                    )
                };
                for gone in before.iter().filter(|id| !members.contains(id)) {
                    shrank.lock().unwrap().push(format!("member {gone}"));
                }
                for gone in tagged_before.iter().filter(|id| !tagged.contains(id)) {
                    shrank.lock().unwrap().push(format!("tag {gone}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The writer: b.toml truncated and left empty for longer than two looks, removed and left
    // gone for as long, then each time rewritten in pieces; the last rewrite adds one user and
    // one machine, which the daemon must take up once the file holds still.
    let b = desired.join("b.toml");
    let same = file_text(&upns[4..8], &machines[2..4]);
    let last = file_text(
        &[&upns[4..8], &upns[12..13]].concat(),
        &[&machines[2..4], &machines[6..7]].concat(),
    );
    let writer = {
        let (b, same, last) = (b.clone(), same.clone(), last.clone());
        std::thread::spawn(move || {
            std::fs::File::create(&b).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            write_in_pieces(&b, &same);
            std::fs::remove_file(&b).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            write_in_pieces(&b, &same);
            write_in_pieces(&b, &same);
            write_in_pieces(&b, &last);
        })
    };
    let writing = tokio::task::spawn_blocking(move || writer.join());
    writing.await.unwrap().unwrap();

    let mut want_members = ids(0..12);
    want_members.push(users[12].1.clone());
    let want_tagged = [machines[0..6].to_vec(), vec![machines[6].clone()]].concat();
    converge(&sim, &sorted(want_members), &sorted(want_tagged), &log).await;
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    let removals: Vec<_> = sim
        .writes()
        .into_iter()
        .filter(|w| w.op == "remove" || w.op == "untag")
        .collect();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        removals.is_empty() && shrank.lock().unwrap().is_empty(),
        "removals sent: {removals:?}; seen leaving: {:?};\nlog:\n{log_text}",
        shrank.lock().unwrap()
    );
    // The removed file was noticed and alerted on, not silently taken.
    assert!(
        log_text.contains("vanished with their file"),
        "log:\n{log_text}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
