//! The HTTP layer's error: what failed (method, path, status, service error code, request id)
//! and whether trying again later can help. Never carries a token or a query string.

use crate::auth::{Resource, TokenError};

use super::Surface;

/// The `error` object of a Graph or MDE error body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    pub code: Option<String>,
    pub message: Option<String>,
    /// MDE puts its correlation id in `error.target`.
    pub target: Option<String>,
}

impl ApiError {
    /// Reads `{"error":{"code","message","target"}}`; anything else gives an empty value.
    pub fn from_body(body: &[u8]) -> Self {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|v| Self::from_value(&v))
            .unwrap_or_default()
    }

    pub fn from_value(v: &serde_json::Value) -> Self {
        let e = &v["error"];
        let s = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Self {
            code: s("code"),
            message: s("message"),
            target: s("target"),
        }
    }

    /// True when the message contains `needle`, ignoring case.
    pub fn message_contains(&self, needle: &str) -> bool {
        self.message.as_deref().is_some_and(|m| {
            m.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        })
    }
}

fn describe(api: &ApiError, request_id: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(code) = &api.code {
        s.push_str(&format!(" ({code})"));
    }
    if let Some(m) = &api.message {
        // One line, bounded: service messages can be long.
        let m: String = m.replace(['\r', '\n'], " ").chars().take(300).collect();
        s.push_str(&format!(": {m}"));
    }
    if let Some(id) = request_id {
        s.push_str(&format!(" [request id {id}]"));
    }
    s
}

fn status_hint(status: u16) -> &'static str {
    match status {
        400 => "the request was rejected as invalid; check the object ids and values",
        401 => "the token was refused even after a refresh; check the credential and tenant",
        403 => "the application lacks a permission; grant the application role and admin consent",
        404 => "the object does not exist; check the id in the config or desired state",
        429 | 503 => "the service is throttling; it will be tried again on the next pass",
        _ if status >= 500 => "the service failed; it will be tried again on the next pass",
        _ => "see the service message",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with a status that is final for this request.
    #[error(
        "{method} {path} on {surface} failed with status {status}{}; {}",
        describe(api, request_id),
        status_hint(*status)
    )]
    Status {
        method: String,
        path: String,
        surface: Surface,
        status: u16,
        api: Box<ApiError>,
        request_id: Option<String>,
    },
    /// The request could not be completed (connect failure, timeout, broken connection).
    #[error(
        "{method} {path} on {surface} could not be completed: {detail}; check network access to the api host"
    )]
    Transport {
        method: String,
        path: String,
        surface: Surface,
        detail: String,
        timeout: bool,
    },
    /// A non-idempotent request may or may not have been processed (timeout or 5xx after it
    /// was sent): the caller must read the current state before any retry.
    #[error(
        "{method} {path} on {surface} may or may not have taken effect ({detail}); read the current state before trying again"
    )]
    Ambiguous {
        method: String,
        path: String,
        surface: Surface,
        detail: String,
    },
    /// Retries ran out (attempt cap or total retry time); `last` is the final failure.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: Box<Error> },
    #[error("no {resource:?} token: {source}")]
    Token {
        resource: Resource,
        #[source]
        source: TokenError,
    },
    /// The body was not the JSON the caller expects.
    #[error(
        "{method} {path} returned a body that is not the expected json: {detail}; this is a bug or an api change, report it"
    )]
    Decode {
        method: String,
        path: String,
        detail: String,
    },
    /// The response body ran past the cap ([`super::Settings::max_body_bytes`]); not retried,
    /// since the same request would bring the same body.
    #[error(
        "{method} {path} returned a body of more than {limit} bytes; refusing to read it (a \
         proxy or endpoint answering with something other than the api?)"
    )]
    BodyTooLarge {
        method: String,
        path: String,
        limit: u64,
    },
    /// A paging link points to another host; the token is never sent there.
    #[error("paging link to host {host} leaves the api host {expected}; refusing to follow it")]
    ForeignLink { host: String, expected: String },
    /// Paging went round: a `@odata.nextLink` repeated one already read, or the pages ran past
    /// the cap. Either way the listing would never end.
    #[error("paging of {path} {problem}; refusing to read on")]
    PagingLoop { path: String, problem: String },
    /// A URL could not be built from the configured root.
    #[error("cannot build a url from {input}: {detail}; check the endpoint settings")]
    Url { input: String, detail: String },
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Build(String),
}

impl Error {
    /// A throttled answer for `req`, never sent: a `Retry-After` holds its surface past the
    /// deadline of throttled retries.
    pub(crate) fn held_past_deadline(req: &super::Request) -> Self {
        Error::Status {
            method: req.method.to_string(),
            path: req.url.path().to_string(),
            surface: req.surface,
            status: 429,
            api: Box::new(ApiError {
                code: Some("TooManyRequests".into()),
                message: Some("held by the service's Retry-After past the pass deadline".into()),
                target: None,
            }),
            request_id: None,
        }
    }

    /// True when the same request may succeed later (throttling, 5xx, network, token
    /// endpoint trouble). Decides retry here and is what callers report as "will retry".
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Status { status, .. } => is_retryable_status(*status),
            Error::Transport { .. } => true,
            Error::Ambiguous { .. } => true,
            Error::Exhausted { last, .. } => last.is_transient(),
            Error::Token { source, .. } => !source.permanent,
            Error::Decode { .. }
            | Error::BodyTooLarge { .. }
            | Error::ForeignLink { .. }
            | Error::PagingLoop { .. }
            | Error::Url { .. }
            | Error::Build(_) => false,
        }
    }

    /// The HTTP status of the final response, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            Error::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The service error code (`Request_ResourceNotFound`, `TooManyRequests`, …).
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Status { api, .. } => Some(api),
            Error::Exhausted { last, .. } => last.api(),
            _ => None,
        }
    }

    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Ambiguous { .. })
    }
}

/// Statuses worth another attempt: throttling, 5xx, request timeout, and 424 (the older
/// Graph batching behaviour fails a throttled batch with 424).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 424 | 429) || status >= 500
}
