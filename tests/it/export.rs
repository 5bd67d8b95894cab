//! `dexscope export` end to end: a hand-populated simulated tenant (a nested group and a device
//! in the user group, two machines sharing a DNS name) exported, validated and planned with the
//! real binary over loopback. Request counts come from the simulator's counters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dexscope::sim::{self, Scenario, SimHandle, SimOptions};
use secrecy::ExposeSecret;

const TAG: &str = "DEX-Scoped";
const DUP_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DUP_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Users in the group by hand, a nested group, an Entra device as a member; machines: one
/// tagged with a unique name, two tagged sharing a name, one untagged sharing nothing, and an
/// untagged one sharing its name with a tagged one.
const SCENARIO: &str = r#"
[generate]
users = 3
devices = 0
incidents = 0
scoped_users = 0
tagged_share = 0.0

[[users]]
upn = "alice@contoso.com"
[[users]]
upn = "Bob.O'Hara@contoso.com"
[[users]]
upn = "carol@contoso.com"

[scoped_group]
members = ["alice@contoso.com", "Bob.O'Hara@contoso.com"]
nested_group = ["carol@contoso.com"]
device = "kiosk-ber-0001"

[[machines]]
name = "ws-ber-0012.contoso.local"
os = "Windows11"
tags = ["DEX-Scoped"]

[[machines]]
name = "shared.contoso.local"
os = "Windows11"
tags = ["DEX-Scoped"]
id = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[machines]]
name = "shared.contoso.local"
os = "Linux"
tags = ["DEX-Scoped"]
id = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

[[machines]]
name = "srv-fra-0001.contoso.local"
os = "WindowsServer2022"
tags = ["DEX-Scoped"]

[[machines]]
name = "srv-fra-0001.contoso.local"
os = "WindowsServer2022"
id = "cccccccccccccccccccccccccccccccccccccccc"

[[machines]]
name = "untagged.contoso.local"
os = "macOS"

[[device_groups]]
name = "Defender_Experts_Scoped_Coverage_Devices"
rank = 1
tags = ["DEX-Scoped"]
"#;

struct Env {
    sim: SimHandle,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let scenario = Scenario::parse(SCENARIO).expect("scenario parses");
        let sim = sim::start(SimOptions {
            scenario: Some(scenario),
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let env = Env {
            sim,
            dir: tempfile::tempdir().unwrap(),
        };
        env.write_config(false);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, prune: bool) {
        let head = super::support::sim_config_head(&self.sim);
        std::fs::write(
            self.path("config.toml"),
            format!(
                "{head}device_tag = \"{TAG}\"\ndesired_state = \"desired.toml\"\n\
                 prune = {prune}\n[state]\npath = \"state.db\"\n"
            ),
        )
        .unwrap();
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dexscope"));
        cmd.arg("--config")
            .arg(self.path("config.toml"))
            .args(args)
            .current_dir(self.dir.path())
            .env(
                "DEXSCOPE_CLIENT_SECRET",
                self.sim.client_secret().expose_secret(),
            )
            .env_remove("DEXSCOPE_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Ids of the user group's members that are not users (the nested group, the device).
    fn non_user_members(&self) -> BTreeSet<String> {
        let state = self.sim.state();
        let t = state.lock().unwrap();
        let gid = uuid::Uuid::parse_str(&self.sim.user_group_id()).unwrap();
        t.group_members(&gid)
            .into_iter()
            .filter(|(id, _)| t.directory.user(id).is_none())
            .map(|(id, _)| id.to_string())
            .collect()
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test]
async fn export_then_validate_and_plan_show_no_changes_and_prune_removes_only_the_ignored() {
    let env = Env::start().await;
    let ignored = env.non_user_members();
    assert_eq!(
        ignored.len(),
        2,
        "the scenario holds a nested group and a device"
    );
    env.sim.reset_stats();

    let out = env.run(&["export", "--output", "desired.toml"]).await;
    assert_eq!(code(&out), 0, "{}", show(&out));
    // Two reads: the member list (one page) and the machine list (one page).
    let stats = env.sim.stats();
    assert_eq!(stats.calls("GET /v1.0/groups/{id}/members"), 1, "{stats:?}");
    assert_eq!(stats.calls("GET /api/machines"), 1, "{stats:?}");
    let writes: Vec<&String> = stats
        .calls_by_route
        .keys()
        .filter(|r| !r.starts_with("GET ") && !r.contains("token"))
        .collect();
    assert!(writes.is_empty(), "export only reads: {writes:?}");

    let file = read(&env.path("desired.toml"));
    for want in [
        "{ upn = \"alice@contoso.com\", note = \"exported ",
        "{ upn = \"bob.o'hara@contoso.com\", note = \"exported ",
        "{ name = \"ws-ber-0012.contoso.local\", note = \"exported ",
        // Shared with an untagged machine: by id, not by name.
        "shared.contoso.local is shared by 2 machines",
        &format!("{{ id = \"{DUP_A}\""),
        &format!("{{ id = \"{DUP_B}\""),
    ] {
        assert!(file.contains(want), "missing {want:?} in\n{file}");
    }
    assert!(!file.contains("untagged.contoso.local"), "{file}");
    assert!(!file.contains("{ name = \"srv-fra-0001"), "{file}");
    assert!(
        !file.contains("carol"),
        "nested members are not exported: {file}"
    );
    // Each ignored member is a comment line with its reason, never an entry.
    for id in &ignored {
        let line = file
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in\n{file}"));
        assert!(line.starts_with("# - "), "{line}");
    }
    assert!(file.contains("a nested group; Defender Experts covers direct user members only"));
    assert!(file.contains("a device in the user group"));

    let out = env.run(&["validate", "desired.toml"]).await;
    assert_eq!(code(&out), 0, "{}", show(&out));

    let out = env.run(&["plan"]).await;
    assert_eq!(code(&out), 0, "prune = false: no changes\n{}", show(&out));

    env.write_config(true);
    let out = env.run(&["plan", "--format", "json"]).await;
    assert_eq!(code(&out), 2, "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&plan["users"]["remove"]), ignored, "{plan:#}");
    assert!(ids(&plan["users"]["add"]).is_empty(), "{plan:#}");
    assert!(ids(&plan["devices"]["add"]).is_empty(), "{plan:#}");
    assert!(ids(&plan["devices"]["remove"]).is_empty(), "{plan:#}");
    assert!(
        plan["unresolved"].as_array().unwrap().is_empty(),
        "{plan:#}"
    );

    env.sim.shutdown().await;
}

#[tokio::test]
async fn export_refuses_to_overwrite_without_force_and_writes_stdout_without_output() {
    let env = Env::start().await;
    let target = env.path("desired.toml");
    std::fs::write(&target, "users = [\"keep@contoso.com\"]\n").unwrap();
    env.sim.reset_stats();

    let out = env.run(&["export", "--output", "desired.toml"]).await;
    assert_eq!(code(&out), 1, "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("desired.toml exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(read(&target), "users = [\"keep@contoso.com\"]\n");
    assert_eq!(
        env.sim.stats().http_requests,
        0,
        "refused before any request"
    );

    // The exports carry today's UTC date: read the clock around them, so a run across
    // midnight accepts either day.
    let first_day = chrono::Utc::now().date_naive().to_string();
    let stdout = env.run(&["export"]).await;
    assert_eq!(code(&stdout), 0, "{}", show(&stdout));
    assert_eq!(read(&target), "users = [\"keep@contoso.com\"]\n");

    let out = env
        .run(&["export", "--output", "desired.toml", "--force"])
        .await;
    assert_eq!(code(&out), 0, "{}", show(&out));
    let last_day = chrono::Utc::now().date_naive().to_string();
    let written = read(&target);
    assert!(written.contains("alice@contoso.com"), "{written}");
    // stdout and the file carry the same text (same tenant), each dated on a day the clock
    // showed while the exports ran.
    let undated = |t: &str| {
        assert!(
            t.contains(&format!("exported {first_day}"))
                || t.contains(&format!("exported {last_day}")),
            "dated neither {first_day} nor {last_day}:\n{t}"
        );
        t.replace(&last_day, "DAY").replace(&first_day, "DAY")
    };
    assert_eq!(undated(&text(&stdout.stdout)), undated(&written));
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".export-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    env.sim.shutdown().await;
}
