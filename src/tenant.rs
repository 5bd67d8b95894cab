//! The connection to one tenant, built once from the config: the token cache, the HTTP client
//! with its limiters, and the Graph and Defender clients. Every command and pass that talks to
//! the tenant starts here, so quotas and tokens are shared by everything in the process.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::auth::{self, TokenCache};
use crate::config::{self, Config};
use crate::defender::DefenderClient;
use crate::graph::GraphClient;
use crate::http::{self, Quotas, Rate};

/// Why the tenant connection could not be set up (before any request was sent).
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("cannot set up the token endpoint: {0}")]
    Token(#[source] auth::TokenError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[source] http::Error),
}

/// Everything needed to talk to the tenant. Cheap to clone.
#[derive(Clone)]
pub struct Tenant {
    pub tokens: Arc<TokenCache>,
    pub http: http::Client,
    pub graph: GraphClient,
    pub defender: DefenderClient,
}

impl Tenant {
    pub fn from_config(config: &Config) -> Result<Self, TenantError> {
        let settings = http_settings(config);
        let reqwest = http::Client::build_reqwest(&settings).map_err(TenantError::Http)?;
        let tokens = Arc::new(
            TokenCache::new(token_settings(config)?, reqwest.clone())
                .map_err(TenantError::Token)?,
        );
        let http = http::Client::with_reqwest(settings, tokens.clone(), reqwest);
        Ok(Self {
            graph: GraphClient::new(http.clone()),
            defender: DefenderClient::new(http.clone()),
            tokens,
            http,
        })
    }
}

/// The token settings the config describes.
pub fn token_settings(config: &Config) -> Result<auth::TokenSettings, TenantError> {
    let tenant = &config.tenant;
    let token_url = auth::token_endpoint(&config.endpoints.login, &tenant.tenant_id.to_string())
        .map_err(TenantError::Token)?;
    let credential = match &tenant.credential {
        config::Credential::ClientSecret { secret, .. } => auth::Credential::Secret(secret.clone()),
        config::Credential::Certificate { pem, .. } => auth::Credential::Certificate {
            pem: pem.clone(),
            alg: tenant.assertion_alg,
        },
    };
    let mut settings = auth::TokenSettings::new(
        token_url,
        tenant.client_id.to_string(),
        credential,
        config.endpoints.graph_scope.clone(),
        config.endpoints.defender_scope.clone(),
    );
    settings.request_timeout = Some(config.http.timeout);
    Ok(settings)
}

/// The HTTP settings (roots, timeouts, retry figures, quotas) the config describes.
pub fn http_settings(config: &Config) -> http::Settings {
    let mut settings = http::Settings::new(
        config.endpoints.graph.clone(),
        config.endpoints.defender.clone(),
    );
    // The token endpoint and the webhook share the client, so they decide plain http too.
    let webhook_loopback = config.alerts.webhook_url.as_ref().is_none_or(|url| {
        url::Url::parse(url.expose_secret().trim()).is_ok_and(|u| config::is_loopback(&u))
    });
    settings.loopback_only &= config::is_loopback(&config.endpoints.login) && webhook_loopback;
    settings.request_timeout = config.http.timeout;
    settings.retry.max_attempts = config.http.max_attempts;
    settings.retry.max_retry_time = config.http.max_retry_time;
    let l = &config.limits;
    settings.quotas = Quotas {
        graph_reads: Rate::new(l.graph_directory_reads_per_10s, Duration::from_secs(10)),
        graph_writes: Rate::new(l.graph_directory_writes_per_150s, Duration::from_secs(150)),
        graph_security: Rate::new(l.graph_security_per_minute, Duration::from_secs(60)),
        defender_per_minute: Rate::new(l.defender_per_minute, Duration::from_secs(60)),
        defender_per_hour: Rate::new(l.defender_per_hour, Duration::from_secs(3_600)),
    };
    settings.write_batches_in_flight = l.graph_directory_write_batches_in_flight as usize;
    settings.pass_deadline = l.pass_deadline;
    settings
}
