//! Clients that send half a request and stall cannot hold the metrics endpoint: a scrape still
//! works beside them, the server closes them after its header-read timeout, and after SIGTERM
//! the daemon exits well within the unit's stop timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimOptions};

/// Stalled connections held at once: a good share of the server's cap, never above it.
const STALLED: usize = 32;

fn start_daemon(sim: &sim::SimHandle, dir: &std::path::Path) -> Child {
    std::fs::write(dir.join("desired.toml"), "users = [\"ann@contoso.com\"]\n").unwrap();
    let config = dir.join("config.toml");
    let head = super::support::sim_config_head(sim);
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
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

/// The metrics address from the start-up log (bounded wait).
fn metrics_address(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(address) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| Some(v.get("address")?.as_str()?.to_string()))
        {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a connection and sends a request line and one header, never the blank line.
fn stall(address: &str) -> TcpStream {
    let mut s = TcpStream::connect(address).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    s
}

/// A whole scrape over a fresh connection: the status line of the answer.
fn scrape(address: &str) -> String {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

fn kill(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_neither_block_scrapes_nor_hold_the_daemon_after_sigterm() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = start_daemon(&sim, dir.path());
    let checks = tokio::task::spawn_blocking(move || {
        let address = metrics_address(&log);
        let mut stalled: Vec<TcpStream> = (0..STALLED).map(|_| stall(&address)).collect();
        assert_eq!(scrape(&address), "HTTP/1.1 200 OK");

        // The server gives up on a request whose headers never end (bounded wait here).
        let first = &mut stalled[0];
        first
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 256];
        let closed = match first.read(&mut buf) {
            Ok(n) => n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            closed,
            "a stalled request was not closed by the server within 20 s"
        );

        // Fresh stalled clients at SIGTERM: they get a short grace, then are dropped.
        let again: Vec<TcpStream> = (0..STALLED).map(|_| stall(&address)).collect();
        (stalled, again, log)
    })
    .await;
    let (stalled, again, log) = match checks {
        Ok(held) => held,
        Err(e) => {
            kill(&child, "-KILL");
            std::panic::resume_unwind(e.into_panic());
        }
    };
    kill(&child, "-TERM");
    let started = Instant::now();
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !exited {
        kill(&child, "-KILL");
        let _ = child.wait();
    }
    drop((stalled, again));
    assert!(
        exited,
        "still running 15 s after SIGTERM with stalled clients;\nlog:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
