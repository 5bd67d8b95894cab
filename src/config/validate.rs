//! Typing and validation: each section read from the merged layers into its part of `Config`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::credentials::{SecretLookup, check_webhook, read_credential, read_secret_file};
use super::reader::{Reader, check_transport};
use super::{
    Alerts, AssertionAlg, CREDENTIALS_DIRECTORY_VAR, Cloud, Config, ConfigError, Credential,
    DEV_SECRET_VAR, Endpoints, Http, IncidentPolicy, Limits, Log, LogFormat,
    MAX_WRITE_BATCHES_IN_FLIGHT, Metrics, Platform, REQUIRED_DEVICE_GROUP, Schedule, Scope, State,
    Tenant,
};
use crate::model::{ObjectId, Severity};

pub(super) fn build(
    mut r: Reader,
    path: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
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
            let url = read_secret_file("alert webhook URL", &file, &lookup)?;
            check_webhook(&url, &file)?;
            r.secrets.push(url.clone());
            Some(url)
        }
    };

    let tenant = read_tenant(&r, credential)?;
    let endpoints = read_endpoints(&r, tenant.cloud)?;
    let mut scope = read_scope(&r, &config_dir, &mut warnings)?;
    scope.git = super::git::read_scope_git(&r, &lookup)?;
    let incidents = read_incidents(&r, &mut warnings)?;
    let one_second = Duration::from_secs(1);
    let schedule = Schedule {
        reconcile_every: r.duration(("schedule", "reconcile_every"), one_second)?,
        priority_every: r.duration(("schedule", "priority_every"), one_second)?,
        incidents_every: r.duration(("schedule", "incidents_every"), one_second)?,
    };
    check_pickup_within(&r, &incidents, &schedule)?;
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
        pass_deadline: r.duration(("limits", "pass_deadline"), one_second)?,
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
        git: None,
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

/// `[incidents] pickup_within` against the poll interval.
fn check_pickup_within(
    r: &Reader,
    incidents: &IncidentPolicy,
    schedule: &Schedule,
) -> Result<(), ConfigError> {
    // A pickup is seen by the first incident pass after it: a bound shorter than two poll
    // intervals would call an incident untaken that a pass simply had not read yet.
    let at_least = schedule.incidents_every.saturating_mul(2);
    if incidents.pickup_within < at_least {
        let text = crate::text::duration;
        return Err(r.invalid(
            ("incidents", "pickup_within"),
            format!(
                "is {}, less than twice [schedule] incidents_every ({}): a pickup is only seen \
                 by the next incident pass",
                text(incidents.pickup_within),
                text(schedule.incidents_every)
            ),
            format!("use at least {}", text(at_least)),
        ));
    }
    Ok(())
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
        pickup_assignee: r.req_str(
            ("incidents", "pickup_assignee"),
            "set it to the assignedTo value Defender Experts use, \"Defender Experts\"",
        )?,
        pickup_within: r.duration(("incidents", "pickup_within"), Duration::from_secs(60))?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
