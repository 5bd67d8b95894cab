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
//!
//! The parts: `types` (the typed `Config`), `error` (`ConfigError` and where a setting came
//! from), `load` (file syntax, unknown keys, layer merge), `reader` (typed values, durations,
//! URLs), `credentials` (secret files, the credential, the webhook) and `validate` (each section
//! typed and checked into the `Config`).

mod credentials;
mod error;
mod git;
mod load;
mod reader;
mod secret_file;
mod types;
mod validate;

pub use error::{ConfigError, Origin};
pub use git::{
    DEFAULT_FETCH_EVERY, GitSource, GitSourceSettings, InvalidGitSource, MIN_FETCH_EVERY, Verify,
};
pub use load::load_for_command;
pub use reader::{is_loopback, parse_duration};
pub use types::*;
pub use validate::device_tag_problem;

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
    // A table inside [scope]: the desired state fetched from git instead of `desired_state`.
    (
        "scope.git",
        &[
            "url",
            "branch",
            "path",
            "fetch_every",
            "stale_after",
            "credential_file",
            "verify",
            "allowed_signers",
            "known_hosts",
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
            "pickup_assignee",
            "pickup_within",
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
            "pass_deadline",
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
pickup_assignee = "Defender Experts"
# An analyst queue normally takes minutes to an hour: two hours pages no one for a busy hour
# and still finds an untaken IN SCOPE incident within the same shift.
pickup_within = "2h"

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
pass_deadline = "30m"

[http]
timeout = "30s"
max_attempts = 6
max_retry_time = "5m"
"#;

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
