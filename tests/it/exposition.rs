//! `/metrics` of the real daemon (`dexscope run`) against the simulated tenant, judged by the
//! real Prometheus tools: `promtool check metrics` on the classic text format. The tools come
//! from Debian's `prometheus` package; a missing tool fails the test with how to install it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimHandle, SimOptions};

/// A Prometheus tool from `PATH`, or a failure that says how to install it.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: install Debian's prometheus package \
             (apt-get install -y prometheus, with sudo when not root), which provides \
             promtool and prometheus"
        )
    })
}

/// `dexscope run` against a simulated tenant, killed on drop.
pub struct RunningDaemon {
    child: Child,
    /// `http://<metrics address>`.
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Kept for the daemon's lifetime: its tenant and its config and state directory.
    _sim: SimHandle,
    _dir: tempfile::TempDir,
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningDaemon {
    /// Starts the daemon with every loop every 2 s, a desired state of `desired` (TOML) and
    /// the metrics on a free loopback port; returns once the metrics address is logged.
    pub async fn start(desired: &str) -> Self {
        let sim = sim::start(SimOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("desired.toml"), desired).unwrap();
        let config = dir.path().join("config.toml");
        let head = super::support::sim_config_head(&sim);
        std::fs::write(
            &config,
            format!(
                "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
                 [schedule]\nreconcile_every = \"2s\"\npriority_every = \"2s\"\n\
                 incidents_every = \"2s\"\n\
                 [state]\npath = \"state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
                 [log]\nformat = \"json\"\n",
            ),
        )
        .unwrap();
        let mut child = super::support::daemon_command(&sim, &config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, _reader) = super::support::collect_lines(child.stderr.take().unwrap());
        let mut daemon = RunningDaemon {
            child,
            base: String::new(),
            log,
            _sim: sim,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let address = daemon
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| Some(v.get("address")?.as_str()?.to_string()));
            if let Some(address) = address {
                daemon.base = format!("http://{address}");
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics address logged: {:?}",
                daemon.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The simulated tenant the daemon works against.
    pub fn sim(&self) -> &SimHandle {
        &self._sim
    }

    /// `/metrics` with `accept` (none when `None`): (content type, body).
    pub async fn scrape(&self, accept: Option<&str>) -> (String, String) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut req = client.get(format!("{}/metrics", self.base));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let r = req.send().await.unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (ct, r.text().await.unwrap())
    }

    /// Waits (bounded) until every loop has a successful pass on `/metrics`.
    pub async fn wait_passes(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (_, text) = self.scrape(None).await;
            let done = ["reconcile", "priority", "incidents"].iter().all(|l| {
                let series = format!("dexscope_passes_total{{loop=\"{l}\",result=\"ok\"}} ");
                text.lines()
                    .any(|line| line.starts_with(&series) && !line.ends_with(" 0"))
            });
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "passes did not run:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn promtool_accepts_the_text_format_of_a_running_daemon() {
    let promtool = tool("promtool");
    let daemon = RunningDaemon::start("users = [\"ann@contoso.com\"]\n").await;
    daemon.wait_passes(Duration::from_secs(30)).await;

    for accept in [Some("text/plain; version=0.0.4"), None, Some("*/*")] {
        let (ct, text) = daemon.scrape(accept).await;
        assert_eq!(ct, dexscope::metrics::TEXT_CONTENT_TYPE, "{accept:?}");
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics refused the text format ({}{}):\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE dexscope_build_info gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dexscope_passes_total counter\n"),
            "{text}"
        );
    }

    // Prometheus's own Accept header still gets OpenMetrics.
    let (ct, text) = daemon
        .scrape(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ))
        .await;
    assert_eq!(ct, dexscope::metrics::CONTENT_TYPE);
    super::metrics::check_openmetrics(&text);
}
