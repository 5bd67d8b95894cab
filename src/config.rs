//! Settings: built-in defaults, then the file, then `DEXSCOPE__…` environment, validated into a typed `Config`.
//!
//! Loading runs in steps, each with its own failure: read the file, check its TOML syntax, reject
//! unknown keys (file and environment, each named with its section), merge the three layers with
//! the `config` crate, read the secrets, then type and validate every setting. Secrets are read
//! *before* the other settings are typed so that an error which quotes a bad value can first check
//! that the value is not a secret (an operator who pastes the client secret into `client_id`
//! must not find it in the journal).
//!
//! Every error renders as one line: what is wrong, where it was set, what to do.

use crate::text::edit_distance;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{FileFormat, Value, ValueKind};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::model::{ObjectId, Severity, is_guid};

/// Exit code of every command whose config is invalid (`EX_CONFIG` from `sysexits.h`).
pub const EXIT_CONFIG: u8 = 78;
/// Where the config file is looked for when neither `--config` nor `DEXSCOPE_CONFIG` says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dexscope/config.toml";
/// Development-only client secret taken from the environment when no file credential is set.
pub const DEV_SECRET_VAR: &str = "DEXSCOPE_CLIENT_SECRET";
/// Set by systemd `LoadCredential=`: relative secret file names are looked up here first.
pub const CREDENTIALS_DIRECTORY_VAR: &str = "CREDENTIALS_DIRECTORY";
/// The device group name Defender Experts requires (renaming is not supported).
pub const REQUIRED_DEVICE_GROUP: &str = "Defender_Experts_Scoped_Coverage_Devices";

const ENV_PREFIX: &str = "dexscope__";
const ENV_ORIGIN: &str = "the environment";

/// Every section and key the config accepts. Anything else is an error, so a typo is never
/// silently ignored.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "tenant",
        &[
            "tenant_id",
            "client_id",
            "cloud",
            "client_secret_file",
            "certificate_file",
            "assertion_alg",
        ],
    ),
    (
        "endpoints",
        &[
            "login",
            "graph",
            "defender",
            "graph_scope",
            "defender_scope",
        ],
    ),
    (
        "scope",
        &[
            "desired_state",
            "user_group_id",
            "device_group_name",
            "device_tag",
            "prune",
            "max_removals",
            "propagation_grace",
            "member_resync",
        ],
    ),
    (
        "schedule",
        &["reconcile_every", "priority_every", "incidents_every"],
    ),
    (
        "incidents",
        &[
            "post_comments",
            "lookback",
            "severities",
            "excluded_sources",
            "platforms",
            "overlap",
        ],
    ),
    ("alerts", &["webhook_url_file", "renotify_every"]),
    ("state", &["path"]),
    ("metrics", &["listen"]),
    ("log", &["format"]),
    (
        "limits",
        &[
            "graph_directory_writes_per_150s",
            "graph_directory_reads_per_10s",
            "graph_directory_write_batches_in_flight",
            "graph_security_per_minute",
            "defender_per_minute",
            "defender_per_hour",
        ],
    ),
    ("http", &["timeout", "max_attempts", "max_retry_time"]),
];

/// The built-in defaults, the lowest layer. Required settings (ids, tag, credential) have none.
const DEFAULTS: &str = r#"
[tenant]
cloud = "public"
assertion_alg = "PS256"

[scope]
desired_state = "/var/lib/dexscope/desired"
device_group_name = "Defender_Experts_Scoped_Coverage_Devices"
prune = true
max_removals = 50
propagation_grace = "2h"
member_resync = "24h"

[schedule]
reconcile_every = "5m"
priority_every = "15m"
incidents_every = "1m"

[incidents]
post_comments = true
lookback = "24h"
severities = ["high", "medium"]
excluded_sources = [
  "dataLossPrevention",
  "microsoftDataLossPrevention",
  "microsoftInsiderRiskManagement",
  "customDetection",
  "microsoftSentinel",
]
platforms = ["windows", "linux", "macos"]
overlap = "5m"

[alerts]
renotify_every = "6h"

[state]
path = "/var/lib/dexscope/state.db"

[metrics]
listen = "127.0.0.1:9464"

[log]
format = "text"

[limits]
graph_directory_writes_per_150s = 3000
graph_directory_reads_per_10s = 3500
graph_directory_write_batches_in_flight = 4
graph_security_per_minute = 150
defender_per_minute = 100
defender_per_hour = 1500

[http]
timeout = "30s"
max_attempts = 6
max_retry_time = "5m"
"#;

// ---------------------------------------------------------------------------------------------
// The typed configuration.

/// The whole validated configuration, passed explicitly to whatever needs it. `Debug` shows no
/// secret: every secret is a [`SecretString`].
#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub tenant: Tenant,
    pub endpoints: Endpoints,
    pub scope: Scope,
    pub schedule: Schedule,
    pub incidents: IncidentPolicy,
    pub alerts: Alerts,
    pub state: State,
    pub metrics: Metrics,
    pub log: Log,
    pub limits: Limits,
    pub http: Http,
    /// Things worth a warning that do not stop loading (for example the development secret).
    /// Logged by the command once telemetry is up, since the log format comes from this config.
    pub warnings: Vec<String>,
}

/// A GUID, stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guid(String);

impl Guid {
    pub fn parse(s: &str) -> Option<Self> {
        is_guid(s).then(|| Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub struct Tenant {
    pub tenant_id: Guid,
    pub client_id: Guid,
    pub cloud: Cloud,
    pub credential: Credential,
    pub assertion_alg: AssertionAlg,
}

/// The Microsoft cloud the tenant lives in; it presets the three endpoints and the token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Public,
    Gcc,
    GccHigh,
    Dod,
}

/// The endpoint roots and MDE token scope a cloud implies (api-facts A.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudPreset {
    pub login: &'static str,
    pub graph: &'static str,
    pub defender: &'static str,
    pub defender_scope: &'static str,
}

impl Cloud {
    pub const ALL: [Cloud; 4] = [Cloud::Public, Cloud::Gcc, Cloud::GccHigh, Cloud::Dod];

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::Gcc => "gcc",
            Cloud::GccHigh => "gcc-high",
            Cloud::Dod => "dod",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }

    pub fn preset(self) -> CloudPreset {
        match self {
            Cloud::Public => CloudPreset {
                login: "https://login.microsoftonline.com",
                graph: "https://graph.microsoft.com",
                defender: "https://api.security.microsoft.com",
                // The MDE app roles belong to WindowsDefenderATP, whose scope is the securitycenter
                // URI even when calling the api.security host (api-facts A.3).
                defender_scope: "https://api.securitycenter.microsoft.com/.default",
            },
            // GCC keeps the worldwide sign-in and Graph; only MDE moves (api-facts A.4).
            Cloud::Gcc => CloudPreset {
                login: "https://login.microsoftonline.com",
                graph: "https://graph.microsoft.com",
                defender: "https://api-gcc.securitycenter.microsoft.us",
                defender_scope: "https://api-gcc.securitycenter.microsoft.us/.default",
            },
            // Not confirmed: the MDE token scope in GCC High and DoD (api-facts A.4); scripts use
            // both api-gov and api hosts. `[endpoints] defender_scope` overrides it.
            Cloud::GccHigh => CloudPreset {
                login: "https://login.microsoftonline.us",
                graph: "https://graph.microsoft.us",
                defender: "https://api-gov.securitycenter.microsoft.us",
                defender_scope: "https://api-gov.securitycenter.microsoft.us/.default",
            },
            Cloud::Dod => CloudPreset {
                login: "https://login.microsoftonline.us",
                graph: "https://dod-graph.microsoft.us",
                defender: "https://api-gov.securitycenter.microsoft.us",
                defender_scope: "https://api-gov.securitycenter.microsoft.us/.default",
            },
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a certificate assertion is signed. Not confirmed whether RS256 with a SHA-1 `x5t` is still
/// accepted (api-facts A.2), so PS256 with `x5t#S256` is the default and RS256 the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    /// RSA-PSS with SHA-256, header `x5t#S256` (SHA-256 thumbprint).
    Ps256,
    /// RSA PKCS#1 v1.5 with SHA-256, header `x5t` (SHA-1 thumbprint).
    Rs256,
}

/// The one credential of the app registration.
#[derive(Debug)]
pub enum Credential {
    ClientSecret {
        secret: SecretString,
        from: SecretSource,
    },
    /// A PEM holding the certificate and its private key (so the whole PEM is a secret).
    Certificate { pem: SecretString, path: PathBuf },
}

/// Where a client secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    /// `DEXSCOPE_CLIENT_SECRET`: for development only.
    DevEnvironment,
}

/// Endpoint roots (each ends with `/`, so `Url::join("v1.0/…")` appends) and token scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub login: Url,
    pub graph: Url,
    pub defender: Url,
    /// `{graph origin}/.default`.
    pub graph_scope: String,
    /// The MDE (WindowsDefenderATP) scope of the cloud unless overridden.
    pub defender_scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// A `.toml` file or a directory of them; relative paths are relative to the config file.
    pub desired_state: PathBuf,
    pub user_group_id: ObjectId,
    pub device_group_name: String,
    pub device_tag: String,
    pub prune: bool,
    pub max_removals: u32,
    pub propagation_grace: Duration,
    /// How old the stored member snapshot (its UPNs) may get before a full read replaces it.
    pub member_resync: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub reconcile_every: Duration,
    pub priority_every: Duration,
    pub incidents_every: Duration,
}

/// Device platforms Defender Experts covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Windows,
    Linux,
    MacOs,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Windows => "windows",
            Platform::Linux => "linux",
            Platform::MacOs => "macos",
        }
    }
}

/// The incident policy knobs (DESIGN section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentPolicy {
    pub post_comments: bool,
    pub lookback: Duration,
    pub severities: Vec<Severity>,
    /// `serviceSource` / `detectionSource` wire values whose alerts do not make an incident
    /// eligible; compared case-insensitively.
    pub excluded_sources: Vec<String>,
    pub platforms: Vec<Platform>,
    /// How far before the stored cursor each poll starts again.
    pub overlap: Duration,
}

impl IncidentPolicy {
    /// True when an alert source (either `serviceSource` or `detectionSource`) is excluded.
    pub fn is_excluded_source(&self, wire: &str) -> bool {
        self.excluded_sources
            .iter()
            .any(|s| s.eq_ignore_ascii_case(wire))
    }
}

#[derive(Debug)]
pub struct Alerts {
    /// The webhook URL, validated (`https://` or loopback); a secret since it carries its token.
    pub webhook_url: Option<SecretString>,
    pub renotify_every: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Port 0 asks for an ephemeral port (logged at start).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Text,
    /// One JSON object per line for journald and SIEM.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
}

/// The most member-write `$batch` envelopes `[limits]` lets be in flight at once.
pub const MAX_WRITE_BATCHES_IN_FLIGHT: u32 = 16;

/// Client-side budgets per API surface, at the documented quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub graph_directory_writes_per_150s: u32,
    /// A resource-unit budget: the small-tenant figure by default, the safe one while the
    /// tenant's size is unknown; raise it to 5,000 (50–500 users) or 8,000 (more than 500).
    pub graph_directory_reads_per_10s: u32,
    /// Member-write `$batch` envelopes sent at once (1 to [`MAX_WRITE_BATCHES_IN_FLIGHT`]).
    /// The write window, not this, bounds the rate; more than one in flight hides the round
    /// trip, which otherwise paces the writes left over once a full window frees.
    pub graph_directory_write_batches_in_flight: u32,
    pub graph_security_per_minute: u32,
    pub defender_per_minute: u32,
    pub defender_per_hour: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_retry_time: Duration,
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Where a setting came from, for the error line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: String, line: Option<usize> },
    Env { var: String },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{path}:{line}"),
            Origin::File { path, line: None } => write!(f, "{path}"),
            Origin::Env { var } => write!(f, "environment {var}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// Why the configuration cannot be used. Each renders as one line (what, where, what to do) and
/// never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}: check the path, or pass --config PATH")]
    ReadFile { path: String, reason: String },
    #[error("config file {path}:{line}:{column}: invalid TOML: {message}: fix the syntax")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("unknown section [{section}] ({origin}): {hint}")]
    UnknownSection {
        section: String,
        origin: Origin,
        hint: String,
    },
    #[error("unknown key \"{key}\" in [{section}] ({origin}): {hint}")]
    UnknownKey {
        section: String,
        key: String,
        origin: Origin,
        hint: String,
    },
    #[error("environment variable {var} names no setting: {hint}")]
    EnvName { var: String, hint: String },
    #[error("[{section}] {key} is required but not set ({origin}): {todo}")]
    Missing {
        section: &'static str,
        key: &'static str,
        origin: Origin,
        todo: String,
    },
    #[error("[{section}] {key} {problem} ({origin}): {todo}")]
    Invalid {
        section: &'static str,
        key: &'static str,
        problem: String,
        origin: Origin,
        todo: String,
    },
    #[error("credential: {problem}: {todo}")]
    Credential { problem: String, todo: String },
    #[error("{what} file {path}: {problem}: {todo}")]
    SecretFile {
        what: &'static str,
        path: String,
        problem: String,
        todo: String,
    },
    #[error("cannot merge the config layers: {reason}: report this as a bug")]
    Merge { reason: String },
}

/// Makes any text safe for a one-line message: line breaks and other control characters become
/// spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn show_path(p: &Path) -> String {
    one_line(&p.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Loads the config for a command: the file at `path`, then `DEXSCOPE__SECTION__KEY` variables
/// from `env` (with `DEXSCOPE_CLIENT_SECRET` and `CREDENTIALS_DIRECTORY`). `main` passes
/// `std::env::vars()`; tests pass a literal list, so no test touches the process environment.
/// On error the caller prints `dexscope: <error>` and exits [`EXIT_CONFIG`] before any request.
pub fn load_for_command<I, K, V>(path: &Path, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    Config::load(path, env)
}

impl Config {
    /// See [`load_for_command`].
    pub fn load<I, K, V>(path: &Path, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: HashMap<String, String> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: show_path(path),
            reason: one_line(&e.to_string()),
        })?;
        let lines = check_file_keys(path, &text)?;
        let env_vars = check_env_keys(&env)?;
        let merged = merge(&text, &env)?;
        let reader = Reader {
            merged,
            path: show_path(path),
            lines,
            env_vars,
            secrets: Vec::new(),
        };
        build(reader, path, &env)
    }
}

/// Checks the file's syntax and keys; returns the line of every `section.key` for error lines.
fn check_file_keys(path: &Path, text: &str) -> Result<HashMap<String, usize>, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let line = line_of(offset);
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        ConfigError::Syntax {
            path: show_path(path),
            line,
            column: text[line_start..offset.min(text.len())].chars().count() + 1,
            message: one_line(e.message().trim()),
        }
    })?;
    let mut lines = HashMap::new();
    for (section, value) in table.get_ref() {
        let section_name = section.get_ref().as_ref();
        let origin = Origin::File {
            path: show_path(path),
            line: Some(line_of(section.span().start)),
        };
        let Some(keys) = section_keys(section_name) else {
            return Err(top_level_error(section_name, origin));
        };
        let toml::de::DeValue::Table(entries) = value.get_ref() else {
            // `scope = 3`: a known section name used as a key; typing reports it below.
            return Err(ConfigError::Invalid {
                section: schema_section(section_name),
                key: "(section)",
                problem: "must be a table".into(),
                origin,
                todo: format!("write it as [{section_name}] followed by its keys"),
            });
        };
        for (key, _) in entries {
            let key_name = key.get_ref().as_ref();
            let line = line_of(key.span().start);
            if !keys.contains(&key_name) {
                return Err(unknown_key(
                    section_name,
                    key_name,
                    Origin::File {
                        path: show_path(path),
                        line: Some(line),
                    },
                ));
            }
            lines.insert(format!("{section_name}.{key_name}"), line);
        }
    }
    Ok(lines)
}

/// Checks every `DEXSCOPE__…` variable names a known key; returns `section.key` → variable name.
fn check_env_keys(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let mut names = HashMap::new();
    // Sorted, so the first error reported does not depend on hash order.
    let mut vars: Vec<&String> = env.keys().collect();
    vars.sort();
    for var in vars {
        let lower = var.to_lowercase();
        let Some(rest) = lower.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let origin = Origin::Env { var: one_line(var) };
        let parts: Vec<&str> = rest.split("__").collect();
        match parts.as_slice() {
            [section, key] if section_keys(section).is_some() => {
                if !section_keys(section).unwrap_or_default().contains(key) {
                    return Err(unknown_key(section, key, origin));
                }
                names.insert(format!("{section}.{key}"), one_line(var));
            }
            [section] if section_keys(section).is_some() => {
                return Err(ConfigError::EnvName {
                    var: one_line(var),
                    hint: format!(
                        "it names the section [{section}], not a key: use DEXSCOPE__{}__<KEY>",
                        section.to_ascii_uppercase()
                    ),
                });
            }
            [section, keys @ ..] if section_keys(section).is_some() => {
                return Err(unknown_key(section, &keys.join("__"), origin));
            }
            [first, ..] => return Err(top_level_error(first, origin)),
            [] => unreachable!("split yields at least one part"),
        }
    }
    Ok(names)
}

fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .map(|(_, keys)| *keys)
}

fn schema_section(section: &str) -> &'static str {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .map_or("?", |(s, _)| s)
}

/// An unknown name at the top level: either an unknown section or a key outside its section.
fn top_level_error(name: &str, origin: Origin) -> ConfigError {
    if name == "client_secret" {
        return ConfigError::UnknownSection {
            section: one_line(name),
            origin,
            hint: format!(
                "a secret never lives in the config: write it to a file and set [tenant] \
                 client_secret_file (or {DEV_SECRET_VAR} for development)"
            ),
        };
    }
    let home = SCHEMA.iter().find(|(_, keys)| keys.contains(&name));
    let hint = match (home, closest(name, SCHEMA.iter().map(|(s, _)| *s))) {
        (Some((section, _)), _) => format!("\"{name}\" belongs inside [{section}]"),
        (None, Some(near)) => format!("did you mean [{near}]?"),
        (None, None) => format!("known sections are {}", section_list()),
    };
    ConfigError::UnknownSection {
        section: one_line(name),
        origin,
        hint,
    }
}

fn section_list() -> String {
    SCHEMA
        .iter()
        .map(|(s, _)| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key(section: &str, key: &str, origin: Origin) -> ConfigError {
    let keys = section_keys(section).unwrap_or_default();
    let elsewhere = SCHEMA
        .iter()
        .find(|(s, ks)| *s != section && ks.contains(&key));
    let hint = if section == "tenant" && key == "client_secret" {
        format!(
            "a secret never lives in the config: write it to a file and set client_secret_file \
             (or {DEV_SECRET_VAR} for development)"
        )
    } else if let Some(near) = closest(key, keys.iter().copied()) {
        format!("did you mean \"{near}\"?")
    } else if let Some((other, _)) = elsewhere {
        format!("\"{key}\" belongs in [{other}]")
    } else {
        format!("remove it; [{section}] accepts {}", keys.join(", "))
    };
    ConfigError::UnknownKey {
        section: section.to_string(),
        key: one_line(key),
        origin,
        hint,
    }
}

/// The known name nearest to `name`, if near enough to be a typo.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Merges defaults < file < environment with the `config` crate.
fn merge(
    text: &str,
    env: &HashMap<String, String>,
) -> Result<config::Map<String, Value>, ConfigError> {
    let source: config::Map<String, String> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, FileFormat::Toml))
        .add_source(config::File::from_str(text, FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("DEXSCOPE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(source)),
        )
        .build()
        .map_err(|e| ConfigError::Merge {
            reason: one_line(&e.to_string()),
        })?;
    config::Source::collect(&built).map_err(|e| ConfigError::Merge {
        reason: one_line(&e.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// Typing and validation.

/// Reads typed values out of the merged layers and says where a bad one came from.
struct Reader {
    merged: config::Map<String, Value>,
    path: String,
    lines: HashMap<String, usize>,
    env_vars: HashMap<String, String>,
    /// Secrets read so far: a quoted bad value that contains one is hidden.
    secrets: Vec<SecretString>,
}

type Sk = (&'static str, &'static str);

impl Reader {
    fn get(&self, (section, key): Sk) -> Option<&Value> {
        match &self.merged.get(section)?.kind {
            ValueKind::Table(t) => t.get(key).filter(|v| !matches!(v.kind, ValueKind::Nil)),
            _ => None,
        }
    }

    fn origin(&self, (section, key): Sk) -> Origin {
        let full = format!("{section}.{key}");
        let from_env = self
            .get((section, key))
            .is_some_and(|v| v.origin() == Some(ENV_ORIGIN));
        match (from_env, self.env_vars.get(&full), self.lines.get(&full)) {
            (true, Some(var), _) => Origin::Env { var: var.clone() },
            (_, _, Some(line)) => Origin::File {
                path: self.path.clone(),
                line: Some(*line),
            },
            _ => Origin::Default,
        }
    }

    /// A value for an error line, or a note that it is hidden because it holds a secret.
    fn quote(&self, value: &str) -> String {
        let holds_secret = self.secrets.iter().any(|s| {
            let s = s.expose_secret();
            s.len() >= 4 && value.contains(s)
        });
        if holds_secret {
            "(value hidden: it contains a configured secret)".into()
        } else {
            let cut: String = value.chars().take(80).collect();
            format!("{cut:?}")
        }
    }

    fn describe(&self, v: &Value) -> String {
        match &v.kind {
            ValueKind::String(s) => self.quote(s),
            ValueKind::Boolean(b) => b.to_string(),
            ValueKind::I64(i) => i.to_string(),
            ValueKind::I128(i) => i.to_string(),
            ValueKind::U64(i) => i.to_string(),
            ValueKind::U128(i) => i.to_string(),
            ValueKind::Float(x) => x.to_string(),
            ValueKind::Table(_) => "a table".into(),
            ValueKind::Array(_) => "a list".into(),
            ValueKind::Nil => "nothing".into(),
        }
    }

    fn invalid(&self, sk: Sk, problem: String, todo: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            section: sk.0,
            key: sk.1,
            problem,
            origin: self.origin(sk),
            todo: todo.into(),
        }
    }

    fn missing(&self, sk: Sk, todo: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            section: sk.0,
            key: sk.1,
            origin: Origin::File {
                path: self.path.clone(),
                line: None,
            },
            todo: todo.into(),
        }
    }

    /// A string setting; an empty string counts as unset (so the environment can clear an
    /// optional file setting).
    fn opt_str(&self, sk: Sk) -> Result<Option<String>, ConfigError> {
        match self.get(sk) {
            None => Ok(None),
            Some(v) => match &v.kind {
                ValueKind::String(s) if s.is_empty() => Ok(None),
                ValueKind::String(s) => Ok(Some(s.clone())),
                _ => Err(self.invalid(
                    sk,
                    format!("must be text, not {}", self.describe(v)),
                    "put the value in quotes",
                )),
            },
        }
    }

    fn req_str(&self, sk: Sk, todo: &str) -> Result<String, ConfigError> {
        self.opt_str(sk)?.ok_or_else(|| self.missing(sk, todo))
    }

    fn guid(&self, sk: Sk, what: &str) -> Result<Guid, ConfigError> {
        let todo =
            format!("set it to the {what}, a GUID like 00000000-0000-0000-0000-000000000000");
        let s = self.req_str(sk, &todo)?;
        Guid::parse(s.trim()).ok_or_else(|| {
            self.invalid(
                sk,
                format!("{} is not a GUID", self.quote(&s)),
                format!("write the {what} as 8-4-4-4-12 hex digits"),
            )
        })
    }

    fn boolean(&self, sk: Sk) -> Result<bool, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set true or false"))?;
        match &v.kind {
            ValueKind::Boolean(b) => Ok(*b),
            // Environment values are always text.
            ValueKind::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            ValueKind::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(self.invalid(
                sk,
                format!("must be true or false, not {}", self.describe(v)),
                "write true or false",
            )),
        }
    }

    fn uint(&self, sk: Sk, min: u32) -> Result<u32, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a whole number"))?;
        let n: Option<i128> = match &v.kind {
            ValueKind::I64(i) => Some(i128::from(*i)),
            ValueKind::I128(i) => Some(*i),
            ValueKind::U64(i) => Some(i128::from(*i)),
            ValueKind::String(s) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        n.and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= min)
            .ok_or_else(|| {
                self.invalid(
                    sk,
                    format!("must be a whole number ≥ {min}, not {}", self.describe(v)),
                    format!("write a whole number from {min} to {}", u32::MAX),
                )
            })
    }

    fn uint_at_most(&self, sk: Sk, min: u32, max: u32) -> Result<u32, ConfigError> {
        let n = self.uint(sk, 0)?;
        if !(min..=max).contains(&n) {
            let v = self.get(sk).expect("read just now");
            return Err(self.invalid(
                sk,
                format!("must be from {min} to {max}, not {}", self.describe(v)),
                format!("write a whole number from {min} to {max}"),
            ));
        }
        Ok(n)
    }

    fn duration(&self, sk: Sk, min: Duration) -> Result<Duration, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a duration like 90s, 5m, 2h or 1d"))?;
        let parsed = match &v.kind {
            ValueKind::String(s) => parse_duration(s),
            _ => None,
        };
        let todo = "write a whole number followed by s, m, h or d, like 90s, 5m, 2h or 1d";
        match parsed {
            None => Err(self.invalid(sk, format!("is not a duration: {}", self.describe(v)), todo)),
            Some(d) if d < min => Err(self.invalid(
                sk,
                format!(
                    "is {}, below the minimum of {}",
                    self.describe(v),
                    crate::text::duration(min)
                ),
                format!("use at least {}", crate::text::duration(min)),
            )),
            Some(d) => Ok(d),
        }
    }

    fn list(&self, sk: Sk) -> Result<Vec<String>, ConfigError> {
        let v = self
            .get(sk)
            .ok_or_else(|| self.missing(sk, "set a list of values"))?;
        let bad = || {
            self.invalid(
                sk,
                format!("must be a list of text values, not {}", self.describe(v)),
                "write a list like [\"a\", \"b\"] (comma-separated in the environment)",
            )
        };
        match &v.kind {
            ValueKind::Array(items) => items
                .iter()
                .map(|i| match &i.kind {
                    ValueKind::String(s) => Ok(s.trim().to_string()),
                    _ => Err(bad()),
                })
                .collect(),
            // A comma-separated list from the environment; an empty value is an empty list.
            ValueKind::String(s) if v.origin() == Some(ENV_ORIGIN) => Ok(s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()),
            _ => Err(bad()),
        }
    }

    /// An endpoint URL: `https://`, or `http://` on loopback only; kept as a root ending in `/`.
    fn endpoint(&self, sk: Sk, preset: &str) -> Result<Url, ConfigError> {
        let raw = self.opt_str(sk)?;
        let text = raw.as_deref().unwrap_or(preset);
        let mut url = Url::parse(text.trim()).map_err(|e| {
            self.invalid(
                sk,
                format!("{} is not a URL ({e})", self.quote(text)),
                "write an absolute URL like https://graph.microsoft.com",
            )
        })?;
        if let Err(problem) = check_transport(&url) {
            return Err(self.invalid(
                sk,
                format!("{} {problem}", self.quote(text)),
                "use https:// (http:// only for 127.0.0.0/8, [::1] or localhost)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(self.invalid(
                sk,
                format!(
                    "{} carries a query, fragment or user name",
                    self.quote(text)
                ),
                "give only scheme, host, port and an optional path",
            ));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }
}

/// `90s`, `5m`, `2h`, `1d`: a whole number and one unit.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(unit_at);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(factor).map(Duration::from_secs)
}

/// Only `https://` travels off the machine; plain `http://` is allowed to loopback (tests, the
/// simulated tenant). The returned text never contains the URL.
fn check_transport(url: &Url) -> Result<(), &'static str> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => return Err("uses http:// to a non-loopback host"),
        _ => return Err("has an unsupported scheme"),
    }
    if url.host().is_none() {
        return Err("has no host");
    }
    Ok(())
}

/// Loopback means `127.0.0.0/8`, `[::1]` and `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn build(mut r: Reader, path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let config_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let creds_dir = env
        .get(CREDENTIALS_DIRECTORY_VAR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let lookup = SecretLookup {
        creds_dir,
        config_dir: config_dir.clone(),
    };
    let mut warnings = Vec::new();

    // Secrets first: any later error that quotes a value checks it against them.
    if let Some(dev) = env.get(DEV_SECRET_VAR).filter(|s| !s.is_empty()) {
        r.secrets.push(SecretString::from(dev.clone()));
    }
    let credential = read_credential(&r, &lookup, env, &mut warnings)?;
    match &credential {
        Credential::ClientSecret { secret, .. } => r.secrets.push(secret.clone()),
        Credential::Certificate { pem, .. } => r.secrets.push(pem.clone()),
    }
    let webhook_url = match r.opt_str(("alerts", "webhook_url_file"))? {
        None => None,
        Some(name) => {
            let file = lookup.find(&name);
            let url = read_secret_file("alert webhook URL", &file)?;
            check_webhook(&url, &file)?;
            r.secrets.push(url.clone());
            Some(url)
        }
    };

    let tenant = read_tenant(&r, credential)?;
    let endpoints = read_endpoints(&r, tenant.cloud)?;
    let scope = read_scope(&r, &config_dir, &mut warnings)?;
    let incidents = read_incidents(&r, &mut warnings)?;
    let one_second = Duration::from_secs(1);
    let schedule = Schedule {
        reconcile_every: r.duration(("schedule", "reconcile_every"), one_second)?,
        priority_every: r.duration(("schedule", "priority_every"), one_second)?,
        incidents_every: r.duration(("schedule", "incidents_every"), one_second)?,
    };
    let alerts = Alerts {
        webhook_url,
        renotify_every: r.duration(("alerts", "renotify_every"), one_second)?,
    };
    let state = State {
        path: relative_to(
            &config_dir,
            &r.req_str(("state", "path"), "set the state database path")?,
        ),
    };
    let metrics = read_metrics(&r)?;
    let log = read_log(&r)?;
    let limits = Limits {
        graph_directory_writes_per_150s: r
            .uint(("limits", "graph_directory_writes_per_150s"), 1)?,
        graph_directory_reads_per_10s: r.uint(("limits", "graph_directory_reads_per_10s"), 1)?,
        graph_directory_write_batches_in_flight: r.uint_at_most(
            ("limits", "graph_directory_write_batches_in_flight"),
            1,
            MAX_WRITE_BATCHES_IN_FLIGHT,
        )?,
        graph_security_per_minute: r.uint(("limits", "graph_security_per_minute"), 1)?,
        defender_per_minute: r.uint(("limits", "defender_per_minute"), 1)?,
        defender_per_hour: r.uint(("limits", "defender_per_hour"), 1)?,
    };
    let http = Http {
        timeout: r.duration(("http", "timeout"), one_second)?,
        max_attempts: r.uint(("http", "max_attempts"), 1)?,
        max_retry_time: r.duration(("http", "max_retry_time"), one_second)?,
    };
    Ok(Config {
        path: path.to_path_buf(),
        tenant,
        endpoints,
        scope,
        schedule,
        incidents,
        alerts,
        state,
        metrics,
        log,
        limits,
        http,
        warnings,
    })
}

fn relative_to(dir: &Path, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() { p } else { dir.join(p) }
}

/// Where relative secret file names are looked for: `$CREDENTIALS_DIRECTORY` (systemd
/// `LoadCredential=`) first, then the config file's directory.
struct SecretLookup {
    creds_dir: Option<PathBuf>,
    config_dir: PathBuf,
}

impl SecretLookup {
    fn find(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Some(dir) = &self.creds_dir {
            let candidate = dir.join(p);
            if candidate.exists() {
                return candidate;
            }
        }
        self.config_dir.join(p)
    }
}

/// Reads a secret file into a `SecretString`, trailing newline trimmed. Errors name the file,
/// never its content.
fn read_secret_file(what: &'static str, path: &Path) -> Result<SecretString, ConfigError> {
    let err = |problem: String, todo: &str| ConfigError::SecretFile {
        what,
        path: show_path(path),
        problem,
        todo: todo.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|e| {
        let todo = if e.kind() == std::io::ErrorKind::NotFound {
            "create it, or fix the file name (relative names are looked up in \
             $CREDENTIALS_DIRECTORY, then next to the config file)"
        } else {
            "make it readable by the dexscope user"
        };
        err(
            format!("cannot be read ({})", one_line(&e.to_string())),
            todo,
        )
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| err("is not UTF-8 text".into(), "write the secret as plain text"))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        return Err(err("is empty".into(), "write the secret into it"));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

fn read_credential(
    r: &Reader,
    lookup: &SecretLookup,
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Credential, ConfigError> {
    let secret_file = r.opt_str(("tenant", "client_secret_file"))?;
    let cert_file = r.opt_str(("tenant", "certificate_file"))?;
    let dev = env.get(DEV_SECRET_VAR).filter(|s| !s.is_empty());
    let credential = match (secret_file, cert_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Credential {
                problem: format!(
                    "two credentials configured: [tenant] client_secret_file ({}) and \
                     certificate_file ({})",
                    r.origin(("tenant", "client_secret_file")),
                    r.origin(("tenant", "certificate_file"))
                ),
                todo: "keep exactly one".into(),
            });
        }
        (Some(name), None) => {
            let path = lookup.find(&name);
            Credential::ClientSecret {
                secret: read_secret_file("client secret", &path)?,
                from: SecretSource::File(path),
            }
        }
        (None, Some(name)) => {
            let path = lookup.find(&name);
            let pem = read_secret_file("certificate", &path)?;
            check_pem(&pem, &path)?;
            Credential::Certificate { pem, path }
        }
        (None, None) => match dev {
            Some(secret) => {
                warnings.push(format!(
                    "using the client secret from {DEV_SECRET_VAR}: this is for development \
                     only; set [tenant] client_secret_file or certificate_file in production"
                ));
                return Ok(Credential::ClientSecret {
                    secret: SecretString::from(secret.clone()),
                    from: SecretSource::DevEnvironment,
                });
            }
            None => {
                return Err(ConfigError::Credential {
                    problem: "no credential configured".into(),
                    todo: format!(
                        "set [tenant] client_secret_file or certificate_file (or \
                         {DEV_SECRET_VAR} for development)"
                    ),
                });
            }
        },
    };
    if dev.is_some() {
        warnings.push(format!(
            "{DEV_SECRET_VAR} is ignored because a credential file is configured"
        ));
    }
    Ok(credential)
}

/// The PEM must hold a certificate and an unencrypted private key; the auth layer parses them.
fn check_pem(pem: &SecretString, path: &Path) -> Result<(), ConfigError> {
    let text = pem.expose_secret();
    let err = |problem: &str, todo: &str| ConfigError::SecretFile {
        what: "certificate",
        path: show_path(path),
        problem: problem.into(),
        todo: todo.into(),
    };
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(err(
            "holds an encrypted private key",
            "store the key unencrypted and protect the file instead (systemd LoadCredential)",
        ));
    }
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(err(
            "holds no PEM certificate",
            "put the certificate and its private key in one PEM file",
        ));
    }
    let has_key = text.contains("-----BEGIN PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----");
    if !has_key {
        return Err(err(
            "holds no RSA private key",
            "put the certificate and its private key in one PEM file",
        ));
    }
    Ok(())
}

fn check_webhook(url: &SecretString, path: &Path) -> Result<(), ConfigError> {
    let err = |problem: String| ConfigError::SecretFile {
        what: "alert webhook URL",
        path: show_path(path),
        problem,
        todo: "write one https:// URL into it (http:// only for loopback)".into(),
    };
    // Neither the URL nor its parse error text is echoed: the URL carries its own credential.
    let parsed = Url::parse(url.expose_secret().trim())
        .map_err(|e| err(format!("does not hold a valid URL ({e})")))?;
    check_transport(&parsed).map_err(|problem| err(format!("holds a URL that {problem}")))
}

fn read_tenant(r: &Reader, credential: Credential) -> Result<Tenant, ConfigError> {
    let tenant_id = r.guid(("tenant", "tenant_id"), "directory (tenant) id")?;
    let client_id = r.guid(("tenant", "client_id"), "application (client) id")?;
    let cloud_text = r.req_str(("tenant", "cloud"), "set public, gcc, gcc-high or dod")?;
    let cloud = Cloud::parse(cloud_text.trim()).ok_or_else(|| {
        r.invalid(
            ("tenant", "cloud"),
            format!("{} is not a known cloud", r.quote(&cloud_text)),
            "write public, gcc, gcc-high or dod",
        )
    })?;
    let alg_text = r.req_str(("tenant", "assertion_alg"), "set PS256 or RS256")?;
    let assertion_alg = match alg_text.trim().to_ascii_uppercase().as_str() {
        "PS256" => AssertionAlg::Ps256,
        "RS256" => AssertionAlg::Rs256,
        _ => {
            return Err(r.invalid(
                ("tenant", "assertion_alg"),
                format!("{} is not a supported algorithm", r.quote(&alg_text)),
                "write PS256 (default) or RS256",
            ));
        }
    };
    Ok(Tenant {
        tenant_id,
        client_id,
        cloud,
        credential,
        assertion_alg,
    })
}

fn read_endpoints(r: &Reader, cloud: Cloud) -> Result<Endpoints, ConfigError> {
    let preset = cloud.preset();
    let login = r.endpoint(("endpoints", "login"), preset.login)?;
    let graph = r.endpoint(("endpoints", "graph"), preset.graph)?;
    let defender = r.endpoint(("endpoints", "defender"), preset.defender)?;
    // A token's scope names the resource (the API's app id URI), not the address it is called
    // at: an `[endpoints]` override (a proxy, the simulated tenant) keeps the cloud's scope.
    let graph_scope = read_scope_uri(r, "graph_scope", format!("{}/.default", preset.graph))?;
    let defender_scope = read_scope_uri(r, "defender_scope", preset.defender_scope.to_string())?;
    Ok(Endpoints {
        login,
        graph,
        defender,
        graph_scope,
        defender_scope,
    })
}

/// `[endpoints] <key>`: a resource scope override, `https://…/.default`.
fn read_scope_uri(r: &Reader, key: &'static str, preset: String) -> Result<String, ConfigError> {
    let Some(s) = r.opt_str(("endpoints", key))? else {
        return Ok(preset);
    };
    let s = s.trim().to_string();
    let ok = s.ends_with("/.default") && Url::parse(&s).is_ok_and(|u| check_transport(&u).is_ok());
    if !ok {
        return Err(r.invalid(
            ("endpoints", key),
            format!("{} is not a resource scope", r.quote(&s)),
            "write the resource URI followed by /.default, like \
             https://api.securitycenter.microsoft.com/.default",
        ));
    }
    Ok(s)
}

fn read_scope(
    r: &Reader,
    config_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Scope, ConfigError> {
    let desired = r.req_str(
        ("scope", "desired_state"),
        "set the desired-state file or directory",
    )?;
    let group_text = r.req_str(
        ("scope", "user_group_id"),
        "set the object id of Defender_Experts_Scoped_Coverage_Users, a GUID",
    )?;
    let user_group_id = ObjectId::parse(group_text.trim()).map_err(|_| {
        r.invalid(
            ("scope", "user_group_id"),
            format!("{} is not a GUID", r.quote(&group_text)),
            "write the group's object id as 8-4-4-4-12 hex digits",
        )
    })?;
    let device_group_name = r.req_str(
        ("scope", "device_group_name"),
        "set the MDE device group name",
    )?;
    if device_group_name != REQUIRED_DEVICE_GROUP {
        warnings.push(format!(
            "[scope] device_group_name is not {REQUIRED_DEVICE_GROUP}: Defender Experts only \
             honours the predefined group name"
        ));
    }
    let tag = r.req_str(
        ("scope", "device_tag"),
        "set the machine tag the scoped device group's rule matches",
    )?;
    if let Some(problem) = device_tag_problem(&tag) {
        return Err(r.invalid(
            ("scope", "device_tag"),
            format!("{} {problem}", r.quote(&tag)),
            "use at most 200 characters without ( ) , or surrounding spaces",
        ));
    }
    Ok(Scope {
        desired_state: relative_to(config_dir, &desired),
        user_group_id,
        device_group_name,
        device_tag: tag,
        prune: r.boolean(("scope", "prune"))?,
        max_removals: r.uint(("scope", "max_removals"), 0)?,
        propagation_grace: r.duration(("scope", "propagation_grace"), Duration::ZERO)?,
        member_resync: r.duration(("scope", "member_resync"), Duration::ZERO)?,
    })
}

/// Tags with `(`, `)` or `,` break portal filtering; registry tags are at most 200 characters.
pub fn device_tag_problem(tag: &str) -> Option<&'static str> {
    if tag.trim().is_empty() {
        Some("is empty")
    } else if tag.chars().count() > 200 {
        Some("is longer than 200 characters")
    } else if tag.contains(['(', ')', ',']) {
        Some("contains ( ) or ,")
    } else if tag.trim() != tag || tag.chars().any(char::is_control) {
        Some("has surrounding spaces or control characters")
    } else {
        None
    }
}

fn read_incidents(r: &Reader, warnings: &mut Vec<String>) -> Result<IncidentPolicy, ConfigError> {
    let sk = ("incidents", "severities");
    let severities = r
        .list(sk)?
        .iter()
        .map(|s| match Severity::parse(s) {
            v @ (Severity::Informational | Severity::Low | Severity::Medium | Severity::High) => {
                Ok(v)
            }
            _ => Err(r.invalid(
                sk,
                format!("holds {}, not a severity", r.quote(s)),
                "use high, medium, low or informational",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sk = ("incidents", "platforms");
    let platforms = r
        .list(sk)?
        .iter()
        .map(|p| match p.to_ascii_lowercase().as_str() {
            "windows" => Ok(Platform::Windows),
            "linux" => Ok(Platform::Linux),
            "macos" => Ok(Platform::MacOs),
            _ => Err(r.invalid(
                sk,
                format!(
                    "holds {}, which Defender Experts does not cover",
                    r.quote(p)
                ),
                "use windows, linux or macos",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let excluded_sources = r.list(("incidents", "excluded_sources"))?;
    for s in &excluded_sources {
        use crate::model::{DetectionSource, ServiceSource};
        let known = !matches!(ServiceSource::parse(s), ServiceSource::Other(_))
            || !matches!(DetectionSource::parse(s), DetectionSource::Other(_));
        if !known {
            // Newer services appear before this list knows them, so this warns, not fails.
            warnings.push(format!(
                "[incidents] excluded_sources holds {}, which is no serviceSource or \
                 detectionSource value known to this version: check the spelling",
                r.quote(s)
            ));
        }
    }
    Ok(IncidentPolicy {
        post_comments: r.boolean(("incidents", "post_comments"))?,
        lookback: r.duration(("incidents", "lookback"), Duration::from_secs(1))?,
        severities,
        excluded_sources,
        platforms,
        overlap: r.duration(("incidents", "overlap"), Duration::ZERO)?,
    })
}

fn read_metrics(r: &Reader) -> Result<Metrics, ConfigError> {
    let sk = ("metrics", "listen");
    let text = r.req_str(sk, "set an address like 127.0.0.1:9464")?;
    let listen = text.trim().parse::<SocketAddr>().map_err(|_| {
        r.invalid(
            sk,
            format!("{} is not an IP address and port", r.quote(&text)),
            "write it like 127.0.0.1:9464 or [::1]:9464 (port 0 picks a free port)",
        )
    })?;
    Ok(Metrics { listen })
}

fn read_log(r: &Reader) -> Result<Log, ConfigError> {
    let sk = ("log", "format");
    let text = r.req_str(sk, "set text or json")?;
    let format = match text.trim().to_ascii_lowercase().as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => {
            return Err(r.invalid(
                sk,
                format!("{} is not a log format", r.quote(&text)),
                "write text or json",
            ));
        }
    };
    Ok(Log { format })
}

/// Every `(section, key)` the config accepts, in the documented order.
pub fn known_keys() -> impl Iterator<Item = (&'static str, &'static str)> {
    SCHEMA
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |key| (*section, *key)))
}

/// The built-in defaults as TOML (for documentation tests).
pub fn defaults_toml() -> &'static str {
    DEFAULTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("2h", Some(7_200)),
            ("1d", Some(86_400)),
            ("0s", Some(0)),
            (" 3m ", Some(180)),
            ("5", None),
            ("m", None),
            ("5 m", None),
            ("1h30m", None),
            ("-5s", None),
            ("5M", None),
            ("1.5h", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_duration(input).map(|d| d.as_secs()),
                *want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn typo_hints() {
        let cases: &[(&str, Option<&str>)] = &[
            ("max_removal", Some("max_removals")),
            ("devic_tag", Some("device_tag")),
            ("prun", Some("prune")),
            ("colour", None),
        ];
        let keys = section_keys("scope").unwrap();
        for (input, want) in cases {
            assert_eq!(
                closest(input, keys.iter().copied()),
                *want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn device_tags() {
        let long = "x".repeat(201);
        let cases: &[(&str, bool)] = &[
            ("DEX-Scoped", true),
            (&long[..200], true),
            (&long, false),
            ("", false),
            ("  ", false),
            ("a,b", false),
            ("a(b)", false),
            (" lead", false),
        ];
        for (tag, ok) in cases {
            assert_eq!(device_tag_problem(tag).is_none(), *ok, "tag {tag:?}");
        }
    }

    #[test]
    fn defaults_name_only_known_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defaults.toml");
        std::fs::write(&path, DEFAULTS).unwrap();
        check_file_keys(&path, DEFAULTS).unwrap();
    }
}
