//! Response bodies are bounded: an API answer longer than the cap, or a token answer longer than
//! 1 MiB, is a clear error naming the endpoint, not held in memory whatever its size.

use dexscope::auth::{Credential, Resource, TokenCache, TokenSettings};
use dexscope::http::{Client, Error, Request, Surface};
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn an_api_body_past_the_cap_is_an_error_naming_the_endpoint() {
    let server = MockServer::start().await;
    let mut settings = super::http::test_settings(&server);
    settings.max_body_bytes = 1024;
    let client = Client::new(settings, super::http::TestBearer::new()).unwrap();
    let big = serde_json::json!({ "value": [], "padding": "x".repeat(4096) });
    Mock::given(method("GET"))
        .and(path("/v1.0/groups/g/members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(big))
        .mount(&server)
        .await;
    let small = serde_json::json!({ "value": [{"id": "1"}] });
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(small))
        .mount(&server)
        .await;

    let url = client.graph_url("/groups/g/members").unwrap();
    let err = client
        .send(Request::get(Surface::GraphRead, url))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BodyTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("/v1.0/groups/g/members"), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");
    // Not retried: the same request would bring the same body.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    // A body under the cap is read as before.
    let url = client.graph_url("/users").unwrap();
    let users: Vec<serde_json::Value> = client
        .get_all(Request::get(Surface::GraphRead, url))
        .await
        .unwrap();
    assert_eq!(users.len(), 1);
}

#[tokio::test]
async fn a_token_answer_past_one_mib_is_refused() {
    let server = MockServer::start().await;
    let token_path = "/contoso/oauth2/v2.0/token";
    let huge = serde_json::json!({
        "token_type": "Bearer", "expires_in": 3600, "access_token": "a".repeat(2 * 1024 * 1024)
    });
    Mock::given(method("POST"))
        .and(path(token_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(huge))
        .mount(&server)
        .await;
    let url = url::Url::parse(&format!("{}{token_path}", server.uri())).unwrap();
    let credential = Credential::Secret(SecretString::from("s"));
    let mut settings = TokenSettings::new(url, "client", credential, "g/.default", "d/.default");
    settings.max_retries = 0;
    let cache = TokenCache::new(settings, super::support::shared_reqwest()).unwrap();
    let err = cache.token(Resource::Graph, false).await.unwrap_err();
    assert!(err.message.contains("longer than"), "{}", err.message);
    assert!(err.message.len() < 1000);
}
