//! The credential and the settings the token cache is built from.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{AssertionAlg, Resource, TokenError};

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

    pub(super) fn scope(&self, resource: Resource) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
