//! Counters of what the HTTP layer did, for metrics: cheap atomics inside, a plain snapshot out.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::Surface;

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Indexed like [`Surface::ALL`].
    pub surfaces: [SurfaceStats; 4],
    /// `$batch` envelopes sent (their items are counted under their own surfaces).
    pub batch_envelopes: u64,
    /// Retries of any kind (a whole request, or the failed items of a batch).
    pub retries: u64,
    /// Throttled requests or `$batch` envelopes given up because the pass deadline came.
    pub throttled_at_deadline: u64,
}

impl Stats {
    pub fn surface(&self, s: Surface) -> &SurfaceStats {
        &self.surfaces[s.index()]
    }

    pub fn total_requests(&self) -> u64 {
        self.surfaces.iter().map(SurfaceStats::total).sum()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SurfaceStats {
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// No response at all (connect failure, timeout).
    pub transport_errors: u64,
    /// 429 responses (and 503 with Retry-After).
    pub throttled: u64,
    /// Time waited because of `Retry-After`, in milliseconds.
    pub retry_after_wait_ms: u64,
    /// Calls (or resource units) per second the service grants, as learned from its
    /// answers: the configured rate until it throttles.
    pub granted_per_s: f64,
    /// The configured rate per second.
    pub budget_per_s: f64,
    /// `$batch` envelopes allowed in flight at once.
    pub envelopes_in_flight: usize,
}

impl SurfaceStats {
    pub fn total(&self) -> u64 {
        self.status_2xx
            + self.status_3xx
            + self.status_4xx
            + self.status_5xx
            + self.transport_errors
    }
}

#[derive(Default)]
struct Counters {
    by_class: [AtomicU64; 5],
    throttled: AtomicU64,
    retry_after_wait_ms: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Recorder {
    surfaces: [Counters; 4],
    batch_envelopes: AtomicU64,
    retries: AtomicU64,
    throttled_at_deadline: AtomicU64,
}

impl Recorder {
    /// One response (`Some(status)`) or transport failure (`None`) on `surface`.
    pub(crate) fn response(&self, surface: Surface, status: Option<u16>) {
        let class = match status {
            Some(s @ 200..=599) => (s / 100 - 2) as usize,
            Some(_) => 0,
            None => 4,
        };
        self.surfaces[surface.index()].by_class[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn throttled(&self, surface: Surface) {
        self.surfaces[surface.index()]
            .throttled
            .fetch_add(1, Relaxed);
    }

    pub(crate) fn retry_after_wait(&self, surface: Surface, d: Duration) {
        self.surfaces[surface.index()]
            .retry_after_wait_ms
            .fetch_add(d.as_millis() as u64, Relaxed);
    }

    pub(crate) fn batch_envelope(&self) {
        self.batch_envelopes.fetch_add(1, Relaxed);
    }

    pub(crate) fn throttled_at_deadline(&self) {
        self.throttled_at_deadline.fetch_add(1, Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut out = Stats {
            batch_envelopes: self.batch_envelopes.load(Relaxed),
            retries: self.retries.load(Relaxed),
            throttled_at_deadline: self.throttled_at_deadline.load(Relaxed),
            ..Stats::default()
        };
        for (c, s) in self.surfaces.iter().zip(out.surfaces.iter_mut()) {
            let n = |i: usize| c.by_class[i].load(Relaxed);
            *s = SurfaceStats {
                status_2xx: n(0),
                status_3xx: n(1),
                status_4xx: n(2),
                status_5xx: n(3),
                transport_errors: n(4),
                throttled: c.throttled.load(Relaxed),
                retry_after_wait_ms: c.retry_after_wait_ms.load(Relaxed),
                ..SurfaceStats::default()
            };
        }
        out
    }
}
