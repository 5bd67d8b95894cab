//! The HTTP front of the simulated tenant: one axum router on loopback that routes by path to
//! the token endpoint, Graph, MDE and `/_sim/`, and applies auth, quotas and faults per call.
//! Connections can be closed without a response, which needs a listener of our own.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::faults::Fault;
use super::model::Tenant;
use super::quota::{self, Surface};
use super::routes::token::Caller;
use super::routes::{
    After, ApiReq, Body, Reply, graph, graph_error, inspect, mde, mde_error, token,
};

/// A TCP stream that can be cut from a handler: once killed, reads see EOF and writes fail,
/// so hyper closes the connection without sending the response. It also notes when each
/// request's first bytes were read and when each answer was written (see [`Wire`]).
pub struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
    wire: Arc<Wire>,
}

/// When a connection's requests were sent, in the order of [`quota::arrival_ticket`]: on
/// loopback a request's bytes are readable as soon as the client writes them, so the ticket is
/// taken when its first bytes are read, before it is parsed or waits for the tenant's lock.
/// HTTP/1.1 carries one request at a time, so the first bytes read after an answer was written
/// start the next request.
#[derive(Default)]
pub struct Wire {
    /// No request is being read: the next bytes start one.
    idle: AtomicBool,
    /// The ticket taken when the current request's first bytes were read.
    request: AtomicU64,
}

impl Wire {
    fn new() -> Arc<Self> {
        let w = Self::default();
        w.idle.store(true, Ordering::SeqCst);
        Arc::new(w)
    }

    fn read(&self) {
        if self.idle.swap(false, Ordering::SeqCst) {
            self.request
                .store(quota::arrival_ticket(), Ordering::SeqCst);
        }
    }

    /// An answer is being written: the next bytes read start a new request.
    fn written(&self) {
        self.idle.store(true, Ordering::SeqCst);
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.wire.read();
        }
        r
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        if !buf.is_empty() {
            self.wire.written();
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The listener handing out [`KillableStream`]s.
pub struct SimListener(pub TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = KillableStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (
                        KillableStream {
                            inner: s,
                            killed: Arc::new(AtomicBool::new(false)),
                            wire: Wire::new(),
                        },
                        a,
                    );
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Per-connection handle a handler uses to cut its connection and read its [`Wire`].
#[derive(Clone)]
pub struct Conn(Arc<AtomicBool>, Arc<Wire>);

impl Connected<IncomingStream<'_, SimListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        Conn(stream.io().killed.clone(), stream.io().wire.clone())
    }
}

pub type Shared = Arc<Mutex<Tenant>>;

pub fn router(shared: Shared) -> Router {
    Router::new().fallback(entry).with_state(shared)
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Tenant> {
    // A panic inside a handler must not take the whole simulator down with poisoning.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Graph,
    Mde,
}

async fn entry(
    State(shared): State<Shared>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // When its first bytes were read: a call sent before a Retry-After was written is not
    // early, however long it then waited to be parsed or for the tenant's lock.
    let ticket = conn.1.request.load(Ordering::SeqCst);
    let path = uri.path().to_string();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let base = format!("http://{host}");
    let query = super::routes::parse_query(uri.query());
    if let Some(rest) = path.strip_prefix("/_sim") {
        let reply = inspect::handle(&mut lock(&shared), &method, rest, &query, &body);
        return to_response(reply, None);
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let [tenant, "oauth2", "v2.0", "token"] = segs.as_slice() {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let authz = headers.get("authorization").and_then(|h| h.to_str().ok());
        let reply = {
            let mut t = lock(&shared);
            count_http(&mut t, "POST /{tenant}/oauth2/v2.0/token");
            if method != Method::POST {
                Reply::json(405, serde_json::json!({"error": "invalid_request"}))
            } else {
                token::issue(&mut t, tenant, &form, authz)
            }
        };
        return to_response(reply, None);
    }
    let (service, sub) = if let Some(rest) = path.strip_prefix("/v1.0") {
        (Service::Graph, rest.to_string())
    } else if path.starts_with("/api/") {
        (Service::Mde, path.clone())
    } else {
        return (
            StatusCode::NOT_FOUND,
            "no such service on the simulated tenant",
        )
            .into_response();
    };
    let req = ApiReq {
        method,
        path: sub,
        query,
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: if body.is_empty() {
            Body::None
        } else {
            serde_json::from_slice(&body).map_or(Body::Invalid, Body::Json)
        },
        base,
    };
    let client_request_id = req.header("client-request-id").map(str::to_string);
    let (reply, delay) = serve_api(&shared, service, &req, ticket);
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let Some(reply) = reply else {
        conn.0.store(true, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let After::StallThenDrop(ms) = reply.after {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        conn.0.store(true, Ordering::SeqCst);
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let graph_ids = (service == Service::Graph).then_some(client_request_id);
    to_response(reply, graph_ids)
}

fn count_http(t: &mut Tenant, label: &str) {
    t.stats.http_requests += 1;
    *t.stats.http_by_route.entry(label.to_string()).or_default() += 1;
}

fn route_label(service: Service, req: &ApiReq) -> &'static str {
    match service {
        Service::Graph => graph::Route::parse(&req.method, &req.segments()).label(),
        Service::Mde => mde::Route::parse(&req.method, &req.segments()).label(),
    }
}

/// Auth, faults and the call itself, under the lock. Returns the reply (None = drop the
/// connection) and a delay to apply before answering.
fn serve_api(
    shared: &Shared,
    service: Service,
    req: &ApiReq,
    ticket: u64,
) -> (Option<Reply>, Option<u64>) {
    let t = &mut *lock(shared);
    t.quotas.begin_arrived(ticket);
    count_http(t, route_label(service, req));
    let surface = match service {
        Service::Mde => Surface::Mde,
        Service::Graph if req.path.starts_with("/security") => Surface::GraphSecurity,
        Service::Graph => Surface::GraphDirectory,
    };
    let authz = req.header("authorization").map(str::to_string);
    let caller = match token::authorize(t, authz.as_deref(), surface) {
        Ok(c) => c,
        Err(why) => {
            t.stats.unauthorized += 1;
            *t.stats.statuses.entry(401).or_default() += 1;
            let reply = match service {
                Service::Graph => graph_error(401, "InvalidAuthenticationToken", why),
                Service::Mde => mde_error(401, "Unauthorized", why),
            }
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"".into());
            return (Some(reply), None);
        }
    };
    let fault = t.faults.for_request(surface);
    let mut delay = None;
    match fault {
        Fault::Drop => {
            *t.stats.faults.entry("drop".into()).or_default() += 1;
            return (None, None);
        }
        Fault::Slow(ms) => {
            *t.stats.faults.entry("slow".into()).or_default() += 1;
            delay = Some(ms);
        }
        Fault::Status(_) | Fault::None => {}
    }
    let forced = match fault {
        Fault::Status(s) => Some(s),
        _ => None,
    };
    let reply = match service {
        Service::Graph
            if graph::Route::parse(&req.method, &req.segments()) == graph::Route::Batch =>
        {
            match forced {
                Some(s) => call(t, service, &caller, req, Some(s)),
                None => graph::batch(t, &caller, req, |t, c, item| {
                    let forced = t.faults.for_item(if item.path.starts_with("/security") {
                        Surface::GraphSecurity
                    } else {
                        Surface::GraphDirectory
                    });
                    call(t, Service::Graph, c, item, forced)
                }),
            }
        }
        _ => call(t, service, &caller, req, forced),
    };
    (Some(reply), delay)
}

/// One API call (a request or a `$batch` item): counted, checked for early retry, roles,
/// injected status and quota, then served.
fn call(
    t: &mut Tenant,
    service: Service,
    caller: &Caller,
    req: &ApiReq,
    forced: Option<u16>,
) -> Reply {
    let segs = req.segments();
    let (label, surface, roles, cost, groute, mroute) = match service {
        Service::Graph => {
            let r = graph::Route::parse(&req.method, &segs);
            (
                r.label(),
                r.surface(),
                r.roles(),
                r.cost(req),
                Some(r),
                None,
            )
        }
        Service::Mde => {
            let r = mde::Route::parse(&req.method, &segs);
            (r.label(), Surface::Mde, r.roles(), r.cost(), None, Some(r))
        }
    };
    *t.stats.calls_by_route.entry(label.to_string()).or_default() += 1;
    t.stats.calls_seen += 1;
    let seen = t.stats.calls_seen;
    t.stats
        .call_span
        .entry(label.to_string())
        .or_insert((seen, seen))
        .1 = seen;
    let forced = forced.or_else(|| t.faults.for_route(label, t.stats.calls(label)));
    *t.stats
        .calls_by_surface
        .entry(surface.as_str().to_string())
        .or_default() += 1;
    let now = t.now_ms();
    let key = call_key(req);
    if t.quotas.is_early(&caller.client, surface, key, now) {
        *t.stats
            .early_retries
            .entry(surface.as_str().to_string())
            .or_default() += 1;
    }
    let reply = if !caller.has_any(roles) {
        match service {
            Service::Graph => graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            Service::Mde => mde_error(
                403,
                "Forbidden",
                "The application does not have the permission this call needs.",
            ),
        }
    } else if let Some(status) = forced {
        *t.stats
            .faults
            .entry(format!("status_{status}"))
            .or_default() += 1;
        fault_reply(t, service, (surface, key), &caller.client, status, now)
    } else if let Err(wait) = t.quotas.admit(surface, cost, now) {
        *t.stats
            .throttled
            .entry(surface.as_str().to_string())
            .or_default() += 1;
        let ra = t
            .quotas
            .retry_after(&caller.client, surface, key, wait, now);
        throttled(service, surface, ra)
    } else {
        if surface == Surface::GraphSecurity {
            super::seed::arrive(t);
        }
        match (groute, mroute) {
            (Some(r), _) => graph::handle(t, &r, req),
            (_, Some(r)) => mde::handle(t, &r, req),
            _ => unreachable!("one service route is always parsed"),
        }
    };
    for v in t.quotas.take_violations() {
        t.record_violation(v.kind, v.detail);
    }
    *t.stats.statuses.entry(reply.status).or_default() += 1;
    reply
}

fn throttled(service: Service, surface: Surface, retry_after: String) -> Reply {
    let r = match service {
        Service::Graph => graph_error(429, "TooManyRequests", "Please retry again later.")
            .with_header(
                "x-ms-throttle-scope",
                format!("Tenant_Application/ReadWrite/{}", surface.as_str()),
            )
            .with_header(
                "x-ms-throttle-information",
                "ResourceUnitLimitExceeded".into(),
            ),
        Service::Mde => mde_error(
            429,
            "TooManyRequests",
            "API calls quota exceeded. Retry after the period in the Retry-After header.",
        ),
    };
    r.with_header("Retry-After", retry_after)
}

/// Identifies a call by its method, path, query and body, so the simulator knows a repeat of a
/// refused call when it sees one.
fn call_key(req: &ApiReq) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.method.as_str().hash(&mut h);
    req.path.hash(&mut h);
    req.query.hash(&mut h);
    format!("{:?}", req.body).hash(&mut h);
    h.finish()
}

fn fault_reply(
    t: &mut Tenant,
    service: Service,
    (surface, key): (Surface, u64),
    client: &str,
    status: u16,
    now: i64,
) -> Reply {
    let (code, msg) = match status {
        429 => ("TooManyRequests", "Please retry again later."),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        504 => ("GatewayTimeout", "The gateway timed out."),
        403 => (
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        _ => ("InternalServerError", "An internal server error occurred."),
    };
    let r = match service {
        Service::Graph => graph_error(status, code, msg),
        Service::Mde => mde_error(status, code, msg),
    };
    if status == 429 || status == 503 {
        // A short wait, scaled like the quotas so fast tests stay fast.
        let wait = ((2_000.0 * t.quotas.config().scale) as i64).max(1);
        let ra = t.quotas.retry_after(client, surface, key, wait, now);
        r.with_header("Retry-After", ra)
    } else {
        r
    }
}

fn to_response(reply: Reply, graph: Option<Option<String>>) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match reply.body {
        Some(v) => {
            let mut r = (status, serde_json::to_vec(&v).unwrap_or_default()).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        None => status.into_response(),
    };
    let mut has_request_id = false;
    for (k, v) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            has_request_id |= name == "request-id";
            resp.headers_mut().append(name, value);
        }
    }
    if let Some(client_request_id) = graph {
        let id = uuid::Uuid::new_v4().to_string();
        if !has_request_id && let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("request-id", v);
        }
        let echo = client_request_id.unwrap_or(id);
        if let Ok(v) = HeaderValue::from_str(&echo) {
            resp.headers_mut().insert("client-request-id", v);
        }
    }
    resp
}
