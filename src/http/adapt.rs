//! How fast each API surface may send, learned from the service's answers: the decisions are
//! pure functions of the figures observed, so they are tested without a clock or a server.
//!
//! The scheme is the AWS SDKs' "adaptive" retry mode reduced to its core: a client-side token
//! bucket per surface whose fill rate is cut multiplicatively on a throttled answer and grown
//! back while answers are accepted, on top of the configured budget (which it never exceeds).
//! The growth is TCP's AIMD additive increase rather than AWS's CUBIC curve: per budget's
//! worth of accepted cells the rate grows by a quarter of the budget rate, so it recovers from
//! a halving in a few windows and probes above what was refused only gently. Why a rate and
//! not a learned window count: the service's window length is not ours to know (Graph counts
//! writes per 150 s and resource units per 10 s, a busy tenant shares them with other apps),
//! and a count learned against the wrong length either stalls for a whole window or bursts; a
//! rate holds whatever the length. Why not Google SRE client-side throttling: it drops requests
//! locally with a probability from the accept ratio, which suits many independent callers;
//! here one caller owns a queue of writes that must all be sent, so the question is *when*,
//! not *whether*. Several throttled answers to requests sent together are one signal: the rate
//! is cut at most once per `CUT_SPACING`. `Retry-After` stays a separate hard floor.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Throttled answers closer together than this are one congestion signal (the envelopes that
/// were in flight together), not several.
pub(crate) const CUT_SPACING: Duration = Duration::from_millis(250);

/// The multiplicative decrease (TCP's and AWS's β is 0.5 and 0.7; 0.5 reaches a quarter of the
/// budget in two cuts).
const BETA: f64 = 0.5;

/// The rate never falls below this share of the budget rate (a floor for a long run of random
/// throttling; a real quota that low is still met by `Retry-After`).
const FLOOR: f64 = 1.0 / 64.0;

/// The rate (cells per second) after a throttled answer.
pub(crate) fn cut(rate: f64, budget_rate: f64) -> f64 {
    (rate * BETA).max(budget_rate * FLOOR)
}

/// The rate after `cells` were accepted: a quarter of the budget rate more per budget's worth
/// of cells (`budget_cells`), up to the budget rate.
pub(crate) fn grow(rate: f64, cells: u32, budget_rate: f64, budget_cells: u32) -> f64 {
    let step = budget_rate / 4.0 * f64::from(cells) / f64::from(budget_cells.max(1));
    (rate + step).min(budget_rate)
}

/// The learned send rate of one surface, enforced as a token bucket that holds one window's
/// worth of cells at that rate (GCRA: each request moves the theoretical arrival time on by
/// its cells over the rate, and may be up to one window ahead of now). The bucket is a window
/// deep because the service counts per window: right after a `Retry-After` its window is
/// free, and what it grants per window may go at once.
pub(crate) struct Pace {
    budget_rate: f64,
    budget_cells: u32,
    per: Duration,
    state: Mutex<PaceState>,
}

struct PaceState {
    rate: f64,
    /// Theoretical arrival time of the next cell.
    tat: Instant,
    last_cut: Option<Instant>,
}

impl Pace {
    pub(crate) fn new(budget_cells: u32, per: Duration) -> Self {
        let budget_rate = f64::from(budget_cells.max(1)) / per.as_secs_f64().max(1e-9);
        Self {
            budget_rate,
            budget_cells: budget_cells.max(1),
            per,
            state: Mutex::new(PaceState {
                rate: budget_rate,
                tat: Instant::now(),
                last_cut: None,
            }),
        }
    }

    /// Waits until `cells` may go at the learned rate; free while the rate is the budget's
    /// (the configured limiters govern then).
    pub(crate) async fn acquire(&self, cells: u32) {
        loop {
            let wait = {
                let mut st = self.state.lock().expect("pace lock");
                if st.rate >= self.budget_rate {
                    return;
                }
                let now = Instant::now();
                let allowed = st.tat.checked_sub(self.per).unwrap_or(now);
                if now >= allowed {
                    let cost = Duration::from_secs_f64(f64::from(cells.max(1)) / st.rate);
                    st.tat = st.tat.max(now) + cost;
                    return;
                }
                allowed - now
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// A throttled answer: the rate is cut (once per burst of answers). Returns the rate
    /// before and after, per second.
    pub(crate) fn throttled(&self) -> (f64, f64) {
        let mut st = self.state.lock().expect("pace lock");
        let now = Instant::now();
        let old = st.rate;
        if st.last_cut.is_none_or(|t| now >= t + CUT_SPACING) {
            st.rate = cut(old, self.budget_rate);
            st.last_cut = Some(now);
        }
        (old, st.rate)
    }

    /// `cells` accepted: the rate grows back, unless the service throttled within the last
    /// second (the answers of requests sent before the cut). Returns the rate before and after.
    pub(crate) fn accepted(&self, cells: u32) -> (f64, f64) {
        let mut st = self.state.lock().expect("pace lock");
        let old = st.rate;
        let recent = st
            .last_cut
            .is_some_and(|t| Instant::now() < t + Duration::from_secs(1));
        if !recent {
            st.rate = grow(old, cells, self.budget_rate, self.budget_cells);
        }
        (old, st.rate)
    }

    /// The learned rate and the budget rate, per second.
    pub(crate) fn rates(&self) -> (f64, f64) {
        (self.state.lock().expect("pace lock").rate, self.budget_rate)
    }
}

/// Envelopes in flight after a throttled answer: half, at least one.
pub(crate) fn cut_slots(cap: usize) -> usize {
    (cap / 2).max(1)
}

/// Envelopes in flight after a quiet window: one more, up to the configured figure.
pub(crate) fn grow_slots(cap: usize, budget: usize) -> usize {
    (cap + 1).min(budget.max(1))
}

/// How many `$batch` envelopes of one surface may be out at once: the configured figure,
/// halved on a throttled answer and grown back by one per quiet window. Fewer envelopes in
/// flight means fewer requests already on their way when a `Retry-After` comes back.
pub(crate) struct Slots {
    budget: usize,
    state: Mutex<SlotState>,
    freed: tokio::sync::Notify,
}

struct SlotState {
    cap: usize,
    busy: usize,
}

impl Slots {
    pub(crate) fn new(budget: usize) -> Self {
        let budget = budget.max(1);
        Self {
            budget,
            state: Mutex::new(SlotState {
                cap: budget,
                busy: 0,
            }),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Waits for a free slot and takes it until the returned guard is dropped.
    pub(crate) async fn acquire(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state.lock().expect("slots lock");
                if st.busy < st.cap {
                    st.busy += 1;
                    return Slot { slots: self };
                }
            }
            freed.await;
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.state.lock().expect("slots lock").cap
    }

    pub(crate) fn throttled(&self) {
        let mut st = self.state.lock().expect("slots lock");
        st.cap = cut_slots(st.cap);
    }

    pub(crate) fn quiet(&self) {
        {
            let mut st = self.state.lock().expect("slots lock");
            st.cap = grow_slots(st.cap, self.budget);
        }
        self.freed.notify_waiters();
    }
}

/// A taken slot; dropping it frees it.
pub(crate) struct Slot<'a> {
    slots: &'a Slots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.state.lock().expect("slots lock").busy -= 1;
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_halves_down_to_a_floor_and_growth_stops_at_the_budget() {
        assert_eq!(cut(20.0, 20.0), 10.0);
        assert_eq!(cut(0.3, 20.0), 20.0 / 64.0);
        // A budget's worth of cells accepted: a quarter of the budget rate more.
        assert_eq!(grow(5.0, 3_000, 20.0, 3_000), 10.0);
        assert_eq!(
            grow(5.0, 20, 20.0, 3_000),
            5.0 + 20.0 / 4.0 * 20.0 / 3_000.0
        );
        assert_eq!(grow(19.0, 3_000, 20.0, 3_000), 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_paces_requests_and_answers_together_cut_once() {
        let pace = Pace::new(100, Duration::from_secs(10));
        let start = Instant::now();
        // At the budget the pace is free: the configured limiter governs.
        pace.acquire(50).await;
        assert_eq!(Instant::now(), start);
        assert_eq!(pace.throttled(), (10.0, 5.0));
        assert_eq!(
            pace.throttled(),
            (5.0, 5.0),
            "one signal within the spacing"
        );
        // 5 cells per second, up to a window (10 s) ahead: 60 cells go at once, then 20
        // more wait until the first 20 are a window old.
        for _ in 0..3 {
            pace.acquire(20).await;
        }
        assert_eq!(Instant::now(), start);
        pace.acquire(20).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        // No growth within a second of the cut; then growth.
        assert_eq!(pace.accepted(100).1, 7.5);
    }

    #[test]
    fn slots_halve_on_throttle_and_grow_back_by_one() {
        assert_eq!(cut_slots(4), 2);
        assert_eq!(cut_slots(1), 1);
        assert_eq!(grow_slots(1, 4), 2);
        assert_eq!(grow_slots(4, 4), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_leaves_fewer_envelopes_out() {
        let slots = Slots::new(2);
        let a = slots.acquire().await;
        slots.throttled();
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire());
        assert!(
            waiting.await.is_err(),
            "one slot after the cut, and it is taken"
        );
        drop(a);
        let _b = slots.acquire().await;
        slots.quiet();
        assert_eq!(slots.cap(), 2);
        let _c = slots.acquire().await;
    }
}
