//! A proxy from the environment never sees loopback traffic: with every endpoint on loopback,
//! `dexscope plan` with `http_proxy`, `https_proxy` and `all_proxy` set reaches the simulated
//! tenant directly, and the proxy receives nothing (not the token request, not the secret).

use std::time::Duration;

use dexscope::sim::SimOptions;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::priority::{secret, start_sim, write_config};

#[tokio::test]
async fn loopback_endpoints_bypass_a_proxy_from_the_environment() {
    let sim = start_sim(SimOptions::default()).await;
    let proxy = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(502))
        .mount(&proxy)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"));
    command
        .arg("--config")
        .arg(&config)
        .arg("plan")
        .env("DEXSCOPE_CLIENT_SECRET", secret(&sim))
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env(var, proxy.uri());
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("plan finishes within a minute")
        .unwrap();
    let seen = proxy.received_requests().await.unwrap();
    assert!(seen.is_empty(), "the proxy saw {} request(s)", seen.len());
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 2,
        "plan failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
