//! The Graph `$batch` executor: ≤ 20 items per envelope, every item's own status checked, only
//! failed retryable items sent again after the longest item `Retry-After`.
//!
//! Batches are always fully parallel (no `dependsOn`), as api-facts B.8 recommends. A 424 can
//! then only come from the older throttled-batch behaviour; it means "not executed" and the
//! item is retried like a 429.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::is_retryable_status;
use super::retry::{Backoff, parse_retry_after};
use super::{ApiError, Client, Error, Request, Surface, cost};

/// Items per `$batch` envelope (Graph's limit).
pub const MAX_BATCH_ITEMS: usize = 20;

/// One request inside a `$batch`.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub method: Method,
    /// Relative to the version root and already encoded, e.g. `/groups/{id}/members/$ref`.
    pub url: String,
    pub body: Option<serde_json::Value>,
    /// The surface whose limiter the item counts against.
    pub surface: Surface,
    pub cost: u32,
}

impl BatchItem {
    pub fn new(method: Method, surface: Surface, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            body: None,
            surface,
            cost: cost::OTHER,
        }
    }

    pub fn with_body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }
}

/// The final answer for one item.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub status: u16,
    pub body: Option<serde_json::Value>,
    pub request_id: Option<String>,
    /// How many envelopes carried this item.
    pub attempts: u32,
}

impl BatchOutcome {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The item's `error` object, if its body has one.
    pub fn api_error(&self) -> ApiError {
        self.body
            .as_ref()
            .map(ApiError::from_value)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    responses: Vec<ItemResponse>,
}

#[derive(Deserialize)]
struct ItemResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, serde_json::Value>,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

impl ItemResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }
}

impl Client {
    /// Runs `items` through `POST {graph}/v1.0/$batch`, 20 per envelope, and returns each
    /// item's final outcome in the order given. An item that still fails after the retries is
    /// returned with its last status (the caller decides what it means); an envelope that
    /// fails for good is an error.
    pub async fn batch(&self, items: &[BatchItem]) -> Result<Vec<BatchOutcome>, Error> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH_ITEMS) {
            out.extend(self.batch_chunk(chunk).await?);
        }
        Ok(out)
    }

    async fn batch_chunk(&self, items: &[BatchItem]) -> Result<Vec<BatchOutcome>, Error> {
        let rs = &self.settings().retry;
        let url = self.graph_url("/$batch")?;
        let started = Instant::now();
        let mut backoff = Backoff::new(rs);
        let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut round = 0u32;
        loop {
            round += 1;
            let body = envelope_body(items, &pending);
            let gates = gates(items, &pending);
            let surface = items[pending[0]].surface;
            let req = Request::post(surface, url.clone(), body);
            self.recorder().batch_envelope();
            let resp = self.execute(&req, &gates, false).await?;
            let env: Envelope = resp.json()?;
            // Items without their own request id (Graph sets none on most successful items)
            // are traced by the envelope's.
            let envelope_request_id = resp.request_id.clone();
            let mut answered: HashMap<usize, ItemResponse> = HashMap::new();
            for r in env.responses {
                // Ids are the 1-based item index; anything else is not ours.
                let idx = r.id.parse::<usize>().ok().and_then(|i| i.checked_sub(1));
                match idx {
                    Some(i) if pending.contains(&i) => {
                        answered.insert(i, r);
                    }
                    _ => {
                        return Err(Error::Decode {
                            method: "POST".into(),
                            path: url.path().into(),
                            detail: format!("response for unknown batch item id {:?}", r.id),
                        });
                    }
                }
            }
            let mut still: Vec<usize> = Vec::new();
            let mut longest_retry_after: Option<Duration> = None;
            for &i in &pending {
                let item = &items[i];
                let Some(r) = answered.remove(&i) else {
                    // No answer for this item: it was not executed as far as we know.
                    still.push(i);
                    continue;
                };
                let request_id = r
                    .header("request-id")
                    .or_else(|| r.header("client-request-id"))
                    .or_else(|| envelope_request_id.clone());
                self.recorder().response(item.surface, Some(r.status));
                debug!(method = %item.method, path = %path_only(&item.url), status = r.status,
                       attempt = round, surface = %item.surface,
                       request_id = request_id.as_deref().unwrap_or("-"), "batch item");
                if is_retryable_status(r.status) {
                    if matches!(r.status, 429 | 503 | 424) {
                        self.recorder().throttled(item.surface);
                    }
                    let ra = r
                        .header("retry-after")
                        .and_then(|v| parse_retry_after(&v, SystemTime::now()));
                    if let Some(ra) = ra {
                        longest_retry_after = longest_retry_after.max(Some(ra));
                    }
                    still.push(i);
                }
                outcomes[i] = Some(BatchOutcome {
                    status: r.status,
                    body: r.body,
                    request_id,
                    attempts: round,
                });
            }
            if still.is_empty() {
                break;
            }
            let wait = match longest_retry_after {
                Some(ra) => ra + rs.retry_after_margin,
                None => backoff.next_delay(),
            };
            if longest_retry_after.is_some() {
                let until = Instant::now() + wait;
                for &i in &still {
                    self.inner_limits().hold_until(items[i].surface, until);
                }
            }
            if round >= rs.max_attempts || started.elapsed() + wait > rs.max_retry_time {
                warn!(
                    items = still.len(),
                    attempts = round,
                    "batch items still failing, giving up on them"
                );
                for &i in &still {
                    outcomes[i].get_or_insert(BatchOutcome {
                        status: 500,
                        body: None,
                        request_id: None,
                        attempts: round,
                    });
                }
                break;
            }
            info!(
                items = still.len(),
                of = items.len(),
                attempt = round,
                wait_ms = wait.as_millis() as u64,
                retry_after = longest_retry_after.is_some(),
                "retrying failed batch items"
            );
            if longest_retry_after.is_some() {
                self.recorder()
                    .retry_after_wait(items[still[0]].surface, wait);
            }
            self.recorder().retry();
            tokio::time::sleep(wait).await;
            pending = still;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every item has an outcome"))
            .collect())
    }
}

fn envelope_body(items: &[BatchItem], pending: &[usize]) -> serde_json::Value {
    let requests: Vec<serde_json::Value> = pending
        .iter()
        .map(|&i| {
            let item = &items[i];
            let mut r = serde_json::json!({
                "id": (i + 1).to_string(),
                "method": item.method.as_str(),
                "url": item.url,
            });
            if let Some(body) = &item.body {
                r["headers"] = serde_json::json!({"Content-Type": "application/json"});
                r["body"] = body.clone();
            }
            r
        })
        .collect();
    serde_json::json!({ "requests": requests })
}

/// Limiter cells per surface: every item counts on its own.
fn gates(items: &[BatchItem], pending: &[usize]) -> Vec<(Surface, u32)> {
    let mut by: Vec<(Surface, u32)> = Vec::new();
    for &i in pending {
        let it = &items[i];
        match by.iter_mut().find(|(s, _)| *s == it.surface) {
            Some((_, c)) => *c += it.cost,
            None => by.push((it.surface, it.cost)),
        }
    }
    by
}

fn path_only(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
