//! Numbers from the wire are bounded before arithmetic: a token lifetime of `u64::MAX`
//! seconds, a negative or string lifetime and a huge `Retry-After` give a token or a clear
//! error, never a panic; a paging link that goes round is an error naming the listing.

use std::time::Duration;

use dexscope::auth::{Credential, Resource, TokenCache, TokenSettings};
use dexscope::http::{Error, Request, Surface};
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN_PATH: &str = "/contoso/oauth2/v2.0/token";

async fn cache_answering(server: &MockServer, answer: ResponseTemplate) -> TokenCache {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(answer)
        .mount(server)
        .await;
    let url = url::Url::parse(&format!("{}{TOKEN_PATH}", server.uri())).unwrap();
    let credential = Credential::Secret(SecretString::from("s"));
    let mut settings = TokenSettings::new(url, "client", credential, "g/.default", "d/.default");
    settings.max_retries = 0;
    TokenCache::new(settings, super::support::shared_reqwest()).unwrap()
}

fn token_body(expires_in: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "token_type": "Bearer", "expires_in": expires_in, "access_token": "a.b.c"
    }))
}

#[tokio::test]
async fn a_lifetime_of_u64_max_seconds_is_clamped_not_a_panic() {
    let server = MockServer::start().await;
    let cache = cache_answering(&server, token_body(serde_json::json!(u64::MAX))).await;
    cache.token(Resource::Graph, false).await.unwrap();
    // Clamped to a day, the token stays cached: the second call sends nothing.
    cache.token(Resource::Graph, false).await.unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_negative_or_string_lifetime_is_a_clear_error() {
    for bad in [serde_json::json!(-5), serde_json::json!("3600s")] {
        let server = MockServer::start().await;
        let cache = cache_answering(&server, token_body(bad.clone())).await;
        let err = cache.token(Resource::Graph, false).await.unwrap_err();
        assert!(
            err.message.contains("could not be read"),
            "{bad}: {}",
            err.message
        );
        assert!(err.message.contains("expires_in"), "{bad}: {}", err.message);
    }
}

#[tokio::test]
async fn a_huge_retry_after_from_the_token_endpoint_is_not_a_panic() {
    for value in ["1e20", "18446744073709551615", "99999999999999999999999"] {
        let server = MockServer::start().await;
        let answer = ResponseTemplate::new(429).insert_header("retry-after", value);
        let cache = cache_answering(&server, answer).await;
        let err = cache.token(Resource::Graph, false).await.unwrap_err();
        assert!(err.message.contains("429"), "{value}: {}", err.message);
    }
}

#[tokio::test]
async fn a_next_link_that_repeats_is_an_error_naming_the_listing() {
    let server = MockServer::start().await;
    let (client, _bearer) = super::http::test_client(&server);
    let again = format!("{}/v1.0/groups/g/members?$skiptoken=a", server.uri());
    Mock::given(method("GET"))
        .and(path("/v1.0/groups/g/members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "value": [{"id": "1"}], "@odata.nextLink": again
        })))
        .mount(&server)
        .await;
    let first = Request::get(
        Surface::GraphRead,
        client.graph_url("/groups/g/members").unwrap(),
    );
    let listed = tokio::time::timeout(
        Duration::from_secs(20),
        client.get_all::<serde_json::Value>(first),
    )
    .await
    .expect("paging never ended");
    let err = listed.unwrap_err();
    assert!(matches!(err, Error::PagingLoop { .. }), "{err}");
    assert!(err.to_string().contains("/v1.0/groups/g/members"), "{err}");
    // The first page and the link once: the repeat is seen before it is fetched again.
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}
