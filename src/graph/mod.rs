//! Microsoft Graph client: the scoped user group, users, security incidents and comments.
//!
//! Speaks Graph through [`crate::http::Client`] (which limits, retries and pages) and hands
//! domain values from [`crate::model`] upward; the serde mirrors stay in `wire`.

mod delta;
mod incidents;
mod members;
mod selectors;
mod wire;

pub use delta::{
    DeltaError, DeltaRound, GroupsRound, MAX_DELTA_IDS, MAX_DELTA_PAGES, MemberChange,
};
pub use incidents::{
    IncidentError, IncidentPages, IncidentQuery, MAX_INCIDENT_PAGES, MAX_INCIDENTS_TOP,
    parse_incident,
};
pub use members::{MAX_BIND_PER_PATCH, MAX_UPNS_PER_FILTER, MemberOutcome, MemberResult};
pub use selectors::{SelectorError, TreeMember, UserRow};

use crate::http;
use crate::model::ObjectId;

/// The Graph client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: http::Client,
}

impl GraphClient {
    pub fn new(http: http::Client) -> Self {
        Self { http }
    }

    pub fn http(&self) -> &http::Client {
        &self.http
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the direct members of group {group} failed: {source}")]
    ListMembers {
        // Boxed: an id is 36 bytes inline, and every `Result` of this client carries
        // the largest variant.
        group: Box<ObjectId>,
        #[source]
        source: http::Error,
    },
    #[error("looking up {count} users failed: {source}")]
    LookupUsers {
        count: usize,
        #[source]
        source: http::Error,
    },
    /// One `$filter` lookup inside a `$batch` failed for good.
    #[error("looking up users ({filter_on} in {count} values) failed with status {status}{}{}; check the values in the desired state", .code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(), .request_id.as_deref().map(|r| format!(" [request id {r}]")).unwrap_or_default())]
    LookupItem {
        filter_on: &'static str,
        count: usize,
        status: u16,
        code: Option<String>,
        request_id: Option<String>,
    },
    #[error("adding {count} members to group {group} failed: {source}")]
    AddMembers {
        // Boxed: an id is 36 bytes inline, and every `Result` of this client carries
        // the largest variant.
        group: Box<ObjectId>,
        count: usize,
        #[source]
        source: http::Error,
    },
    #[error("removing {count} members from group {group} failed: {source}")]
    RemoveMembers {
        // Boxed: an id is 36 bytes inline, and every `Result` of this client carries
        // the largest variant.
        group: Box<ObjectId>,
        count: usize,
        #[source]
        source: http::Error,
    },
    #[error("listing security incidents failed: {source}")]
    ListIncidents {
        #[source]
        source: http::Error,
    },
    #[error("reading incident {id} failed: {source}")]
    GetIncident {
        id: String,
        #[source]
        source: http::Error,
    },
    #[error("posting a comment on incident {id} failed: {source}")]
    PostComment {
        id: String,
        #[source]
        source: http::Error,
    },
    #[error("{0:?} is not an incident id; incident ids are letters, digits and dashes")]
    InvalidIncidentId(String),
    #[error(transparent)]
    BadIncident(Box<IncidentError>),
    /// URL building or a response body that is not the expected JSON.
    #[error(transparent)]
    Http(#[from] http::Error),
}

impl Error {
    /// True when the next pass may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        self.http_source().is_some_and(http::Error::is_transient)
            || matches!(self, Error::LookupItem { status, .. } if *status == 429 || *status >= 500)
    }

    /// True when a non-idempotent request (a comment) may or may not have taken effect.
    pub fn is_ambiguous(&self) -> bool {
        self.http_source().is_some_and(http::Error::is_ambiguous)
    }

    pub fn http_source(&self) -> Option<&http::Error> {
        match self {
            Error::ListMembers { source, .. }
            | Error::LookupUsers { source, .. }
            | Error::AddMembers { source, .. }
            | Error::RemoveMembers { source, .. }
            | Error::ListIncidents { source }
            | Error::GetIncident { source, .. }
            | Error::PostComment { source, .. }
            | Error::Http(source) => Some(source),
            Error::LookupItem { .. } | Error::InvalidIncidentId(_) | Error::BadIncident(_) => None,
        }
    }
}
