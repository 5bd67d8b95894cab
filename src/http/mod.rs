//! The one place that talks HTTP: client, limiters, retry with Retry-After, paging, `$batch`.
//!
//! Every request is tagged with the API [`Surface`] it hits, so the right client-side limiter
//! applies and a `Retry-After` from one request holds back every other request to the same
//! surface. Transient or permanent is decided here once ([`Error::is_transient`]); nothing above
//! this layer retries.

mod adapt;
mod batch;
mod body;
mod client;
mod error;
mod limit;
mod outbound;
mod retry;
mod stats;

use std::time::Duration;

use url::Url;

pub use batch::{BatchItem, BatchOutcome, MAX_BATCH_ITEMS};
pub use client::{Client, Request, Response, encode_query_value};
pub use error::{ApiError, Error};
pub use outbound::{OutboundError, post_json};
pub use retry::parse_retry_after;
pub use stats::{Stats, SurfaceStats};

tokio::task_local! {
    /// The instant the current pass must end by (see [`with_deadline`]).
    static PASS_DEADLINE: tokio::time::Instant;
}

/// Runs `pass` with `deadline` as the bound of every throttled retry inside it: a throttled
/// request or `$batch` item is retried without an attempt cap until the next wait would end
/// past the deadline, and then returned as it last failed (status 429 or 503).
pub async fn with_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    pass: F,
) -> F::Output {
    PASS_DEADLINE.scope(deadline, pass).await
}

/// The deadline of the pass running in this task, if any.
pub fn current_deadline() -> Option<tokio::time::Instant> {
    PASS_DEADLINE.try_with(|d| *d).ok()
}

/// The bound of throttled retries: the pass deadline, or outside a pass the retry time from
/// `started`.
pub(crate) fn throttle_deadline(
    started: tokio::time::Instant,
    rs: &RetrySettings,
) -> tokio::time::Instant {
    PASS_DEADLINE
        .try_with(|d| *d)
        .unwrap_or(started + rs.max_retry_time)
}

/// The API surfaces dexscope talks to, each with its own documented quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// Graph identity reads (users, groups, members), budgeted in resource units.
    GraphRead,
    /// Graph identity writes (member adds and removes).
    GraphWrite,
    /// Graph security (incidents and comments).
    GraphSecurity,
    /// Defender for Endpoint (machines, tags).
    Defender,
}

impl Surface {
    pub const ALL: [Surface; 4] = [
        Surface::GraphRead,
        Surface::GraphWrite,
        Surface::GraphSecurity,
        Surface::Defender,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::GraphRead => "graph_read",
            Surface::GraphWrite => "graph_write",
            Surface::GraphSecurity => "graph_security",
            Surface::Defender => "defender",
        }
    }

    pub fn resource(self) -> crate::auth::Resource {
        match self {
            Surface::Defender => crate::auth::Resource::Defender,
            _ => crate::auth::Resource::Graph,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Surface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Graph identity read costs in resource units, as Graph's identity and access throttling
/// limits publish them.
pub mod cost {
    /// `GET /groups/{id}/members`, one page.
    pub const MEMBERS_PAGE: u32 = 3;
    /// `GET /users`.
    pub const USERS: u32 = 2;
    /// Anything else, and every request on the surfaces counted per request.
    pub const OTHER: u32 = 1;
}

/// `count` requests (or resource units) per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: u32, per: Duration) -> Self {
        Self { count, per }
    }

    /// The same period with `factor` times the count (fast tests and benchmarks).
    pub fn scaled(self, factor: u32) -> Self {
        Self {
            count: self.count.saturating_mul(factor),
            per: self.per,
        }
    }
}

/// Client-side quotas per surface, at the documented service limits by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Resource units per window (small tenant: 3,500 per 10 s).
    pub graph_reads: Rate,
    /// 3,000 writes per 150 s (app + tenant).
    pub graph_writes: Rate,
    /// 150 per minute (alerts; incidents are not documented, so budgeted the same).
    pub graph_security: Rate,
    /// MDE: 100 per minute **and** 1,500 per hour; both must allow.
    pub defender_per_minute: Rate,
    pub defender_per_hour: Rate,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            graph_reads: Rate::new(3_500, Duration::from_secs(10)),
            graph_writes: Rate::new(3_000, Duration::from_secs(150)),
            graph_security: Rate::new(150, Duration::from_secs(60)),
            defender_per_minute: Rate::new(100, Duration::from_secs(60)),
            defender_per_hour: Rate::new(1_500, Duration::from_secs(3_600)),
        }
    }
}

impl Quotas {
    /// Every quota multiplied by `factor` (same windows).
    pub fn scaled(&self, factor: u32) -> Self {
        Self {
            graph_reads: self.graph_reads.scaled(factor),
            graph_writes: self.graph_writes.scaled(factor),
            graph_security: self.graph_security.scaled(factor),
            defender_per_minute: self.defender_per_minute.scaled(factor),
            defender_per_hour: self.defender_per_hour.scaled(factor),
        }
    }
}

/// Member-write envelopes in flight by default. Sending them one at a time, the writes left
/// over once a full write window frees are paced by the round trip: the window frees cells at
/// the pace the first 3,000 were answered, so with a round trip of `r` per envelope the tail
/// takes `envelopes × r / in_flight`. At Graph's few hundred milliseconds per `$batch` of 20
/// PATCHes, 4 keeps that tail under a tenth of the 150 s window for 100,000 adds. The window
/// limiter, not this figure, keeps the rate within the quota.
pub const DEFAULT_WRITE_BATCHES_IN_FLIGHT: usize = 4;

/// How failed requests are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_retry_time: Duration,
    /// First exponential delay; each next one is `factor` times longer, up to `max_delay`.
    pub base_delay: Duration,
    pub factor: f32,
    pub max_delay: Duration,
    /// Adds a random delay in `[0, delay)` on top of each exponential delay (never less).
    pub jitter: bool,
    /// Added to every `Retry-After` wait so a request never arrives a hair early.
    pub retry_after_margin: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_retry_time: Duration::from_secs(300),
            base_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: true,
            retry_after_margin: Duration::from_millis(20),
        }
    }
}

/// The default of [`Settings::max_body_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;

/// Everything the HTTP layer needs besides the token source.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Graph root without version, e.g. `https://graph.microsoft.com`.
    pub graph_root: Url,
    /// MDE API root, e.g. `https://api.security.microsoft.com`.
    pub defender_root: Url,
    pub connect_timeout: Duration,
    /// Whole-request timeout (send and read the body).
    pub request_timeout: Duration,
    pub retry: RetrySettings,
    pub quotas: Quotas,
    /// Member-write `$batch` envelopes sent at once (at least 1).
    pub write_batches_in_flight: usize,
    /// Every endpoint the client is used for (the API roots, the token endpoint, the webhook)
    /// is loopback. Only then may it speak plain http, and it then uses no proxy at all, so a
    /// proxy from the environment never sees loopback traffic or the secret in it. Otherwise
    /// the client is https-only: through a proxy that is a CONNECT tunnel the proxy cannot read.
    pub loopback_only: bool,
    /// The largest response body read; a longer one is an error naming the endpoint. A page of
    /// 10,000 MDE machines is tens of megabytes, so the default leaves room several times over.
    pub max_body_bytes: u64,
    /// How long a reconcile pass may keep retrying throttled requests before it ends as
    /// "not converged: throttled" (the next pass carries on).
    pub pass_deadline: Duration,
}

/// The default pass deadline: a first reconcile of 100,000 users is 5,000 `$batch` PATCHes of
/// 20, which Graph's 3,000 writes per 150 s allow in a little over 4 minutes, and 50,000
/// devices are 100 tag calls, well inside MDE's 100 per minute; half an hour leaves room for
/// a service granting a fraction of that. The daemon caps it at the reconcile interval.
pub const DEFAULT_PASS_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl Settings {
    /// Documented defaults for the given roots.
    pub fn new(graph_root: Url, defender_root: Url) -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetrySettings::default(),
            quotas: Quotas::default(),
            write_batches_in_flight: DEFAULT_WRITE_BATCHES_IN_FLIGHT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            loopback_only: crate::config::is_loopback(&graph_root)
                && crate::config::is_loopback(&defender_root),
            pass_deadline: DEFAULT_PASS_DEADLINE,
            graph_root,
            defender_root,
        }
    }
}
