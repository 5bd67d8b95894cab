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
//!
//! The parts: `settings` (the credential and what the cache needs), `cache` (the token cache),
//! `endpoint` (the token endpoint transport and its error classification), `assertion` (the
//! certificate's client assertion) and `roles` (the roles self-check).

mod assertion;
mod cache;
mod endpoint;
mod roles;
mod settings;

use std::fmt;

use futures::future::BoxFuture;
use secrecy::SecretString;

pub use crate::config::AssertionAlg;
pub use cache::TokenCache;
pub use roles::{RolesReport, check_roles};
pub use settings::{Credential, TokenSettings, token_endpoint};

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

    pub(crate) fn index(self) -> usize {
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
    pub(crate) fn permanent_error(message: impl Into<String>) -> Self {
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
