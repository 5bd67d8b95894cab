//! What the simulated tenant counts while it serves: requests, throttling, injected faults,
//! violations, the write log, and the tokens it issued.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::sim::quota::Surface;

/// A call the real service would have made dangerous (e.g. a member `DELETE` without `/$ref`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: String,
}

/// One change the tenant applied through its API (seeding and `/_sim/` controls are not
/// logged): what `/_sim/writes` lists, so tests can prove every change was audited and no
/// desired member was ever removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteRecord {
    pub at: DateTime<Utc>,
    /// `add` | `remove` (group members) or `tag` | `untag` (machines).
    pub op: &'static str,
    /// The group id, or the tag.
    pub target: String,
    /// The member's object id, or the machine id.
    pub object: String,
}

/// At most this many writes are logged; later ones are only counted.
pub const WRITE_LOG_CAP: usize = 1_000_000;

/// Counters reported under `/_sim/stats` and by [`crate::sim::SimHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// HTTP requests received (a `$batch` is one).
    pub http_requests: u64,
    /// HTTP requests per route template, e.g. `GET /v1.0/groups/{id}/members`.
    pub http_by_route: BTreeMap<String, u64>,
    /// API calls per route template: each `$batch` item counts under its own route.
    pub calls_by_route: BTreeMap<String, u64>,
    /// API calls per surface (each `$batch` item individually).
    pub calls_by_surface: BTreeMap<String, u64>,
    /// Calls answered 429 because a quota was exhausted, per surface.
    pub throttled: BTreeMap<String, u64>,
    /// Calls that came before a `Retry-After` given to the same client and surface elapsed.
    pub early_retries: BTreeMap<String, u64>,
    /// Injected faults by kind (`status_503`, `drop`, `slow`, `comment_timeout`,
    /// `token_expiry`).
    pub faults: BTreeMap<String, u64>,
    /// Responses per status code (batch items included).
    pub statuses: BTreeMap<u16, u64>,
    pub tokens_issued: u64,
    pub unauthorized: u64,
    pub violations: Vec<Violation>,
    /// API calls served so far, numbered from 1 in the order the tenant handled them.
    pub calls_seen: u64,
    /// Per route template: the numbers of its first and last call, so a test can tell which
    /// kind of call came before which.
    pub call_span: BTreeMap<String, (u64, u64)>,
}

impl Stats {
    pub fn early_retries_total(&self) -> u64 {
        self.early_retries.values().sum()
    }

    pub fn throttled_total(&self) -> u64 {
        self.throttled.values().sum()
    }

    pub fn calls(&self, route: &str) -> u64 {
        self.calls_by_route.get(route).copied().unwrap_or(0)
    }

    /// The numbers of the first and last call of `route` ([`Stats::call_span`]).
    pub fn span(&self, route: &str) -> Option<(u64, u64)> {
        self.call_span.get(route).copied()
    }
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub audience: Surface,
    pub client: String,
    pub roles: Vec<String>,
    pub expires_ms: i64,
    /// Authenticated requests served with it.
    pub uses: u64,
}
