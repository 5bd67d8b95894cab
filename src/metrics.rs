//! The metrics registry and the `/metrics`, `/healthz`, `/readyz` endpoint (axum, loopback by
//! default).
//!
//! `/metrics` is OpenMetrics text (`prometheus-client`) when the scraper's `Accept` asks for it,
//! else the classic text format converted from it ([`exposition`]). Pass figures are pushed by the daemon
//! after each pass; HTTP figures are read from [`http::Client::stats`] at scrape time, so they
//! are never stale; so are the alert figures, read from the alert path's own. `/readyz` answers
//! from a pure function of what the daemon reported ([`Health::readiness`]): 200 once a token
//! was obtained and every loop has a recent successful pass (by the staleness rule of
//! [`records::is_stale`]), else 503 with the reason.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::alerts::{AlertKind, AlertMetrics};
use crate::http::{self, Surface};
use crate::state::records;

pub mod exposition;

/// The OpenMetrics content type served on `/metrics` to scrapers that ask for it.
pub const CONTENT_TYPE: &str = exposition::OPENMETRICS;

/// The text exposition content type served on `/metrics` otherwise.
pub const TEXT_CONTENT_TYPE: &str = exposition::TEXT;

/// The one loop that changes the tenant and measures drift: `changes_applied` and
/// `drift_objects` are exported for it alone (for the others they could never move).
pub const CHANGING_LOOP: &str = "reconcile";

/// The verdict kinds counted by `dexscope_verdicts_total` (a closed set, so no per-user label
/// can ever slip in).
pub const VERDICT_KINDS: [&str; 3] = ["in_scope", "out_of_scope", "skipped"];

type Labels = Vec<(&'static str, String)>;

/// The verdicts `dexscope_pickup_agreement_total` is counted by (a closed set).
pub const PICKUP_VERDICTS: [&str; 2] = ["in_scope", "out_of_scope"];

/// Upper bounds (seconds) of the pickup latency buckets: from a minute (an analyst on the
/// incident at once) through the hours a queue takes on a busy day to three days (a weekend);
/// the `pickup_within` default, 2 hours, is a bucket edge.
const PICKUP_BUCKETS: [f64; 10] = [
    60.0, 300.0, 900.0, 1_800.0, 3_600.0, 7_200.0, 14_400.0, 28_800.0, 86_400.0, 259_200.0,
];

/// What an incident pass saw of Defender Experts' pickups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PickupFigures {
    /// Agreements settled in the pass, each incident once: (verdict, taken within
    /// `pickup_within`).
    pub settled: Vec<(String, bool)>,
    /// Pickups the pass saw happen: time from the incident's creation.
    pub latencies: Vec<Duration>,
}

/// How long a counted verdict is remembered after its incident was last listed. An incident
/// is listed again only while its last update is inside the poll overlap (minutes), so a day
/// covers every re-listing while keeping the memory to a day's incidents.
const VERDICT_MEMORY: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// One verdict a pass reached: its kind (one of [`VERDICT_KINDS`]) and what identifies it,
/// the incident and the verdict's digest (the marker of its comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictReached {
    pub kind: &'static str,
    pub incident: String,
    pub digest: String,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen on {addr} for the metrics endpoint: {source}; pick another [metrics] listen address"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every figure dexscope exports, plus what `/readyz` decides on.
pub struct Metrics {
    registry: Registry,
    passes: Family<Labels, Counter>,
    pass_duration: Family<Labels, Histogram>,
    changes: Family<Labels, Counter>,
    drift: Family<Labels, Gauge>,
    coverage: Family<Labels, Gauge>,
    verdicts: Family<Labels, Counter>,
    pickup_agreement: Family<Labels, Counter>,
    pickup_latency: Histogram,
    /// The verdicts already counted, by (incident, digest), with when each was last listed: a
    /// verdict is counted once however often its incident is listed again.
    counted: Mutex<HashMap<(String, String), DateTime<Utc>>>,
    alerts: Family<Labels, Gauge>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    http_requests: Family<Labels, Counter>,
    throttled: Family<Labels, Counter>,
    throttle_wait: Family<Labels, Counter<f64, AtomicU64>>,
    adaptive: AdaptiveFigures,
    http: Mutex<HttpSource>,
    /// The alert path's figures, read at scrape time like the HTTP figures.
    alert_source: Mutex<Option<Arc<AlertMetrics>>>,
    health: Mutex<Health>,
}

/// Where the HTTP figures come from: the live client, plus what clients replaced by a reload
/// had counted (so counters never go backwards).
#[derive(Default)]
struct HttpSource {
    client: Option<http::Client>,
    retired: [http::SurfaceStats; 4],
}

/// What readiness is decided on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub token_at: Option<DateTime<Utc>>,
    /// By loop name: its interval and its last successful pass.
    pub loops: BTreeMap<String, LoopHealth>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoopHealth {
    pub every: Duration,
    pub last_success: Option<DateTime<Utc>>,
}

impl Health {
    /// `Ok` when ready; else the reason, one line. Pure: `now` is a parameter.
    pub fn readiness(&self, now: DateTime<Utc>) -> Result<(), String> {
        if self.token_at.is_none() {
            return Err("no token obtained yet".into());
        }
        if self.loops.is_empty() {
            return Err("no loop is running".into());
        }
        for (name, l) in &self.loops {
            let Some(at) = l.last_success else {
                return Err(format!("the {name} loop has no successful pass yet"));
            };
            if records::is_stale(l.every, Some(at), now) {
                let (age, limit) = (records::age(at, now), records::stale_after(l.every));
                return Err(format!(
                    "the {name} loop last succeeded {} ago (more than {})",
                    crate::text::duration(age),
                    crate::text::duration(limit)
                ));
            }
        }
        Ok(())
    }
}

/// What one pass reports to the metrics.
#[derive(Debug, Clone, Default)]
pub struct PassFigures {
    pub ok: bool,
    pub duration: Duration,
    pub finished: DateTime<Utc>,
    pub changes_applied: u64,
    /// Drift seen by the pass (objects out of line with the desired state), when it looks.
    pub drift: Option<u64>,
    /// Per scoped group (`users`, `devices`): desired entries resolved and the group's size
    /// after the pass, when the pass looks.
    pub coverage: Vec<(&'static str, u64, u64)>,
    /// Verdicts reached by the pass, the ones counted before included.
    pub verdicts: Vec<VerdictReached>,
    /// Defender Experts' pickups the pass saw.
    pub pickups: PickupFigures,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dexscope");
        let passes = Family::<Labels, Counter>::default();
        registry.register(
            "passes",
            "Passes run, by loop and result (ok or error)",
            passes.clone(),
        );
        let pass_duration =
            Family::<Labels, Histogram>::new_with_constructor(pass_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "pass_duration",
            "Duration of passes, by loop",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let changes = Family::<Labels, Counter>::default();
        registry.register(
            "changes_applied",
            "Changes applied to the scoped groups, by loop",
            changes.clone(),
        );
        let drift = Family::<Labels, Gauge>::default();
        registry.register(
            "drift_objects",
            "Objects out of line with the desired state at the last pass, by loop",
            drift.clone(),
        );
        let coverage = Family::<Labels, Gauge>::default();
        registry.register(
            "coverage_objects",
            "Scoped group sizes at the last reconcile pass, by group (users, devices) and side \
             (desired: entries resolved; effective: in the group)",
            coverage.clone(),
        );
        let (verdicts, pickup_agreement, pickup_latency) = register_incident_figures(&mut registry);
        let alerts = Family::<Labels, Gauge>::default();
        registry.register(
            "alerts_firing",
            "Alerts currently firing, by alert kind",
            alerts.clone(),
        );
        let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "Unix time of the last successful pass, by loop",
            Unit::Seconds,
            last_success.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests sent, by API surface and status class (2xx..5xx, or error)",
            http_requests.clone(),
        );
        let throttled = Family::<Labels, Counter>::default();
        registry.register(
            "throttled_requests",
            "Requests answered 429 or 503 with Retry-After, by API surface",
            throttled.clone(),
        );
        let throttle_wait = Family::<Labels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "throttle_wait",
            "Time spent waiting for Retry-After, by API surface",
            Unit::Seconds,
            throttle_wait.clone(),
        );
        registry.register(
            "build",
            "The running dexscope build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        let adaptive = AdaptiveFigures::register(&mut registry);
        let metrics = Metrics {
            registry,
            passes,
            pass_duration,
            changes,
            drift,
            coverage,
            verdicts,
            pickup_agreement,
            pickup_latency,
            counted: Mutex::new(HashMap::new()),
            alerts,
            last_success,
            http_requests,
            throttled,
            throttle_wait,
            adaptive,
            http: Mutex::new(HttpSource::default()),
            alert_source: Mutex::new(None),
            health: Mutex::new(Health::default()),
        };
        metrics.with_closed_labels()
    }

    /// Every closed label value present from the start, so a dashboard sees zeros rather than
    /// missing series.
    fn with_closed_labels(self) -> Self {
        for kind in VERDICT_KINDS {
            let _ = self.verdicts.get_or_create(&vec![("verdict", kind.into())]);
        }
        for verdict in PICKUP_VERDICTS {
            for taken in [true, false] {
                let _ = self
                    .pickup_agreement
                    .get_or_create(&agreement_labels(verdict, taken));
            }
        }
        for kind in AlertKind::ALL {
            let _ = self
                .alerts
                .get_or_create(&vec![("alert", kind.as_str().into())]);
        }
        self
    }

    /// Declares the running loops and their intervals (again after a reload); a loop's last
    /// success is kept across a reload.
    pub fn set_loops(&self, loops: &[(&str, Duration)]) {
        let mut health = lock(&self.health);
        let old = std::mem::take(&mut health.loops);
        for (name, every) in loops {
            let last_success = old.get(*name).and_then(|l| l.last_success);
            health.loops.insert(
                name.to_string(),
                LoopHealth {
                    every: *every,
                    last_success,
                },
            );
            for result in ["ok", "error"] {
                let _ = self.passes.get_or_create(&loop_result(name, result));
            }
            // Present from the start (families without a series are not exported at all).
            let by_loop = vec![("loop", name.to_string())];
            let _ = self.pass_duration.get_or_create(&by_loop);
            if *name == CHANGING_LOOP {
                let _ = self.changes.get_or_create(&by_loop);
                let _ = self.drift.get_or_create(&by_loop);
                for group in ["users", "devices"] {
                    for side in ["desired", "effective"] {
                        let _ = self.coverage.get_or_create(&coverage_labels(group, side));
                    }
                }
            }
        }
    }

    /// A token was obtained (readiness needs one).
    pub fn token_obtained(&self, at: DateTime<Utc>) {
        lock(&self.health).token_at = Some(at);
    }

    /// Records one finished pass.
    pub fn record_pass(&self, loop_name: &str, p: &PassFigures) {
        let by_loop = vec![("loop", loop_name.to_string())];
        let result = if p.ok { "ok" } else { "error" };
        self.passes
            .get_or_create(&loop_result(loop_name, result))
            .inc();
        self.pass_duration
            .get_or_create(&by_loop)
            .observe(p.duration.as_secs_f64());
        if loop_name == CHANGING_LOOP {
            self.changes
                .get_or_create(&by_loop)
                .inc_by(p.changes_applied);
            if let Some(drift) = p.drift {
                self.drift.get_or_create(&by_loop).set(gauge(drift));
            }
        }
        for (group, desired, effective) in &p.coverage {
            let set = |side, n| {
                self.coverage
                    .get_or_create(&coverage_labels(group, side))
                    .set(gauge(n))
            };
            set("desired", *desired);
            set("effective", *effective);
        }
        self.count_verdicts(&p.verdicts, p.finished);
        for (verdict, taken) in &p.pickups.settled {
            if let Some(verdict) = PICKUP_VERDICTS.into_iter().find(|v| v == verdict) {
                self.pickup_agreement
                    .get_or_create(&agreement_labels(verdict, *taken))
                    .inc();
            }
        }
        for latency in &p.pickups.latencies {
            self.pickup_latency.observe(latency.as_secs_f64());
        }
        if p.ok {
            self.last_success
                .get_or_create(&by_loop)
                .set(p.finished.timestamp_millis() as f64 / 1000.0);
            if let Some(l) = lock(&self.health).loops.get_mut(loop_name) {
                l.last_success = Some(p.finished);
            }
        }
    }

    /// Counts each verdict the first time it is reached; forgets those not listed for a day.
    fn count_verdicts(&self, reached: &[VerdictReached], at: DateTime<Utc>) {
        let mut counted = lock(&self.counted);
        counted.retain(|_, last| at - *last < VERDICT_MEMORY);
        for v in reached {
            let key = (v.incident.clone(), v.digest.clone());
            if counted.insert(key, at).is_none() {
                self.verdicts
                    .get_or_create(&vec![("verdict", v.kind.to_string())])
                    .inc();
            }
        }
    }

    /// The alert figures to export (the alert path's own); replaces the previous source on a
    /// reload.
    pub fn set_alert_source(&self, source: Arc<AlertMetrics>) {
        *lock(&self.alert_source) = Some(source);
    }

    /// The HTTP client whose figures are exported; a replaced client's figures are kept.
    pub fn set_http_client(&self, client: http::Client) {
        let mut source = lock(&self.http);
        if let Some(old) = source.client.take() {
            let stats = old.stats();
            for s in Surface::ALL {
                add(&mut source.retired[s as usize], stats.surface(s));
            }
        }
        source.client = Some(client);
    }

    pub fn readiness(&self, now: DateTime<Utc>) -> Result<(), String> {
        lock(&self.health).readiness(now)
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// The OpenMetrics text, `# EOF` included.
    pub fn encode(&self) -> String {
        self.refresh_http();
        self.refresh_alerts();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn refresh_alerts(&self) {
        let Some(figures) = lock(&self.alert_source).as_ref().map(|a| a.snapshot()) else {
            return;
        };
        for kind in AlertKind::ALL {
            let firing = figures.kind(kind).firing;
            self.alerts
                .get_or_create(&vec![("alert", kind.as_str().into())])
                .set(i64::try_from(firing).unwrap_or(i64::MAX));
        }
    }

    fn refresh_http(&self) {
        let source = lock(&self.http);
        let live = source.client.as_ref().map(http::Client::stats);
        for s in Surface::ALL {
            let mut total = source.retired[s as usize].clone();
            if let Some(stats) = &live {
                add(&mut total, stats.surface(s));
            }
            let classes = [
                ("2xx", total.status_2xx),
                ("3xx", total.status_3xx),
                ("4xx", total.status_4xx),
                ("5xx", total.status_5xx),
                ("error", total.transport_errors),
            ];
            for (class, n) in classes {
                let labels = vec![("surface", s.as_str().into()), ("status", class.into())];
                raise_to(&self.http_requests.get_or_create(&labels), n);
            }
            let labels = vec![("surface", s.as_str().to_string())];
            raise_to(&self.throttled.get_or_create(&labels), total.throttled);
            let waited = self.throttle_wait.get_or_create(&labels);
            let secs = total.retry_after_wait_ms as f64 / 1000.0;
            if secs > waited.get() {
                waited.inc_by(secs - waited.get());
            }
            if let Some(stats) = &live {
                self.adaptive.set(s, stats.surface(s));
            }
        }
    }
}

/// The send rate each surface learned from the service's answers, and the `$batch`
/// envelopes it may have in flight.
struct AdaptiveFigures {
    granted_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    envelopes_in_flight: Family<Labels, Gauge>,
}

impl AdaptiveFigures {
    fn register(registry: &mut Registry) -> Self {
        let granted_rate = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "granted_rate_per_second",
            "Requests (graph_read: resource units) per second the service grants, as learned \
             from its answers; the configured rate until it throttles, by API surface",
            granted_rate.clone(),
        );
        let envelopes_in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "batch_envelopes_in_flight_allowed",
            "$batch envelopes allowed in flight at once, fewer while the service throttles",
            envelopes_in_flight.clone(),
        );
        Self {
            granted_rate,
            envelopes_in_flight,
        }
    }

    fn set(&self, s: Surface, stats: &http::SurfaceStats) {
        let labels = vec![("surface", s.as_str().to_string())];
        self.granted_rate
            .get_or_create(&labels)
            .set(stats.granted_per_s);
        self.envelopes_in_flight
            .get_or_create(&labels)
            .set(i64::try_from(stats.envelopes_in_flight).unwrap_or(i64::MAX));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn pass_histogram() -> Histogram {
    // 1 ms, 2 ms, 4 ms … 524 s (about 9 minutes), doubling. Measured: a pass against the
    // simulated tenant (a few dozen users and devices) takes 2–8 ms, and a reconcile or
    // priority pass at 100k users and 50k machines takes minutes; the lowest buckets split
    // the first and the highest still see the second.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The incident figures: verdicts, the pickup agreement and the pickup latency.
fn register_incident_figures(
    registry: &mut Registry,
) -> (Family<Labels, Counter>, Family<Labels, Counter>, Histogram) {
    let verdicts = Family::<Labels, Counter>::default();
    registry.register(
        "verdicts",
        "Incident verdicts reached, by verdict",
        verdicts.clone(),
    );
    let agreement = Family::<Labels, Counter>::default();
    registry.register(
        "pickup_agreement",
        "Judged incidents by verdict and whether Defender Experts took them within \
         pickup_within (taken, not_taken), each incident counted once",
        agreement.clone(),
    );
    let latency = Histogram::new(PICKUP_BUCKETS);
    registry.register_with_unit(
        "pickup_latency",
        "Time from an incident's creation to Defender Experts taking it, for pickups seen \
         happening",
        Unit::Seconds,
        latency.clone(),
    );
    (verdicts, agreement, latency)
}

fn agreement_labels(verdict: &str, taken: bool) -> Labels {
    let pickup = if taken { "taken" } else { "not_taken" };
    vec![("verdict", verdict.into()), ("pickup", pickup.into())]
}

fn coverage_labels(group: &str, side: &str) -> Labels {
    vec![("group", group.into()), ("side", side.into())]
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn loop_result(loop_name: &str, result: &str) -> Labels {
    vec![("loop", loop_name.into()), ("result", result.into())]
}

/// Counters only go up: raise to the snapshot's value.
fn raise_to(counter: &Counter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

fn add(into: &mut http::SurfaceStats, from: &http::SurfaceStats) {
    into.status_2xx += from.status_2xx;
    into.status_3xx += from.status_3xx;
    into.status_4xx += from.status_4xx;
    into.status_5xx += from.status_5xx;
    into.transport_errors += from.transport_errors;
    into.throttled += from.throttled;
    into.retry_after_wait_ms += from.retry_after_wait_ms;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain figures; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The endpoint.

/// Binds the metrics listener; port 0 picks a free port (the bound address is returned).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// The routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// At most this many scrape connections at once; more wait in the listen backlog. Far below the
/// unit's `LimitNOFILE=1024`, so stalled clients can never take the descriptors that outbound
/// HTTP and SQLite need.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this time of the connection waiting for them.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it opened, idle or not: a scraper reconnects, and
/// nobody can hold a connection open for good.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After shutdown starts, open connections get this long to finish, then are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves until `shutdown` completes, then gives open connections [`SHUTDOWN_GRACE`] to finish.
/// Connections are capped at [`MAX_CONNECTIONS`], and bounded by [`HEADER_READ_TIMEOUT`] and
/// [`CONNECTION_LIFETIME`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(metrics);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait, go on.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reap finished connections so the set does not grow with every scrape.
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(stream, app.clone(), stopping.clone(), slot));
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "metrics endpoint: dropping connections still open after the shutdown grace"
        );
        connections.abort_all();
    }
    Ok(())
}

/// One connection: HTTP/1 with a header-read timeout and a lifetime, shut down gracefully when
/// `stopping` turns true. Holds its connection slot until it ends.
async fn connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = &mut lifetime => return,
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn metrics_page(
    AxumState(metrics): AxumState<Arc<Metrics>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
    } else {
        let text = exposition::to_text(&metrics.encode());
        ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], text)
    }
}

async fn readyz(AxumState(metrics): AxumState<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.readiness(Utc::now()) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn readiness_needs_a_token_and_recent_passes() {
        let lp = |last: Option<i64>| LoopHealth {
            every: Duration::from_secs(60),
            last_success: last.map(at),
        };
        // (token, loops, now, expected: None = ready, Some(needle) = reason contains needle)
        type Case<'a> = (
            Option<i64>,
            Vec<(&'a str, LoopHealth)>,
            i64,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (None, vec![("reconcile", lp(Some(0)))], 1, Some("no token")),
            (Some(0), vec![], 1, Some("no loop")),
            (
                Some(0),
                vec![("reconcile", lp(Some(0))), ("priority", lp(None))],
                1,
                Some("priority loop has no successful pass"),
            ),
            (Some(0), vec![("reconcile", lp(Some(0)))], 180, None),
            (
                Some(0),
                vec![("reconcile", lp(Some(0)))],
                181,
                Some("reconcile loop last succeeded 3m 1s ago (more than 3m)"),
            ),
        ];
        for (token, loops, now, want) in cases {
            let health = Health {
                token_at: token.map(at),
                loops: loops.into_iter().map(|(n, l)| (n.to_string(), l)).collect(),
            };
            let got = health.readiness(at(now));
            match (want, got) {
                (None, Ok(())) => {}
                (Some(needle), Err(reason)) => {
                    assert!(reason.contains(needle), "{reason} lacks {needle}")
                }
                (want, got) => panic!("{health:?} at {now}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn reached(kind: &'static str, incident: &str) -> VerdictReached {
        VerdictReached {
            kind,
            incident: incident.into(),
            digest: format!("d{incident}"),
        }
    }

    #[test]
    fn each_verdict_is_counted_once_however_often_it_is_listed_again() {
        let m = Metrics::new();
        m.set_loops(&[("incidents", Duration::from_secs(60))]);
        let pass = |secs: i64, verdicts: Vec<VerdictReached>| PassFigures {
            ok: true,
            finished: at(secs),
            verdicts,
            ..PassFigures::default()
        };
        // Incident 1 is listed in every pass of the overlap; 2 arrives later; 1 gets a new
        // verdict (another digest) after an update.
        m.record_pass("incidents", &pass(0, vec![reached("in_scope", "1")]));
        for secs in [60, 120, 180] {
            let again = vec![reached("in_scope", "1"), reached("out_of_scope", "2")];
            m.record_pass("incidents", &pass(secs, again));
        }
        let mut updated = reached("out_of_scope", "1");
        updated.digest = "other".into();
        m.record_pass("incidents", &pass(240, vec![updated]));
        let text = m.encode();
        for needle in [
            "dexscope_verdicts_total{verdict=\"in_scope\"} 1\n",
            "dexscope_verdicts_total{verdict=\"out_of_scope\"} 2\n",
            "dexscope_verdicts_total{verdict=\"skipped\"} 0\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn pass_buckets_split_milliseconds_and_minutes() {
        let m = Metrics::new();
        m.set_loops(&[("reconcile", Duration::from_secs(60))]);
        for duration in [Duration::from_millis(3), Duration::from_secs(300)] {
            let pass = PassFigures {
                ok: true,
                duration,
                finished: at(0),
                ..PassFigures::default()
            };
            m.record_pass("reconcile", &pass);
        }
        let text = m.encode();
        let bucket = |le: &str, n: u32| {
            format!("dexscope_pass_duration_seconds_bucket{{le=\"{le}\",loop=\"reconcile\"}} {n}\n")
        };
        // 3 ms lands above 2 ms and at or below 4 ms; 5 minutes below the top bucket.
        for needle in [
            bucket("0.002", 0),
            bucket("0.004", 1),
            bucket("262.144", 1),
            bucket("524.288", 2),
        ] {
            assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn counters_follow_passes_and_text_is_openmetrics() {
        let m = Metrics::new();
        let every = Duration::from_secs(60);
        m.set_loops(&[("reconcile", every), ("priority", every)]);
        m.record_pass(
            "reconcile",
            &PassFigures {
                ok: true,
                duration: Duration::from_millis(120),
                finished: at(0),
                changes_applied: 3,
                drift: Some(2),
                coverage: vec![("users", 40, 38)],
                verdicts: vec![reached("in_scope", "1")],
                pickups: PickupFigures::default(),
            },
        );
        let priority = PassFigures {
            ok: true,
            finished: at(0),
            ..PassFigures::default()
        };
        m.record_pass("priority", &priority);
        let text = m.encode();
        // Only the reconcile loop changes the tenant and measures drift.
        for absent in [
            "changes_applied_total{loop=\"priority\"}",
            "drift_objects{loop=\"priority\"}",
        ] {
            assert!(!text.contains(absent), "{absent} exported:\n{text}");
        }
        for needle in [
            "dexscope_passes_total{loop=\"reconcile\",result=\"ok\"} 1\n",
            "dexscope_passes_total{loop=\"reconcile\",result=\"error\"} 0\n",
            "dexscope_changes_applied_total{loop=\"reconcile\"} 3\n",
            "dexscope_drift_objects{loop=\"reconcile\"} 2\n",
            "dexscope_coverage_objects{group=\"users\",side=\"desired\"} 40\n",
            "dexscope_coverage_objects{group=\"users\",side=\"effective\"} 38\n",
            "dexscope_coverage_objects{group=\"devices\",side=\"desired\"} 0\n",
            "dexscope_verdicts_total{verdict=\"in_scope\"} 1\n",
            "dexscope_last_success_timestamp_seconds{loop=\"reconcile\"} 1800000000.0\n",
            "dexscope_pass_duration_seconds_count{loop=\"reconcile\"} 1\n",
            "# TYPE dexscope_build info\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
