//! How fast each API surface may send, learned from the service's answers: the decisions are
//! pure functions of the figures observed, so they are tested without a clock or a server.
//!
//! The scheme is the AWS SDKs' "adaptive" retry mode reduced to its core: a client-side token
//! bucket per surface whose fill rate is cut multiplicatively on a throttled answer and grown
//! back with time after a cut, up to the configured budget (which it never
//! exceeds). The growth is TCP's AIMD additive increase, timed like AWS's CUBIC curve rather
//! than counted per accepted cell: a quarter of the budget rate per [`RECOVERY`], so a halving
//! is regained within seconds whatever rate the cut left. Why a rate and
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

/// How long the rate takes to grow back by a quarter of the budget rate once the service
/// accepts again. Growth is by time, as in CUBIC and the AWS SDKs' adaptive mode (which
/// regain the rate before a cut within seconds), not by accepted cells: a rate that grows
/// per accepted cell grows slowest where it was cut deepest, so a surface cut to its floor
/// stays there for minutes while every send waits on the pace.
pub(crate) const RECOVERY: Duration = Duration::from_secs(2);

/// No growth this soon after a cut: the answers to requests sent before it are still coming.
const SETTLE: Duration = Duration::from_secs(1);

/// The rate `elapsed` after it was `rate`, growing by a quarter of the budget rate per
/// [`RECOVERY`], up to the budget rate.
pub(crate) fn grow(rate: f64, elapsed: Duration, budget_rate: f64) -> f64 {
    let step = budget_rate / 4.0 * elapsed.as_secs_f64() / RECOVERY.as_secs_f64();
    (rate + step).min(budget_rate)
}

/// The learned send rate of one surface, enforced as a token bucket that holds one window's
/// worth of cells at that rate (GCRA: each request moves the theoretical arrival time on by
/// its cells over the rate, and may be up to one window ahead of now). The bucket is a window
/// deep because the service counts per window: right after a `Retry-After` its window is
/// free, and what it grants per window may go at once. When the rate changes, the cells
/// already booked ahead are re-timed at the new rate, so a recovered rate shortens the wait
/// of what was booked at the low one.
pub(crate) struct Pace {
    budget_rate: f64,
    per: Duration,
    state: Mutex<PaceState>,
}

struct PaceState {
    rate: f64,
    /// Theoretical arrival time of the next cell.
    tat: Instant,
    last_cut: Option<Instant>,
    /// When the rate last grew (or was cut): growth counts from here.
    grown: Instant,
}

impl PaceState {
    /// Sets the rate at `now`, re-timing the cells booked ahead of `now`.
    fn set_rate(&mut self, rate: f64, now: Instant) {
        if let Some(ahead) = self.tat.checked_duration_since(now) {
            self.tat = now + ahead.mul_f64(self.rate / rate);
        }
        self.rate = rate;
    }

    /// Grows the rate for the time since it last changed, unless a cut is too recent.
    fn grow_to(&mut self, now: Instant, budget_rate: f64) {
        let since = match self.last_cut {
            Some(cut) if now < cut + SETTLE => return,
            Some(cut) => self.grown.max(cut + SETTLE),
            None => self.grown,
        };
        let rate = grow(self.rate, now.saturating_duration_since(since), budget_rate);
        if rate > self.rate {
            self.set_rate(rate, now);
        }
        self.grown = now;
    }
}

impl Pace {
    pub(crate) fn new(budget_cells: u32, per: Duration) -> Self {
        let budget_rate = f64::from(budget_cells.max(1)) / per.as_secs_f64().max(1e-9);
        let now = Instant::now();
        Self {
            budget_rate,
            per,
            state: Mutex::new(PaceState {
                rate: budget_rate,
                tat: now,
                last_cut: None,
                grown: now,
            }),
        }
    }

    /// Waits until `cells` may go at the learned rate; free while the rate is the budget's
    /// (the configured limiters govern then). The rate is re-read at least every second of a
    /// wait, so growth meanwhile shortens it.
    pub(crate) async fn acquire(&self, cells: u32) {
        loop {
            let wait = {
                let mut st = self.state.lock().expect("pace lock");
                let now = Instant::now();
                st.grow_to(now, self.budget_rate);
                if st.rate >= self.budget_rate {
                    return;
                }
                let allowed = st.tat.checked_sub(self.per).unwrap_or(now);
                if now >= allowed {
                    let cost = Duration::from_secs_f64(f64::from(cells.max(1)) / st.rate);
                    st.tat = st.tat.max(now) + cost;
                    return;
                }
                (allowed - now).min(Duration::from_secs(1))
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// A throttled answer: the rate is cut (once per burst of answers). Returns the rate
    /// before and after, per second.
    pub(crate) fn throttled(&self) -> (f64, f64) {
        let mut st = self.state.lock().expect("pace lock");
        let now = Instant::now();
        st.grow_to(now, self.budget_rate);
        let old = st.rate;
        if st.last_cut.is_none_or(|t| now >= t + CUT_SPACING) {
            st.set_rate(cut(old, self.budget_rate), now);
            st.last_cut = Some(now);
            st.grown = now;
        }
        (old, st.rate)
    }

    /// An accepted answer: the rate grows for the time since it last changed (not within
    /// [`SETTLE`] of a cut). Returns the rate before and after.
    pub(crate) fn accepted(&self) -> (f64, f64) {
        let mut st = self.state.lock().expect("pace lock");
        let old = st.rate;
        st.grow_to(Instant::now(), self.budget_rate);
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
    fn cut_halves_down_to_a_floor_and_growth_is_by_time_up_to_the_budget() {
        assert_eq!(cut(20.0, 20.0), 10.0);
        assert_eq!(cut(0.3, 20.0), 20.0 / 64.0);
        // A quarter of the budget rate per RECOVERY, whatever the rate the cut left.
        assert_eq!(grow(5.0, RECOVERY, 20.0), 10.0);
        assert_eq!(grow(0.3125, RECOVERY, 20.0), 5.3125);
        assert_eq!(grow(19.0, RECOVERY, 20.0), 20.0);
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
        // 5 cells per second, up to a window (10 s) ahead: 60 cells go at once; 20 more
        // would wait until the first 20 are a window old, but the rate grows meanwhile.
        for _ in 0..3 {
            pace.acquire(20).await;
        }
        assert_eq!(Instant::now(), start);
        // No growth within a second of the cut.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(pace.accepted(), (5.0, 5.0));
        // Then a quarter of the budget (2.5/s) per RECOVERY.
        tokio::time::advance(Duration::from_millis(500) + RECOVERY).await;
        assert_eq!(pace.accepted(), (5.0, 7.5));
    }

    /// A surface cut to its floor does not stay there: its rate grows back with time even
    /// while nothing is sent, and what was booked at the low rate is re-timed, so a send
    /// booked a minute ahead goes within seconds.
    #[tokio::test(start_paused = true)]
    async fn the_floor_recovers_within_seconds_and_re_times_what_was_booked() {
        let pace = Pace::new(3_000, Duration::from_secs(150));
        for _ in 0..6 {
            pace.throttled();
            tokio::time::advance(CUT_SPACING).await;
        }
        assert_eq!(pace.rates().0, 20.0 / 64.0);
        let start = Instant::now();
        // A window (150 s) of cells at 0.3125/s is 46.9 cells: three envelopes of 20 book
        // 192 s ahead, so the fourth would wait 42 s at the floor rate.
        for _ in 0..4 {
            pace.acquire(20).await;
        }
        let waited = Instant::now() - start;
        assert!(
            waited < Duration::from_secs(5),
            "waited {waited:?} at a rate that recovers"
        );
        tokio::time::advance(4 * RECOVERY).await;
        assert_eq!(pace.accepted().1, 20.0, "back at the budget");
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
