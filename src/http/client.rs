//! The shared HTTP client: one `reqwest::Client`, the limiters, the bearer source, retry and
//! paging.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use super::body::{Collect, Items, read_capped};
use super::error::is_retryable_status;
use super::limit::{Limits, Permit};
use super::retry::{Backoff, parse_retry_after};
use super::stats::Recorder;
use super::{ApiError, Error, Settings, Stats, Surface, cost};
use crate::auth::BearerSource;

/// The HTTP client every API client shares. Cheap to clone; build it once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: Settings,
    bearer: Arc<dyn BearerSource>,
    pub(super) limits: Limits,
    pub(super) stats: Recorder,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("graph_root", &self.inner.settings.graph_root.as_str())
            .field("defender_root", &self.inner.settings.defender_root.as_str())
            .finish_non_exhaustive()
    }
}

/// One request as the HTTP layer sends it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub surface: Surface,
    /// Limiter cells this request takes (resource units on [`Surface::GraphRead`]).
    pub cost: u32,
    pub body: Option<serde_json::Value>,
    pub headers: Vec<(&'static str, String)>,
    /// False for requests that must not run twice (posting a comment): those are retried only
    /// when the server certainly did not process them.
    pub idempotent: bool,
    /// A list page whose items are parsed as they arrive (see [`super::body`]).
    pub(crate) items: Option<Items>,
}

impl Request {
    pub fn new(method: Method, surface: Surface, url: Url) -> Self {
        Self {
            method,
            url,
            surface,
            cost: cost::OTHER,
            body: None,
            headers: Vec::new(),
            idempotent: true,
            items: None,
        }
    }

    pub fn get(surface: Surface, url: Url) -> Self {
        Self::new(Method::GET, surface, url)
    }

    pub fn post(surface: Surface, url: Url, body: serde_json::Value) -> Self {
        Self::new(Method::POST, surface, url).with_body(body)
    }

    pub fn with_body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn non_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// A successful (2xx) response, body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Graph `request-id` (or `client-request-id`).
    pub request_id: Option<String>,
    /// As received: deserialized in place, never copied.
    pub body: bytes::Bytes,
    method: String,
    path: String,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            method: self.method.clone(),
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// The most pages one listing reads. Graph pages hold up to 999 members and MDE pages up to
/// 10,000 machines, so this is tens of millions of items: only a link that goes round reaches it.
const MAX_PAGES: u32 = 100_000;

/// Percent-encodes an OData query value so `#`, `&`, `+`, `=`, `%` and spaces survive; the
/// characters OData syntax needs (`'`, `(`, `)`, `,`, `:`, `/`, `@`, `$`) stay readable.
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'\'' | b'(' | b')' | b',' | b':' | b'/' | b'@' | b'$'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// Builds the one `reqwest::Client` (rustls, timeouts, `User-Agent: dexscope/<version>`).
    pub fn new(settings: Settings, bearer: Arc<dyn BearerSource>) -> Result<Self, Error> {
        let http = Self::build_reqwest(&settings)?;
        Ok(Self::with_reqwest(settings, bearer, http))
    }

    /// The process's one `reqwest::Client`, built from `settings`; the token cache is given the
    /// same client (see [`Client::with_reqwest`]) so tokens and API calls share one pool.
    ///
    /// No redirect is followed and no `Referer` is sent: a redirect would carry the client
    /// secret (token endpoint) or the bearer token to a host the config never named, and a
    /// `Referer` would carry the webhook URL, itself a secret. See [`Settings::loopback_only`]
    /// for plain http and proxies.
    pub fn build_reqwest(settings: &Settings) -> Result<reqwest::Client, Error> {
        let builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(concat!("dexscope/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false);
        let builder = if settings.loopback_only {
            builder.no_proxy()
        } else {
            builder.https_only(true)
        };
        builder.build().map_err(|e| Error::Build(error_chain(&e)))
    }

    /// Wraps an existing `reqwest::Client` (built by [`Client::build_reqwest`]).
    pub fn with_reqwest(
        settings: Settings,
        bearer: Arc<dyn BearerSource>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                limits: Limits::new(&settings.quotas, settings.write_batches_in_flight),
                stats: Recorder::default(),
                settings,
                bearer,
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The shared `reqwest::Client`, for the few senders outside the API surfaces (the alert
    /// webhook) that must go through the same TLS, proxy and user-agent settings.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.stats.snapshot();
        for surface in Surface::ALL {
            let (rate, budget, in_flight) = self.inner.limits.learned(surface);
            let s = &mut stats.surfaces[surface.index()];
            s.granted_per_s = rate;
            s.budget_per_s = budget;
            s.envelopes_in_flight = in_flight;
        }
        stats
    }

    /// `{graph_root}/v1.0{path_and_query}`; `path_and_query` starts with `/` and is encoded.
    pub fn graph_url(&self, path_and_query: &str) -> Result<Url, Error> {
        join(&self.inner.settings.graph_root, "/v1.0", path_and_query)
    }

    /// `{defender_root}{path_and_query}`.
    pub fn defender_url(&self, path_and_query: &str) -> Result<Url, Error> {
        join(&self.inner.settings.defender_root, "", path_and_query)
    }

    /// Sends `req` with limiting and retry; returns the 2xx response or the final error.
    pub async fn send(&self, req: Request) -> Result<Response, Error> {
        let gates = [(req.surface, req.cost)];
        self.execute(&req, &gates, true).await
    }

    /// GETs `first` and every page after it, following `@odata.nextLink` verbatim until it
    /// is absent, and returns the `value` items of all pages in order.
    pub async fn get_all<T: DeserializeOwned + Send + 'static>(
        &self,
        first: Request,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        self.pages(first, false, false, |page| items.extend(page))
            .await?;
        Ok(items)
    }

    /// Like [`Client::get_all`], but a 404 on the first page means "no items" (MDE answers
    /// 404 when there are no recent machines).
    pub async fn get_all_or_empty<T: DeserializeOwned + Send + 'static>(
        &self,
        first: Request,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        self.pages(first, true, false, |page| items.extend(page))
            .await?;
        Ok(items)
    }

    /// Like [`Client::get_all_or_empty`], but each page's items are parsed as its body
    /// arrives (see [`super::body`]) and handed to `each` before the next page is read, so a
    /// caller that keeps a compact form of the items holds neither a page's body nor more than
    /// one page of items at a time.
    pub async fn for_each_page_or_empty<T: DeserializeOwned + Send + 'static>(
        &self,
        first: Request,
        each: impl FnMut(Vec<T>),
    ) -> Result<(), Error> {
        self.pages(first, true, true, each).await
    }

    async fn pages<T: DeserializeOwned + Send + 'static>(
        &self,
        mut first: Request,
        not_found_is_empty: bool,
        split: bool,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), Error> {
        let sink = split.then(|| Arc::new(Collect::<T>::new()));
        if let Some(sink) = &sink {
            first.items = Some(Items(sink.clone()));
        }
        let origin = first.url.origin();
        let first_path = first.url.path().to_string();
        let mut seen = std::collections::HashSet::from([first.url.to_string()]);
        let mut req = first;
        let mut page_no = 0u32;
        loop {
            page_no += 1;
            if page_no > MAX_PAGES {
                return Err(Error::PagingLoop {
                    path: first_path,
                    problem: format!("ran past {MAX_PAGES} pages"),
                });
            }
            let resp = match self.send(req.clone()).await {
                Err(e) if not_found_is_empty && page_no == 1 && e.status() == Some(404) => {
                    return Ok(());
                }
                other => other?,
            };
            let split_items = match &sink {
                Some(sink) => Some(sink.take().map_err(|detail| Error::Decode {
                    method: req.method.to_string(),
                    path: req.url.path().to_string(),
                    detail,
                })?),
                None => None,
            };
            let Page { value, next_link } = resp.json()?;
            // The body is no longer needed once decoded; free it before the items are used.
            drop(resp);
            each(split_items.unwrap_or(value));
            let Some(link) = next_link else {
                return Ok(());
            };
            // Verbatim: the link is used as sent, never rebuilt from its parts.
            let next = Url::parse(&link).map_err(|e| Error::Url {
                input: "@odata.nextLink".into(),
                detail: e.to_string(),
            })?;
            if next.origin() != origin {
                return Err(Error::ForeignLink {
                    host: next.host_str().unwrap_or("").to_string(),
                    expected: req.url.host_str().unwrap_or("").to_string(),
                });
            }
            if !seen.insert(next.to_string()) {
                return Err(Error::PagingLoop {
                    path: first_path,
                    problem: "sent a @odata.nextLink already read".into(),
                });
            }
            req.url = next;
        }
    }

    /// Sends `req` until it succeeds, fails for good, or retries run out. `gates` are the
    /// limiter cells to take before every attempt (a `$batch` takes one per item).
    pub(super) async fn execute(
        &self,
        req: &Request,
        gates: &[(Surface, u32)],
        count: bool,
    ) -> Result<Response, Error> {
        self.execute_held(req, gates, count).await.map(|(r, _)| r)
    }

    /// Like [`Client::execute`], but the limiter cells of the successful attempt are handed
    /// back: a `$batch` answer may carry throttled items, and the cells must not free the
    /// surface for other senders before the caller has read the answer and set any hold.
    pub(super) async fn execute_held(
        &self,
        req: &Request,
        gates: &[(Surface, u32)],
        count: bool,
    ) -> Result<(Response, Vec<Permit>), Error> {
        let rs = &self.inner.settings.retry;
        let started = Instant::now();
        let mut backoff = Backoff::new(rs);
        let mut attempt = 0u32;
        // Attempts throttled: those do not count against the attempt cap.
        let mut throttled_attempts = 0u32;
        let mut refreshed = false;
        let mut force_refresh = false;
        loop {
            if let Some(err) = self.held_past_deadline(req, started, attempt) {
                return Err(err);
            }
            attempt += 1;
            let (sent, permits) = self
                .attempt(req, gates, std::mem::take(&mut force_refresh))
                .await?;
            // The cells are freed only after the answer was read: a throttled answer sets the
            // surface's hold first, so no sender waiting for these cells goes out before it.
            let outcome = match sent {
                Ok(answer) => self.classify_answer(req, gates, answer, attempt, count),
                Err(e) => self.classify_failure(req, &e, attempt, count),
            };
            let (failure, retry_after, throttled) = match outcome {
                Outcome::Done(result) => return result.map(|r| (r, permits)),
                Outcome::Unauthorized(err) if refreshed => return Err(err),
                Outcome::Unauthorized(_) => {
                    info!(method = %req.method, path = req.url.path(), surface = %req.surface,
                          "token refused, refreshing it once");
                    refreshed = true;
                    force_refresh = true;
                    continue;
                }
                Outcome::Retry {
                    failure,
                    retry_after,
                    throttled,
                } => (failure, retry_after, throttled),
            };
            drop(permits);
            let wait = match retry_after {
                Some(ra) => ra + rs.retry_after_margin,
                None => backoff.next_delay(),
            };
            if throttled {
                throttled_attempts += 1;
            }
            let pause = Pause {
                failure,
                wait,
                retry_after: retry_after.is_some(),
                throttled,
                attempt: attempt - throttled_attempts,
                started,
            };
            self.wait_or_give_up(req, gates, pause).await?;
        }
    }

    /// When a `Retry-After` holds the request's surface past the deadline of throttled
    /// retries, waiting for it is pointless: the request ends now as throttled at the
    /// deadline (the hold came from another request's answer, this one was never sent).
    fn held_past_deadline(&self, req: &Request, started: Instant, attempt: u32) -> Option<Error> {
        let rs = &self.inner.settings.retry;
        let until = self.inner.limits.held_until(req.surface)?;
        if until <= super::throttle_deadline(started, rs) {
            return None;
        }
        self.inner.stats.throttled_at_deadline();
        warn!(method = %req.method, path = req.url.path(), surface = %req.surface,
              "the service holds this surface past the pass deadline; not sending");
        Some(Error::Exhausted {
            attempts: attempt,
            last: Box::new(Error::held_past_deadline(req)),
        })
    }

    /// One attempt: the limiter cells, a bearer token, the request on the wire. The outer error
    /// is a token failure or a body past the cap (neither retried here); the inner one a
    /// transport failure. The cells are returned with the answer: they count in the windows
    /// from when they are dropped.
    async fn attempt(
        &self,
        req: &Request,
        gates: &[(Surface, u32)],
        force_refresh: bool,
    ) -> Result<(Result<Answer, reqwest::Error>, Vec<Permit>), Error> {
        let inner = &*self.inner;
        let resource = req.surface.resource();
        let mut permits = Vec::with_capacity(gates.len());
        for (surface, cells) in gates {
            permits.push(inner.limits.acquire(*surface, *cells).await);
        }
        let token = inner
            .bearer
            .bearer(resource, force_refresh)
            .await
            .map_err(|source| Error::Token { resource, source })?;
        let sent = self.send_once(req, &token).await;
        match sent {
            Ok(Err(BodyTooLarge)) => Err(Error::BodyTooLarge {
                method: req.method.to_string(),
                path: req.url.path().to_string(),
                limit: inner.settings.max_body_bytes,
            }),
            Ok(Ok(answer)) => Ok((Ok(answer), permits)),
            Err(e) => Ok((Err(e), permits)),
        }
    }

    /// What an HTTP answer means: success, a refused token, a failure to retry (with the
    /// `Retry-After` it carried) or one to report.
    fn classify_answer(
        &self,
        req: &Request,
        gates: &[(Surface, u32)],
        (status, headers, body): Answer,
        attempt: u32,
        count: bool,
    ) -> Outcome {
        let inner = &*self.inner;
        let method = req.method.as_str().to_string();
        let path = req.url.path().to_string();
        if count {
            inner.stats.response(req.surface, Some(status));
        }
        let mut request_id = request_id(&headers);
        let api = if (200..300).contains(&status) {
            ApiError::default()
        } else {
            ApiError::from_body(&body)
        };
        if request_id.is_none() {
            request_id = api.target.clone();
        }
        debug!(
            method = %method, path = %path, status, attempt,
            surface = %req.surface, request_id = request_id.as_deref().unwrap_or("-"),
            "http request"
        );
        if (200..300).contains(&status) {
            if count {
                for (surface, _) in gates {
                    inner.limits.accepted(*surface);
                }
            }
            return Outcome::Done(Ok(Response {
                status,
                request_id,
                body,
                method,
                path,
            }));
        }
        let err = Error::Status {
            method: method.clone(),
            path: path.clone(),
            surface: req.surface,
            status,
            api: Box::new(api),
            request_id,
        };
        if status == 401 {
            return Outcome::Unauthorized(err);
        }
        if !is_retryable_status(status) {
            return Outcome::Done(Err(err));
        }
        let ra = if matches!(status, 429 | 503) {
            headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        if !req.idempotent && status != 429 {
            // Not retried here, but a Retry-After still holds the surface back for whatever
            // the caller sends next (e.g. the re-read of a comment).
            if let Some(ra) = ra {
                let until = Instant::now() + ra + inner.settings.retry.retry_after_margin;
                for (surface, _) in gates {
                    inner.limits.hold_until(*surface, until);
                }
            }
            return Outcome::Done(Err(Error::Ambiguous {
                method,
                path,
                surface: req.surface,
                detail: format!("status {status}"),
            }));
        }
        let throttled = status == 429 || ra.is_some();
        if let Some(ra) = ra {
            // Held before anything below frees cells that other senders wait for.
            let until = Instant::now() + ra + inner.settings.retry.retry_after_margin;
            for (surface, _) in gates {
                inner.limits.hold_until(*surface, until);
            }
        }
        if throttled {
            inner.stats.throttled(req.surface);
            for (surface, cells) in gates {
                inner.limits.throttled(*surface, *cells);
            }
        }
        Outcome::Retry {
            failure: err,
            retry_after: ra,
            throttled,
        }
    }

    /// What a request that got no answer means: retried when nothing reached the server
    /// (connect failure), otherwise only when the request is idempotent.
    fn classify_failure(
        &self,
        req: &Request,
        e: &reqwest::Error,
        attempt: u32,
        count: bool,
    ) -> Outcome {
        if count {
            self.inner.stats.response(req.surface, None);
        }
        let method = req.method.as_str().to_string();
        let path = req.url.path().to_string();
        let detail = describe_reqwest(e);
        debug!(method = %method, path = %path, attempt, surface = %req.surface,
               error = %detail, "http request failed");
        if !req.idempotent && !e.is_connect() {
            return Outcome::Done(Err(Error::Ambiguous {
                method,
                path,
                surface: req.surface,
                detail,
            }));
        }
        Outcome::Retry {
            failure: Error::Transport {
                method,
                path,
                surface: req.surface,
                detail,
                timeout: e.is_timeout(),
            },
            retry_after: None,
            throttled: false,
        }
    }

    /// Waits before the next attempt, or gives up when the attempts or the retry time would
    /// run out. A `Retry-After` holds back the whole surface, not only this request.
    async fn wait_or_give_up(
        &self,
        req: &Request,
        gates: &[(Surface, u32)],
        pause: Pause,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        let rs = &inner.settings.retry;
        let Pause {
            failure,
            wait,
            retry_after,
            throttled,
            attempt,
            started,
        } = pause;
        let (method, path) = (req.method.as_str(), req.url.path());
        if retry_after {
            // Global for the surface: nothing else goes there before it elapses.
            let until = Instant::now() + wait;
            for (surface, _) in gates {
                inner.limits.hold_until(*surface, until);
            }
        }
        let give_up = if throttled {
            // Throttling means "later", not "failed": no attempt cap, only the deadline.
            Instant::now() + wait > super::throttle_deadline(started, rs)
        } else {
            attempt >= rs.max_attempts || started.elapsed() + wait > rs.max_retry_time
        };
        if give_up {
            if throttled {
                inner.stats.throttled_at_deadline();
            }
            warn!(method = %method, path = %path, surface = %req.surface, attempt,
                  error = %failure, "giving up");
            return Err(Error::Exhausted {
                attempts: attempt,
                last: Box::new(failure),
            });
        }
        if retry_after {
            inner.stats.retry_after_wait(req.surface, wait);
            warn!(method = %method, path = %path, surface = %req.surface, attempt,
                  wait_ms = wait.as_millis() as u64, "throttled, waiting as Retry-After says");
        } else {
            info!(method = %method, path = %path, surface = %req.surface, attempt,
                  wait_ms = wait.as_millis() as u64, error = %failure, "retrying");
        }
        inner.stats.retry();
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn send_once(
        &self,
        req: &Request,
        token: &SecretString,
    ) -> Result<Result<Answer, BodyTooLarge>, reqwest::Error> {
        let mut b = self
            .inner
            .http
            .request(req.method.clone(), req.url.clone())
            .bearer_auth(token.expose_secret());
        for (name, value) in &req.headers {
            b = b.header(*name, value);
        }
        if let Some(body) = &req.body {
            b = b.json(body);
        }
        let resp = b.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // Only a page's items are split as they come; an error's body is read whole.
        let items = req.items.as_ref().filter(|_| (200..300).contains(&status));
        let Some(body) = read_capped(resp, self.inner.settings.max_body_bytes, items).await? else {
            return Ok(Err(BodyTooLarge));
        };
        Ok(Ok((status, headers, body)))
    }

    pub(super) fn inner_limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(super) fn recorder(&self) -> &Recorder {
        &self.inner.stats
    }
}

/// A response body ran past [`Settings::max_body_bytes`].
struct BodyTooLarge;

/// An HTTP answer: status, headers and the body as collected.
type Answer = (u16, HeaderMap, bytes::Bytes);

/// What one attempt came to.
enum Outcome {
    /// Finished: the response, or an error that retrying cannot fix.
    Done(Result<Response, Error>),
    /// A 401: worth one retry with a freshly fetched token.
    Unauthorized(Error),
    /// Worth another attempt, after `Retry-After` when the server sent one, otherwise after
    /// the backoff delay.
    Retry {
        failure: Error,
        retry_after: Option<Duration>,
        /// A 429, or a 503 with `Retry-After`: retried without an attempt cap.
        throttled: bool,
    },
}

/// The failed attempt and how long to wait before the next one.
struct Pause {
    failure: Error,
    wait: Duration,
    /// The wait comes from the server's `Retry-After`, not from the backoff.
    retry_after: bool,
    throttled: bool,
    /// Attempts that failed other than by throttling, this one included when it did.
    attempt: u32,
    started: Instant,
}

fn join(root: &Url, version: &str, path_and_query: &str) -> Result<Url, Error> {
    let s = format!(
        "{}{}{}",
        root.as_str().trim_end_matches('/'),
        version,
        path_and_query
    );
    Url::parse(&s).map_err(|e| Error::Url {
        input: root.as_str().to_string(),
        detail: e.to_string(),
    })
}

fn request_id(h: &HeaderMap) -> Option<String> {
    ["request-id", "client-request-id"]
        .iter()
        .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()).map(str::to_string))
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A reqwest error without its URL (reqwest's Display names the URL with its query): the kind
/// of failure and its sources.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(src) => format!("{kind}: {}", error_chain(src)),
        None => kind.to_string(),
    }
}
