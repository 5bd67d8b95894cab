//! `export --output` never writes through a symlink planted next to its output: not at the
//! temporary name it used to pick (`.<name>.export-<pid>`), not at the target itself.

use std::path::Path;

use dexscope::config::Config;
use dexscope::sim::{self, SimOptions};
use secrecy::ExposeSecret;

const VICTIM: &str = "precious: not to be overwritten\n";

async fn export(config: &Config, output: &Path, force: bool) -> (u8, String) {
    let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code =
        dexscope::export::export_command(config, Some(output), force, today, &mut out, &mut err)
            .await;
    (code, String::from_utf8_lossy(&err).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_does_not_write_through_planted_symlinks() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    let head = super::support::sim_config_head(&sim);
    std::fs::write(
        &config_path,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\ndesired_state = \"desired.toml\"\n\
             [state]\npath = \"state.db\"\n"
        ),
    )
    .unwrap();
    let secret = sim.client_secret().expose_secret().to_string();
    let config = Config::load(&config_path, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())]).unwrap();

    // A symlink at the temporary name this process would have used, and one at the target.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, VICTIM).unwrap();
    let out = dir.path().join("desired.toml");
    let planted = dir
        .path()
        .join(format!(".desired.toml.export-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();

    let (code, err) = export(&config, &out, false).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), VICTIM);
    assert!(std::fs::read_to_string(&out).unwrap().contains("users"));
    assert!(std::fs::symlink_metadata(&planted).unwrap().is_symlink());

    // With --force, a symlink at the target is replaced by a file, not followed.
    std::fs::remove_file(&out).unwrap();
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let (code, err) = export(&config, &out, true).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), VICTIM);
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.is_file(), "the target is a plain file now");
    assert!(std::fs::read_to_string(&out).unwrap().contains("users"));
    // Nothing left behind but the planted link: no temporary files.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".export-"))
        .collect();
    names.sort();
    assert_eq!(names, [planted.file_name().unwrap().to_str().unwrap()]);
}
