//! The Graph `$batch` executor: ≤ 20 items per envelope, every item's own status checked, only
//! failed retryable items sent again after the longest item `Retry-After`.
//!
//! Batches are always fully parallel (no `dependsOn`): Graph's throttling guidance recommends
//! it, since a throttled item then fails alone instead of failing the items that depend on it.
//! A 424 (failed dependency) can then only come from the older throttled-batch behaviour; it
//! means "not executed" and the item is retried like a 429.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use super::error::is_retryable_status;
use super::limit::Permit;
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
        // Rounds with an item failed other than by throttling: only those count against the
        // attempt cap (throttling means "later", bounded by the deadline).
        let mut other_rounds = 0u32;
        // Envelopes of a surface in flight at once, fewer while the service throttles.
        let _slot = self.inner_limits().slots(items[0].surface).acquire().await;
        loop {
            if self.items_held_past_deadline(items, &pending, (round, started), &mut outcomes) {
                break;
            }
            round += 1;
            let (answers, cells) = self.send_envelope(items, &pending, &url).await?;
            let left = self.record_answers(items, &pending, answers, round, &mut outcomes);
            // Freed once the answers are read and any hold is set (see `execute_held`).
            drop(cells);
            if left.still.is_empty() {
                break;
            }
            if !left.only_throttled {
                other_rounds += 1;
            }
            let wait = match left.longest_retry_after {
                Some(ra) => ra + rs.retry_after_margin,
                None => backoff.next_delay(),
            };
            if !self
                .wait_for_next_round(
                    items,
                    &left,
                    (round, other_rounds),
                    wait,
                    started,
                    &mut outcomes,
                )
                .await
            {
                break;
            }
            pending = left.still;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every item has an outcome"))
            .collect())
    }

    /// When a `Retry-After` holds the items' surface past the deadline of throttled retries,
    /// the `pending` items end now as throttled (their last answer, or a 429 when they were
    /// never sent) instead of waiting for a hold the pass cannot outlive. Returns true then.
    fn items_held_past_deadline(
        &self,
        items: &[BatchItem],
        pending: &[usize],
        (round, started): (u32, Instant),
        outcomes: &mut [Option<BatchOutcome>],
    ) -> bool {
        let rs = &self.settings().retry;
        let Some(until) = self.inner_limits().held_until(items[pending[0]].surface) else {
            return false;
        };
        if until <= super::throttle_deadline(started, rs) {
            return false;
        }
        self.recorder().throttled_at_deadline();
        warn!(
            items = pending.len(),
            attempts = round,
            "the service holds this surface past the pass deadline; not sending these batch items"
        );
        end_items(pending, 429, round, outcomes);
        true
    }

    /// Sends the `pending` items in one envelope; returns each answered item by its index and
    /// the envelope's request id, and the envelope's limiter cells.
    async fn send_envelope(
        &self,
        items: &[BatchItem],
        pending: &[usize],
        url: &Url,
    ) -> Result<(Answers, Vec<Permit>), Error> {
        let body = envelope_body(items, pending);
        let gates = gates(items, pending);
        let surface = items[pending[0]].surface;
        let req = Request::post(surface, url.clone(), body);
        self.recorder().batch_envelope();
        let (resp, cells) = self.execute_held(&req, &gates, false).await?;
        let env: Envelope = resp.json()?;
        let mut by_item: HashMap<usize, ItemResponse> = HashMap::new();
        for r in env.responses {
            // Ids are the 1-based item index; anything else is not ours.
            let idx = r.id.parse::<usize>().ok().and_then(|i| i.checked_sub(1));
            match idx {
                Some(i) if pending.contains(&i) => {
                    by_item.insert(i, r);
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
        let answers = Answers {
            by_item,
            // Items without their own request id (Graph sets none on most successful items)
            // are traced by the envelope's.
            envelope_request_id: resp.request_id,
        };
        Ok((answers, cells))
    }

    /// Records every answered item's outcome; returns the items to send again (retryable
    /// status, or no answer) and the longest `Retry-After` among them.
    fn record_answers(
        &self,
        items: &[BatchItem],
        pending: &[usize],
        mut answers: Answers,
        round: u32,
        outcomes: &mut [Option<BatchOutcome>],
    ) -> Left {
        let mut left = Left {
            still: Vec::new(),
            longest_retry_after: None,
            only_throttled: true,
        };
        // Cells per surface: accepted (answered, not throttled) and throttled.
        let mut accepted: Vec<(Surface, u32)> = Vec::new();
        let mut throttled: Vec<(Surface, u32)> = Vec::new();
        for &i in pending {
            let item = &items[i];
            let Some(r) = answers.by_item.remove(&i) else {
                // No answer for this item: it was not executed as far as we know.
                left.still.push(i);
                left.only_throttled = false;
                continue;
            };
            let request_id = r
                .header("request-id")
                .or_else(|| r.header("client-request-id"))
                .or_else(|| answers.envelope_request_id.clone());
            self.recorder().response(item.surface, Some(r.status));
            debug!(method = %item.method, path = %path_only(&item.url), status = r.status,
                   attempt = round, surface = %item.surface,
                   request_id = request_id.as_deref().unwrap_or("-"), "batch item");
            if is_retryable_status(r.status) {
                let ra = r
                    .header("retry-after")
                    .and_then(|v| parse_retry_after(&v, SystemTime::now()));
                if r.status == 429 || r.status == 424 || ra.is_some() {
                    self.recorder().throttled(item.surface);
                    add_cells(&mut throttled, item);
                } else {
                    left.only_throttled = false;
                }
                if let Some(ra) = ra {
                    left.longest_retry_after = left.longest_retry_after.max(Some(ra));
                }
                left.still.push(i);
            } else {
                add_cells(&mut accepted, item);
            }
            outcomes[i] = Some(BatchOutcome {
                status: r.status,
                body: r.body,
                request_id,
                attempts: round,
            });
        }
        // A Retry-After holds the surfaces before refused cells leave the windows and wake
        // other senders.
        if let Some(ra) = left.longest_retry_after {
            let until = Instant::now() + ra + self.settings().retry.retry_after_margin;
            for (surface, _) in &throttled {
                self.inner_limits().hold_until(*surface, until);
            }
        }
        // Refused cells leave the windows and the surface slows down; accepted ones let it
        // grow back.
        for (surface, cells) in throttled {
            self.inner_limits().throttled(surface, cells);
        }
        for (surface, _) in accepted {
            self.inner_limits().accepted(surface);
        }
        left
    }

    /// Waits `wait` before the next round and returns true, or, when the attempts or the retry
    /// time would run out, gives up on the items left (keeping their last answer, or a 500
    /// when they never had one) and returns false. A `Retry-After` holds back the items'
    /// surfaces, not only this envelope.
    async fn wait_for_next_round(
        &self,
        items: &[BatchItem],
        left: &Left,
        (round, other_rounds): (u32, u32),
        wait: Duration,
        started: Instant,
        outcomes: &mut [Option<BatchOutcome>],
    ) -> bool {
        let rs = &self.settings().retry;
        let still = &left.still;
        let retry_after = left.longest_retry_after.is_some();
        if retry_after {
            let until = Instant::now() + wait;
            for &i in still {
                self.inner_limits().hold_until(items[i].surface, until);
            }
        }
        let give_up = if left.only_throttled {
            Instant::now() + wait > super::throttle_deadline(started, rs)
        } else {
            other_rounds >= rs.max_attempts || started.elapsed() + wait > rs.max_retry_time
        };
        if give_up {
            if left.only_throttled {
                self.recorder().throttled_at_deadline();
            }
            warn!(
                items = still.len(),
                attempts = round,
                "batch items still failing, giving up on them"
            );
            end_items(still, 500, round, outcomes);
            return false;
        }
        info!(
            items = still.len(),
            of = items.len(),
            attempt = round,
            wait_ms = wait.as_millis() as u64,
            retry_after,
            "retrying failed batch items"
        );
        if retry_after {
            self.recorder()
                .retry_after_wait(items[still[0]].surface, wait);
        }
        self.recorder().retry();
        tokio::time::sleep(wait).await;
        true
    }
}

/// The item answers of one envelope.
struct Answers {
    /// Item index → its answer.
    by_item: HashMap<usize, ItemResponse>,
    envelope_request_id: Option<String>,
}

/// What one round leaves to send again.
struct Left {
    /// Indexes of the items to send again.
    still: Vec<usize>,
    longest_retry_after: Option<Duration>,
    /// Every item left was throttled (429, 424, or a `Retry-After`): retried without a cap.
    only_throttled: bool,
}

/// Ends `items` that will not be sent again after `round` envelopes: each keeps its last
/// answer, or gets `status` when it never had one.
fn end_items(items: &[usize], status: u16, round: u32, outcomes: &mut [Option<BatchOutcome>]) {
    for &i in items {
        outcomes[i].get_or_insert(BatchOutcome {
            status,
            body: None,
            request_id: None,
            attempts: round,
        });
    }
}

fn add_cells(by: &mut Vec<(Surface, u32)>, item: &BatchItem) {
    match by.iter_mut().find(|(s, _)| *s == item.surface) {
        Some((_, c)) => *c += item.cost,
        None => by.push((item.surface, item.cost)),
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
