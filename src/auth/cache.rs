//! The token cache: one bearer token per resource, refreshed ahead of expiry with one refresh in
//! flight per resource.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, Scope, StandardRevocableToken,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::assertion::AssertionSigner;
use super::endpoint::{EntraErrorResponse, FetchError, TokenHttp};
use super::roles::{RolesReport, check_roles};
use super::{BearerSource, Credential, Resource, TokenError, TokenSettings};

/// After a failed refresh-ahead while the old token is still valid, wait this long (at most)
/// before asking the endpoint again, so a struggling endpoint is not hit by every caller.
const REFRESH_RETRY_PAUSE: Duration = Duration::from_secs(30);
/// A token endpoint asking for a longer pause than this is not waited for inside one request:
/// the error goes up and the next pass tries again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Assumed lifetime when the endpoint leaves out `expires_in` (Entra always sends it).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// The longest lifetime a token is trusted for, whatever `expires_in` says: Entra issues
/// app tokens for 60 to 90 minutes, and a configurable token lifetime is at most 1 day.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
        // Clamped before any `Instant` arithmetic: `expires_in` is a bare number from the wire,
        // and `Instant + u64::MAX seconds` panics.
        let lifetime = response
            .expires_in()
            .unwrap_or(DEFAULT_LIFETIME)
            .min(MAX_LIFETIME);
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

#[cfg(test)]
mod tests {
    use url::Url;

    use super::*;

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
