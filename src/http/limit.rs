//! Client-side rate limiters per surface and the per-surface "not before" instant a
//! `Retry-After` sets, which holds back every request to that surface until it passes.
//!
//! Graph directory quotas are windows per app and tenant ("3,000 writes per 2 min 30 s" and
//! resource units "per 10 s" in Graph's published identity and access throttling limits), and
//! every write also costs one resource unit, so directory reads and writes share one
//! resource-unit [`Window`] and writes have their own besides; cells count from when the answer
//! came back. The other surfaces use governor's token buckets.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use tracing::info;

use super::adapt::{Pace, Slots};
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

/// A sliding-window limiter: at most `limit` cells within any `per`, a cell counting from the
/// moment its request's answer arrived (the service counted it at some instant before that).
///
/// Why not a token bucket: a bucket of `limit` cells refills one cell every `per / limit`, so
/// right after a full burst it lets cells through that a window quota still refuses, and the
/// service answers 429. Why stamp at the answer: a cell stamped when it was taken would expire
/// before the service's own record of the call when the request was slow to arrive; stamped at
/// the answer it never expires early, so several requests in flight at once never arrive at a
/// full window because of our own traffic.
pub(crate) struct Window {
    limit: u32,
    per: Duration,
    state: Mutex<WindowState>,
    /// Woken when a permit is dropped (its cells move from in flight to the window).
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct WindowState {
    /// Cells of requests not answered yet: they count until they are stamped.
    in_flight: u32,
    /// Answered cells in stamp order, with the instant of the answer.
    done: VecDeque<(Instant, u32)>,
    done_cells: u32,
}

impl WindowState {
    fn expire(&mut self, now: Instant, per: Duration) {
        while let Some(&(t, n)) = self.done.front() {
            if t + per <= now {
                self.done_cells -= n;
                self.done.pop_front();
            } else {
                break;
            }
        }
    }

    /// When enough answered cells will have left the window for `n` more to fit, or `None`
    /// when only cells still in flight stand in the way (their answer frees them first).
    fn fits_at(&self, n: u32, limit: u32, per: Duration) -> Option<Instant> {
        let mut used = self.in_flight + self.done_cells;
        for &(t, c) in &self.done {
            used -= c;
            if used + n <= limit {
                return Some(t + per);
            }
        }
        None
    }
}

impl Window {
    pub(crate) fn new(rate: Rate) -> Arc<Self> {
        Arc::new(Self {
            limit: rate.count.max(1),
            per: rate.per,
            state: Mutex::new(WindowState::default()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Waits until `n` cells fit in the window and takes them. A cost above the limit is
    /// clamped to it (it could never pass otherwise). The cells count as in flight until the
    /// returned permit is dropped, which stamps them with that instant.
    pub(crate) async fn acquire(self: &Arc<Self>, n: u32) -> Permit {
        loop {
            // Registered before the state is read, so a permit dropped in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let fits_at = {
                let mut st = self.state.lock().expect("window lock");
                let now = Instant::now();
                st.expire(now, self.per);
                let n = n.clamp(1, self.limit);
                if st.in_flight + st.done_cells + n <= self.limit {
                    st.in_flight += n;
                    return Permit {
                        windows: vec![(self.clone(), n)],
                    };
                }
                st.fits_at(n, self.limit, self.per)
            };
            match fits_at {
                // At least 1 ms, so a paused tokio clock cannot spin here.
                Some(t) => {
                    let t = t.max(Instant::now() + Duration::from_millis(1));
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        () = &mut freed => {}
                    }
                }
                None => freed.await,
            }
        }
    }

    /// Takes back up to `n` of the newest answered cells: the service refused those calls, so
    /// they do not count against its window.
    fn refund(&self, n: u32) {
        {
            let mut st = self.state.lock().expect("window lock");
            let mut left = n;
            while left > 0 {
                let Some(last) = st.done.back_mut() else {
                    break;
                };
                let take = last.1.min(left);
                last.1 -= take;
                left -= take;
                if last.1 == 0 {
                    st.done.pop_back();
                }
                st.done_cells -= take;
            }
        }
        self.freed.notify_waiters();
    }

    fn stamp(&self, n: u32) {
        {
            let mut st = self.state.lock().expect("window lock");
            st.in_flight -= n;
            st.done.push_back((Instant::now(), n));
            st.done_cells += n;
        }
        self.freed.notify_waiters();
    }
}

/// Cells taken from a [`Window`]; dropping it (once the answer arrived, or the attempt failed)
/// stamps them. Permits of token-bucket surfaces carry nothing.
#[must_use = "the cells count from when the permit is dropped"]
pub(crate) struct Permit {
    windows: Vec<(Arc<Window>, u32)>,
}

impl Permit {
    fn none() -> Self {
        Self {
            windows: Vec::new(),
        }
    }

    fn and(mut self, mut other: Permit) -> Self {
        self.windows.append(&mut other.windows);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for (window, n) in self.windows.drain(..) {
            window.stamp(n);
        }
    }
}

/// The limiters and not-before gates of all surfaces.
pub(crate) struct Limits {
    graph_reads: Arc<Window>,
    graph_writes: Arc<Window>,
    graph_security: Limiter,
    defender_minute: Limiter,
    defender_hour: Limiter,
    /// The rate each surface has learned the service grants (see `adapt`), by [`Surface::index`].
    paces: [Pace; 4],
    not_before: [Mutex<Option<Instant>>; 4],
    /// `$batch` envelopes in flight per surface.
    slots: [Slots; 4],
}

impl Limits {
    pub(crate) fn new(q: &Quotas, envelopes_in_flight: usize) -> Self {
        Self {
            graph_reads: Window::new(q.graph_reads),
            graph_writes: Window::new(q.graph_writes),
            graph_security: Limiter::new(q.graph_security),
            defender_minute: Limiter::new(q.defender_per_minute),
            defender_hour: Limiter::new(q.defender_per_hour),
            paces: Surface::ALL.map(|s| {
                let r = match s {
                    Surface::GraphRead => q.graph_reads,
                    Surface::GraphWrite => q.graph_writes,
                    Surface::GraphSecurity => q.graph_security,
                    Surface::Defender => q.defender_per_minute,
                };
                Pace::new(r.count, r.per)
            }),
            not_before: Default::default(),
            slots: std::array::from_fn(|_| Slots::new(envelopes_in_flight)),
        }
    }

    /// Waits until a request of `cost` may be sent to `surface`: first any `Retry-After` in
    /// force for the surface, then its limiter(s). MDE has two windows and both must allow.
    /// Keep the permit until the answer has arrived (see [`Window`]).
    pub(crate) async fn acquire(&self, surface: Surface, cost: u32) -> Permit {
        self.wait_not_before(surface).await;
        self.paces[surface.index()].acquire(cost).await;
        let permit = match surface {
            Surface::GraphRead => self.graph_reads.acquire(cost).await,
            Surface::GraphWrite => {
                // Graph's identity throttling charges a write one resource unit besides its
                // write.
                let write = self.graph_writes.acquire(cost).await;
                write.and(self.graph_reads.acquire(cost).await)
            }
            Surface::GraphSecurity => {
                self.graph_security.acquire(cost).await;
                Permit::none()
            }
            Surface::Defender => {
                // The hourly window binds first; each cell is taken once from each window.
                self.defender_hour.acquire(cost).await;
                self.defender_minute.acquire(cost).await;
                Permit::none()
            }
        };
        // A Retry-After may have arrived while waiting for the limiter.
        self.wait_not_before(surface).await;
        permit
    }

    /// The rate the service grants `surface` as learned and the configured rate, per second,
    /// and the `$batch` envelopes it may have in flight.
    pub(crate) fn learned(&self, surface: Surface) -> (f64, f64, usize) {
        let (rate, budget) = self.paces[surface.index()].rates();
        (rate, budget, self.slots[surface.index()].cap())
    }

    pub(crate) fn slots(&self, surface: Surface) -> &Slots {
        &self.slots[surface.index()]
    }

    /// The service throttled `cells` of `surface`: they are taken back from the windows they
    /// were charged to (the service did not count them), and the surface slows down. One INFO
    /// line when it drops below the configured rate.
    pub(crate) fn throttled(&self, surface: Surface, cells: u32) {
        match surface {
            Surface::GraphRead => self.graph_reads.refund(cells),
            Surface::GraphWrite => {
                self.graph_writes.refund(cells);
                self.graph_reads.refund(cells);
            }
            Surface::GraphSecurity | Surface::Defender => {}
        }
        let (old, new) = self.paces[surface.index()].throttled();
        self.slots[surface.index()].throttled();
        let (_, budget) = self.paces[surface.index()].rates();
        if old >= budget && new < old {
            info!(surface = %surface, rate_per_s = new, budget_per_s = budget,
                  "the service throttles below the configured budget; slowing down");
        }
    }

    /// An answer of `surface` was accepted: the surface grows back toward its budget. One INFO
    /// line when it is back at the budget.
    pub(crate) fn accepted(&self, surface: Surface) {
        let (old, new) = self.paces[surface.index()].accepted();
        let (_, budget) = self.paces[surface.index()].rates();
        if old < new {
            self.slots[surface.index()].quiet();
        }
        if new >= budget && old < budget {
            info!(surface = %surface, budget_per_s = budget,
                  "the service accepts the configured budget again");
        }
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

    /// The instant a `Retry-After` holds `surface` until, while it is in force.
    pub(crate) fn held_until(&self, surface: Surface) -> Option<Instant> {
        let until = *self.not_before[gate(surface)]
            .lock()
            .expect("not-before lock");
        until.filter(|t| *t > Instant::now())
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
/// throttle scope (its `x-ms-throttle-scope` header) may be `ReadWrite`, and the service counts
/// every request of the app to the directory against it, so a wait on either holds both.
fn gate(surface: Surface) -> usize {
    match surface {
        Surface::GraphRead | Surface::GraphWrite => Surface::GraphRead.index(),
        other => other.index(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_back_the_whole_surface() {
        let limits = Limits::new(&Quotas::default().scaled(1000), 1);
        let start = Instant::now();
        limits.hold_until(Surface::Defender, start + Duration::from_millis(300));
        // An earlier hold never shortens a later one.
        limits.hold_until(Surface::Defender, start + Duration::from_millis(100));
        // Other surfaces are not held: with the clock paused, no time passes while they wait.
        drop(limits.acquire(Surface::GraphRead, 3).await);
        assert_eq!(
            Instant::now(),
            start,
            "graph reads are not held by a defender Retry-After"
        );
        drop(limits.acquire(Surface::Defender, 1).await);
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn window_admits_the_limit_then_waits_for_the_oldest_answer() {
        let per = Duration::from_secs(150);
        let window = Window::new(Rate::new(40, per));
        let start = Instant::now();
        // Two requests of 20 cells, answered 1 s and 3 s after the start.
        let a = window.acquire(20).await;
        let b = window.acquire(20).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(a);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(b);
        // A token bucket would have refilled a cell every 3.75 s; the window refuses until
        // the first answer is `per` old, then admits exactly what left the window.
        let c = window.acquire(20).await;
        assert_eq!(Instant::now() - start, per + Duration::from_secs(1));
        drop(c);
        let d = window.acquire(20).await;
        assert_eq!(Instant::now() - start, per + Duration::from_secs(3));
        drop(d);
        let e = tokio::time::timeout(Duration::from_secs(100), window.acquire(1)).await;
        assert!(
            e.is_err(),
            "the window is full again until c's answer is old"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cells_in_flight_count_until_their_answer_and_from_then() {
        let per = Duration::from_secs(10);
        let window = Window::new(Rate::new(20, per));
        let start = Instant::now();
        let in_flight = window.acquire(20).await;
        // However long the answer takes, nothing more is sent while it is out...
        let waiting = tokio::spawn({
            let window = window.clone();
            async move {
                let p = window.acquire(5).await;
                drop(p);
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished(), "cells in flight still count");
        drop(in_flight);
        // ...and the cells count for a whole window from the answer, not from the send.
        let admitted = waiting.await.unwrap();
        assert_eq!(admitted - start, Duration::from_secs(30) + per);
        // A cost above the limit is clamped, not refused for ever.
        let big = tokio::time::timeout(per * 3, window.acquire(1_000)).await;
        assert!(big.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_takes_a_resource_unit_so_reads_cannot_fill_the_window_under_it() {
        let limits = Limits::new(
            &Quotas {
                graph_reads: Rate::new(100, Duration::from_secs(10)),
                ..Quotas::default()
            },
            1,
        );
        let start = Instant::now();
        let reads = limits.acquire(Surface::GraphRead, 90).await;
        let writes = limits.acquire(Surface::GraphWrite, 10).await;
        drop((reads, writes));
        // The resource-unit window is full: the next write waits for it, though the write
        // window has room.
        let next = limits.acquire(Surface::GraphWrite, 1).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        drop(next);
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
