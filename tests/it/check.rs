//! `dexscope check` through the real binary against an in-process simulated tenant, with a
//! config in a temp dir: every exit code with its status line.

use std::path::Path;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use dexscope::model::MachineId;
use dexscope::scope::GroupKind;
use dexscope::sim::{SimHandle, SimOptions};
use dexscope::state::{GuardRefusal, State};

use super::priority::{TAG, add_servers_group, secret, start_sim, write_config};

/// Runs `dexscope --config <path> check [args]` with the sim's secret; returns (code, stdout).
///
/// The daemon creates its state database when it starts; `check` only reads it, so the
/// database is created here first, as a running daemon would have.
async fn check(sim: &SimHandle, config: &Path, args: &[&str]) -> (i32, String) {
    drop(State::open(config.with_file_name("state.db")).unwrap());
    check_as_is(sim, config, args).await
}

/// [`check`] without creating the state database first.
async fn check_as_is(sim: &SimHandle, config: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(args)
        .env("DEXSCOPE_CLIENT_SECRET", secret(sim))
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("check finishes within a minute")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(&secret(sim)) && !stdout.contains(&secret(sim)),
        "the secret leaked"
    );
    (out.status.code().unwrap(), stdout)
}

/// Marks every tagged machine as tagged three hours ago (past the 2 h grace).
fn tagged_long_ago(sim: &SimHandle, db: &Path) {
    let state = State::open(db).unwrap();
    let ids: Vec<MachineId> = sim
        .machines_with_tag(TAG)
        .iter()
        .map(|m| MachineId::parse(&m.id).unwrap())
        .collect();
    state
        .note_tagged_many(&ids, Utc::now() - TimeDelta::hours(3))
        .unwrap();
}

#[tokio::test]
async fn ok_when_every_tagged_device_is_in_the_group() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let (code, line) = check(&sim, &config, &[]).await;
    assert_eq!(
        line,
        "DEXSCOPE OK - 5 tagged devices in Defender_Experts_Scoped_Coverage_Devices | \
         tagged=5 in_group=5 outranked=0;;0 unmatched=0;;0 pending=0;0 missing_tag=0;0 \
         unresolved=0;0 unresolved_users=0;0 device_removals_refused=0;;0 \
         user_removals_refused=0;;0 alerts_firing=0\n"
    );
    assert_eq!(code, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn warning_while_placement_is_pending_then_critical_past_the_grace() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let servers = add_servers_group(&sim);
    sim.advance(Duration::from_secs(61));

    // Tag times first seen now: within the grace, pending is a warning, not critical.
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with(
            "DEXSCOPE WARNING - 3 tagged devices pending propagation (srv-01.contoso.local, "
        ),
        "{line}"
    );
    assert!(
        line.contains("| tagged=5 in_group=2 outranked=0;;0 unmatched=0;;0 pending=3;0 "),
        "{line}"
    );
    assert_eq!(code, 1);

    // The same placement with tag times past the grace: critical, naming the winner.
    tagged_long_ago(&sim, &dir.path().join("state.db"));
    let (code, line) = check(&sim, &config, &[]).await;
    assert_eq!(
        line,
        "DEXSCOPE CRITICAL - outranked by Servers-Tier0 (3 devices: srv-01.contoso.local, \
         srv-02.contoso.local, srv-03.contoso.local) | tagged=5 in_group=2 outranked=3;;0 \
         unmatched=0;;0 pending=0;0 missing_tag=0;0 unresolved=0;0 unresolved_users=0;0 \
         device_removals_refused=0;;0 user_removals_refused=0;;0 alerts_firing=0\n"
    );
    assert_eq!(code, 2);

    // JSON carries the same decision.
    let (code, out) = check(&sim, &config, &["--format", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, v["code"].as_u64()), (2, Some(2)));
    assert_eq!(v["status"], "critical");
    assert_eq!(v["perfdata"]["outranked"], 3);

    // Removing the group resolves it once MDE re-places the servers.
    assert!(sim.remove_device_group(servers));
    sim.advance(Duration::from_secs(61));
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(line.starts_with("DEXSCOPE OK - "), "{line}");
    assert_eq!(code, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn critical_when_the_removal_guard_refused() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    State::open(dir.path().join("state.db"))
        .unwrap()
        .set_guard_refusal(
            GroupKind::Users,
            Some(&GuardRefusal {
                group: GroupKind::Users,
                removals: 120,
                max_removals: 50,
                at: Utc::now(),
            }),
        )
        .unwrap();
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with(
            "DEXSCOPE CRITICAL - removal guard refused 120 removals from users (max_removals 50)"
        ),
        "{line}"
    );
    assert!(
        line.contains(" device_removals_refused=0;;0 user_removals_refused=120;;0 "),
        "{line}"
    );
    assert_eq!(code, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn critical_when_the_desired_state_is_invalid_warning_when_unresolved() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    std::fs::write(
        dir.path().join("desired.toml"),
        "devices = [\"ws-01.contoso.local\", \"ws-01.contoso.local\"]\n",
    )
    .unwrap();
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with("DEXSCOPE CRITICAL - desired state is invalid (1 error)"),
        "{line}"
    );
    assert_eq!(code, 2);

    std::fs::write(
        dir.path().join("desired.toml"),
        "devices = [\"ws-01.contoso.local\", \"ws-02.contoso.local\", \"nope.contoso.local\", \
         \"srv-04.contoso.local\"]\n",
    )
    .unwrap();
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with(
            "DEXSCOPE WARNING - 1 desired device without the tag (srv-04.contoso.local); \
             1 unresolved desired entries (nope.contoso.local)"
        ),
        "{line}"
    );
    assert!(line.contains("missing_tag=1;0 unresolved=1;0"), "{line}");
    assert_eq!(code, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_when_a_permission_is_missing_or_the_config_is_bad_critical_when_refused() {
    let sim = start_sim(SimOptions {
        mde_roles: vec!["Machine.Read.All".into()],
        ..SimOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let (code, line) = check(&sim, &config, &[]).await;
    assert_eq!(
        line,
        "DEXSCOPE UNKNOWN - missing permission Machine.ReadWrite.All on Defender for Endpoint; \
         grant it with admin consent\n"
    );
    assert_eq!(code, 3);

    // A wrong secret: the credential is rejected (CRITICAL, as plugins that log in report a
    // refused login), and the secret is not printed.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("DEXSCOPE_CLIENT_SECRET", "wrong-secret-value")
        .env_remove("DEXSCOPE_CONFIG")
        .output()
        .await
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("DEXSCOPE CRITICAL - credential rejected by Microsoft Graph"),
        "{line}"
    );
    assert!(!line.contains("wrong-secret-value"), "{line}");
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(&config, "[tenant]\ntenant_id = \"nope\"\n").unwrap();
    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with("DEXSCOPE UNKNOWN - bad config: "),
        "{line}"
    );
    assert_eq!(code, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn ends_within_its_timeout_when_the_tenant_is_slow_or_throttles() {
    use dexscope::sim::FaultConfig;
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let slow = FaultConfig {
        slow_rate: 1.0,
        slow_ms: 20_000,
        ..FaultConfig::default()
    };
    let throttled = FaultConfig {
        error_rate: 1.0,
        error_statuses: vec![429],
        ..FaultConfig::default()
    };
    for (name, faults) in [("slow", slow), ("429", throttled)] {
        sim.set_faults(faults);
        let started = std::time::Instant::now();
        let (code, line) = check(&sim, &config, &["--timeout", "2"]).await;
        let took = started.elapsed();
        assert_eq!(code, 3, "{name}: {line}");
        assert!(
            line.starts_with("DEXSCOPE UNKNOWN - no result within the 2s timeout"),
            "{name}: {line}"
        );
        assert!(took < Duration::from_secs(3), "{name}: took {took:?}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn warning_while_a_desired_user_is_unknown_after_a_pass() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let desired = std::fs::read_to_string(dir.path().join("desired.toml")).unwrap();
    std::fs::write(
        dir.path().join("desired.toml"),
        format!("users = [\"nobody@contoso.com\"]\n{desired}"),
    )
    .unwrap();
    let apply = tokio::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(&config)
        .args(["apply", "--allow-mass-removal"])
        .env("DEXSCOPE_CLIENT_SECRET", secret(&sim))
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .output();
    let apply = tokio::time::timeout(Duration::from_secs(60), apply)
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&apply.stdout).into_owned()
        + &String::from_utf8_lossy(&apply.stderr);
    assert!(said.contains("nobody@contoso.com: unknown user"), "{said}");

    let (code, line) = check(&sim, &config, &[]).await;
    assert!(
        line.starts_with("DEXSCOPE WARNING - 1 unresolved desired entries (nobody@contoso.com)"),
        "{line}"
    );
    assert!(
        line.contains(" unresolved=1;0 unresolved_users=1;0 "),
        "{line}"
    );
    assert_eq!(code, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_on_a_missing_database_and_creates_nothing() {
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let (code, line) = check_as_is(&sim, &config, &[]).await;
    assert!(
        line.starts_with("DEXSCOPE UNKNOWN - no state database at ")
            && line.contains("has the daemon run?"),
        "{line}"
    );
    assert_eq!(code, 3);
    assert!(
        !dir.path().join("state.db").exists(),
        "check must not create the daemon's database"
    );
    sim.shutdown().await;
}

/// `check` runs beside the daemon, often as another user: with the database and its directory
/// read-only it still answers, and the file is byte for byte what it was, though the tenant has
/// tagged machines the database has never seen (which the daemon's own pass would record).
#[tokio::test]
async fn reads_a_read_only_database_and_writes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let sim = start_sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");
    let db = dir.path().join("state.db");
    drop(State::open(&db).unwrap());
    // Fold the WAL into the file so the bytes compared are the whole database.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("pragma wal_checkpoint(truncate); pragma journal_mode = delete;")
        .unwrap();
    let _ = std::fs::remove_file(dir.path().join("state.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("state.db-shm"));
    let before = std::fs::read(&db).unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&db, 0o444).unwrap();
    mode(dir.path(), 0o555).unwrap();

    let (code, line) = check_as_is(&sim, &config, &[]).await;

    mode(dir.path(), 0o755).unwrap();
    assert!(
        line.starts_with("DEXSCOPE WARNING - ") || line.starts_with("DEXSCOPE OK - "),
        "{line}"
    );
    assert!(line.contains("| tagged=5 in_group=5 "), "{line}");
    assert!(code <= 1, "{code}: {line}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "check changed the state database"
    );
    let first_seen = State::open_read_only(&db)
        .unwrap()
        .tagged_since_all()
        .unwrap();
    assert!(
        first_seen.is_empty(),
        "check recorded tag times: {first_seen:?}"
    );
    sim.shutdown().await;
}
