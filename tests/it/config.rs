//! Config loading over real files in temporary directories: layering, unknown keys, transport
//! rules, typed values, secrets and the one-line error rendering.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dexscope::config::{
    self, AssertionAlg, Cloud, Config, ConfigError, Credential, LogFormat, Platform, SecretSource,
};
use expect_test::{Expect, expect};
use secrecy::ExposeSecret;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const GROUP: &str = "99999999-8888-7777-6666-555555555555";
const SECRET: &str = "Zq8~s3cr3t.Value_that-must-never-show";
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n\
                   -----BEGIN PRIVATE KEY-----\nMIIEkeymaterial\n-----END PRIVATE KEY-----\n";

/// One scenario: settings over a minimal valid config, files next to it, and the environment.
/// A setting's value is raw TOML; `None` removes the key from the minimal config. `$DIR` in a
/// file name, setting or environment value stands for the temporary directory.
#[derive(Default, Clone)]
struct Case {
    set: Vec<(&'static str, &'static str, Option<&'static str>)>,
    files: Vec<(&'static str, &'static str)>,
    env: Vec<(&'static str, &'static str)>,
    /// Raw text appended to the file (for syntax errors and unknown sections).
    raw: &'static str,
}

impl Case {
    fn set(mut self, section: &'static str, key: &'static str, value: &'static str) -> Self {
        self.set.push((section, key, Some(value)));
        self
    }
    fn unset(mut self, section: &'static str, key: &'static str) -> Self {
        self.set.push((section, key, None));
        self
    }
    fn file(mut self, name: &'static str, content: &'static str) -> Self {
        self.files.push((name, content));
        self
    }
    fn env(mut self, var: &'static str, value: &'static str) -> Self {
        self.env.push((var, value));
        self
    }
    fn raw(mut self, text: &'static str) -> Self {
        self.raw = text;
        self
    }
}

fn case() -> Case {
    Case::default()
}

/// The minimal valid config: ids, tag and a client secret file.
fn minimal() -> Vec<(&'static str, &'static str, String)> {
    let q = |s: &str| format!("{s:?}");
    vec![
        ("tenant", "tenant_id", q(TENANT)),
        ("tenant", "client_id", q(CLIENT)),
        ("tenant", "client_secret_file", q("client-secret")),
        ("scope", "user_group_id", q(GROUP)),
        ("scope", "device_tag", q("DEX-Scoped")),
    ]
}

/// Writes the case into a fresh directory and loads it. The error comes back as its rendered
/// line with the directory replaced by `$DIR`, so it can be compared and snapshotted.
fn check(case: &Case) -> (tempfile::TempDir, Result<Config, String>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let sub = |s: &str| s.replace("$DIR", &root);

    let mut settings = minimal();
    for (section, key, value) in &case.set {
        settings.retain(|(s, k, _)| !(s == section && k == key));
        if let Some(v) = value {
            settings.push((section, key, sub(v)));
        }
    }
    let mut text = String::new();
    let mut sections: Vec<&str> = settings.iter().map(|(s, _, _)| *s).collect();
    sections.dedup();
    sections.sort();
    sections.dedup();
    for section in sections {
        text.push_str(&format!("[{section}]\n"));
        for (_, key, value) in settings.iter().filter(|(s, _, _)| *s == section) {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push('\n');
    }
    text.push_str(case.raw);
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();

    let mut files = case.files.clone();
    if !files.iter().any(|(n, _)| *n == "client-secret") {
        files.push(("client-secret", SECRET));
    }
    for (name, content) in files {
        let p = PathBuf::from(sub(name));
        let p = if p.is_absolute() {
            p
        } else {
            dir.path().join(p)
        };
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        super::support::write_secret(&p, content);
    }
    let env: Vec<(String, String)> = case
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), sub(v)))
        .collect();
    let got = config::load_for_command(&path, env).map_err(|e| render(&e, &root));
    (dir, got)
}

fn render(e: &ConfigError, root: &str) -> String {
    let line = e.to_string();
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "not one line: {line:?}"
    );
    assert!(!line.contains(SECRET), "secret in error: {line}");
    assert!(!line.ends_with('.'), "trailing period: {line}");
    line.replace(root, "$DIR")
}

fn ok(case: &Case) -> (tempfile::TempDir, Config) {
    match check(case) {
        (dir, Ok(config)) => (dir, config),
        (_, Err(e)) => panic!("expected the config to load, got: {e}"),
    }
}

fn err(case: &Case) -> String {
    match check(case) {
        (_, Err(e)) => e,
        (_, Ok(config)) => panic!("expected an error, loaded {config:?}"),
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let (dir, c) = ok(&case());
    assert_eq!(c.tenant.tenant_id.as_str(), TENANT);
    assert_eq!(c.tenant.cloud, Cloud::Public);
    assert_eq!(c.tenant.assertion_alg, AssertionAlg::Ps256);
    assert_eq!(
        c.scope.device_group_name,
        "Defender_Experts_Scoped_Coverage_Devices"
    );
    assert!(c.scope.prune);
    assert_eq!(c.scope.max_removals, 50);
    assert_eq!(c.scope.propagation_grace, Duration::from_secs(7_200));
    assert_eq!(
        c.scope.desired_state,
        PathBuf::from("/var/lib/dexscope/desired")
    );
    assert_eq!(c.schedule.reconcile_every, Duration::from_secs(300));
    assert_eq!(c.schedule.priority_every, Duration::from_secs(900));
    assert_eq!(c.schedule.incidents_every, Duration::from_secs(60));
    assert!(c.incidents.post_comments);
    assert_eq!(c.incidents.lookback, Duration::from_secs(86_400));
    assert_eq!(c.incidents.overlap, Duration::from_secs(300));
    let sev: Vec<String> = c
        .incidents
        .severities
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(sev, ["high", "medium"]);
    assert_eq!(
        c.incidents.platforms,
        [Platform::Windows, Platform::Linux, Platform::MacOs]
    );
    for source in ["DataLossPrevention", "customDetection", "microsoftSentinel"] {
        assert!(c.incidents.is_excluded_source(source), "{source}");
    }
    assert!(
        !c.incidents
            .is_excluded_source("microsoftDefenderForEndpoint")
    );
    assert!(c.alerts.webhook_url.is_none());
    assert_eq!(c.alerts.renotify_every, Duration::from_secs(21_600));
    assert_eq!(c.state.path, PathBuf::from("/var/lib/dexscope/state.db"));
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.limits.graph_directory_writes_per_150s, 3000);
    assert_eq!(c.limits.graph_directory_reads_per_10s, 3500);
    assert_eq!(c.limits.graph_directory_write_batches_in_flight, 4);
    assert_eq!(c.limits.graph_security_per_minute, 150);
    assert_eq!(c.limits.defender_per_minute, 100);
    assert_eq!(c.limits.defender_per_hour, 1500);
    assert_eq!(c.http.timeout, Duration::from_secs(30));
    assert_eq!(c.http.max_attempts, 6);
    assert_eq!(c.http.max_retry_time, Duration::from_secs(300));
    match &c.tenant.credential {
        Credential::ClientSecret { secret, from } => {
            assert_eq!(secret.expose_secret(), SECRET);
            assert_eq!(*from, SecretSource::File(dir.path().join("client-secret")));
        }
        other => panic!("expected a client secret, got {other:?}"),
    }
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn layers_defaults_then_file_then_environment() {
    // (file value of max_removals, environment value, expected)
    let cases: &[(Option<&'static str>, Option<&'static str>, u32)] = &[
        (None, None, 50),
        (Some("20"), None, 20),
        (Some("20"), Some("10"), 10),
        (None, Some("0"), 0),
    ];
    for (file, env, want) in cases {
        let mut c = case();
        if let Some(v) = file {
            c = c.set("scope", "max_removals", v);
        }
        if let Some(v) = env {
            c = c.env("DEXSCOPE__SCOPE__MAX_REMOVALS", v);
        }
        let (_dir, config) = ok(&c);
        assert_eq!(
            config.scope.max_removals, *want,
            "file {file:?} env {env:?}"
        );
    }
}

#[test]
fn environment_overrides_every_kind_of_value() {
    let c = case()
        .set("scope", "prune", "true")
        .set("log", "format", "\"text\"")
        .env("DEXSCOPE__SCOPE__PRUNE", "false")
        .env("dexscope__log__format", "json")
        .env("DEXSCOPE__SCHEDULE__RECONCILE_EVERY", "90s")
        .env("DEXSCOPE__INCIDENTS__SEVERITIES", "high, low")
        .env("DEXSCOPE__INCIDENTS__PLATFORMS", "windows")
        .env("DEXSCOPE__SCOPE__DEVICE_TAG", "007")
        .env("DEXSCOPE__METRICS__LISTEN", "[::1]:0")
        .env("DEXSCOPE__ENDPOINTS__GRAPH", "http://127.0.0.1:8080")
        .env("DEXSCOPE_CONFIG", "/ignored/by/the/loader.toml")
        .env("UNRELATED", "x");
    let (_dir, config) = ok(&c);
    assert!(!config.scope.prune);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.schedule.reconcile_every, Duration::from_secs(90));
    let sev: Vec<String> = config
        .incidents
        .severities
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(sev, ["high", "low"]);
    assert_eq!(config.incidents.platforms, [Platform::Windows]);
    // Text stays text: "007" is not turned into the number 7.
    assert_eq!(config.scope.device_tag, "007");
    assert_eq!(config.metrics.listen.to_string(), "[::1]:0");
    assert_eq!(config.endpoints.graph.as_str(), "http://127.0.0.1:8080/");
    // The scope names the resource, not the address it is reached at.
    assert_eq!(
        config.endpoints.graph_scope,
        "https://graph.microsoft.com/.default"
    );
}

#[test]
fn unknown_keys_are_named_with_their_section() {
    let cases: Vec<(Case, Expect)> = vec![
        (
            case().set("scope", "max_removal", "3"),
            expect![[
                r#"unknown key "max_removal" in [scope] ($DIR/config.toml:4): did you mean "max_removals"?"#
            ]],
        ),
        (
            case().env("DEXSCOPE__SCOPE__MAX_REMOVAL", "3"),
            expect![[
                r#"unknown key "max_removal" in [scope] (environment DEXSCOPE__SCOPE__MAX_REMOVAL): did you mean "max_removals"?"#
            ]],
        ),
        (
            case().set("scope", "tenant_id", "\"x\""),
            expect![[
                r#"unknown key "tenant_id" in [scope] ($DIR/config.toml:4): "tenant_id" belongs in [tenant]"#
            ]],
        ),
        (
            case().set("tenant", "client_secret", "\"x\""),
            expect![[
                r#"unknown key "client_secret" in [tenant] ($DIR/config.toml:9): a secret never lives in the config: write it to a file and set client_secret_file (or DEXSCOPE_CLIENT_SECRET for development)"#
            ]],
        ),
        (
            case().raw("[sheduler]\nevery = \"1m\"\n"),
            expect!["unknown section [sheduler] ($DIR/config.toml:10): did you mean [schedule]?"],
        ),
        (
            case().env("DEXSCOPE__LOGGING__FORMAT", "json"),
            expect![
                "unknown section [logging] (environment DEXSCOPE__LOGGING__FORMAT): known sections are [tenant], [endpoints], [scope], [schedule], [incidents], [alerts], [state], [metrics], [log], [limits], [http]"
            ],
        ),
        (
            case().env("DEXSCOPE__SCOPE", "x"),
            expect![[
                r#"environment variable DEXSCOPE__SCOPE names no setting: it names the section [scope], not a key: use DEXSCOPE__SCOPE__<KEY>"#
            ]],
        ),
        (
            case().env("DEXSCOPE__HTTP__RETRY__MAX", "3"),
            expect![[
                r#"unknown key "retry__max" in [http] (environment DEXSCOPE__HTTP__RETRY__MAX): remove it; [http] accepts timeout, max_attempts, max_retry_time"#
            ]],
        ),
    ];
    for (c, want) in cases {
        want.assert_eq(&err(&c));
    }
}

#[test]
fn transport_is_https_except_loopback() {
    // (endpoint URL, accepted)
    let cases: &[(&'static str, bool)] = &[
        ("\"https://graph.example.com\"", true),
        ("\"http://127.0.0.1:8080\"", true),
        ("\"http://127.8.9.10\"", true),
        ("\"http://localhost\"", true),
        ("\"http://LOCALHOST:9\"", true),
        ("\"http://[::1]:8443/sim\"", true),
        ("\"http://graph.microsoft.com\"", false),
        ("\"http://10.0.0.5\"", false),
        ("\"http://localhost.evil.example\"", false),
        ("\"http://[::2]\"", false),
        ("\"ftp://127.0.0.1\"", false),
        ("\"https://x.example?a=b\"", false),
        ("\"graph.microsoft.com\"", false),
    ];
    for (url, accepted) in cases {
        let got = check(&case().set("endpoints", "graph", url)).1;
        assert_eq!(got.is_ok(), *accepted, "{url}: {:?}", got.err());
    }
    // The webhook URL is a secret: refused without echoing it.
    let (_dir, got) = check(
        &case()
            .set("alerts", "webhook_url_file", "\"hook\"")
            .file("hook", "http://hooks.example/T0K3N-in-path\n"),
    );
    let e = got.unwrap_err();
    assert!(!e.contains("T0K3N"), "{e}");
    expect![[r#"alert webhook URL file $DIR/hook: holds a URL that uses http:// to a non-loopback host: write one https:// URL into it (http:// only for loopback)"#]]
        .assert_eq(&e);
    let (_dir, config) = ok(&case()
        .set("alerts", "webhook_url_file", "\"hook\"")
        .file("hook", "http://127.0.0.1:9000/hook\n"));
    let url = config.alerts.webhook_url.expect("webhook configured");
    assert_eq!(url.expose_secret(), "http://127.0.0.1:9000/hook");
}

#[test]
fn bad_values_are_one_clear_line() {
    let cases: Vec<(Case, Expect)> = vec![
        (
            case().set("tenant", "tenant_id", "\"not-a-guid\""),
            expect![[
                r#"[tenant] tenant_id "not-a-guid" is not a GUID ($DIR/config.toml:8): write the directory (tenant) id as 8-4-4-4-12 hex digits"#
            ]],
        ),
        (
            case().env("DEXSCOPE__SCOPE__USER_GROUP_ID", "1234"),
            expect![[
                r#"[scope] user_group_id "1234" is not a GUID (environment DEXSCOPE__SCOPE__USER_GROUP_ID): write the group's object id as 8-4-4-4-12 hex digits"#
            ]],
        ),
        (
            case().unset("tenant", "client_id"),
            expect![[
                r#"[tenant] client_id is required but not set ($DIR/config.toml): set it to the application (client) id, a GUID like 00000000-0000-0000-0000-000000000000"#
            ]],
        ),
        (
            case().set("schedule", "reconcile_every", "\"5 minutes\""),
            expect![[
                r#"[schedule] reconcile_every is not a duration: "5 minutes" ($DIR/config.toml:2): write a whole number followed by s, m, h or d, like 90s, 5m, 2h or 1d"#
            ]],
        ),
        (
            case().set("schedule", "priority_every", "300"),
            expect![
                "[schedule] priority_every is not a duration: 300 ($DIR/config.toml:2): write a whole number followed by s, m, h or d, like 90s, 5m, 2h or 1d"
            ],
        ),
        (
            case().env("DEXSCOPE__SCHEDULE__INCIDENTS_EVERY", "0s"),
            expect![[
                r#"[schedule] incidents_every is "0s", below the minimum of 1s (environment DEXSCOPE__SCHEDULE__INCIDENTS_EVERY): use at least 1s"#
            ]],
        ),
        (
            case().set("scope", "max_removals", "-3"),
            expect![
                "[scope] max_removals must be a whole number ≥ 0, not -3 ($DIR/config.toml:4): write a whole number from 0 to 4294967295"
            ],
        ),
        (
            case().env("DEXSCOPE__SCOPE__PRUNE", "yes"),
            expect![[
                r#"[scope] prune must be true or false, not "yes" (environment DEXSCOPE__SCOPE__PRUNE): write true or false"#
            ]],
        ),
        (
            case().set("scope", "device_tag", "\"Scoped (EU)\""),
            expect![[
                r#"[scope] device_tag "Scoped (EU)" contains ( ) or , ($DIR/config.toml:3): use at most 200 characters without ( ) , or surrounding spaces"#
            ]],
        ),
        (
            case().unset("scope", "device_tag"),
            expect![[
                r#"[scope] device_tag is required but not set ($DIR/config.toml): set the machine tag the scoped device group's rule matches"#
            ]],
        ),
        (
            case().set("metrics", "listen", "\"localhost:9464\""),
            expect![[
                r#"[metrics] listen "localhost:9464" is not an IP address and port ($DIR/config.toml:2): write it like 127.0.0.1:9464 or [::1]:9464 (port 0 picks a free port)"#
            ]],
        ),
        (
            case().set("log", "format", "\"xml\""),
            expect![[
                r#"[log] format "xml" is not a log format ($DIR/config.toml:2): write text or json"#
            ]],
        ),
        (
            case().set("tenant", "cloud", "\"china\""),
            expect![[
                r#"[tenant] cloud "china" is not a known cloud ($DIR/config.toml:9): write public, gcc, gcc-high or dod"#
            ]],
        ),
        (
            case().set("tenant", "assertion_alg", "\"HS256\""),
            expect![[
                r#"[tenant] assertion_alg "HS256" is not a supported algorithm ($DIR/config.toml:9): write PS256 (default) or RS256"#
            ]],
        ),
        (
            case().set("incidents", "severities", "[\"high\", \"critical\"]"),
            expect![[
                r#"[incidents] severities holds "critical", not a severity ($DIR/config.toml:2): use high, medium, low or informational"#
            ]],
        ),
        (
            case().set("incidents", "platforms", "[\"android\"]"),
            expect![[
                r#"[incidents] platforms holds "android", which Defender Experts does not cover ($DIR/config.toml:2): use windows, linux or macos"#
            ]],
        ),
        (
            case().set("http", "max_attempts", "0"),
            expect![[
                r#"[http] max_attempts must be a whole number ≥ 1, not 0 ($DIR/config.toml:2): write a whole number from 1 to 4294967295"#
            ]],
        ),
        (
            case().set("endpoints", "login", "\"http://login.example\""),
            expect![[
                r#"[endpoints] login "http://login.example" uses http:// to a non-loopback host ($DIR/config.toml:2): use https:// (http:// only for 127.0.0.0/8, [::1] or localhost)"#
            ]],
        ),
        (
            case().raw("[log\nformat = \"json\"\n"),
            expect![
                "config file $DIR/config.toml:10:5: invalid TOML: unclosed table, expected `]`: fix the syntax"
            ],
        ),
        (
            case()
                .set("scope", "prune", "\"maybe\"")
                .set("scope", "device_tag", "123"),
            expect![
                "[scope] device_tag must be text, not 123 ($DIR/config.toml:4): put the value in quotes"
            ],
        ),
    ];
    for (c, want) in cases {
        want.assert_eq(&err(&c));
    }
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let e = config::load_for_command(&path, Vec::<(String, String)>::new()).unwrap_err();
    let line = render(&e, dir.path().to_str().unwrap());
    expect![[r#"cannot read config file $DIR/nope.toml: No such file or directory (os error 2): check the path, or pass --config PATH"#]]
        .assert_eq(&line);
}

#[test]
fn credentials() {
    let cases: Vec<(Case, Expect)> = vec![
        (
            case().set("tenant", "client_secret_file", "\"missing-secret\""),
            expect![[r#"client secret file $DIR/missing-secret: cannot be read (No such file or directory (os error 2)): create it, or fix the file name (relative names are looked up in $CREDENTIALS_DIRECTORY, then next to the config file)"#]],
        ),
        (
            case()
                .set("tenant", "certificate_file", "\"dexscope.pem\"")
                .file("dexscope.pem", PEM),
            expect!["credential: two credentials configured: [tenant] client_secret_file ($DIR/config.toml:8) and certificate_file ($DIR/config.toml:9): keep exactly one"],
        ),
        (
            case().unset("tenant", "client_secret_file"),
            expect!["credential: no credential configured: set [tenant] client_secret_file or certificate_file (or DEXSCOPE_CLIENT_SECRET for development)"],
        ),
        (
            case().file("client-secret", "\n"),
            expect![[r#"client secret file $DIR/client-secret: is empty: write the secret into it"#]],
        ),
        (
            case()
                .unset("tenant", "client_secret_file")
                .set("tenant", "certificate_file", "\"only-cert.pem\"")
                .file("only-cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
            expect![[r#"certificate file $DIR/only-cert.pem: holds no RSA private key: put the certificate and its private key in one PEM file"#]],
        ),
        (
            case()
                .unset("tenant", "client_secret_file")
                .set("tenant", "certificate_file", "\"enc.pem\"")
                .file("enc.pem", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n-----BEGIN ENCRYPTED PRIVATE KEY-----\ny\n-----END ENCRYPTED PRIVATE KEY-----\n"),
            expect![[r#"certificate file $DIR/enc.pem: holds an encrypted private key: store the key unencrypted and protect the file instead (systemd LoadCredential)"#]],
        ),
    ];
    for (c, want) in cases {
        want.assert_eq(&err(&c));
    }
}

#[test]
fn credentials_directory_wins_over_the_config_directory() {
    let c = case()
        .file("creds/client-secret", "from-credentials-directory\n")
        .file("client-secret", "from-config-directory\n")
        .env("CREDENTIALS_DIRECTORY", "$DIR/creds");
    let (dir, config) = ok(&c);
    let Credential::ClientSecret { secret, from } = &config.tenant.credential else {
        panic!("expected a client secret");
    };
    assert_eq!(secret.expose_secret(), "from-credentials-directory");
    assert_eq!(
        *from,
        SecretSource::File(dir.path().join("creds/client-secret"))
    );

    // A name missing from $CREDENTIALS_DIRECTORY falls back to the config directory.
    let c = case()
        .file("creds/other", "x")
        .file("client-secret", "from-config-directory\r\n")
        .env("CREDENTIALS_DIRECTORY", "$DIR/creds");
    let (_dir, config) = ok(&c);
    let Credential::ClientSecret { secret, .. } = &config.tenant.credential else {
        panic!("expected a client secret");
    };
    assert_eq!(secret.expose_secret(), "from-config-directory");
}

#[test]
fn certificate_and_development_secret() {
    let (dir, config) = ok(&case()
        .unset("tenant", "client_secret_file")
        .set("tenant", "certificate_file", "\"dexscope.pem\"")
        .set("tenant", "assertion_alg", "\"rs256\"")
        .file("dexscope.pem", PEM));
    let Credential::Certificate { pem, path } = &config.tenant.credential else {
        panic!("expected a certificate");
    };
    assert_eq!(pem.expose_secret(), PEM.trim_end());
    assert_eq!(*path, dir.path().join("dexscope.pem"));
    assert_eq!(config.tenant.assertion_alg, AssertionAlg::Rs256);

    // The development secret is used only when no file credential is configured, with a warning.
    let (_dir, config) = ok(&case()
        .unset("tenant", "client_secret_file")
        .env("DEXSCOPE_CLIENT_SECRET", "dev-only-secret"));
    let Credential::ClientSecret { secret, from } = &config.tenant.credential else {
        panic!("expected a client secret");
    };
    assert_eq!(secret.expose_secret(), "dev-only-secret");
    assert_eq!(*from, SecretSource::DevEnvironment);
    assert!(
        config.warnings.iter().any(|w| w.contains("development")),
        "{:?}",
        config.warnings
    );

    let (_dir, config) = ok(&case().env("DEXSCOPE_CLIENT_SECRET", "dev-only-secret"));
    let Credential::ClientSecret { secret, .. } = &config.tenant.credential else {
        panic!("expected a client secret");
    };
    assert_eq!(secret.expose_secret(), SECRET);
    assert!(
        config.warnings.iter().any(|w| w.contains("ignored")),
        "{:?}",
        config.warnings
    );

    // An empty environment value clears the file setting, so the development secret applies.
    let (_dir, config) = ok(&case()
        .env("DEXSCOPE__TENANT__CLIENT_SECRET_FILE", "")
        .env("DEXSCOPE_CLIENT_SECRET", "dev-only-secret"));
    assert!(matches!(
        config.tenant.credential,
        Credential::ClientSecret {
            from: SecretSource::DevEnvironment,
            ..
        }
    ));
}

#[test]
fn cloud_presets_fill_endpoints_and_scopes() {
    // (cloud, login, graph, defender, graph scope, defender scope)
    let cases: &[(&'static str, Cloud, [&str; 5])] = &[
        (
            "\"public\"",
            Cloud::Public,
            [
                "https://login.microsoftonline.com/",
                "https://graph.microsoft.com/",
                "https://api.security.microsoft.com/",
                "https://graph.microsoft.com/.default",
                "https://api.securitycenter.microsoft.com/.default",
            ],
        ),
        (
            "\"gcc\"",
            Cloud::Gcc,
            [
                "https://login.microsoftonline.com/",
                "https://graph.microsoft.com/",
                "https://api-gcc.securitycenter.microsoft.us/",
                "https://graph.microsoft.com/.default",
                "https://api-gcc.securitycenter.microsoft.us/.default",
            ],
        ),
        (
            "\"gcc-high\"",
            Cloud::GccHigh,
            [
                "https://login.microsoftonline.us/",
                "https://graph.microsoft.us/",
                "https://api-gov.securitycenter.microsoft.us/",
                "https://graph.microsoft.us/.default",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ],
        ),
        (
            "\"DoD\"",
            Cloud::Dod,
            [
                "https://login.microsoftonline.us/",
                "https://dod-graph.microsoft.us/",
                "https://api-gov.securitycenter.microsoft.us/",
                "https://dod-graph.microsoft.us/.default",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ],
        ),
    ];
    for (name, cloud, [login, graph, defender, graph_scope, defender_scope]) in cases {
        let (_dir, c) = ok(&case().set("tenant", "cloud", name));
        assert_eq!(c.tenant.cloud, *cloud);
        let e = &c.endpoints;
        assert_eq!(
            [
                e.login.as_str(),
                e.graph.as_str(),
                e.defender.as_str(),
                &e.graph_scope,
                &e.defender_scope
            ],
            [*login, *graph, *defender, *graph_scope, *defender_scope],
            "cloud {name}"
        );
    }
    // One [endpoints] key overrides its preset; the others keep theirs.
    let (_dir, c) = ok(&case()
        .set("tenant", "cloud", "\"gcc-high\"")
        .set("endpoints", "defender", "\"http://127.0.0.1:7000/mde\"")
        .set(
            "endpoints",
            "defender_scope",
            "\"https://api.securitycenter.microsoft.us/.default\"",
        ));
    assert_eq!(c.endpoints.defender.as_str(), "http://127.0.0.1:7000/mde/");
    assert_eq!(c.endpoints.graph.as_str(), "https://graph.microsoft.us/");
    assert_eq!(
        c.endpoints.defender_scope,
        "https://api.securitycenter.microsoft.us/.default"
    );
}

#[test]
fn secrets_never_show_in_errors_or_debug() {
    // The secret file's content is also pasted as a bogus value into other settings.
    let cases: &[(&'static str, &'static str)] = &[
        ("tenant", "tenant_id"),
        ("tenant", "client_id"),
        ("tenant", "cloud"),
        ("scope", "user_group_id"),
        ("scope", "propagation_grace"),
        ("metrics", "listen"),
        ("log", "format"),
        ("endpoints", "graph"),
    ];
    let pasted = Box::leak(format!("{SECRET:?}").into_boxed_str());
    for (section, key) in cases {
        let e = err(&case().set(section, key, pasted));
        // `render` already asserts the secret is absent; the error must still name the setting.
        assert!(e.contains(&format!("[{section}] {key}")), "{e}");
        assert!(e.contains("value hidden"), "{e}");
    }
    // The development secret pasted into the device tag, from the environment.
    let e = err(&case()
        .unset("tenant", "client_secret_file")
        .env("DEXSCOPE_CLIENT_SECRET", "dev,secret,value")
        .env("DEXSCOPE__SCOPE__DEVICE_TAG", "dev,secret,value"));
    assert!(!e.contains("dev,secret"), "{e}");

    let (_dir, c) = ok(&case()
        .set("alerts", "webhook_url_file", "\"hook\"")
        .file("hook", "https://hooks.example/webhook/T0K3N\n"));
    let debug = format!("{c:?}");
    for needle in [SECRET, "T0K3N"] {
        assert!(!debug.contains(needle), "{needle} in {debug}");
    }
    let (_dir, c) = ok(&case()
        .unset("tenant", "client_secret_file")
        .set("tenant", "certificate_file", "\"dexscope.pem\"")
        .file("dexscope.pem", PEM));
    let debug = format!("{c:?}");
    assert!(!debug.contains("MIIEkeymaterial"), "{debug}");
}

#[test]
fn relative_paths_and_ephemeral_port() {
    let (dir, c) = ok(&case()
        .set("scope", "desired_state", "\"desired\"")
        .set("state", "path", "\"state/db.sqlite\"")
        .set("metrics", "listen", "\"127.0.0.1:0\""));
    assert_eq!(c.scope.desired_state, dir.path().join("desired"));
    assert_eq!(c.state.path, dir.path().join("state/db.sqlite"));
    assert_eq!(c.metrics.listen.port(), 0);
}

#[test]
fn example_config_loads_and_documents_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    for (section, key) in config::known_keys() {
        assert!(
            text.contains(&format!("[{section}]")),
            "example lacks [{section}]"
        );
        assert!(
            text.contains(&format!("{key} = ")),
            "example lacks {section}.{key}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    super::support::write_secret(&dir.path().join("client-secret"), "s\n");
    let c = config::load_for_command(&path, Vec::<(String, String)>::new()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // The values the example shows are the built-in defaults: loading it with only the required
    // settings gives the same result.
    let (_d, minimal) = ok(&case().set(
        "tenant",
        "tenant_id",
        "\"00000000-0000-0000-0000-000000000000\"",
    ));
    assert_eq!(
        format!("{:?}", c.scope.prune),
        format!("{:?}", minimal.scope.prune)
    );
    assert_eq!(c.schedule, minimal.schedule);
    assert_eq!(c.incidents, minimal.incidents);
    assert_eq!(c.limits, minimal.limits);
    assert_eq!(c.http, minimal.http);
    assert_eq!(c.metrics, minimal.metrics);
    assert_eq!(c.log, minimal.log);
    assert_eq!(c.state, minimal.state);
    assert_eq!(c.endpoints, minimal.endpoints);
    assert_eq!(c.alerts.renotify_every, minimal.alerts.renotify_every);
    assert_eq!(
        (
            c.scope.max_removals,
            c.scope.propagation_grace,
            &c.scope.desired_state
        ),
        (
            minimal.scope.max_removals,
            minimal.scope.propagation_grace,
            &minimal.scope.desired_state
        )
    );
}

#[test]
fn binary_exit_codes_for_the_command_line() {
    // (arguments, exit code, text expected on stdout or stderr)
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--version"], 0, env!("CARGO_PKG_VERSION")),
        (&["--help"], 0, "--config <PATH>"),
        (&["validate", "--help"], 0, "--format <FORMAT>"),
        // Usage errors are 64, never 2, which `plan` uses for "changes pending".
        (&[], 64, "Usage"),
        (&["validate"], 64, "<PATH>"),
        (&["frobnicate"], 64, "unrecognized subcommand"),
        (
            &["validate", "x.toml", "--format", "xml"],
            64,
            "invalid value",
        ),
    ];
    for (args, code, needle) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dexscope"))
            .args(*args)
            .env_remove("DEXSCOPE_CONFIG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {needle:?} not in {text}");
    }
}

#[test]
fn write_batches_in_flight_is_refused_outside_1_to_16() {
    let key = "graph_directory_write_batches_in_flight";
    for bad in ["0", "17"] {
        let e = err(&case().set("limits", key, bad));
        assert!(e.contains(&format!("[limits] {key}")), "{e}");
        assert!(e.contains("from 1 to 16"), "{e}");
    }
    let (_dir, c) = ok(&case().set("limits", key, "16"));
    assert_eq!(c.limits.graph_directory_write_batches_in_flight, 16);
}
