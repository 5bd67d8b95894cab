//! One alert path: `dexscope run` as a process delivers the alerts raised before any loop runs
//! (an auth failure while it keeps retrying the token, a missing application permission, an
//! invalid desired state) to the webhook (wiremock on loopback), and no code outside `alerts`
//! steps, saves or sends an alert, so a second path cannot come back unnoticed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimHandle, SimOptions};
use secrecy::ExposeSecret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The daemon process, killed on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config pointed at `sim`, with the webhook at `hook` and the desired state `desired`,
/// and starts `dexscope run` with `secret`.
fn start(sim: &SimHandle, dir: &Path, hook: &MockServer, desired: &str, secret: &str) -> Run {
    std::fs::write(dir.join("desired.toml"), desired).unwrap();
    super::support::write_secret(&dir.join("hook.url"), format!("{}/hook", hook.uri()));
    let head = super::support::sim_config_head(sim);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
             [schedule]\nreconcile_every = \"1h\"\npriority_every = \"1h\"\n\
             incidents_every = \"1h\"\n[state]\npath = \"state.db\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [alerts]\nwebhook_url_file = \"hook.url\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env("DEXSCOPE_CLIENT_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Run(child)
}

async fn receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    server
}

/// Waits (bounded) until the webhook received a firing notice of each kind in `kinds`.
async fn wait_for_alerts(hook: &MockServer, kinds: &[&str], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let got: Vec<String> = hook
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter(|b| b["state"] == "firing" && b["source"] == "dexscope")
            .filter_map(|b| Some(b["alert"].as_str()?.to_string()))
            .collect();
        if kinds.iter().all(|k| got.iter().any(|g| g == k)) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never received {kinds:?} within {limit:?}; got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_failure_at_start_reaches_the_webhook_while_the_token_is_retried() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook = receiver().await;
    let _run = start(
        &sim,
        dir.path(),
        &hook,
        "users = [\"ann@contoso.com\"]\n",
        "not-the-secret",
    );
    wait_for_alerts(&hook, &["auth_failure"], Duration::from_secs(20)).await;
    // Still waiting for a token: no pass ran, so nothing was asked of the tenant's APIs.
    assert_eq!(sim.stats().tokens_issued, 0, "{:?}", sim.stats());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_and_an_invalid_desired_state_reach_the_webhook() {
    let sim = sim::start(SimOptions {
        mde_roles: Vec::new(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook = receiver().await;
    let secret = sim.client_secret().expose_secret().to_string();
    let _run = start(&sim, dir.path(), &hook, "users = [\"not a upn\"\n", &secret);
    let got = wait_for_alerts(
        &hook,
        &["missing_permission", "invalid_desired_state"],
        Duration::from_secs(20),
    )
    .await;
    assert!(!got.iter().any(|g| g == "auth_failure"), "{got:?}");
    sim.shutdown().await;
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The one alert path: outside `src/alerts/` no code steps an alert, writes an alert record,
/// or builds or sends a webhook body; and the state module keeps only the storage. A second
/// path (a scheduler folding alerts itself, a pass posting to the webhook) fails here.
#[test]
fn only_the_alerter_steps_saves_and_sends_alerts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = root.join("alerts");
    // (what, where it may appear besides `src/alerts/`)
    let needles: [(&str, &[&str]); 5] = [
        ("step(", &[]),
        (".save_alert(", &[]),
        ("webhook_body(", &[]),
        ("Webhook::new(", &[]),
        ("fn save_alert(", &["state/alerts.rs"]),
    ];
    let mut found = Vec::new();
    for file in sources(&root) {
        if file.starts_with(&allowed) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        // Only the code before the file's unit tests.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (needle, elsewhere) in needles {
            if elsewhere.contains(&rel.as_str()) {
                continue;
            }
            for (n, line) in code.lines().enumerate() {
                let called = line.contains(needle)
                    && (needle != "step(" || line.contains("alerts::step(") || is_bare(line));
                if called && !line.trim_start().starts_with("//") {
                    found.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "alert handling outside `alerts`:\n{}",
        found.join("\n")
    );
}

/// `step(` called as a free function (not `.step(` or `next_step(` and the like).
fn is_bare(line: &str) -> bool {
    line.match_indices("step(").any(|(i, _)| {
        let before = line[..i].chars().last();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
    })
}
