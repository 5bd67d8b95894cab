//! Service quotas of the simulated tenant: sliding windows per API surface at the documented
//! rates, the `Retry-After` a throttled call gets, the early-retry count, and the quota
//! violations a client committed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The API surfaces the real services throttle separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Surface {
    /// The identity platform token endpoint (not throttled by the simulator).
    Token,
    /// Graph users, groups, devices, `$batch` envelopes and delta.
    GraphDirectory,
    /// Graph `/security/…`.
    GraphSecurity,
    /// Defender for Endpoint `/api/…`.
    Mde,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Token => "token",
            Surface::GraphDirectory => "graph_directory",
            Surface::GraphSecurity => "graph_security",
            Surface::Mde => "mde",
        }
    }
}

/// Quota settings. `scale` shrinks every budget *and* its window by the same factor, so the
/// sustained rate stays the documented one while bursts and `Retry-After` values get short:
/// with `scale = 0.01` MDE allows 1 call per 0.6 s and 15 per 36 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    pub enabled: bool,
    pub scale: f64,
    /// Graph directory resource units per 10 s for app + tenant (8,000 for a large tenant).
    pub graph_ru_per_10s: u64,
    /// Graph directory writes per 150 s.
    pub graph_writes_per_150s: u64,
    /// Graph security calls per minute.
    pub security_per_min: u64,
    /// MDE calls per minute.
    pub mde_per_min: u64,
    /// MDE calls per hour.
    pub mde_per_hour: u64,
    /// What the service really grants, as a share of the budgets above (a service throttling
    /// harder than documented: 0.25 grants a quarter). Windows keep their length.
    pub factor: f64,
    /// The share of every window other applications of the tenant use up (a busy tenant):
    /// this client gets `factor × (1 − busy_share)` of each budget.
    pub busy_share: f64,
    /// Changes of `factor` during a run, each from the moment its condition is met; the last
    /// step reached wins.
    pub schedule: Vec<QuotaStep>,
    /// Bounds of the `Retry-After` values given, in milliseconds: every value is sent as
    /// fractional seconds (e.g. `0.734`) and clamped into the range. `None` gives the exact
    /// wait, alternating whole and fractional seconds.
    pub retry_after_ms: Option<(i64, i64)>,
}

/// A change of the granted share during a run: from the `after_requests`-th request on, or
/// from `after_ms` after the first call, whichever is set (both: whichever comes first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaStep {
    #[serde(default)]
    pub after_requests: Option<u64>,
    #[serde(default)]
    pub after_ms: Option<i64>,
    pub factor: f64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scale: 1.0,
            graph_ru_per_10s: 8_000,
            graph_writes_per_150s: 3_000,
            security_per_min: 150,
            mde_per_min: 100,
            mde_per_hour: 1_500,
            factor: 1.0,
            busy_share: 0.0,
            schedule: Vec::new(),
            retry_after_ms: None,
        }
    }
}

/// Hands out tickets that order the requests the server reads: a request takes one when its
/// first bytes are read off its connection. Process-wide (only the order matters).
static ARRIVALS: AtomicU64 = AtomicU64::new(1);

/// The next ticket.
pub fn arrival_ticket() -> u64 {
    ARRIVALS.fetch_add(1, Ordering::SeqCst)
}

/// When a client is known to have read a throttled answer: the ticket of the first request
/// that repeated a call the answer refused, `u64::MAX` until then. Shared by every wait the
/// answer gave.
type Told = Arc<AtomicU64>;

/// A wait given to a client for one refused call. Calls the client sends once it is known to
/// have read the answer (see [`Told`]) and before `until` are early.
#[derive(Debug)]
struct Hold {
    until: i64,
    /// The refused call (see [`Quotas::retry_after`]).
    call: u64,
    told: Told,
}

/// What one call costs: Graph resource units and writes; every call costs one on the other
/// surfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub ru: u32,
    pub write: bool,
}

/// A call the real service would hold against the client: one admitted although it took a
/// window past its budget, or one sent before a `Retry-After` given to the same client and
/// surface elapsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaViolation {
    /// `over_quota` or `early_retry`.
    pub kind: &'static str,
    pub detail: String,
}

/// One sliding window: at most `limit` units within any `window_ms`.
#[derive(Debug)]
struct Window {
    /// What the window counts, for a violation's detail.
    name: &'static str,
    /// The budget at the granted share 1.
    base: u64,
    limit: u64,
    window_ms: i64,
    events: VecDeque<(i64, u64)>,
    used: u64,
}

impl Window {
    fn new(name: &'static str, limit: u64, window_ms: i64, scale: f64) -> Self {
        let limit = ((limit as f64) * scale).ceil().max(1.0) as u64;
        let window_ms = ((window_ms as f64) * scale).round().max(1.0) as i64;
        Self {
            name,
            base: limit,
            limit,
            window_ms,
            events: VecDeque::new(),
            used: 0,
        }
    }

    /// Grants `share` of the budget from now on (at least one unit).
    fn grant(&mut self, share: f64) {
        self.limit = ((self.base as f64) * share).floor().max(1.0) as u64;
    }

    fn expire(&mut self, now: i64) {
        while let Some(&(t, c)) = self.events.front() {
            if t + self.window_ms <= now {
                self.used -= c;
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Milliseconds until `cost` fits, or `None` when it fits now.
    fn wait_ms(&mut self, now: i64, cost: u64) -> Option<i64> {
        self.expire(now);
        let cost = cost.min(self.limit);
        if self.used + cost <= self.limit {
            return None;
        }
        let mut freed = 0;
        for &(t, c) in &self.events {
            freed += c;
            if self.used - freed + cost <= self.limit {
                return Some((t + self.window_ms - now).max(1));
            }
        }
        Some(self.window_ms)
    }

    fn add(&mut self, now: i64, cost: u64) {
        if cost > 0 {
            self.events.push_back((now, cost));
            self.used += cost;
        }
    }
}

/// The quota state of the tenant (one application: the simulator issues tokens to one client).
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    graph_ru: Window,
    graph_writes: Window,
    security: Window,
    mde_min: Window,
    mde_hour: Window,
    /// The waits given to each (client, surface) that have not elapsed yet.
    not_before: HashMap<(String, Surface), Vec<Hold>>,
    /// Shared by the waits the current request's answer gives.
    current_told: Option<Told>,
    /// The top-level HTTP request being served; `$batch` items share their envelope's.
    current_request: u64,
    /// The arrival ticket of the request being served (see [`arrival_ticket`]).
    current_ticket: u64,
    /// The simulated instant of the first call (the origin of `QuotaStep::after_ms`).
    first_call_ms: Option<i64>,
    /// The granted share in force.
    share: f64,
    throttle_count: u64,
    /// Violations not yet taken into the tenant's statistics.
    violations: Vec<QuotaViolation>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        let s = config.scale;
        let mut q = Self {
            graph_ru: Window::new("graph resource units", config.graph_ru_per_10s, 10_000, s),
            graph_writes: Window::new("graph writes", config.graph_writes_per_150s, 150_000, s),
            security: Window::new("graph security calls", config.security_per_min, 60_000, s),
            mde_min: Window::new("mde calls per minute", config.mde_per_min, 60_000, s),
            mde_hour: Window::new("mde calls per hour", config.mde_per_hour, 3_600_000, s),
            config,
            not_before: HashMap::new(),
            current_told: None,
            current_request: 0,
            current_ticket: 0,
            first_call_ms: None,
            share: 1.0,
            throttle_count: 0,
            violations: Vec::new(),
        };
        q.regrant(0);
        q
    }

    /// The share granted at `now`: `factor` or the last schedule step reached, less the busy
    /// share.
    fn share_at(&self, now: i64) -> f64 {
        let elapsed = self.first_call_ms.map_or(0, |t| now - t);
        let factor = self
            .config
            .schedule
            .iter()
            .rev()
            .find(|s| {
                s.after_requests.is_some_and(|n| self.current_request >= n)
                    || s.after_ms.is_some_and(|ms| elapsed >= ms)
            })
            .map_or(self.config.factor, |s| s.factor);
        (factor * (1.0 - self.config.busy_share.clamp(0.0, 1.0))).max(0.0)
    }

    /// Applies the share in force at `now` to every window.
    fn regrant(&mut self, now: i64) {
        let share = self.share_at(now);
        if share != self.share || self.first_call_ms.is_none() {
            self.share = share;
            for w in [
                &mut self.graph_ru,
                &mut self.graph_writes,
                &mut self.security,
                &mut self.mde_min,
                &mut self.mde_hour,
            ] {
                w.grant(share);
            }
        }
    }

    /// Budgets per window in force now: (graph resource units, graph writes, security, MDE
    /// per minute, MDE per hour), for tests and benchmarks that compare with what the client
    /// learned.
    pub fn granted(&self) -> [u64; 5] {
        [
            self.graph_ru.limit,
            self.graph_writes.limit,
            self.security.limit,
            self.mde_min.limit,
            self.mde_hour.limit,
        ]
    }

    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Admits the call and charges it, or returns how long the caller must wait (ms). A call
    /// costing more than a whole window is admitted into an empty window (it could never pass
    /// otherwise) and recorded as a violation, as is any admission that leaves a window over
    /// its budget.
    pub fn admit(&mut self, surface: Surface, cost: Cost, now: i64) -> Result<(), i64> {
        if !self.config.enabled {
            return Ok(());
        }
        self.regrant(now);
        self.first_call_ms.get_or_insert(now);
        let windows: Vec<(&mut Window, u64)> = match surface {
            Surface::Token => return Ok(()),
            Surface::GraphDirectory => {
                let mut w = vec![(&mut self.graph_ru, u64::from(cost.ru))];
                if cost.write {
                    w.push((&mut self.graph_writes, 1));
                }
                w
            }
            Surface::GraphSecurity => vec![(&mut self.security, 1)],
            Surface::Mde => vec![(&mut self.mde_min, 1), (&mut self.mde_hour, 1)],
        };
        let mut windows = windows;
        let wait = windows
            .iter_mut()
            .filter_map(|(w, c)| w.wait_ms(now, *c))
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        let mut over = Vec::new();
        for (w, c) in windows {
            w.add(now, c);
            if w.used > w.limit {
                over.push(QuotaViolation {
                    kind: "over_quota",
                    detail: format!(
                        "{} call admitted at {} of {} {} per {} ms",
                        surface.as_str(),
                        w.used,
                        w.limit,
                        w.name,
                        w.window_ms
                    ),
                });
            }
        }
        self.violations.append(&mut over);
        Ok(())
    }

    /// The `Retry-After` value for a wait of `wait_ms`, alternating between whole and
    /// fractional seconds as Graph does; records when the caller may come back. `call`
    /// identifies the refused call (method, path, query and body), so a repeat of it is known.
    pub fn retry_after(
        &mut self,
        client: &str,
        surface: Surface,
        call: u64,
        wait_ms: i64,
        now: i64,
    ) -> String {
        self.throttle_count += 1;
        let wait_ms = wait_ms.max(1);
        let (text, given_ms) = if let Some((lo, hi)) = self.config.retry_after_ms {
            let ms = wait_ms.clamp(lo.max(1), hi.max(lo).max(1));
            (format!("{:.3}", ms as f64 / 1000.0), ms)
        } else if self.throttle_count.is_multiple_of(2) {
            (format!("{:.3}", wait_ms as f64 / 1000.0), wait_ms)
        } else {
            let secs = (wait_ms + 999) / 1000;
            (secs.to_string(), secs * 1000)
        };
        // The client is not told by this answer being written: requests it already had on
        // their way, or sent before it read the answer, cannot have heeded it. It is known to
        // have read it once it repeats a refused call (see `is_early`).
        let told = self
            .current_told
            .get_or_insert_with(|| Arc::new(AtomicU64::new(u64::MAX)))
            .clone();
        let holds = self
            .not_before
            .entry((client.to_string(), surface))
            .or_default();
        holds.retain(|h| h.until > now);
        holds.push(Hold {
            until: now + given_ms,
            call,
            told,
        });
        text
    }

    /// Marks the start of a top-level HTTP request. Items of one `$batch` arrive together, so
    /// a `Retry-After` given to one item cannot make its siblings early.
    pub fn begin_request(&mut self) {
        self.begin_arrived(arrival_ticket());
    }

    /// Like [`Quotas::begin_request`], for a request that took `ticket` when its first bytes
    /// were read.
    pub fn begin_arrived(&mut self, ticket: u64) {
        self.current_request += 1;
        self.current_ticket = ticket;
        self.current_told = None;
    }

    /// True when this call was sent after the client had read a `Retry-After` given to it for
    /// this surface and comes before that wait elapsed; such a call is also recorded as a
    /// violation. The client is known to have read the answer from the first request that
    /// repeats a call it refused (nobody repeats a call without having read its refusal), and
    /// every call read from then on counts, repeat or not: a held surface takes nothing. A
    /// call sent before that, already on its way or sent while the answer was still unread
    /// (several requests in flight), cannot have heeded it and is not early. Requests are
    /// ordered by when their first bytes were read (see [`arrival_ticket`]).
    pub fn is_early(&mut self, client: &str, surface: Surface, call: u64, now: i64) -> bool {
        let ticket = self.current_ticket;
        let Some(holds) = self.not_before.get(&(client.to_string(), surface)) else {
            return false;
        };
        for h in holds.iter().filter(|h| h.call == call) {
            let _ = h
                .told
                .compare_exchange(u64::MAX, ticket, Ordering::SeqCst, Ordering::SeqCst);
        }
        let t = holds
            .iter()
            .filter(|h| now < h.until && h.told.load(Ordering::SeqCst) <= ticket)
            .map(|h| h.until)
            .max();
        let Some(t) = t else {
            return false;
        };
        self.violations.push(QuotaViolation {
            kind: "early_retry",
            detail: format!(
                "{} call by {client} {} ms before its Retry-After elapsed",
                surface.as_str(),
                t - now
            ),
        });
        true
    }

    /// The violations recorded since the last call, oldest first.
    pub fn take_violations(&mut self) -> Vec<QuotaViolation> {
        std::mem::take(&mut self.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_up_to_limit_then_waits_for_the_oldest() {
        let mut q = Quotas::new(QuotaConfig {
            mde_per_min: 3,
            ..QuotaConfig::default()
        });
        let one = Cost {
            ru: 1,
            write: false,
        };
        for t in [0, 10, 20] {
            assert_eq!(q.admit(Surface::Mde, one, t), Ok(()));
        }
        assert_eq!(q.admit(Surface::Mde, one, 30), Err(59_970));
        assert_eq!(q.admit(Surface::Mde, one, 60_000), Ok(()));
    }

    #[test]
    fn scale_shrinks_budget_and_window_together() {
        let mut q = Quotas::new(QuotaConfig {
            scale: 0.01,
            ..QuotaConfig::default()
        });
        let one = Cost {
            ru: 1,
            write: false,
        };
        assert_eq!(q.admit(Surface::Mde, one, 0), Ok(()));
        assert_eq!(q.admit(Surface::Mde, one, 1), Err(599));
        assert_eq!(q.admit(Surface::Mde, one, 600), Ok(()));
    }

    #[test]
    fn writes_are_limited_separately_from_resource_units() {
        let mut q = Quotas::new(QuotaConfig {
            graph_writes_per_150s: 2,
            ..QuotaConfig::default()
        });
        let write = Cost { ru: 1, write: true };
        let read = Cost {
            ru: 3,
            write: false,
        };
        assert!(q.admit(Surface::GraphDirectory, write, 0).is_ok());
        assert!(q.admit(Surface::GraphDirectory, write, 0).is_ok());
        assert!(q.admit(Surface::GraphDirectory, write, 0).is_err());
        assert!(q.admit(Surface::GraphDirectory, read, 0).is_ok());
    }

    /// Two calls: `A` refused, `B` another one.
    const A: u64 = 1;
    const B: u64 = 2;

    #[test]
    fn early_retry_is_measured_against_the_value_given() {
        let mut q = Quotas::new(QuotaConfig::default());
        q.begin_request();
        let first = q.retry_after("app", Surface::Mde, A, 1_500, 0);
        assert_eq!(first, "2");
        // Calls of the same request (its `$batch` siblings) are not retries.
        assert!(!q.is_early("app", Surface::Mde, B, 5));
        // Nor is another call before the client is known to have read the answer: it may
        // have been on its way.
        q.begin_request();
        assert!(!q.is_early("app", Surface::Mde, B, 6));
        // Repeating the refused call shows the answer was read.
        q.begin_request();
        assert!(q.is_early("app", Surface::Mde, A, 1_999));
        assert!(!q.is_early("app", Surface::Mde, A, 2_000));
        assert!(!q.is_early("other", Surface::Mde, A, 10));
        let second = q.retry_after("app", Surface::Mde, A, 1_500, 10_000);
        assert_eq!(second, "1.500");
        q.begin_request();
        assert!(q.is_early("app", Surface::Mde, A, 11_499));
    }

    #[test]
    fn once_the_answer_was_read_the_surface_takes_nothing_until_the_wait_elapsed() {
        let mut q = Quotas::new(QuotaConfig::default());
        q.begin_request();
        q.retry_after("app", Surface::Mde, A, 1_500, 0);
        q.begin_request();
        assert!(
            !q.is_early("app", Surface::Mde, B, 100),
            "possibly in flight"
        );
        q.begin_request();
        assert!(q.is_early("app", Surface::Mde, A, 200), "the repeat");
        q.begin_request();
        assert!(
            q.is_early("app", Surface::Mde, B, 300),
            "into the held surface"
        );
        q.begin_request();
        assert!(
            !q.is_early("app", Surface::Mde, B, 2_000),
            "the wait elapsed"
        );
        assert!(
            !q.is_early("app", Surface::GraphSecurity, B, 300),
            "another surface"
        );
    }

    #[test]
    fn an_early_call_is_a_violation_and_a_timely_one_is_not() {
        let mut q = Quotas::new(QuotaConfig::default());
        q.begin_request();
        q.retry_after("app", Surface::Mde, A, 1_500, 0);
        // The throttled request itself and its `$batch` siblings are not early.
        assert!(!q.is_early("app", Surface::Mde, B, 5));
        q.begin_request();
        assert!(!q.is_early("app", Surface::Mde, A, 2_000));
        assert!(!q.is_early("app", Surface::GraphSecurity, A, 10));
        assert_eq!(q.take_violations(), Vec::new());
        assert!(q.is_early("app", Surface::Mde, A, 1_200));
        let v = q.take_violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "early_retry");
        assert!(v[0].detail.contains("800 ms"), "{v:?}");
        assert_eq!(q.take_violations(), Vec::new(), "taken once");
    }

    #[test]
    fn a_call_admitted_beyond_a_window_is_a_violation() {
        let mut q = Quotas::new(QuotaConfig {
            graph_ru_per_10s: 4,
            ..QuotaConfig::default()
        });
        let delta = Cost {
            ru: 5,
            write: false,
        };
        let one = Cost {
            ru: 1,
            write: false,
        };
        // Within the budget: no violation.
        assert_eq!(q.admit(Surface::GraphDirectory, one, 0), Ok(()));
        assert_eq!(q.take_violations(), Vec::new());
        assert!(q.admit(Surface::GraphDirectory, delta, 1).is_err());
        assert_eq!(q.take_violations(), Vec::new(), "a refused call is none");
        // A call costing more than the whole window passes an empty one, over its budget.
        assert_eq!(q.admit(Surface::GraphDirectory, delta, 10_000), Ok(()));
        let v = q.take_violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "over_quota");
        assert!(v[0].detail.contains("5 of 4 graph resource units"), "{v:?}");
    }
}
