//! Token sources (client secret, certificate assertion), the per-resource token cache and the
//! roles self-check.

use futures::future::BoxFuture;
use secrecy::SecretString;

/// The two resources dexscope needs a token for: one token per resource (a token request may
/// only name scopes of one resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Microsoft Graph: `https://graph.microsoft.com/.default`.
    Graph,
    /// Defender for Endpoint: `https://api.securitycenter.microsoft.com/.default`.
    Defender,
}

/// Why no token could be had. The message never contains a secret, a token or an assertion.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    pub message: String,
    /// True when asking again cannot help (bad secret, unknown tenant, missing consent).
    pub permanent: bool,
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
