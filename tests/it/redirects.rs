//! No redirect is followed and no `Referer` sent: a token endpoint or webhook answering 307
//! sends nothing on to the redirect target; endpoint URLs carrying a user or password are
//! refused by the config.

use std::time::Duration;

use dexscope::auth::{Credential, Resource, TokenCache, TokenSettings};
use dexscope::http::{Client, Settings, post_json};
use secrecy::SecretString;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "Zq8~redirected-secret_value_77";

/// The client as the tenant builds it when every endpoint is loopback.
fn shared_client() -> reqwest::Client {
    let root = url::Url::parse("http://127.0.0.1/").unwrap();
    Client::build_reqwest(&Settings::new(root.clone(), root)).unwrap()
}

/// `from` answers every request with a 307 to `to` (same path).
async fn redirect_all(from: &MockServer, to: &MockServer, path: &str) {
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}{path}", to.uri())),
        )
        .mount(from)
        .await;
}

/// Answers anything with 200 and a usable token, so a followed redirect would succeed.
async fn accept_all(server: &MockServer) {
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer", "expires_in": 3600, "access_token": "a.b.c"
        })))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_redirecting_token_endpoint_never_passes_the_secret_on() {
    let (origin, target) = (MockServer::start().await, MockServer::start().await);
    let token_path = "/contoso/oauth2/v2.0/token";
    redirect_all(&origin, &target, token_path).await;
    accept_all(&target).await;
    let url = url::Url::parse(&format!("{}{token_path}", origin.uri())).unwrap();
    let credential = Credential::Secret(SecretString::from(SECRET));
    let mut settings = TokenSettings::new(url, "client", credential, "g/.default", "d/.default");
    settings.max_retries = 0;
    let cache = TokenCache::new(settings, shared_client()).unwrap();

    let err = cache.token(Resource::Graph, false).await.unwrap_err();
    assert!(err.message.contains("redirect"), "{}", err.message);
    assert!(err.permanent, "{}", err.message);
    assert!(!err.message.contains(SECRET));
    let followed = target.received_requests().await.unwrap();
    assert!(
        followed.is_empty(),
        "the redirect target saw {} request(s)",
        followed.len()
    );
    assert_eq!(origin.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_redirecting_webhook_sends_nothing_on_and_no_referer() {
    let (hook, target) = (MockServer::start().await, MockServer::start().await);
    redirect_all(&hook, &target, "/elsewhere").await;
    accept_all(&target).await;
    let hook_url = url::Url::parse(&format!("{}/hook/s3cr3t-path", hook.uri())).unwrap();
    let retry = Settings::new(hook_url.clone(), hook_url.clone()).retry;

    let sent = post_json(
        &shared_client(),
        &hook_url,
        &serde_json::json!({"alert": "x"}),
        Duration::from_secs(5),
        &retry,
    )
    .await;
    assert!(sent.is_err(), "a redirect is not a delivery: {sent:?}");
    let followed = target.received_requests().await.unwrap();
    assert!(
        followed.is_empty(),
        "the redirect target saw {} request(s)",
        followed.len()
    );
    for request in hook.received_requests().await.unwrap() {
        assert!(request.headers.get("referer").is_none());
    }
}

#[test]
fn endpoint_urls_with_a_user_or_password_are_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    super::support::write_secret(&dir.path().join("client-secret"), SECRET);
    for (url, password) in [
        ("https://:hunter2pw@graph.example.com", "hunter2pw"),
        ("https://svc:hunter3pw@graph.example.com", "hunter3pw"),
    ] {
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[tenant]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n\
                 client_id = \"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\n\
                 client_secret_file = \"client-secret\"\n\
                 [endpoints]\ngraph = \"{url}\"\n\
                 [scope]\nuser_group_id = \"99999999-8888-7777-6666-555555555555\"\n\
                 device_tag = \"DEX-Scoped\"\n"
            ),
        )
        .unwrap();
        let err = dexscope::config::load_for_command(&config, Vec::<(String, String)>::new())
            .expect_err(url)
            .to_string();
        assert!(err.contains("[endpoints] graph"), "{err}");
        assert!(err.contains("user name or password"), "{err}");
        assert!(!err.contains(password), "the password leaked: {err}");
    }
}
