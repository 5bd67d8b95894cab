//! Posts to a receiver outside the API surfaces (the alert webhook): no token and no limiter,
//! but the same retry rules as API calls, so retrying stays in this layer.
//!
//! Transient answers (429, 5xx, 408, 424) and transport failures are retried with the
//! exponential backoff of [`RetrySettings`]; a `Retry-After` is honoured (plus the margin) unless
//! it asks for longer than `max_delay`, which gives up at once.

use std::time::{Duration, SystemTime};

use reqwest::header::RETRY_AFTER;
use url::Url;

use super::RetrySettings;
use super::error::is_retryable_status;
use super::retry::{Backoff, parse_retry_after};

/// Why a post was not delivered. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("answered {status} after {attempts} attempt(s)")]
    Status { status: u16, attempts: u32 },
    #[error("asked to wait {} (Retry-After), longer than allowed", crate::text::duration(*wait))]
    RetryAfterTooLong { wait: Duration },
    #[error("failed after {attempts} attempt(s): {source}")]
    Send {
        attempts: u32,
        // `without_url()` is applied before this is built: the URL never reaches a message.
        #[source]
        source: reqwest::Error,
    },
}

/// Posts `body` as JSON to `url` with `client`, each attempt bounded by `timeout` (in place of
/// the client's API timeout); returns the attempts made, at most `retry.max_attempts`.
pub async fn post_json(
    client: &reqwest::Client,
    url: &Url,
    body: &serde_json::Value,
    timeout: Duration,
    retry: &RetrySettings,
) -> Result<u32, OutboundError> {
    let max = retry.max_attempts.max(1);
    let mut backoff = Backoff::new(retry);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = client
            .post(url.clone())
            .timeout(timeout)
            .json(body)
            .send()
            .await;
        let wait = match sent {
            Ok(resp) if resp.status().is_success() => return Ok(attempt),
            Ok(resp) => {
                let status = resp.status().as_u16();
                if !is_retryable_status(status) || attempt >= max {
                    return Err(OutboundError::Status {
                        status,
                        attempts: attempt,
                    });
                }
                let asked = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                match asked {
                    Some(wait) if wait > retry.max_delay => {
                        return Err(OutboundError::RetryAfterTooLong { wait });
                    }
                    Some(wait) => wait + retry.retry_after_margin,
                    None => backoff.next_delay(),
                }
            }
            Err(e) if attempt >= max => {
                return Err(OutboundError::Send {
                    attempts: attempt,
                    source: e.without_url(),
                });
            }
            Err(_) => backoff.next_delay(),
        };
        tokio::time::sleep(wait).await;
    }
}
