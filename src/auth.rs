//! Token sources (client secret, certificate assertion), the per-resource token cache and the
//! roles self-check.
//!
//! Tokens come from the Microsoft identity platform's client-credentials grant, one token per
//! resource (a token request may only name scopes of one resource). The request itself is built
//! and parsed by the `oauth2` crate; [`TokenHttp`] carries it over the project's one `reqwest`
//! client and classifies what came back. [`TokenCache`] keeps one token per resource, refreshes it
//! ahead of expiry with one refresh in flight per resource, and is the [`BearerSource`] the HTTP
//! layer uses.
//!
//! Secrets (client secret, private key, assertion, token) stay in [`SecretString`] or in the
//! `oauth2` secret types, whose `Debug` is redacted; no message or log line of this module
//! contains one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use futures::future::BoxFuture;
use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenResponse,
    BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::time::Instant;
use url::Url;

/// The two resources dexscope needs a token for: one token per resource (a token request may
/// only name scopes of one resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Microsoft Graph: `https://graph.microsoft.com/.default`.
    Graph,
    /// Defender for Endpoint: `https://api.securitycenter.microsoft.com/.default`.
    Defender,
}

impl Resource {
    /// Both resources, in the order the self-check reports them.
    pub const ALL: [Resource; 2] = [Resource::Graph, Resource::Defender];

    /// The name an operator knows the API by.
    pub fn display_name(self) -> &'static str {
        match self {
            Resource::Graph => "Microsoft Graph",
            Resource::Defender => "Defender for Endpoint",
        }
    }

    /// The application permissions (app roles) dexscope needs on this resource.
    pub fn required_roles(self) -> &'static [&'static str] {
        match self {
            Resource::Graph => &[
                "GroupMember.ReadWrite.All",
                "User.Read.All",
                "SecurityIncident.ReadWrite.All",
            ],
            Resource::Defender => &["Machine.ReadWrite.All"],
        }
    }

    fn index(self) -> usize {
        match self {
            Resource::Graph => 0,
            Resource::Defender => 1,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Why no token could be had. The message never contains a secret, a token or an assertion.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    pub message: String,
    /// True when asking again cannot help (bad secret, unknown tenant, missing consent).
    pub permanent: bool,
}

impl TokenError {
    fn permanent_error(message: impl Into<String>) -> Self {
        TokenError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Where the HTTP layer gets bearer tokens from. The seam exists because `http` must not care
/// how a token was obtained (secret or certificate, real endpoint or the simulated tenant).
pub trait BearerSource: Send + Sync {
    /// A valid token for `resource`. With `force_refresh` (after a 401) the cached token is
    /// dropped and a new one requested; concurrent callers share one refresh.
    fn bearer(
        &self,
        resource: Resource,
        force_refresh: bool,
    ) -> BoxFuture<'_, Result<SecretString, TokenError>>;
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// Signature algorithm and thumbprint header of the certificate assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlg {
    /// `alg=PS256` with `x5t#S256` (SHA-256 thumbprint): what the current Entra docs show.
    #[default]
    Ps256,
    /// `alg=RS256` with `x5t` (SHA-1 thumbprint): the older documented form, kept as a fallback
    /// because whether Entra still accepts it is not confirmed.
    Rs256,
}

/// How dexscope proves its identity to the token endpoint.
#[derive(Clone)]
pub enum Credential {
    /// A client secret, sent in the request body.
    Secret(SecretString),
    /// A PEM file's content: the certificate followed by its unencrypted RSA private key
    /// (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`). Each token request carries a freshly
    /// signed client assertion.
    Certificate {
        pem: SecretString,
        alg: AssertionAlg,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret([redacted])"),
            Credential::Certificate { alg, .. } => f
                .debug_struct("Certificate")
                .field("pem", &"[redacted]")
                .field("alg", alg)
                .finish(),
        }
    }
}

/// Everything the token cache needs; the integrator maps the validated config onto it.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `{login}/{tenant}/oauth2/v2.0/token`; see [`token_endpoint`].
    pub token_url: Url,
    pub client_id: String,
    pub credential: Credential,
    /// `{graph_root}/.default`.
    pub graph_scope: String,
    /// `https://api.securitycenter.microsoft.com/.default` in the public cloud.
    pub defender_scope: String,
    /// How long before `expires_in` a token is replaced.
    pub refresh_ahead: Duration,
    /// Per-attempt time limit of a token request; `None` leaves it to the client's own limits.
    pub request_timeout: Option<Duration>,
    /// Retries of a transient failure (5xx, 429, network) within one token request.
    pub max_retries: usize,
}

impl TokenSettings {
    /// Settings with the defaults: refresh 5 minutes ahead, 30 s per attempt, 3 retries.
    pub fn new(
        token_url: Url,
        client_id: impl Into<String>,
        credential: Credential,
        graph_scope: impl Into<String>,
        defender_scope: impl Into<String>,
    ) -> Self {
        TokenSettings {
            token_url,
            client_id: client_id.into(),
            credential,
            graph_scope: graph_scope.into(),
            defender_scope: defender_scope.into(),
            refresh_ahead: Duration::from_secs(5 * 60),
            request_timeout: Some(Duration::from_secs(30)),
            max_retries: 3,
        }
    }

    fn scope(&self, resource: Resource) -> &str {
        match resource {
            Resource::Graph => &self.graph_scope,
            Resource::Defender => &self.defender_scope,
        }
    }
}

/// The v2.0 token endpoint of `tenant` under the login host `login`
/// (`https://login.microsoftonline.com` → `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`).
pub fn token_endpoint(login: &Url, tenant: &str) -> Result<Url, TokenError> {
    let mut url = login.clone();
    url.path_segments_mut()
        .map_err(|()| {
            TokenError::permanent_error(format!(
                "login endpoint {login} cannot carry a path — set endpoints.login to an https:// URL"
            ))
        })?
        .pop_if_empty()
        .extend([tenant, "oauth2", "v2.0", "token"]);
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------------------------

/// After a failed refresh-ahead while the old token is still valid, wait this long (at most)
/// before asking the endpoint again, so a struggling endpoint is not hit by every caller.
const REFRESH_RETRY_PAUSE: Duration = Duration::from_secs(30);
/// A token endpoint asking for a longer pause than this is not waited for inside one request:
/// the error goes up and the next pass tries again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Assumed lifetime when the endpoint leaves out `expires_in` (Entra always sends it).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ASSERTION_LIFETIME: u64 = 10 * 60;

type EntraClient = oauth2::Client<
    EntraErrorResponse,
    BasicTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

struct Cached {
    token: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
    generation: u64,
}

/// One resource's cache. The async mutex is what makes "one refresh in flight": the caller
/// holding it fetches, the others wait and then find the fresh token.
#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<Option<Cached>>,
    /// Bumped every time a new token is stored; lets a forced refresh see that someone else
    /// already replaced the token while it waited.
    generation: AtomicU64,
}

/// One bearer token per resource, cached and refreshed ahead of expiry.
pub struct TokenCache {
    settings: TokenSettings,
    http: reqwest::Client,
    oauth: EntraClient,
    signer: Option<AssertionSigner>,
    slots: [Slot; 2],
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache over `http`. Fails (permanently) when the certificate file cannot be used, so a
    /// bad credential is reported at start rather than at the first request.
    pub fn new(settings: TokenSettings, http: reqwest::Client) -> Result<Self, TokenError> {
        let mut oauth: EntraClient = oauth2::Client::new(ClientId::new(settings.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(settings.token_url.clone()))
            .set_auth_type(AuthType::RequestBody);
        let signer = match &settings.credential {
            Credential::Secret(secret) => {
                oauth =
                    oauth.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
                None
            }
            Credential::Certificate { pem, alg } => {
                Some(AssertionSigner::from_pem(pem, *alg).map_err(|e| {
                    TokenError::permanent_error(format!(
                        "cannot use the certificate in tenant.certificate_file: {e} — put the \
                         certificate and its unencrypted RSA private key in one PEM file"
                    ))
                })?)
            }
        };
        Ok(TokenCache {
            settings,
            http,
            oauth,
            signer,
            slots: Default::default(),
        })
    }

    /// A valid token for `resource`; see [`BearerSource::bearer`]. A forced refresh is skipped
    /// when another caller stored a new token after this call began (one refresh per 401 wave).
    pub async fn token(
        &self,
        resource: Resource,
        force_refresh: bool,
    ) -> Result<SecretString, TokenError> {
        let slot = &self.slots[resource.index()];
        let seen = slot.generation.load(Ordering::Acquire);
        self.token_inner(resource, |cached| {
            force_refresh && cached.generation <= seen
        })
        .await
    }

    /// Like a forced refresh after a 401, but exact: a new token is fetched only when the
    /// cached one is still `rejected`; a token someone else already fetched is reused.
    pub async fn token_replacing(
        &self,
        resource: Resource,
        rejected: &SecretString,
    ) -> Result<SecretString, TokenError> {
        self.token_inner(resource, |cached| {
            cached.token.expose_secret() == rejected.expose_secret()
        })
        .await
    }

    /// Fetch both tokens and check each one's roles. One entry per resource, Graph first.
    pub async fn self_check(&self) -> Vec<(Resource, Result<RolesReport, TokenError>)> {
        let mut out = Vec::with_capacity(Resource::ALL.len());
        for resource in Resource::ALL {
            let report = self
                .token(resource, false)
                .await
                .map(|token| check_roles(resource, &token));
            out.push((resource, report));
        }
        out
    }

    async fn token_inner(
        &self,
        resource: Resource,
        discard: impl FnOnce(&Cached) -> bool,
    ) -> Result<SecretString, TokenError> {
        let slot = &self.slots[resource.index()];
        let mut cached = slot.state.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref() {
            if discard(c) {
                // The holder saw it rejected: never hand it out again, even if the refresh fails.
                *cached = None;
            } else if now < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        match self.fetch(resource).await {
            Ok(fresh) => {
                let generation = slot.generation.fetch_add(1, Ordering::AcqRel) + 1;
                let token = fresh.token.clone();
                *cached = Some(Cached {
                    token: fresh.token,
                    expires_at: fresh.expires_at,
                    refresh_at: fresh.refresh_at,
                    generation,
                });
                Ok(token)
            }
            Err(err) => {
                let now = Instant::now();
                if let Some(c) = cached.as_mut()
                    && now < c.expires_at
                {
                    // A refresh ahead of expiry failed but the old token still works: keep
                    // using it and try again a little later.
                    tracing::warn!(resource = %resource, error = %err, "token refresh failed; the current token is still valid and stays in use");
                    c.refresh_at = now + REFRESH_RETRY_PAUSE.min((c.expires_at - now) / 2);
                    return Ok(c.token.clone());
                }
                *cached = None;
                Err(err.into_token_error(resource))
            }
        }
    }

    /// One token request, retried on transient failures with backoff and `Retry-After`.
    async fn fetch(&self, resource: Resource) -> Result<Fetched, FetchError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.settings.max_retries)
            .with_jitter();
        (|| self.fetch_once(resource))
            .retry(backoff)
            .when(FetchError::is_transient)
            .adjust(|err, backoff| match (backoff, err.retry_after()) {
                (None, _) => None,
                (Some(_), Some(wait)) if wait > MAX_RETRY_AFTER => None,
                (Some(backoff), wait) => Some(wait.unwrap_or(backoff)),
            })
            .notify(|err, wait| {
                tracing::warn!(resource = %resource, error = %err, retry_in_ms = wait.as_millis() as u64, "token request failed; retrying");
            })
            .await
    }

    async fn fetch_once(&self, resource: Resource) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        let mut request = self
            .oauth
            .exchange_client_credentials()
            .add_scope(Scope::new(self.settings.scope(resource).to_owned()));
        // Kept in a secret wrapper until the last moment; `oauth2` copies it into the form body.
        let assertion = match &self.signer {
            Some(signer) => Some(
                signer
                    .sign(
                        &self.settings.client_id,
                        self.settings.token_url.as_str(),
                        SystemTime::now(),
                    )
                    .map_err(|e| FetchError::Assertion(e.to_string()))?,
            ),
            None => None,
        };
        if let Some(assertion) = &assertion {
            request = request
                .add_extra_param("client_assertion_type", ASSERTION_TYPE)
                .add_extra_param("client_assertion", assertion.expose_secret().to_owned());
        }
        let http = TokenHttp {
            client: &self.http,
            timeout: self.settings.request_timeout,
            resource,
        };
        let response = request.request_async(&http).await;
        let response = response.map_err(FetchError::from_oauth)?;
        if *response.token_type() != BasicTokenType::Bearer {
            return Err(FetchError::Unreadable(
                "the token endpoint issued a token that is not a bearer token".into(),
            ));
        }
        let token = response.access_token().secret();
        if token.is_empty() {
            return Err(FetchError::Unreadable(
                "the token endpoint answered with an empty access token".into(),
            ));
        }
        let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
        // Replace `refresh_ahead` before expiry, but never sooner than half-way through a
        // short-lived token, or every call would refresh.
        let usable = lifetime
            .saturating_sub(self.settings.refresh_ahead)
            .max(lifetime / 2);
        Ok(Fetched {
            token: SecretString::from(token.clone()),
            expires_at: started + lifetime,
            refresh_at: started + usable,
        })
    }
}

impl BearerSource for TokenCache {
    fn bearer(
        &self,
        resource: Resource,
        force_refresh: bool,
    ) -> BoxFuture<'_, Result<SecretString, TokenError>> {
        Box::pin(self.token(resource, force_refresh))
    }
}

struct Fetched {
    token: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
}

// ---------------------------------------------------------------------------------------------
// Token endpoint transport and error classification
// ---------------------------------------------------------------------------------------------

/// The project's `reqwest` client as `oauth2`'s HTTP client for one token request. It logs the
/// exchange (never the body) and turns 429 and 5xx into transport errors, so only definite
/// answers (200, other 4xx) reach `oauth2`'s parser.
struct TokenHttp<'a> {
    client: &'a reqwest::Client,
    timeout: Option<Duration>,
    resource: Resource,
}

/// A token request that did not produce a definite answer. Never carries a body.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("could not build the token request: {0}")]
    Build(String),
    #[error("{0}")]
    Network(String),
    #[error("the token endpoint answered {status}")]
    Status {
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
    },
}

/// The JSON body of an Entra token error: `{"error", "error_description", "error_codes",
/// "trace_id", "correlation_id", ...}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct EntraErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

impl fmt::Display for EntraErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl oauth2::ErrorResponse for EntraErrorResponse {}

/// Only the correlation fields of an error body, for the log line.
#[derive(Deserialize, Default)]
struct ErrorIds {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

impl<'c> AsyncHttpClient<'c> for TokenHttp<'_> {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let started = Instant::now();
            let mut request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Build(e.to_string()))?;
            *request.timeout_mut() = self.timeout;
            let result = self.client.execute(request).await;
            let response = match result {
                Ok(response) => response,
                Err(e) => {
                    let err = TransportError::Network(describe_reqwest(&e, self.timeout));
                    tracing::debug!(resource = %self.resource, duration_ms = started.elapsed().as_millis() as u64, error = %err, "token request");
                    return Err(err);
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| {
                TransportError::Network(format!(
                    "reading the token response failed: {}",
                    describe_reqwest(&e, self.timeout)
                ))
            })?;
            let ids = if status.is_success() {
                ErrorIds::default()
            } else {
                serde_json::from_slice::<ErrorIds>(&body).unwrap_or_default()
            };
            tracing::debug!(
                resource = %self.resource,
                status = status.as_u16(),
                duration_ms = started.elapsed().as_millis() as u64,
                error = ids.error.as_deref(),
                correlation_id = ids.correlation_id.as_deref(),
                trace_id = ids.trace_id.as_deref(),
                "token request"
            );
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                return Err(TransportError::Status {
                    status,
                    retry_after,
                });
            }
            let mut out = oauth2::http::Response::builder().status(status);
            if let Some(h) = out.headers_mut() {
                *h = headers;
            }
            out.body(body.to_vec())
                .map_err(|e| TransportError::Build(e.to_string()))
        })
    }
}

fn describe_reqwest(e: &reqwest::Error, timeout: Option<Duration>) -> String {
    // The innermost cause ("connection refused", "dns error") is what an operator can act on.
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        match timeout {
            Some(t) => format!("no answer within {}", crate::text::duration(t)),
            None => "the request timed out".into(),
        }
    } else if e.is_connect() {
        format!("could not connect: {source}")
    } else {
        format!("request failed: {source}")
    }
}

/// Parse `Retry-After`: whole or fractional seconds, or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Why one token request failed, before it is phrased for the operator.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The endpoint gave a definite "no" (4xx with an OAuth error body).
    #[error("{}", refusal_text(.0))]
    Refused(EntraErrorResponse),
    #[error("{0}")]
    Transport(TransportError),
    #[error("{0}")]
    Unreadable(String),
    #[error("could not sign the client assertion: {0}")]
    Assertion(String),
}

impl FetchError {
    fn from_oauth(err: RequestTokenError<TransportError, EntraErrorResponse>) -> Self {
        match err {
            RequestTokenError::ServerResponse(body) => FetchError::Refused(body),
            RequestTokenError::Request(transport) => FetchError::Transport(transport),
            // The body is deliberately not kept: on a 200 it may hold a token.
            RequestTokenError::Parse(e, _body) => FetchError::Unreadable(format!(
                "the token endpoint's answer could not be read ({})",
                e.path()
            )),
            RequestTokenError::Other(text) => FetchError::Unreadable(text),
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport(TransportError::Build(_)) => false,
            FetchError::Transport(_) => true,
            FetchError::Refused(body) => is_transient_refusal(body),
            FetchError::Unreadable(_) | FetchError::Assertion(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Transport(TransportError::Status { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }

    fn into_token_error(self, resource: Resource) -> TokenError {
        match &self {
            FetchError::Refused(body) => {
                let (text, remedy, permanent) = classify_refusal(body);
                TokenError {
                    message: format!("token request for {resource} refused: {text} — {remedy}"),
                    permanent,
                }
            }
            FetchError::Transport(TransportError::Status {
                status,
                retry_after,
            }) => {
                let wait = retry_after
                    .map(|d| format!(" (asked to wait {})", crate::text::duration(d)))
                    .unwrap_or_default();
                TokenError {
                    message: format!(
                        "token request for {resource} failed: the token endpoint answered \
                         {status}{wait} — it is retried on the next pass; check the Entra service \
                         health if this persists"
                    ),
                    permanent: false,
                }
            }
            FetchError::Transport(e) => TokenError {
                message: format!(
                    "token request for {resource} failed: {e} — check network access to the login \
                     endpoint (endpoints.login)"
                ),
                permanent: false,
            },
            FetchError::Unreadable(e) => TokenError {
                message: format!(
                    "token request for {resource} failed: {e} — check endpoints.login and tenant.tenant_id"
                ),
                permanent: false,
            },
            FetchError::Assertion(_) => TokenError {
                message: format!(
                    "token request for {resource} failed: {self} — check tenant.certificate_file"
                ),
                permanent: true,
            },
        }
    }
}

/// Entra says "try later" with these OAuth error codes even on a 4xx.
fn is_transient_refusal(body: &EntraErrorResponse) -> bool {
    matches!(
        body.error.as_str(),
        "temporarily_unavailable" | "server_error"
    )
}

/// The `AADSTS…` code, or the OAuth error when there is none.
fn refusal_code(body: &EntraErrorResponse) -> String {
    match body.error_codes.first() {
        Some(code) => format!("AADSTS{code}"),
        None => body.error.clone(),
    }
}

fn refusal_text(body: &EntraErrorResponse) -> String {
    classify_refusal(body).0
}

/// `(one-line reason with code, what to do, permanent)` for a token endpoint refusal.
fn classify_refusal(body: &EntraErrorResponse) -> (String, &'static str, bool) {
    let code = refusal_code(body);
    let known = body.error_codes.iter().find_map(|c| known_code(*c));
    let (reason, remedy) = match known {
        Some((reason, remedy)) => (reason.to_owned(), remedy),
        None => (
            first_sentence(body.error_description.as_deref().unwrap_or(&body.error)),
            "check the app registration, the credential and tenant.tenant_id",
        ),
    };
    let permanent = !is_transient_refusal(body);
    let text = if reason.is_empty() || reason == code {
        code
    } else {
        format!("{code} {reason}")
    };
    (text, remedy, permanent)
}

/// Short reasons and remedies for the AADSTS codes an operator of this daemon meets.
fn known_code(code: u64) -> Option<(&'static str, &'static str)> {
    Some(match code {
        7000215 => (
            "invalid client secret",
            "check the secret in the client secret file (tenant.client_secret_file): it must be the secret's value, not its id",
        ),
        7000222 => (
            "client secret expired",
            "create a new secret in Entra ID › App registrations › Certificates & secrets and update tenant.client_secret_file",
        ),
        700016 => (
            "application not found in the tenant",
            "check tenant.client_id and tenant.tenant_id, and that the app is consented in this tenant",
        ),
        90002 => (
            "tenant not found",
            "check tenant.tenant_id and tenant.cloud",
        ),
        900023 => (
            "invalid tenant identifier",
            "set tenant.tenant_id to the tenant's GUID or a verified domain",
        ),
        70011 => (
            "invalid scope",
            "check tenant.cloud and the endpoint overrides: the scope must be the API's /.default",
        ),
        500011 => (
            "resource not found in the tenant",
            "check tenant.cloud and the endpoint overrides: the API behind the scope is not registered in this tenant",
        ),
        7000229 => (
            "the application has no service principal in the tenant",
            "grant admin consent for the app in Entra ID › App registrations › API permissions",
        ),
        7000112 => (
            "application is disabled",
            "enable the app's enterprise application in Entra ID",
        ),
        700027 => (
            "client assertion signature not accepted",
            "upload the certificate in tenant.certificate_file to the app registration (Certificates & secrets)",
        ),
        700024 => (
            "client assertion outside its valid time range",
            "check that the system clock is synchronised",
        ),
        7000218 => (
            "request carries no client credential",
            "configure tenant.client_secret_file or tenant.certificate_file",
        ),
        53003 => (
            "blocked by conditional access",
            "exclude the app from the conditional access policy that blocks it",
        ),
        _ => return None,
    })
}

/// The first sentence of an Entra description without the `AADSTSnnn:` prefix and without the
/// trace, correlation and timestamp lines that follow it.
fn first_sentence(description: &str) -> String {
    let line = description.lines().next().unwrap_or("").trim();
    let line = match line.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("AADSTS") => rest,
        _ => line,
    };
    let sentence = match line.find(". ") {
        Some(end) => &line[..end],
        None => line.trim_end_matches('.'),
    };
    let mut out: String = sentence.chars().take(160).collect();
    if let Some(first) = out.chars().next()
        && first.is_uppercase()
        && !out.chars().nth(1).is_some_and(char::is_uppercase)
    {
        out.replace_range(..first.len_utf8(), &first.to_lowercase().to_string());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Certificate assertion
// ---------------------------------------------------------------------------------------------

/// Signs client assertions with the certificate's private key.
struct AssertionSigner {
    key: jsonwebtoken::EncodingKey,
    alg: AssertionAlg,
    /// base64url thumbprint of the certificate DER (SHA-256 or SHA-1 by `alg`).
    thumbprint: String,
}

/// Why the certificate file cannot be used. Never quotes the key material.
#[derive(Debug, thiserror::Error)]
enum CertError {
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no PRIVATE KEY or RSA PRIVATE KEY block found")]
    NoKey,
    #[error("the private key is encrypted; decrypt it first")]
    EncryptedKey,
    #[error("the {0} block is not valid base64")]
    BadBase64(String),
    #[error("the private key is not a usable RSA key")]
    NotRsa,
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("signing failed")]
    Sign,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl AssertionSigner {
    fn from_pem(pem: &SecretString, alg: AssertionAlg) -> Result<Self, CertError> {
        let blocks = pem_blocks(pem.expose_secret())?;
        if blocks
            .iter()
            .any(|(label, _)| label == "ENCRYPTED PRIVATE KEY")
        {
            return Err(CertError::EncryptedKey);
        }
        // The first certificate is the leaf; any further ones are its chain.
        let cert = blocks
            .iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der)
            .ok_or(CertError::NoCertificate)?;
        let (label, key_der) = blocks
            .iter()
            .find(|(label, _)| label == "PRIVATE KEY" || label == "RSA PRIVATE KEY")
            .ok_or(CertError::NoKey)?;
        let public_key = rsa_public_key(label, key_der)?;
        // The certificate's SubjectPublicKeyInfo embeds the PKCS#1 public key verbatim, so a
        // byte search is enough to tell that key and certificate belong together.
        if !cert.windows(public_key.len()).any(|w| w == public_key) {
            return Err(CertError::KeyMismatch);
        }
        let single = format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            B64.encode(key_der)
        );
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(single.as_bytes())
            .map_err(|_| CertError::NotRsa)?;
        let thumbprint = match alg {
            AssertionAlg::Ps256 => B64URL.encode(sha2::Sha256::digest(cert)),
            AssertionAlg::Rs256 => B64URL.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                cert,
            )),
        };
        let signer = AssertionSigner {
            key,
            alg,
            thumbprint,
        };
        // Prove at load time that the key can sign, so a broken file fails at start.
        signer.sign("probe", "probe", SystemTime::now())?;
        Ok(signer)
    }

    /// A fresh assertion for one token request: unique `jti`, valid from `now` for 10 minutes.
    fn sign(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<SecretString, CertError> {
        let mut header = jsonwebtoken::Header::new(match self.alg {
            AssertionAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
            AssertionAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        });
        match self.alg {
            AssertionAlg::Ps256 => header.x5t_s256 = Some(self.thumbprint.clone()),
            AssertionAlg::Rs256 => header.x5t = Some(self.thumbprint.clone()),
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|_| CertError::Sign)
    }
}

/// The PKCS#1 `RSAPublicKey` DER of a PKCS#8 or PKCS#1 RSA private key.
fn rsa_public_key(label: &str, der: &[u8]) -> Result<Vec<u8>, CertError> {
    use aws_lc_rs::signature::KeyPair as _;
    let pair = if label == "PRIVATE KEY" {
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
    } else {
        aws_lc_rs::rsa::KeyPair::from_der(der)
    }
    .map_err(|_| CertError::NotRsa)?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// The `(label, DER)` blocks of a PEM text, in order. Text outside blocks (OpenSSL's "Bag
/// Attributes") is ignored.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, CertError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END ") {
            if let Some((label, body)) = current.take() {
                let der = B64
                    .decode(body.as_bytes())
                    .map_err(|_| CertError::BadBase64(label.clone()))?;
                blocks.push((label, der));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    Ok(blocks)
}

// ---------------------------------------------------------------------------------------------
// Roles self-check
// ---------------------------------------------------------------------------------------------

/// Which of the required application permissions a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesReport {
    pub resource: Resource,
    /// Every role the token's `roles` claim lists.
    pub present: Vec<String>,
    /// Required roles the token lacks, in [`Resource::required_roles`] order.
    pub missing: Vec<&'static str>,
    /// One line for the operator: all fine, or what is missing and where to grant it.
    pub message: String,
}

impl RolesReport {
    /// True when nothing required is missing.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Higher-privileged roles that Microsoft documents as also allowing the operation.
fn covering_roles(required: &str) -> &'static [&'static str] {
    match required {
        "GroupMember.ReadWrite.All" => &["Group.ReadWrite.All", "Directory.ReadWrite.All"],
        "User.Read.All" => &[
            "User.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
        _ => &[],
    }
}

#[derive(Deserialize)]
struct RolesClaim {
    #[serde(default)]
    roles: Vec<String>,
}

/// Read the `roles` claim of our own access token and name each missing application permission.
///
/// The signature is deliberately not verified: the token came straight from the token endpoint
/// over TLS to us, and we only read it to tell the operator what consent is missing; the API
/// that receives it does the verifying. A token that is not a readable JWT is reported with all
/// required roles missing, so a start-up check fails loudly rather than passing blind.
pub fn check_roles(resource: Resource, token: &SecretString) -> RolesReport {
    let present = match read_roles(token.expose_secret()) {
        Some(roles) => roles,
        None => {
            return RolesReport {
                resource,
                present: Vec::new(),
                missing: resource.required_roles().to_vec(),
                message: format!(
                    "{resource} token is not a readable JWT, so its application permissions cannot \
                     be checked — check endpoints.login points at the Microsoft identity platform"
                ),
            };
        }
    };
    let has = |role: &str| present.iter().any(|p| p.eq_ignore_ascii_case(role));
    let missing: Vec<&'static str> = resource
        .required_roles()
        .iter()
        .copied()
        .filter(|req| !has(req) && !covering_roles(req).iter().any(|alt| has(alt)))
        .collect();
    let message = roles_message(resource, &missing);
    RolesReport {
        resource,
        present,
        missing,
        message,
    }
}

fn read_roles(token: &str) -> Option<Vec<String>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let json = B64URL.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<RolesClaim>(&json)
        .ok()
        .map(|c| c.roles)
}

fn roles_message(resource: Resource, missing: &[&str]) -> String {
    let place = match resource {
        Resource::Graph => "Entra ID › App registrations › API permissions",
        Resource::Defender => {
            "Entra ID › App registrations › API permissions (APIs my organization uses › WindowsDefenderATP)"
        }
    };
    match missing {
        [] => format!("{resource} token carries every required application permission"),
        [one] => format!(
            "{resource} token lacks application permission {one} — grant it in {place} and grant admin consent"
        ),
        many => format!(
            "{resource} token lacks application permissions {} — grant them in {place} and grant admin consent",
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> SecretString {
        SecretString::from(format!(
            "{}.{}.sig",
            B64URL.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            B64URL.encode(payload)
        ))
    }

    #[test]
    fn roles_are_checked_per_resource() {
        fn check(resource: Resource, payload: &str, missing: &[&str]) {
            let report = check_roles(resource, &jwt(payload));
            assert_eq!(report.missing, missing, "{payload}");
            assert_eq!(report.is_complete(), missing.is_empty());
            for m in missing {
                assert!(report.message.contains(m), "{}", report.message);
            }
        }
        let all_graph = r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All","SecurityIncident.ReadWrite.All"]}"#;
        check(Resource::Graph, all_graph, &[]);
        check(
            Resource::Graph,
            r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All"]}"#,
            &["SecurityIncident.ReadWrite.All"],
        );
        check(
            Resource::Graph,
            r#"{"roles":["Directory.ReadWrite.All","securityincident.readwrite.all"]}"#,
            &[],
        );
        check(
            Resource::Graph,
            r#"{"aud":"x"}"#,
            &[
                "GroupMember.ReadWrite.All",
                "User.Read.All",
                "SecurityIncident.ReadWrite.All",
            ],
        );
        check(
            Resource::Defender,
            r#"{"roles":["Machine.Read.All"]}"#,
            &["Machine.ReadWrite.All"],
        );
        check(
            Resource::Defender,
            r#"{"roles":["Machine.ReadWrite.All"]}"#,
            &[],
        );
        check(Resource::Defender, all_graph, &["Machine.ReadWrite.All"]);
    }

    #[test]
    fn roles_messages_read_as_one_line() {
        let one = check_roles(
            Resource::Graph,
            &jwt(r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All"]}"#),
        );
        expect_test::expect!["Microsoft Graph token lacks application permission SecurityIncident.ReadWrite.All — grant it in Entra ID › App registrations › API permissions and grant admin consent"]
            .assert_eq(&one.message);
        let opaque = check_roles(Resource::Defender, &SecretString::from("opaque-token"));
        assert_eq!(opaque.missing, ["Machine.ReadWrite.All"]);
        assert!(!opaque.message.contains("opaque-token"));
        assert!(!opaque.message.contains('\n'));
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        };
        check("2", Some(Duration::from_secs(2)));
        check(" 0.5 ", Some(Duration::from_millis(500)));
        check("-1", None);
        check("soon", None);
        check(
            &httpdate::fmt_http_date(now + Duration::from_secs(30)),
            Some(Duration::from_secs(30)),
        );
        check(
            &httpdate::fmt_http_date(now - Duration::from_secs(30)),
            Some(Duration::ZERO),
        );
    }

    #[test]
    fn refusals_become_one_line_with_code_and_remedy() {
        fn check(body: &str, permanent: bool, expected: expect_test::Expect) {
            let body: EntraErrorResponse = serde_json::from_str(body).unwrap();
            let err = FetchError::Refused(body).into_token_error(Resource::Graph);
            assert_eq!(err.permanent, permanent);
            assert!(!err.message.contains('\n'));
            expected.assert_eq(&err.message);
        }
        check(
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2025-01-01 00:00:00Z","error_codes":[7000215]}"#,
            true,
            expect_test::expect![
                "token request for Microsoft Graph refused: AADSTS7000215 invalid client secret — check the secret in the client secret file (tenant.client_secret_file): it must be the secret's value, not its id"
            ],
        );
        check(
            r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found.\r\nTrace ID: 1","error_codes":[90002]}"#,
            true,
            expect_test::expect![
                "token request for Microsoft Graph refused: AADSTS90002 tenant not found — check tenant.tenant_id and tenant.cloud"
            ],
        );
        check(
            r#"{"error":"unauthorized_client","error_description":"AADSTS1234567: Something New happened. More text.\r\nTrace ID: 1","error_codes":[1234567]}"#,
            true,
            expect_test::expect![
                "token request for Microsoft Graph refused: AADSTS1234567 something New happened — check the app registration, the credential and tenant.tenant_id"
            ],
        );
        check(
            r#"{"error":"temporarily_unavailable"}"#,
            false,
            expect_test::expect![
                "token request for Microsoft Graph refused: temporarily_unavailable — check the app registration, the credential and tenant.tenant_id"
            ],
        );
    }

    #[test]
    fn token_endpoint_is_built_under_the_login_host() {
        let check = |login: &str, expected: &str| {
            let url = token_endpoint(&Url::parse(login).unwrap(), "contoso.onmicrosoft.com");
            assert_eq!(url.unwrap().as_str(), expected);
        };
        check(
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
        );
        check(
            "http://127.0.0.1:8080/login/",
            "http://127.0.0.1:8080/login/contoso.onmicrosoft.com/oauth2/v2.0/token",
        );
    }

    #[test]
    fn unusable_pem_files_are_named() {
        fn check(pem: &str, expected: &str) {
            let err = AssertionSigner::from_pem(&SecretString::from(pem), AssertionAlg::Ps256)
                .err()
                .map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(expected), "{pem}");
        }
        check("", "no CERTIFICATE block found");
        check(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no PRIVATE KEY or RSA PRIVATE KEY block found",
        );
        check(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "the private key is encrypted; decrypt it first",
        );
        check(
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "the CERTIFICATE block is not valid base64",
        );
        check(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "the private key is not a usable RSA key",
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let credential = Credential::Secret(SecretString::from("s3cr3t-value"));
        let settings = TokenSettings::new(
            Url::parse("https://login.example/t/oauth2/v2.0/token").unwrap(),
            "client",
            credential,
            "https://graph.microsoft.com/.default",
            "https://api.securitycenter.microsoft.com/.default",
        );
        let cache = TokenCache::new(settings.clone(), reqwest::Client::new()).unwrap();
        for text in [format!("{settings:?}"), format!("{cache:?}")] {
            assert!(!text.contains("s3cr3t-value"), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }
}
