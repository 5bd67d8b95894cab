//! The alert webhook over loopback (wiremock): it is sent by the process's shared
//! `reqwest::Client`, so that client's settings (user agent, TLS, proxy) apply to it, while each
//! attempt keeps the webhook's own short timeout instead of the client's longer API timeout,
//! and a `Retry-After` is waited out before the next attempt.

use std::error::Error as _;
use std::time::Duration;

use dexscope::alerts::{Webhook, WebhookError, WebhookSettings};
use secrecy::SecretString;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn settings(server: &MockServer) -> WebhookSettings {
    WebhookSettings {
        base_delay: Duration::from_millis(5),
        ..WebhookSettings::new(SecretString::from(format!("{}/hook", server.uri())))
    }
}

#[tokio::test]
async fn webhook_goes_through_the_shared_client() {
    let server = MockServer::start().await;
    // Only a request carrying the shared client's user agent is answered 200; any other gets
    // wiremock's 404, which the webhook reports as a failure.
    let agent = concat!("dexscope/", env!("CARGO_PKG_VERSION"));
    Mock::given(method("POST"))
        .and(path("/hook"))
        .and(header("user-agent", agent))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let webhook = Webhook::new(settings(&server), super::support::shared_reqwest()).unwrap();
    let attempts = webhook
        .send(&serde_json::json!({ "text": "hello" }))
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    server.verify().await;
}

#[tokio::test]
async fn each_attempt_keeps_the_webhook_timeout_not_the_client_one() {
    let server = MockServer::start().await;
    // Slower than the webhook's 200 ms, well within the shared client's 60 s API timeout: with
    // the client's timeout the first attempt would succeed after 5 s.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let webhook = Webhook::new(
        WebhookSettings {
            max_attempts: 2,
            timeout: Duration::from_millis(200),
            ..settings(&server)
        },
        super::support::shared_reqwest(),
    )
    .unwrap();
    let err = webhook.send(&serde_json::json!({})).await.unwrap_err();
    let WebhookError::Send { attempts, .. } = &err else {
        panic!("not a send failure: {err:?}");
    };
    assert_eq!(*attempts, 2, "{err}");
    let source = err
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .expect("the cause is the HTTP error");
    assert!(source.is_timeout(), "{err}: {source:?}");
    assert!(!format!("{err} {err:?}").contains("/hook"), "{err:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn webhook_waits_out_a_retry_after_before_its_next_attempt() {
    let server = MockServer::start().await;
    // The receiver asks for one second; when each attempt arrived is read on the server side.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(move |_: &wiremock::Request| {
            let mut a = seen.lock().unwrap();
            a.push(std::time::Instant::now());
            if a.len() == 1 {
                ResponseTemplate::new(503).insert_header("Retry-After", "1")
            } else {
                ResponseTemplate::new(200)
            }
        })
        .mount(&server)
        .await;
    let webhook = Webhook::new(settings(&server), super::support::shared_reqwest()).unwrap();

    let attempts = webhook.send(&serde_json::json!({})).await.unwrap();

    assert_eq!(attempts, 2);
    let a = arrivals.lock().unwrap();
    assert_eq!(a.len(), 2);
    let gap = a[1] - a[0];
    assert!(
        gap >= Duration::from_secs(1),
        "the second attempt came {gap:?} after a Retry-After of 1 s"
    );
}
