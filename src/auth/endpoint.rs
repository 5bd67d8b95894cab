//! The token endpoint transport (the project's `reqwest` client under `oauth2`) and the
//! classification of what came back: transient or permanent, and what to tell the operator.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse, RequestTokenError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Resource, TokenError};
use crate::retry_after::parse_retry_after;

/// The project's `reqwest` client as `oauth2`'s HTTP client for one token request. It logs the
/// exchange (never the body) and turns 429 and 5xx into transport errors, so only definite
/// answers (200, other 4xx) reach `oauth2`'s parser.
pub(super) struct TokenHttp<'a> {
    pub(super) client: &'a reqwest::Client,
    pub(super) timeout: Option<Duration>,
    pub(super) resource: Resource,
}

/// A token request that did not produce a definite answer. Never carries a body.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransportError {
    #[error("could not build the token request: {0}")]
    Build(String),
    #[error("{0}")]
    Network(String),
    /// A redirect is never followed: the next request would carry the credential to a host
    /// the config did not name.
    #[error("the token endpoint answered {status}, a redirect, which is not followed")]
    Redirect { status: reqwest::StatusCode },
    #[error("the token endpoint's answer is longer than {MAX_TOKEN_BODY} bytes")]
    TooLarge,
    #[error("the token endpoint answered {status}")]
    Status {
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
    },
}

/// The JSON body of an Entra token error: `{"error", "error_description", "error_codes",
/// "trace_id", "correlation_id", ...}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(super) struct EntraErrorResponse {
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
            let body = read_capped(response).await.map_err(|e| {
                TransportError::Network(format!(
                    "reading the token response failed: {}",
                    describe_reqwest(&e, self.timeout)
                ))
            })?;
            let body = body.ok_or(TransportError::TooLarge)?;
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
            if status.is_redirection() {
                return Err(TransportError::Redirect { status });
            }
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
            out.body(body)
                .map_err(|e| TransportError::Build(e.to_string()))
        })
    }
}

/// A token answer is a few KiB (the token itself is under 8 KiB); this bounds what a hostile
/// endpoint can make the daemon hold.
const MAX_TOKEN_BODY: u64 = 1024 * 1024;

/// The body, or `None` once it runs past [`MAX_TOKEN_BODY`] bytes (announced or received).
async fn read_capped(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_TOKEN_BODY)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > MAX_TOKEN_BODY {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
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

/// Why one token request failed, before it is phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
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
    pub(super) fn from_oauth(err: RequestTokenError<TransportError, EntraErrorResponse>) -> Self {
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

    pub(super) fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport(
                TransportError::Build(_)
                | TransportError::Redirect { .. }
                | TransportError::TooLarge,
            ) => false,
            FetchError::Transport(_) => true,
            FetchError::Refused(body) => is_transient_refusal(body),
            FetchError::Unreadable(_) | FetchError::Assertion(_) => false,
        }
    }

    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Transport(TransportError::Status { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }

    pub(super) fn into_token_error(self, resource: Resource) -> TokenError {
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
            FetchError::Transport(e @ TransportError::Redirect { .. }) => TokenError {
                message: format!(
                    "token request for {resource} failed: {e} — set endpoints.login to the \
                     token endpoint's own address"
                ),
                permanent: true,
            },
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

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
}
