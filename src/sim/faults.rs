//! Faults injected on demand: random 429/5xx, dropped connections, slow responses, tokens that
//! expire after a number of requests and the "store the comment, then time out" failure. Decisions come from a seeded generator, so a
//! run with the same seed and the same request order injects the same faults.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::quota::Surface;

/// Fault settings; every rate is a probability per call in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Rate of calls answered with one of `error_statuses` instead of being served.
    pub error_rate: f64,
    /// Statuses drawn from for `error_rate` (429 and 503 carry `Retry-After`).
    pub error_statuses: Vec<u16>,
    /// Rate of requests whose connection is closed without any response.
    pub drop_rate: f64,
    /// Rate of responses delayed by `slow_ms`.
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// Rate of comment POSTs that store the comment and then stall for `stall_ms` and close
    /// the connection without answering.
    pub comment_timeout_rate: f64,
    pub stall_ms: u64,
    /// Rate of `$batch` items answered 429 with `Retry-After` while their envelope and the
    /// other items are served (the "one throttled item inside a batch" case).
    pub batch_item_429_rate: f64,
    /// Authenticated requests each issued token serves; the next one is refused 401 as an
    /// expired token, so a client meets a token expiring mid-pass at a point fixed by the
    /// request count instead of the clock. `0` means no limit.
    pub token_uses: u64,
    /// Surfaces the faults apply to; empty means every API surface (never the token endpoint).
    pub surfaces: Vec<Surface>,
    /// Calls of one route answered with a status from a call count on: a failure at a point
    /// fixed by the count instead of the clock or the generator. Not limited by `surfaces`.
    pub route_fails: Option<RouteFault>,
}

/// Calls of `route` (its template, e.g. `GET /v1.0/users`) after the first `after` are
/// answered `status` (a `$batch` item counts as a call of its own route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFault {
    pub route: String,
    pub after: u64,
    pub status: u16,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_statuses: vec![429, 500, 503, 504],
            drop_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 2_000,
            comment_timeout_rate: 0.0,
            stall_ms: 30_000,
            batch_item_429_rate: 0.0,
            token_uses: 0,
            surfaces: Vec::new(),
            route_fails: None,
        }
    }
}

/// What happens to one top-level request before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Status(u16),
    Drop,
    Slow(u64),
}

/// The fault generator.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Faults {
    pub fn new(config: FaultConfig, seed: u64) -> Self {
        Self {
            config,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_fa17),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Replaces the settings and restarts the generator from the seed, so a test that sets
    /// faults sees the same sequence every run.
    pub fn set(&mut self, config: FaultConfig) {
        *self = Self::new(config, self.seed);
    }

    fn applies(&self, surface: Surface) -> bool {
        surface != Surface::Token
            && (self.config.surfaces.is_empty() || self.config.surfaces.contains(&surface))
    }

    /// The fault for a top-level request (drop, slow or a status).
    pub fn for_request(&mut self, surface: Surface) -> Fault {
        if !self.applies(surface) {
            return Fault::None;
        }
        if self.hit(self.config.drop_rate) {
            return Fault::Drop;
        }
        if let Some(status) = self.status() {
            return Fault::Status(status);
        }
        if self.hit(self.config.slow_rate) {
            return Fault::Slow(self.config.slow_ms);
        }
        Fault::None
    }

    /// The status for the `calls`-th call of `route` when [`FaultConfig::route_fails`] names it.
    pub fn for_route(&self, route: &str, calls: u64) -> Option<u16> {
        let f = self.config.route_fails.as_ref()?;
        (f.route == route && calls > f.after).then_some(f.status)
    }

    /// The status fault for one `$batch` item (a batch item cannot drop a connection).
    pub fn for_item(&mut self, surface: Surface) -> Option<u16> {
        if !self.applies(surface) {
            return None;
        }
        self.status()
            .or_else(|| self.hit(self.config.batch_item_429_rate).then_some(429))
    }

    /// Whether this comment POST is stored and then left unanswered.
    pub fn comment_times_out(&mut self) -> Option<u64> {
        self.applies(Surface::GraphSecurity)
            .then_some(())
            .and_then(|()| {
                self.hit(self.config.comment_timeout_rate)
                    .then_some(self.config.stall_ms)
            })
    }

    /// Whether a token that has served `uses` authenticated requests on `surface` is spent.
    pub fn token_spent(&self, surface: Surface, uses: u64) -> bool {
        self.config.token_uses > 0 && uses >= self.config.token_uses && self.applies(surface)
    }

    fn status(&mut self) -> Option<u16> {
        if self.config.error_statuses.is_empty() || !self.hit(self.config.error_rate) {
            return None;
        }
        let i = self.rng.random_range(0..self.config.error_statuses.len());
        Some(self.config.error_statuses[i])
    }

    fn hit(&mut self, rate: f64) -> bool {
        // Draw only when the rate is set, so enabling one kind of fault does not shift the
        // sequence of another kind that is off.
        rate > 0.0 && self.rng.random::<f64>() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(seed: u64) -> Vec<Fault> {
        let mut f = Faults::new(
            FaultConfig {
                error_rate: 0.3,
                drop_rate: 0.1,
                ..FaultConfig::default()
            },
            seed,
        );
        (0..200).map(|_| f.for_request(Surface::Mde)).collect()
    }

    #[test]
    fn same_seed_same_faults_and_rates_roughly_hold() {
        let a = outcomes(7);
        assert_eq!(a, outcomes(7));
        assert_ne!(a, outcomes(8));
        let drops = a.iter().filter(|f| **f == Fault::Drop).count();
        let errors = a.iter().filter(|f| matches!(f, Fault::Status(_))).count();
        assert!((8..=35).contains(&drops), "drops {drops}");
        assert!((35..=80).contains(&errors), "errors {errors}");
    }

    #[test]
    fn token_endpoint_and_unlisted_surfaces_are_spared() {
        let mut f = Faults::new(
            FaultConfig {
                error_rate: 1.0,
                surfaces: vec![Surface::Mde],
                ..FaultConfig::default()
            },
            1,
        );
        assert_eq!(f.for_request(Surface::Token), Fault::None);
        assert_eq!(f.for_request(Surface::GraphDirectory), Fault::None);
        assert!(matches!(f.for_request(Surface::Mde), Fault::Status(_)));
    }

    #[test]
    fn a_token_is_spent_after_its_uses_and_never_without_a_limit() {
        let limited = Faults::new(
            FaultConfig {
                token_uses: 3,
                ..FaultConfig::default()
            },
            1,
        );
        assert!(!limited.token_spent(Surface::Mde, 2));
        assert!(limited.token_spent(Surface::Mde, 3));
        assert!(limited.token_spent(Surface::GraphDirectory, 4));
        let unlimited = Faults::new(FaultConfig::default(), 1);
        assert!(!unlimited.token_spent(Surface::Mde, 1_000_000));
    }
}
