//! `[scope.git]` in the config: read into a checked source, its files looked up like the
//! client secret, `stale_after` defaulting to three fetches, and every wrong setting refused
//! with its key named (unknown keys, both sources at once, a bad URL).

use std::path::Path;
use std::time::Duration;

use dexscope::config::{Config, Verify};

const HEAD: &str = "[tenant]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n\
    client_id = \"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\nclient_secret_file = \"secret\"\n\
    [scope]\nuser_group_id = \"99999999-8888-7777-6666-555555555555\"\ndevice_tag = \"DEX\"\n";

/// Loads `HEAD` + `text` from a temporary directory holding `secret` and `signers`, with
/// `CREDENTIALS_DIRECTORY` pointing at a `creds/` directory holding `creds_signers`.
fn load(text: &str, env: &[(&str, &str)]) -> (Result<Config, String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::support::write_secret(&d.join("secret"), "s3cret-value\n");
    std::fs::write(d.join("signers"), "x\n").unwrap();
    std::fs::create_dir(d.join("creds")).unwrap();
    std::fs::write(d.join("creds/creds_signers"), "x\n").unwrap();
    let path = d.join("config.toml");
    std::fs::write(&path, format!("{HEAD}{text}")).unwrap();
    let mut vars = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        d.join("creds").display().to_string(),
    )];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let loaded = Config::load(&path, vars).map_err(|e| e.to_string());
    (loaded, dir)
}

/// Environment variables for one case.
type Env<'a> = &'a [(&'a str, &'a str)];

const GIT: &str = "[scope.git]\nurl = \"file:///srv/scope.git\"\nbranch = \"main\"\n\
                   path = \"scope/\"\nverify = \"none\"\n";

#[test]
fn a_git_source_is_read_with_its_defaults_and_its_files_looked_up() {
    let (config, dir) = load(GIT, &[]);
    let git = config.unwrap().scope.git.expect("a git source");
    assert_eq!(git.source.url().as_str(), "file:///srv/scope.git");
    assert_eq!(git.source.path(), "scope");
    assert_eq!(git.source.fetch_every(), Duration::from_secs(60));
    assert_eq!(git.stale_after, Duration::from_secs(180));

    let signed = "[scope.git]\nurl = \"https://git.example.com/s.git\"\nbranch = \"main\"\n\
                  path = \".\"\nfetch_every = \"2m\"\nstale_after = \"1h\"\nverify = \"ssh\"\n";
    for (name, found) in [
        ("creds_signers", Path::new("creds/creds_signers")),
        ("signers", Path::new("signers")),
    ] {
        let (config, dir) = load(&format!("{signed}allowed_signers = \"{name}\"\n"), &[]);
        let git = config.unwrap().scope.git.unwrap();
        assert_eq!(git.source.verify(), Verify::Ssh);
        assert_eq!(
            git.source.allowed_signers(),
            Some(dir.path().join(found).as_path())
        );
        assert_eq!(git.stale_after, Duration::from_secs(3600));
    }
    // The environment reaches the table's keys too.
    let (config, _) = load(GIT, &[("DEXSCOPE__SCOPE__GIT__FETCH_EVERY", "30s")]);
    let git = config.unwrap().scope.git.unwrap();
    assert_eq!(git.source.fetch_every(), Duration::from_secs(30));
    assert_eq!(git.stale_after, Duration::from_secs(90));
    drop(dir);
}

#[test]
fn wrong_git_settings_are_refused_with_their_key() {
    let cases: &[(&str, Env, &str)] = &[
        (
            "desired_state = \"d\"\n",
            &[],
            "[scope] desired_state is set together with [scope.git]",
        ),
        (
            "colour = \"blue\"\n",
            &[],
            "unknown key \"colour\" in [scope.git]",
        ),
        (
            "",
            &[("DEXSCOPE__SCOPE__GIT__BOGUS", "1")],
            "unknown key \"bogus\" in [scope.git]",
        ),
        (
            "stale_after = \"5s\"\n",
            &[],
            "[scope.git] stale_after is \"5s\", below the minimum of 1m",
        ),
        (
            "fetch_every = \"1s\"\n",
            &[],
            "[scope.git] fetch_every is shorter than 10s",
        ),
    ];
    for (extra, env, want) in cases {
        // `desired_state` goes in [scope], the rest in [scope.git].
        let text = if extra.starts_with("desired_state") {
            format!("{extra}{GIT}")
        } else {
            format!("{GIT}{extra}")
        };
        let (config, _) = load(&text, env);
        let got = config.unwrap_err();
        assert!(got.contains(want), "{extra:?}: got {got}");
    }
    let (config, _) = load(
        &GIT.replace("file:///srv/scope.git", "http://git.example.com/x.git"),
        &[],
    );
    assert!(
        config
            .unwrap_err()
            .contains("[scope.git] url must start with https://, ssh:// or file://")
    );
    let (config, _) = load(&GIT.replace("verify = \"none\"\n", ""), &[]);
    assert!(
        config
            .unwrap_err()
            .contains("[scope.git] verify is required")
    );
}
