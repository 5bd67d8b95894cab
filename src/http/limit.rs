//! Client-side rate limiters per surface (governor) and the per-surface "not before" instant
//! a `Retry-After` sets, which holds back every request to that surface until it passes.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::{Quotas, Rate, Surface};

type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

struct Limiter {
    inner: Direct,
    burst: u32,
}

impl Limiter {
    fn new(rate: Rate) -> Self {
        let count = NonZeroU32::new(rate.count.max(1)).expect("count is at least 1");
        let per_cell = (rate.per / count.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(per_cell)
            .expect("period is positive")
            .allow_burst(count);
        Self {
            inner: RateLimiter::direct(quota),
            burst: count.get(),
        }
    }

    /// Waits until `n` cells are allowed and takes them. A cost above the burst size is
    /// clamped to it (it could never pass otherwise).
    async fn acquire(&self, n: u32) {
        let n = NonZeroU32::new(n.clamp(1, self.burst)).expect("n is at least 1");
        loop {
            match self.inner.check_n(n) {
                Ok(Ok(())) => return,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    // governor's clock is not tokio's; sleep at least a little so a paused
                    // tokio clock cannot spin here.
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                Err(_) => unreachable!("n is clamped to the burst size"),
            }
        }
    }
}

/// The limiters and not-before gates of all surfaces.
pub(crate) struct Limits {
    graph_reads: Limiter,
    graph_writes: Limiter,
    graph_security: Limiter,
    defender_minute: Limiter,
    defender_hour: Limiter,
    not_before: [Mutex<Option<Instant>>; 4],
}

impl Limits {
    pub(crate) fn new(q: &Quotas) -> Self {
        Self {
            graph_reads: Limiter::new(q.graph_reads),
            graph_writes: Limiter::new(q.graph_writes),
            graph_security: Limiter::new(q.graph_security),
            defender_minute: Limiter::new(q.defender_per_minute),
            defender_hour: Limiter::new(q.defender_per_hour),
            not_before: Default::default(),
        }
    }

    /// Waits until a request of `cost` may be sent to `surface`: first any `Retry-After` in
    /// force for the surface, then its limiter(s). MDE has two windows and both must allow.
    pub(crate) async fn acquire(&self, surface: Surface, cost: u32) {
        self.wait_not_before(surface).await;
        match surface {
            Surface::GraphRead => self.graph_reads.acquire(cost).await,
            Surface::GraphWrite => self.graph_writes.acquire(cost).await,
            Surface::GraphSecurity => self.graph_security.acquire(cost).await,
            Surface::Defender => {
                // The hourly window binds first; each cell is taken once from each window.
                self.defender_hour.acquire(cost).await;
                self.defender_minute.acquire(cost).await;
            }
        }
        // A Retry-After may have arrived while waiting for the limiter.
        self.wait_not_before(surface).await;
    }

    async fn wait_not_before(&self, surface: Surface) {
        loop {
            let until = *self.not_before[gate(surface)]
                .lock()
                .expect("not-before lock");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// No request to `surface` is sent before `until` (a later instant wins).
    pub(crate) fn hold_until(&self, surface: Surface, until: Instant) {
        let mut nb = self.not_before[gate(surface)]
            .lock()
            .expect("not-before lock");
        if nb.is_none_or(|t| t < until) {
            *nb = Some(until);
        }
    }
}

/// The `Retry-After` gate of a surface. Graph directory reads and writes share one: a 429's
/// throttle scope may be `ReadWrite` (api-facts C.2), and the service counts every request of
/// the app to the directory against it, so a wait on either holds both.
fn gate(surface: Surface) -> usize {
    match surface {
        Surface::GraphRead | Surface::GraphWrite => Surface::GraphRead.index(),
        other => other.index(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_after_holds_back_the_whole_surface() {
        let limits = Limits::new(&Quotas::default().scaled(1000));
        let start = Instant::now();
        limits.hold_until(Surface::Defender, start + Duration::from_millis(300));
        // An earlier hold never shortens a later one.
        limits.hold_until(Surface::Defender, start + Duration::from_millis(100));
        // Other surfaces are not held.
        let other = tokio::time::timeout(
            Duration::from_millis(250),
            limits.acquire(Surface::GraphRead, 3),
        )
        .await;
        assert!(
            other.is_ok(),
            "graph reads are not held by a defender Retry-After"
        );
        limits.acquire(Surface::Defender, 1).await;
        assert!(Instant::now() - start >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn burst_is_the_quota_then_it_waits() {
        let limiter = Limiter::new(Rate::new(5, Duration::from_secs(3600)));
        for _ in 0..5 {
            limiter.acquire(1).await;
        }
        let sixth = tokio::time::timeout(Duration::from_millis(50), limiter.acquire(1)).await;
        assert!(sixth.is_err(), "the sixth cell must wait for the window");
    }
}
