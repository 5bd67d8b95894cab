//! `status` and `check` only read the state database: a missing one is reported and not
//! created, a database of an older schema is refused, not migrated, and a read-only copy is
//! read as it is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dexscope::config::Config;
use dexscope::state::State;
use dexscope::status::{self, StatusFormat};

fn config(dir: &Path, state: &str) -> Config {
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[tenant]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
             client_id = \"00000000-0000-0000-0000-000000000002\"\n\
             [scope]\nuser_group_id = \"00000000-0000-0000-0000-000000000003\"\n\
             device_tag = \"DEX-Scoped\"\ndesired_state = \"d.toml\"\n\
             [state]\npath = \"{state}\"\n"
        ),
    )
    .unwrap();
    Config::load(&dir.join("config.toml"), [("DEXSCOPE_CLIENT_SECRET", "x")]).unwrap()
}

fn status(config: &Config) -> (u8, String, String) {
    let now = "2026-11-22T12:00:00Z".parse().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = status::status_command(config, StatusFormat::Text, now, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn status_on_a_missing_database_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "state.db");
    let (code, _, err) = status(&config);
    assert_eq!(code, 1);
    assert!(err.contains("has the daemon run?"), "{err}");
    assert!(
        !dir.path().join("state.db").exists(),
        "status creates nothing"
    );
    assert!(State::open_read_only(dir.path().join("state.db")).is_err());
    assert!(!dir.path().join("state.db").exists());
}

#[test]
fn status_reads_a_read_only_copy_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("daemon.db");
    drop(State::open(&original).unwrap());
    // A copy in a directory of its own, file and directory read-only, as a backup would be.
    let copies = dir.path().join("copies");
    std::fs::create_dir(&copies).unwrap();
    let copy = copies.join("state.db");
    std::fs::copy(&original, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&copies, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = std::fs::read(&copy).unwrap();

    let config = config(dir.path(), "copies/state.db");
    let (code, out, err) = status(&config);
    std::fs::set_permissions(&copies, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "the copy is unchanged"
    );
}

#[test]
fn status_never_migrates_a_database() {
    // An empty file is a database at schema version 0: a read-write open would migrate it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, b"").unwrap();
    let config = config(dir.path(), "state.db");
    let (code, _, err) = status(&config);
    assert_eq!(code, 1);
    assert!(err.contains("start the daemon once to migrate it"), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "not migrated");
}
