//! Labels read from the tenant reach a person only in a one-line, visibly escaped form: a nested
//! group whose name carries a line break, an ANSI escape and a bidi override cannot add or hide a
//! line in the removal review `dexscope plan` prints.

use std::process::{Command, Output, Stdio};

use dexscope::sim::{self, Scenario, SimOptions};
use secrecy::ExposeSecret;

const EVIL: &str = "evil\n+ add user ceo\x1b[31m\u{202e}x";
const EVIL_ID: &str = "0e0e0e0e-1111-4222-8333-444455556666";

const SCENARIO: &str = r#"
[generate]
users = 1
devices = 0
incidents = 0
scoped_users = 0
tagged_share = 0.0

[[users]]
upn = "alice@contoso.com"

[scoped_group]
members = ["alice@contoso.com"]

[[device_groups]]
name = "Defender_Experts_Scoped_Coverage_Devices"
rank = 1
tags = ["DEX-Scoped"]
"#;

fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200f}')
        || c == '\u{061c}'
        || c == '\u{feff}'
}

#[tokio::test]
async fn plan_shows_a_hostile_group_name_escaped_on_one_line() {
    let sim = sim::start(SimOptions {
        scenario: Some(Scenario::parse(SCENARIO).expect("scenario parses")),
        ..SimOptions::default()
    })
    .await
    .expect("simulator starts");
    {
        let state = sim.state();
        let mut t = state.lock().unwrap();
        let gid = uuid::Uuid::parse_str(&sim.user_group_id()).unwrap();
        let nid = uuid::Uuid::parse_str(EVIL_ID).unwrap();
        t.directory.add_group(nid, EVIL);
        assert!(t.directory.add_member(&gid, nid));
    }
    let dir = tempfile::tempdir().unwrap();
    let head = super::support::sim_config_head(&sim);
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
             prune = true\n[state]\npath = \"state.db\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("desired.toml"),
        "users = [\"alice@contoso.com\"]\ndevices = []\n",
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dexscope"));
    cmd.arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("plan")
        .current_dir(dir.path())
        .env(
            "DEXSCOPE_CLIENT_SECRET",
            sim.client_secret().expose_secret(),
        )
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let out: Output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "one removal planned\n{shown}");

    for (i, line) in shown.lines().enumerate() {
        let bad: Vec<char> = line.chars().filter(|&c| is_hostile(c)).collect();
        assert!(bad.is_empty(), "line {i} holds raw {bad:?}\n{shown:?}");
    }
    let removal: Vec<&str> = stdout.lines().filter(|l| l.contains(EVIL_ID)).collect();
    assert_eq!(removal.len(), 1, "the removal on one line\n{shown}");
    let line = removal[0];
    assert!(
        line.contains(r"evil\n+ add user ceo\u{1b}[31m\u{202e}x"),
        "the name shown escaped: {line}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.trim_start().starts_with("+ add user ceo")),
        "no injected line\n{shown}"
    );
    sim.shutdown().await;
}
