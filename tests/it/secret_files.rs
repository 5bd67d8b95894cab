//! Secret files are read safely: a symbolic link is not followed, a file others can read is
//! refused, a device is not read for ever; under `$CREDENTIALS_DIRECTORY` systemd's modes stand.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dexscope::config::{self, ConfigError};

const SECRET: &str = "Zq8~s3cr3t.Value_that-must-never-show";

/// Writes a minimal config naming `secret_name` as the client secret file and loads it with
/// `env`; the error comes back rendered.
fn load(dir: &Path, secret_name: &str, env: Vec<(String, String)>) -> Result<(), String> {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[tenant]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n\
             client_id = \"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\n\
             client_secret_file = {secret_name:?}\n\
             [scope]\nuser_group_id = \"99999999-8888-7777-6666-555555555555\"\n\
             device_tag = \"DEX-Scoped\"\n"
        ),
    )
    .unwrap();
    match config::load_for_command(&config, env) {
        Ok(_) => Ok(()),
        Err(e) => {
            assert!(matches!(e, ConfigError::SecretFile { .. }), "{e}");
            let text = e.to_string();
            assert!(!text.contains(SECRET), "the secret leaked: {text}");
            Err(text)
        }
    }
}

#[test]
fn a_symlinked_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real-secret");
    super::support::write_secret(&target, SECRET);
    std::os::unix::fs::symlink(&target, dir.path().join("client-secret")).unwrap();
    let err = load(dir.path(), "client-secret", Vec::new()).unwrap_err();
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(err.contains("client-secret"), "{err}");
}

#[test]
fn a_secret_file_others_can_read_is_refused_with_the_chmod_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client-secret");
    super::support::write_secret(&path, SECRET);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load(dir.path(), "client-secret", Vec::new()).unwrap_err();
    assert!(err.contains("mode 0644"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", path.display())),
        "{err}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    load(dir.path(), "client-secret", Vec::new()).unwrap();
}

#[test]
fn dev_zero_as_a_secret_is_refused_not_read_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), "/dev/zero", Vec::new()).unwrap_err();
    assert!(err.contains("/dev/zero"), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn an_oversized_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client-secret");
    super::support::write_secret(&path, "x".repeat(1024 * 1024));
    let err = load(dir.path(), "client-secret", Vec::new()).unwrap_err();
    assert!(err.contains("more than a secret file may hold"), "{err}");
}

#[test]
fn under_the_credentials_directory_systemd_modes_stand() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let path = creds.join("client-secret");
    super::support::write_secret(&path, SECRET);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    let env = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        creds.to_str().unwrap().to_string(),
    )];
    load(dir.path(), "client-secret", env).unwrap();
}
