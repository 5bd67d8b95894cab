//! The `verdict` and `poll` commands: one incident judged (live or offline, optionally posted),
//! and one incident pass (or the incident loop alone) run from the command line.

use std::io::Write;
use std::path::PathBuf;

use chrono::Utc;

use crate::config::{Config, REQUIRED_DEVICE_GROUP};
use crate::desired::{self, DeviceKey, Diagnostics, UserKey};
use crate::graph;
use crate::incidents::comment;
use crate::incidents::poll::{
    self, Handled, IncidentFailure, PollError, PollReport, PollSettings, post_verdict,
};
use crate::incidents::verdict::{self, DesiredDevice, DesiredUser, Scope};
use crate::model::Incident;
use crate::state::{State, StateError};
use crate::tenant::{Tenant, TenantError};

/// How `verdict` and `poll` print their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `dexscope verdict`: evaluate one incident and print the verdict and the comment.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["incident", "file"])))]
pub struct VerdictArgs {
    /// The incident to read from the tenant (live).
    #[arg(long, value_name = "ID")]
    pub incident: Option<String>,
    /// An exported Graph incident (JSON with `alerts` expanded), or a list of them as
    /// `GET /security/incidents?$expand=alerts` returns it (`{"value": [...]}`): every
    /// incident in it is judged.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Judge against this desired state (a .toml file or a directory) instead of the live
    /// scope; with --file no config and no network are needed.
    #[arg(long, value_name = "PATH", conflicts_with = "post")]
    pub desired: Option<PathBuf>,
    /// Post the comment, unless a comment with the same verdict marker is already there.
    #[arg(long)]
    pub post: bool,
    /// How the result is printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

impl VerdictArgs {
    /// Whether the command needs the config: everything but `--file` with `--desired`.
    pub fn needs_config(&self) -> bool {
        !(self.file.is_some() && self.desired.is_some())
    }
}

/// `dexscope poll`: the incident pass without the rest of the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct PollArgs {
    /// Run one pass and exit (otherwise pass every `[schedule] incidents_every` until Ctrl-C).
    #[arg(long)]
    pub once: bool,
    /// How each pass's report is printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// What failed in `verdict` or `poll`; one line each, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot read incident file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("incident file {path} is not JSON: {detail}")]
    FileNotJson { path: PathBuf, detail: String },
    #[error(
        "incident file {path}{at} is an incident of the older Microsoft 365 Defender API \
         (incidentId, entities), not of Microsoft Graph; export it with \
         GET /security/incidents/{{id}}?$expand=alerts"
    )]
    FileLegacyShape { path: PathBuf, at: String },
    #[error(
        "incident {id} in {path}{at} has no `alerts`, so its impacted assets are unknown, not \
         none; export it with $expand=alerts"
    )]
    FileNoAlerts {
        path: PathBuf,
        at: String,
        id: String,
    },
    #[error("incident file {path}{at} is not a Graph incident: {detail}")]
    ParseFile {
        path: PathBuf,
        at: String,
        detail: String,
    },
    #[error("incident file {path} holds an empty incident list (`value` is empty)")]
    FileEmptyList { path: PathBuf },
    #[error("{0}; fix the desired state or run `dexscope validate` on it")]
    Desired(#[source] Diagnostics),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Poll(Box<PollError>),
    #[error(transparent)]
    Graph(Box<graph::Error>),
    #[error(transparent)]
    Post(Box<IncidentFailure>),
    #[error(
        "a live verdict needs the config; pass --config, or judge a --file offline with --desired"
    )]
    NoConfig,
    #[error(
        "the desired state has {count} selector(s) (`group` or `where` entries), which cannot be \
         expanded offline: pass --config to expand them against the tenant, or judge against a \
         desired state of single entries"
    )]
    SelectorsOffline { count: usize },
    #[error("writing the output failed: {0}")]
    Write(#[from] std::io::Error),
}

impl From<PollError> for CommandError {
    fn from(e: PollError) -> Self {
        CommandError::Poll(Box::new(e))
    }
}

impl From<graph::Error> for CommandError {
    fn from(e: graph::Error) -> Self {
        CommandError::Graph(Box::new(e))
    }
}

impl From<IncidentFailure> for CommandError {
    fn from(e: IncidentFailure) -> Self {
        CommandError::Post(Box::new(e))
    }
}

/// Runs `verdict`. `config` is `None` only when [`VerdictArgs::needs_config`] is false.
pub async fn verdict(
    args: &VerdictArgs,
    config: Option<&Config>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let now = Utc::now();
    let policy = config
        .map(|c| poll::policy_from_config(&c.incidents))
        .unwrap_or_default();
    let live = match config {
        Some(config) => Some((
            Tenant::from_config(config)?,
            State::open(&config.state.path)?,
            PollSettings::from_config(config),
        )),
        None => None,
    };
    let incidents = match (&args.file, &live, &args.incident) {
        (Some(path), _, _) => read_incident_file(path)?,
        (None, Some((tenant, _, _)), Some(id)) => vec![tenant.graph.get_incident(id).await?],
        _ => return Err(CommandError::NoConfig),
    };
    let scope = match (&args.desired, &live) {
        (Some(path), _) => {
            let group = config.map_or(REQUIRED_DEVICE_GROUP, |c| &c.scope.device_group_name);
            let tenant = live.as_ref().map(|(tenant, _, _)| tenant);
            offline_scope(path, group, now.date_naive(), tenant).await?
        }
        (None, Some((tenant, state, settings))) => {
            poll::read_scope(tenant, state, settings, now).await?
        }
        (None, None) => return Err(CommandError::NoConfig),
    };
    for (i, mut incident) in incidents.into_iter().enumerate() {
        let v = verdict::verdict(&incident, &scope, &policy, now);
        let mut posted = None;
        if args.post
            && let Some((tenant, state, _)) = &live
            && comment::comment(&v, &incident).is_some()
        {
            if args.file.is_some() {
                // The file's comments may be stale: exactly-once rests on the tenant's.
                incident.comments = tenant.graph.get_incident(&incident.id).await?.comments;
            }
            posted = Some(post_verdict(tenant, state, &incident, &v, true, now).await?);
        }
        if i > 0 && args.format == OutputFormat::Text {
            writeln!(out)?;
        }
        print_verdict(out, args.format, &v, &incident, posted)?;
    }
    Ok(())
}

/// Reads one incident, or every incident of a `{"value": [...]}` list, as Graph returns them.
/// Each way a file can be wrong has its own message: only a missing `alerts` is fixed by
/// exporting with `$expand=alerts`.
fn read_incident_file(path: &PathBuf) -> Result<Vec<Incident>, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|source| CommandError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CommandError::FileNotJson {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    match value.get("value").and_then(|v| v.as_array()) {
        Some(list) if list.is_empty() => Err(CommandError::FileEmptyList { path: path.clone() }),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!(" (incident {} of {} in its list)", i + 1, list.len());
                read_one(path, at, v)
            })
            .collect(),
        None => Ok(vec![read_one(path, String::new(), &value)?]),
    }
}

fn read_one(
    path: &std::path::Path,
    at: String,
    v: &serde_json::Value,
) -> Result<Incident, CommandError> {
    let id = v.get("id").and_then(|id| id.as_str());
    let legacy = (id.is_none() && v.get("incidentId").is_some())
        || v.get("alerts")
            .and_then(|a| a.as_array())
            .is_some_and(|alerts| alerts.iter().any(|a| a.get("entities").is_some()));
    if legacy {
        return Err(CommandError::FileLegacyShape {
            path: path.to_path_buf(),
            at,
        });
    }
    if let Some(id) = id
        && v.get("alerts").is_none()
    {
        // An incident read without `$expand=alerts` has no `alerts` key: unknown, not empty.
        return Err(CommandError::FileNoAlerts {
            path: path.to_path_buf(),
            at,
            id: id.to_owned(),
        });
    }
    graph::parse_incident(v).map_err(|e| CommandError::ParseFile {
        path: path.to_path_buf(),
        at,
        detail: e.detail,
    })
}

/// The scope a desired state describes. Its selectors are expanded live through `tenant`;
/// without one (no config) they cannot be, and judging without them would call covered
/// identities uncovered, so that is an error saying so.
async fn offline_scope(
    path: &PathBuf,
    device_group: &str,
    today: chrono::NaiveDate,
    tenant: Option<&Tenant>,
) -> Result<Scope, CommandError> {
    let loaded = desired::load(std::slice::from_ref(path), today, desired::Mode::Runtime)
        .map_err(CommandError::Desired)?;
    let expanded = match (loaded.state.selectors.len(), tenant) {
        (0, _) => None,
        (n, None) => return Err(CommandError::SelectorsOffline { count: n }),
        (_, Some(t)) => {
            let clients = crate::selectors::Clients {
                graph: &t.graph,
                defender: &t.defender,
            };
            Some(crate::selectors::expand_selectors(clients, None, false, &loaded.state).await)
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let users: Vec<DesiredUser> = loaded
        .state
        .users
        .iter()
        .map(|u| match &u.key {
            UserKey::Upn(upn) => DesiredUser::Upn(upn.clone()),
            UserKey::Id(id) => DesiredUser::Id(id.clone()),
        })
        .chain(
            expanded
                .iter()
                .flat_map(|e| e.users.iter())
                .map(|u| DesiredUser::Id(u.id.clone())),
        )
        .collect();
    let devices: Vec<DesiredDevice> = loaded
        .state
        .devices
        .iter()
        .map(|d| match &d.key {
            DeviceKey::Name(dns) => DesiredDevice::Dns(dns.clone()),
            DeviceKey::Machine(id) => DesiredDevice::Machine(id.clone()),
            DeviceKey::AadDevice(aad) => DesiredDevice::AadDevice(aad.clone()),
        })
        .chain(
            expanded
                .iter()
                .flat_map(|e| e.devices.iter())
                .map(|d| DesiredDevice::Machine(d.id.clone())),
        )
        .collect();
    Ok(Scope::offline(device_group, &users, &devices))
}

fn print_verdict(
    out: &mut impl Write,
    format: OutputFormat,
    v: &verdict::Verdict,
    incident: &Incident,
    posted: Option<Handled>,
) -> Result<(), CommandError> {
    let text = comment::render(v, incident);
    let has_comment = comment::comment(v, incident).is_some();
    match format {
        OutputFormat::Json => {
            let mut json = serde_json::to_value(v).map_err(std::io::Error::other)?;
            json["comment"] = if has_comment {
                text.into()
            } else {
                serde_json::Value::Null
            };
            json["posted"] = serde_json::to_value(posted).map_err(std::io::Error::other)?;
            writeln!(out, "{json}")?;
        }
        OutputFormat::Text if !has_comment => writeln!(out, "{text}")?,
        OutputFormat::Text => {
            writeln!(
                out,
                "verdict: {} (incident {}, digest {})",
                v.outcome.code(),
                comment::sanitise(&incident.id, 40),
                v.digest
            )?;
            match posted {
                Some(Handled::Posted) => writeln!(out, "posted: yes")?,
                Some(Handled::AlreadyPosted) => writeln!(
                    out,
                    "posted: no, a comment with this marker is already there"
                )?,
                _ => {}
            }
            writeln!(out, "\n{text}")?;
        }
    }
    Ok(())
}

/// Runs `poll`: one pass with `--once`, otherwise a pass every `[schedule] incidents_every`
/// until Ctrl-C. A failed pass is logged and left to the next tick.
pub async fn poll(
    args: &PollArgs,
    config: &Config,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let tenant = Tenant::from_config(config)?;
    let state = State::open(&config.state.path)?;
    let settings = PollSettings::from_config(config);
    if args.once {
        let report = poll::poll_once(&tenant, &state, &settings, Utc::now()).await?;
        return print_report(out, args.format, &report);
    }
    let mut tick = tokio::time::interval(config.schedule.incidents_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        match poll::poll_once(&tenant, &state, &settings, Utc::now()).await {
            Ok(report) => print_report(out, args.format, &report)?,
            Err(e) => tracing::error!(error = %e, "incident pass failed"),
        }
    }
}

fn print_report(
    out: &mut impl Write,
    format: OutputFormat,
    r: &PollReport,
) -> Result<(), CommandError> {
    if format == OutputFormat::Json {
        let json = serde_json::to_string(r).map_err(std::io::Error::other)?;
        writeln!(out, "{json}")?;
        return Ok(());
    }
    let cursor = r
        .cursor
        .map_or_else(|| "none".to_owned(), |c| c.to_rfc3339());
    writeln!(
        out,
        "incidents: {} listed, {} posted, {} already posted, {} logged only, {} redirected, \
         {} malformed, {} gone, {} failed; cursor {cursor}",
        r.listed,
        r.count(Handled::Posted),
        r.count(Handled::AlreadyPosted),
        r.count(Handled::LoggedOnly),
        r.count(Handled::Redirected),
        r.count(Handled::Malformed),
        r.count(Handled::Gone),
        r.failed.len(),
    )?;
    for (id, error) in &r.failed {
        writeln!(out, "failed: incident {id}: {error}")?;
    }
    for f in &r.priority_findings {
        let problem = match &f.finding.problem {
            verdict::PriorityProblem::Outranked { group } => format!("outranked by group {group}"),
            verdict::PriorityProblem::TagNotMatched => {
                "tag not matched by the group rule".to_owned()
            }
        };
        writeln!(
            out,
            "priority: incident {} device {}: {problem}",
            f.incident_id, f.finding.device_id
        )?;
    }
    Ok(())
}
