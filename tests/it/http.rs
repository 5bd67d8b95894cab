//! The HTTP layer over real HTTP (wiremock): Retry-After honesty, backoff, the attempt cap,
//! 401 refresh, paging, `$batch` item retries and secrets kept out of logs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dexscope::auth::{BearerSource, Resource, TokenError};
use dexscope::http::{BatchItem, Client, Error, Quotas, Request, Settings, Surface};
use futures::future::BoxFuture;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A fixed token that a forced refresh rotates (`tok-0`, `tok-1`, …), counting calls.
pub struct TestBearer {
    generation: AtomicUsize,
    pub calls: AtomicUsize,
    pub forced: AtomicUsize,
}

impl TestBearer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            forced: AtomicUsize::new(0),
        })
    }
}

impl BearerSource for TestBearer {
    fn bearer(
        &self,
        _resource: Resource,
        force_refresh: bool,
    ) -> BoxFuture<'_, Result<SecretString, TokenError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if force_refresh {
                self.forced.fetch_add(1, Ordering::SeqCst);
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            let g = self.generation.load(Ordering::SeqCst);
            Ok(SecretString::from(format!("tok-{g}")))
        })
    }
}

/// Settings for tests: both roots at the mock server, short backoff, generous quotas.
pub fn test_settings(server: &MockServer) -> Settings {
    let root = url::Url::parse(&server.uri()).unwrap();
    let mut s = Settings::new(root.clone(), root);
    s.retry.base_delay = Duration::from_millis(5);
    s.retry.max_delay = Duration::from_millis(40);
    s.retry.max_attempts = 4;
    s.request_timeout = Duration::from_secs(5);
    s.quotas = Quotas::default().scaled(100);
    s
}

pub fn test_client(server: &MockServer) -> (Client, Arc<TestBearer>) {
    let bearer = TestBearer::new();
    let client = Client::new(test_settings(server), bearer.clone()).unwrap();
    (client, bearer)
}

fn get(client: &Client, p: &str) -> Request {
    Request::get(Surface::GraphRead, client.graph_url(p).unwrap())
}

/// Responds with `responses[n]` to the n-th request (the last one repeats) and records when
/// each request arrived.
/// When each request arrived, on the monotonic and the wall clock.
type Arrivals = Arc<Mutex<Vec<(Instant, SystemTime)>>>;

fn sequence(
    responses: Vec<ResponseTemplate>,
) -> (
    impl Fn(&wiremock::Request) -> ResponseTemplate + Send + Sync,
    Arrivals,
) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let responder = move |_: &wiremock::Request| {
        let mut a = seen.lock().unwrap();
        a.push((Instant::now(), SystemTime::now()));
        let i = (a.len() - 1).min(responses.len() - 1);
        responses[i].clone()
    };
    (responder, arrivals)
}

async fn count(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn retry_after_fractional_is_waited_out_fully_and_retried_once() {
    let server = MockServer::start().await;
    let (responder, arrivals) = sequence(vec![
        ResponseTemplate::new(429).insert_header("Retry-After", "1.5"),
        ResponseTemplate::new(200).set_body_json(json!({"ok": true})),
    ]);
    Mock::given(path("/v1.0/x"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let resp = client.send(get(&client, "/x")).await.unwrap();

    assert_eq!(resp.status, 200);
    assert_eq!(count(&server).await, 2, "retried exactly once");
    let a = arrivals.lock().unwrap();
    let gap = a[1].0 - a[0].0;
    assert!(
        gap >= Duration::from_millis(1500),
        "retried after {gap:?}, before Retry-After elapsed"
    );
    let stats = client.stats();
    assert_eq!(stats.surface(Surface::GraphRead).throttled, 1);
    assert!(stats.surface(Surface::GraphRead).retry_after_wait_ms >= 1500);
    assert_eq!(stats.retries, 1);
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let server = MockServer::start().await;
    // HTTP dates have whole seconds: two seconds ahead is at least one second of waiting.
    let at = SystemTime::now() + Duration::from_secs(2);
    let date = httpdate::fmt_http_date(at);
    let not_before = httpdate::parse_http_date(&date).unwrap();
    let (responder, arrivals) = sequence(vec![
        ResponseTemplate::new(503).insert_header("Retry-After", date.as_str()),
        ResponseTemplate::new(200).set_body_json(json!({})),
    ]);
    Mock::given(path("/v1.0/x"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    client.send(get(&client, "/x")).await.unwrap();

    let a = arrivals.lock().unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[1].1 >= not_before, "retried before the Retry-After date");
}

#[tokio::test]
async fn retry_after_holds_back_other_requests_to_the_same_surface() {
    let server = MockServer::start().await;
    let (responder, arrivals) = sequence(vec![
        ResponseTemplate::new(429).insert_header("Retry-After", "0.4"),
        ResponseTemplate::new(200).set_body_json(json!({})),
    ]);
    Mock::given(path("/v1.0/a"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let (b_responder, b_arrivals) =
        sequence(vec![ResponseTemplate::new(200).set_body_json(json!({}))]);
    Mock::given(path("/v1.0/b"))
        .respond_with(b_responder)
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let c2 = client.clone();
    let first = tokio::spawn(async move { c2.send(get(&c2, "/a")).await });
    // The second request starts once the client has taken in the 429: it records the wait
    // after it set the hold, so from then on the hold is in force, however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .stats()
        .surface(Surface::GraphRead)
        .retry_after_wait_ms
        == 0
    {
        assert!(Instant::now() < deadline, "the 429 was not taken in");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.send(get(&client, "/b")).await.unwrap();
    first.await.unwrap().unwrap();

    let throttled_at = arrivals.lock().unwrap()[0].0;
    let b_at = b_arrivals.lock().unwrap()[0].0;
    assert!(
        b_at - throttled_at >= Duration::from_millis(400),
        "sent during another request's Retry-After"
    );
}

#[tokio::test]
async fn server_errors_back_off_then_succeed() {
    let server = MockServer::start().await;
    let (responder, _) = sequence(vec![
        ResponseTemplate::new(503),
        ResponseTemplate::new(500),
        ResponseTemplate::new(200).set_body_json(json!({"v": 1})),
    ]);
    Mock::given(path("/v1.0/x"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let resp = client.send(get(&client, "/x")).await.unwrap();

    assert_eq!(resp.status, 200);
    assert_eq!(count(&server).await, 3);
    let s = client.stats();
    assert_eq!(s.surface(Surface::GraphRead).status_5xx, 2);
    assert_eq!(s.surface(Surface::GraphRead).status_2xx, 1);
}

#[tokio::test]
async fn attempts_are_capped() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/x"))
        .respond_with(ResponseTemplate::new(500).insert_header("request-id", "rid-500"))
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let err = client.send(get(&client, "/x")).await.unwrap_err();

    assert_eq!(
        count(&server).await,
        4,
        "max_attempts is 4 in the test settings"
    );
    assert!(
        matches!(err, Error::Exhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(500));
    assert!(err.is_transient());
    assert!(err.to_string().contains("rid-500"), "{err}");
}

#[tokio::test]
async fn client_errors_are_final_and_say_what_failed() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/groups/g"))
        .respond_with(
            ResponseTemplate::new(404)
                .insert_header("request-id", "rid-404")
                .set_body_json(json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource 'g' does not exist"}})),
        )
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let err = client
        .send(get(&client, "/groups/g?$select=id"))
        .await
        .unwrap_err();

    assert_eq!(count(&server).await, 1, "a 404 is not retried");
    assert!(!err.is_transient());
    let msg = err.to_string();
    for part in [
        "GET /v1.0/groups/g",
        "404",
        "Request_ResourceNotFound",
        "rid-404",
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    assert!(!msg.contains("$select"), "no query string in errors: {msg}");
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_once() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/x"))
        .and(header("Authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    Mock::given(path("/v1.0/x"))
        .and(header("Authorization", "Bearer tok-0"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let (client, bearer) = test_client(&server);

    client.send(get(&client, "/x")).await.unwrap();

    assert_eq!(count(&server).await, 2);
    assert_eq!(bearer.forced.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_second_unauthorized_is_final() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/x"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let (client, bearer) = test_client(&server);

    let err = client.send(get(&client, "/x")).await.unwrap_err();

    assert_eq!(err.status(), Some(401));
    assert_eq!(count(&server).await, 2);
    assert_eq!(bearer.forced.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn paging_follows_next_link_verbatim() {
    let server = MockServer::start().await;
    // An odd skiptoken: a rebuilt query would decode `%2B` or re-encode `+`, `!`, `*`.
    let token2 = "RFNwdAIAAQAAAD8=+a%2Fb~c!*";
    let link2 = format!("{}/v1.0/items?$skiptoken={token2}", server.uri());
    let link3 = format!("{}/v1.0/items?$skiptoken=page3", server.uri());
    let (responder, _) = {
        let (l2, l3) = (link2.clone(), link3.clone());
        sequence_by_query(move |q| match q {
            Some(q) if q == format!("$skiptoken={token2}") => {
                json!({"value": [], "@odata.nextLink": l3})
            }
            Some("$skiptoken=page3") => json!({"value": [{"n": 3}]}),
            _ => json!({"value": [{"n": 1}, {"n": 2}], "@odata.nextLink": l2}),
        })
    };
    Mock::given(path("/v1.0/items"))
        .respond_with(responder)
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let items: Vec<serde_json::Value> =
        client.get_all(get(&client, "/items?$top=2")).await.unwrap();

    assert_eq!(
        items,
        vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
    let reqs = server.received_requests().await.unwrap();
    let queries: Vec<String> = reqs
        .iter()
        .map(|r| r.url.query().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        queries,
        vec![
            "$top=2".to_string(),
            format!("$skiptoken={token2}"),
            "$skiptoken=page3".into()
        ]
    );
}

fn sequence_by_query(
    f: impl Fn(Option<&str>) -> serde_json::Value + Send + Sync,
) -> (
    impl Fn(&wiremock::Request) -> ResponseTemplate + Send + Sync,
    (),
) {
    (
        move |r: &wiremock::Request| ResponseTemplate::new(200).set_body_json(f(r.url.query())),
        (),
    )
}

#[tokio::test]
async fn paging_refuses_a_link_to_another_host() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/items"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"value": [1], "@odata.nextLink": "https://elsewhere.example/v1.0/items?$skiptoken=x"}),
        ))
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let err = client
        .get_all::<serde_json::Value>(get(&client, "/items"))
        .await
        .unwrap_err();

    assert!(matches!(err, Error::ForeignLink { .. }), "{err:?}");
    assert_eq!(count(&server).await, 1);
}

#[tokio::test]
async fn batch_retries_only_the_throttled_item() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    Mock::given(method("POST"))
        .and(path("/v1.0/$batch"))
        .respond_with(move |r: &wiremock::Request| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let body: serde_json::Value = r.body_json().unwrap();
            let ids: Vec<&str> = body["requests"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
            // Answers in reverse order: matching must be by id.
            let responses: Vec<serde_json::Value> = ids
                .iter()
                .rev()
                .map(|id| {
                    if n == 0 && *id == "2" {
                        json!({"id": id, "status": 429, "headers": {"Retry-After": "0.3"}, "body": {"error": {"code": "TooManyRequests"}}})
                    } else {
                        json!({"id": id, "status": 200, "headers": {"request-id": format!("rid-{id}-{n}")}, "body": {"value": [id]}})
                    }
                })
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({"responses": responses}))
        })
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);
    let items: Vec<BatchItem> = (0..3)
        .map(|i| BatchItem::new(Method::GET, Surface::GraphRead, format!("/users/{i}")))
        .collect();

    let started = Instant::now();
    let out = client.batch(&items).await.unwrap();

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    let second: serde_json::Value = reqs[1].body_json().unwrap();
    assert_eq!(second["requests"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["requests"][0]["id"], "2");
    assert_eq!(second["requests"][0]["url"], "/users/1");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(out.iter().all(|o| o.status == 200));
    let rids: Vec<_> = out.iter().map(|o| o.request_id.clone().unwrap()).collect();
    assert_eq!(rids, vec!["rid-1-0", "rid-2-1", "rid-3-0"]);
    assert_eq!(out[1].attempts, 2);
}

#[tokio::test]
async fn batch_packs_twenty_items_per_envelope_with_content_type_for_bodies() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/$batch"))
        .respond_with(|r: &wiremock::Request| {
            let body: serde_json::Value = r.body_json().unwrap();
            let responses: Vec<_> = body["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| json!({"id": i["id"], "status": 204}))
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({"responses": responses}))
        })
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);
    let items: Vec<BatchItem> = (0..45)
        .map(|i| {
            BatchItem::new(
                Method::POST,
                Surface::GraphWrite,
                format!("/groups/g/members/{i}"),
            )
            .with_body(json!({"n": i}))
        })
        .collect();

    let out = client.batch(&items).await.unwrap();

    assert_eq!(out.len(), 45);
    let reqs = server.received_requests().await.unwrap();
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| {
            let b: serde_json::Value = r.body_json().unwrap();
            let items = b["requests"].as_array().unwrap().clone();
            let mut ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), items.len(), "ids unique within a batch");
            assert!(
                items
                    .iter()
                    .all(|i| i["headers"]["Content-Type"] == "application/json")
            );
            items.len()
        })
        .collect();
    assert_eq!(sizes, vec![20, 20, 5]);
    assert_eq!(client.stats().surface(Surface::GraphWrite).status_2xx, 45);
}

#[tokio::test]
async fn batch_envelope_client_error_is_permanent() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/$batch"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": {"code": "BadRequest", "message": "Invalid batch payload"}}),
        ))
        .mount(&server)
        .await;
    let (client, _) = test_client(&server);

    let err = client
        .batch(&[BatchItem::new(Method::GET, Surface::GraphRead, "/users")])
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(400));
    assert!(!err.is_transient());
    assert_eq!(count(&server).await, 1);
}

#[test]
fn tokens_never_appear_in_logs_or_errors() {
    let captured = crate::support::capture_logs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let errors = rt.block_on(async {
        let server = MockServer::start().await;
        let (responder, _) = sequence(vec![
            ResponseTemplate::new(401),
            ResponseTemplate::new(429).insert_header("Retry-After", "0.01"),
            ResponseTemplate::new(500),
            ResponseTemplate::new(403)
                .set_body_json(json!({"error": {"code": "Forbidden", "message": "Missing role"}})),
        ]);
        Mock::given(path("/v1.0/x"))
            .respond_with(responder)
            .mount(&server)
            .await;
        let (client, _) = test_client(&server);
        let err = client.send(get(&client, "/x")).await.unwrap_err();
        format!("{err} {err:?} {client:?}")
    });
    let logs = captured.text();
    assert!(logs.contains("throttled"), "the capture works: {logs}");
    for secret in ["tok-0", "tok-1", "Bearer"] {
        assert!(!logs.contains(secret), "{secret} in logs");
        assert!(!errors.contains(secret), "{secret} in error: {errors}");
    }
}
