//! The typed, validated configuration and its parts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::model::{ObjectId, Severity, is_guid};

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

/// The endpoint roots and MDE token scope a cloud implies, as Microsoft lists them for each
/// national cloud.
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

    pub(super) fn parse(s: &str) -> Option<Self> {
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
                // URI even when calling the api.security host.
                defender_scope: "https://api.securitycenter.microsoft.com/.default",
            },
            // GCC keeps the worldwide sign-in and Graph; only MDE has a host of its own.
            Cloud::Gcc => CloudPreset {
                login: "https://login.microsoftonline.com",
                graph: "https://graph.microsoft.com",
                defender: "https://api-gcc.securitycenter.microsoft.us",
                defender_scope: "https://api-gcc.securitycenter.microsoft.us/.default",
            },
            // Not confirmed: the public documentation does not settle the MDE token scope in GCC
            // High and DoD; scripts use both api-gov and api hosts. `[endpoints] defender_scope`
            // overrides it.
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

/// Signature algorithm and thumbprint header of the certificate assertion. The current Entra
/// documentation shows PS256 with `x5t#S256`, so that is the default; whether Entra still
/// accepts the older documented RS256 with a SHA-1 `x5t` is not confirmed, so it is kept as the
/// fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlg {
    /// RSA-PSS with SHA-256, header `x5t#S256` (SHA-256 thumbprint).
    #[default]
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
    /// `[scope.git]`: the desired state fetched from git; `desired_state` is then unused.
    pub git: Option<ScopeGit>,
}

/// `[scope.git]`: where the desired state is fetched from, and when failing fetches alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGit {
    pub source: super::GitSource,
    /// How long fetches may fail before `desired_state_stale` fires; the last good state is
    /// applied meanwhile (and after).
    pub stale_after: Duration,
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

/// The incident policy knobs: which incidents get a verdict, and how the poll reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentPolicy {
    pub post_comments: bool,
    pub lookback: Duration,
    pub severities: Vec<Severity>,
    /// `serviceSource` / `detectionSource` wire values whose alerts do not make an incident
    /// eligible; compared case-insensitively.
    pub excluded_sources: Vec<String>,
    pub platforms: Vec<Platform>,
    /// How late an update may show up in the incident list: at most once per `overlap` a poll
    /// sweeps back this far before the cursor of the last sweep (the others list from the
    /// cursor).
    pub overlap: Duration,
    /// The `assignedTo` value of an incident Defender Experts took on.
    pub pickup_assignee: String,
    /// How long after its creation an IN SCOPE incident may stay untaken by Defender Experts
    /// before `coverage_gap` fires.
    pub pickup_within: Duration,
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
    /// How long one reconcile pass may wait out throttling before it ends as "not converged:
    /// throttled"; the daemon caps it at `reconcile_every`.
    pub pass_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_retry_time: Duration,
}
