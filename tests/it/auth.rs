//! Token cache over real HTTP against wiremock: one token per resource, caching, refresh ahead
//! of expiry, shared and forced refreshes, error classification, retries, the roles check, the
//! certificate assertion and the absence of secrets from logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use dexscope::auth::{AssertionAlg, BearerSource, Credential, Resource, TokenCache, TokenSettings};
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest as _;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SECRET: &str = "Zq8~client-secret-value_41";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const MDE_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
const TOKEN_PATH: &str = "/contoso.onmicrosoft.com/oauth2/v2.0/token";
const GRAPH_ROLES: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "User.Read.All",
    "SecurityIncident.ReadWrite.All",
];

/// A JWT-shaped token (unsigned: only the cache and the roles check read it).
fn fake_jwt(n: usize, roles: &[&str]) -> String {
    let header = B64URL.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = serde_json::json!({ "n": n, "roles": roles, "aud": "x" });
    format!(
        "{header}.{}.c2lnbmF0dXJl{n}",
        B64URL.encode(payload.to_string())
    )
}

/// Answers every token request with a new token (`n` counts them), a chosen lifetime and the
/// roles given for the scope asked for.
struct Issuer {
    issued: AtomicUsize,
    expires_in: u64,
    graph_roles: Vec<&'static str>,
    mde_roles: Vec<&'static str>,
    delay: Duration,
}

impl Issuer {
    fn new(expires_in: u64) -> Self {
        Issuer {
            issued: AtomicUsize::new(0),
            expires_in,
            graph_roles: GRAPH_ROLES.to_vec(),
            mde_roles: vec!["Machine.ReadWrite.All"],
            delay: Duration::ZERO,
        }
    }
}

impl Respond for Issuer {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let form = form(request);
        let roles = if form.get("scope").map(String::as_str) == Some(MDE_SCOPE) {
            &self.mde_roles
        } else {
            &self.graph_roles
        };
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "ext_expires_in": self.expires_in,
                "access_token": fake_jwt(n, roles),
            }))
            .set_delay(self.delay)
    }
}

fn form(request: &Request) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect()
}

fn settings(server: &MockServer, credential: Credential) -> TokenSettings {
    let url = url::Url::parse(&format!("{}{TOKEN_PATH}", server.uri())).unwrap();
    let mut s = TokenSettings::new(url, CLIENT_ID, credential, GRAPH_SCOPE, MDE_SCOPE);
    // Tests that pause the clock must not have a per-request timer: a paused runtime jumps to
    // the next timer while it waits for the socket.
    s.request_timeout = None;
    s
}

fn secret() -> Credential {
    Credential::Secret(SecretString::from(SECRET))
}

async fn cache_with(server: &MockServer, issuer: Issuer) -> TokenCache {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(issuer)
        .mount(server)
        .await;
    TokenCache::new(settings(server, secret()), reqwest::Client::new()).unwrap()
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

#[tokio::test]
async fn one_token_per_resource_with_its_own_scope() {
    let server = MockServer::start().await;
    let cache = cache_with(&server, Issuer::new(3599)).await;

    let graph = cache.bearer(Resource::Graph, false).await.unwrap();
    let mde = cache.bearer(Resource::Defender, false).await.unwrap();

    assert_ne!(graph.expose_secret(), mde.expose_secret());
    let bodies: Vec<_> = requests(&server).await.iter().map(form).collect();
    assert_eq!(bodies.len(), 2);
    let scopes: Vec<_> = bodies.iter().map(|b| b["scope"].as_str()).collect();
    assert_eq!(scopes, [GRAPH_SCOPE, MDE_SCOPE]);
    for body in &bodies {
        assert_eq!(body["grant_type"], "client_credentials");
        assert_eq!(body["client_id"], CLIENT_ID);
        assert_eq!(body["client_secret"], SECRET);
        assert!(!body.contains_key("client_assertion"));
    }
}

#[tokio::test]
async fn a_cached_token_is_reused() {
    let server = MockServer::start().await;
    let cache = cache_with(&server, Issuer::new(3599)).await;

    let first = cache.bearer(Resource::Graph, false).await.unwrap();
    for _ in 0..5 {
        let again = cache.bearer(Resource::Graph, false).await.unwrap();
        assert_eq!(again.expose_secret(), first.expose_secret());
    }
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn the_token_is_refreshed_ahead_of_expiry() {
    let server = MockServer::start().await;
    let cache = cache_with(&server, Issuer::new(3600)).await;
    tokio::time::pause();

    let first = cache.bearer(Resource::Graph, false).await.unwrap();
    tokio::time::advance(Duration::from_secs(54 * 60)).await;
    let still = cache.bearer(Resource::Graph, false).await.unwrap();
    assert_eq!(still.expose_secret(), first.expose_secret());
    assert_eq!(requests(&server).await.len(), 1);

    // Default refresh_ahead is 5 minutes: past 55 minutes of a 60-minute token it is replaced.
    tokio::time::advance(Duration::from_secs(61)).await;
    let fresh = cache.bearer(Resource::Graph, false).await.unwrap();
    assert_ne!(fresh.expose_secret(), first.expose_secret());
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_request() {
    let server = MockServer::start().await;
    let mut issuer = Issuer::new(3599);
    issuer.delay = Duration::from_millis(200);
    let cache = Arc::new(cache_with(&server, issuer).await);

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.bearer(Resource::Graph, false).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap().expose_secret().to_owned());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1);
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_wave_of_forced_refreshes_sends_one_request() {
    let server = MockServer::start().await;
    let mut issuer = Issuer::new(3599);
    issuer.delay = Duration::from_millis(100);
    let cache = Arc::new(cache_with(&server, issuer).await);
    let stale = cache.bearer(Resource::Graph, false).await.unwrap();

    // Ten requests got a 401 with the same token and all ask for a new one at once.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.bearer(Resource::Graph, true).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap().expose_secret().to_owned());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1);
    assert_ne!(tokens[0], stale.expose_secret());
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn replacing_a_rejected_token_happens_once() {
    let server = MockServer::start().await;
    let cache = cache_with(&server, Issuer::new(3599)).await;
    let stale = cache.token(Resource::Defender, false).await.unwrap();

    let fresh = cache
        .token_replacing(Resource::Defender, &stale)
        .await
        .unwrap();
    let again = cache
        .token_replacing(Resource::Defender, &stale)
        .await
        .unwrap();

    assert_ne!(fresh.expose_secret(), stale.expose_secret());
    assert_eq!(again.expose_secret(), fresh.expose_secret());
    assert_eq!(requests(&server).await.len(), 2);
}

const BAD_SECRET_BODY: &str = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '11111111-2222-3333-4444-555555555555'.\r\nTrace ID: 0b1c2d3e-aaaa-bbbb-cccc-000000000001\r\nCorrelation ID: 9f8e7d6c-aaaa-bbbb-cccc-000000000002\r\nTimestamp: 2026-01-05 10:00:00Z","error_codes":[7000215],"timestamp":"2026-01-05 10:00:00Z","trace_id":"0b1c2d3e-aaaa-bbbb-cccc-000000000001","correlation_id":"9f8e7d6c-aaaa-bbbb-cccc-000000000002"}"#;

async fn mount_bad_secret(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_raw(BAD_SECRET_BODY, "application/json; charset=utf-8"),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn an_aadsts_refusal_is_one_permanent_line_and_not_retried() {
    let server = MockServer::start().await;
    mount_bad_secret(&server).await;
    let cache = TokenCache::new(settings(&server, secret()), reqwest::Client::new()).unwrap();

    let err = cache.bearer(Resource::Graph, false).await.unwrap_err();

    assert!(err.permanent);
    expect_test::expect!["token request for Microsoft Graph refused: AADSTS7000215 invalid client secret — check the secret in the client secret file (tenant.client_secret_file): it must be the secret's value, not its id"]
        .assert_eq(&err.message);
    assert!(!err.message.contains("Trace ID"));
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let cache = cache_with(&server, Issuer::new(3599)).await;
    tokio::time::pause();

    let token = cache.bearer(Resource::Graph, false).await;

    assert!(token.is_ok(), "{token:?}");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn throttling_waits_for_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let cache = cache_with(&server, Issuer::new(3599)).await;
    tokio::time::pause();
    let started = tokio::time::Instant::now();

    cache.bearer(Resource::Defender, false).await.unwrap();

    // Virtual time: the retry was not sent before the 7 seconds asked for.
    assert!(started.elapsed() >= Duration::from_secs(7));
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn a_lasting_outage_is_transient_after_a_few_tries() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let cache = TokenCache::new(settings(&server, secret()), reqwest::Client::new()).unwrap();
    tokio::time::pause();

    let err = cache.bearer(Resource::Graph, false).await.unwrap_err();

    assert!(!err.permanent);
    assert!(err.message.contains("503"), "{}", err.message);
    assert!(!err.message.contains('\n'));
    assert_eq!(requests(&server).await.len(), 4);
}

#[tokio::test]
async fn a_connection_failure_is_transient() {
    let (_refusing, addr) = crate::support::refusing_addr();
    let url = url::Url::parse(&format!("http://{addr}{TOKEN_PATH}")).unwrap();
    let mut s = TokenSettings::new(url, CLIENT_ID, secret(), GRAPH_SCOPE, MDE_SCOPE);
    s.max_retries = 1;
    s.request_timeout = None;
    let cache = TokenCache::new(s, reqwest::Client::new()).unwrap();
    tokio::time::pause();

    let err = cache.bearer(Resource::Graph, false).await.unwrap_err();

    assert!(!err.permanent);
    assert!(err.message.contains("could not connect"), "{}", err.message);
}

#[tokio::test]
async fn the_self_check_names_a_missing_role() {
    let server = MockServer::start().await;
    let mut issuer = Issuer::new(3599);
    issuer.graph_roles = vec!["GroupMember.ReadWrite.All", "User.Read.All"];
    let cache = cache_with(&server, issuer).await;

    let checks = cache.self_check().await;

    assert_eq!(checks.len(), 2);
    let (resource, graph) = &checks[0];
    assert_eq!(*resource, Resource::Graph);
    let graph = graph.as_ref().unwrap();
    assert_eq!(graph.missing, ["SecurityIncident.ReadWrite.All"]);
    assert!(graph.message.contains("SecurityIncident.ReadWrite.All"));
    let (resource, mde) = &checks[1];
    assert_eq!(*resource, Resource::Defender);
    assert!(mde.as_ref().unwrap().is_complete());
}

// ---------------------------------------------------------------------------------------------
// Certificate assertion
// ---------------------------------------------------------------------------------------------

struct TestCert {
    key: rcgen::KeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
}

/// A throwaway RSA key and self-signed certificate, made at run time.
fn test_cert() -> TestCert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["dexscope.test".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key,
    }
}

/// Read one DER tag-length header; returns (header length, content length).
fn der_header(der: &[u8]) -> (usize, usize) {
    match der[1] {
        n if n < 0x80 => (2, n as usize),
        0x81 => (3, der[2] as usize),
        0x82 => (4, u16::from_be_bytes([der[2], der[3]]) as usize),
        other => panic!("unexpected DER length byte {other:#x}"),
    }
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (its third element).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    let (outer, _) = der_header(pkcs8);
    let mut rest = &pkcs8[outer..];
    for _ in 0..2 {
        let (h, len) = der_header(rest);
        rest = &rest[h + len..];
    }
    assert_eq!(rest[0], 0x04, "expected the OCTET STRING holding the key");
    let (h, len) = der_header(rest);
    rest[h..h + len].to_vec()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let body = STANDARD.encode(der);
    let lines: Vec<_> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

async fn assertions_sent(
    credential: Credential,
) -> (Vec<std::collections::HashMap<String, String>>, String) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(body_string_contains("client_assertion="))
        .respond_with(Issuer::new(3599))
        .mount(&server)
        .await;
    let s = settings(&server, credential);
    let audience = s.token_url.to_string();
    let cache = TokenCache::new(s, reqwest::Client::new()).unwrap();
    cache.bearer(Resource::Graph, false).await.unwrap();
    cache.bearer(Resource::Graph, true).await.unwrap();
    let bodies = requests(&server).await.iter().map(form).collect();
    (bodies, audience)
}

fn verify_assertions(
    bodies: &[std::collections::HashMap<String, String>],
    audience: &str,
    cert: &TestCert,
    alg: jsonwebtoken::Algorithm,
) -> Vec<jsonwebtoken::Header> {
    assert_eq!(bodies.len(), 2);
    let key = jsonwebtoken::DecodingKey::from_rsa_der(cert.key.public_key_raw());
    // The verifying key is the certificate's: its public key is embedded in the cert's DER.
    assert!(
        cert.cert_der
            .windows(cert.key.public_key_raw().len())
            .any(|w| w == cert.key.public_key_raw())
    );
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let mut jtis = Vec::new();
    let mut headers = Vec::new();
    for body in bodies {
        assert_eq!(
            body["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(body["client_id"], CLIENT_ID);
        assert_eq!(body["grant_type"], "client_credentials");
        assert!(!body.contains_key("client_secret"));
        let assertion = &body["client_assertion"];
        let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).unwrap();
        let claims = data.claims;
        assert_eq!(claims["sub"], CLIENT_ID);
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["aud"], audience);
        let (nbf, iat, exp) = (
            claims["nbf"].as_u64().unwrap(),
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(nbf, iat);
        assert_eq!(exp - iat, 600);
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&jti).is_ok(), "{jti}");
        jtis.push(jti);
        headers.push(data.header);
    }
    assert_ne!(jtis[0], jtis[1], "every request carries a fresh assertion");
    headers
}

#[tokio::test]
async fn the_certificate_assertion_is_ps256_with_a_sha256_thumbprint() {
    let cert = test_cert();
    let pem = format!("{}{}", cert.cert_pem, cert.key.serialize_pem());
    let credential = Credential::Certificate {
        pem: SecretString::from(pem),
        alg: AssertionAlg::Ps256,
    };

    let (bodies, audience) = assertions_sent(credential).await;

    let headers = verify_assertions(&bodies, &audience, &cert, jsonwebtoken::Algorithm::PS256);
    let thumbprint = B64URL.encode(sha2::Sha256::digest(&cert.cert_der));
    for header in headers {
        assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint.as_str()));
        assert_eq!(header.x5t, None);
    }
}

#[tokio::test]
async fn rs256_with_a_sha1_thumbprint_is_selectable_and_reads_pkcs1_keys() {
    let cert = test_cert();
    let pkcs1 = pem_block("RSA PRIVATE KEY", &pkcs1_of(&cert.key.serialize_der()));
    let pem = format!("Bag Attributes\n{}{pkcs1}", cert.cert_pem);
    let credential = Credential::Certificate {
        pem: SecretString::from(pem),
        alg: AssertionAlg::Rs256,
    };

    let (bodies, audience) = assertions_sent(credential).await;

    let headers = verify_assertions(&bodies, &audience, &cert, jsonwebtoken::Algorithm::RS256);
    let sha1 =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert.cert_der);
    let thumbprint = B64URL.encode(sha1.as_ref());
    for header in headers {
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.x5t.as_deref(), Some(thumbprint.as_str()));
        assert_eq!(header.x5t_s256, None);
    }
}

#[tokio::test]
async fn a_key_from_another_certificate_is_refused_at_start() {
    let cert = test_cert();
    let other = test_cert();
    let pem = format!("{}{}", cert.cert_pem, other.key.serialize_pem());
    let credential = Credential::Certificate {
        pem: SecretString::from(pem),
        alg: AssertionAlg::Ps256,
    };
    let server = MockServer::start().await;

    let err = TokenCache::new(settings(&server, credential), reqwest::Client::new()).unwrap_err();

    assert!(err.permanent);
    assert!(
        err.message.contains("does not belong to the certificate"),
        "{}",
        err.message
    );
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn logs_never_carry_the_secret_the_token_or_the_assertion() {
    let logs = crate::support::capture_logs();

    // Secret: a success, then a refusal of the same secret.
    let server = MockServer::start().await;
    let cache = cache_with(&server, Issuer::new(3599)).await;
    let token = cache.bearer(Resource::Graph, false).await.unwrap();
    let refusing = MockServer::start().await;
    mount_bad_secret(&refusing).await;
    let failing = TokenCache::new(settings(&refusing, secret()), reqwest::Client::new()).unwrap();
    let err = failing.bearer(Resource::Graph, false).await.unwrap_err();

    // Certificate: the assertions sent must not show up either.
    let cert = test_cert();
    let credential = Credential::Certificate {
        pem: SecretString::from(format!("{}{}", cert.cert_pem, cert.key.serialize_pem())),
        alg: AssertionAlg::Ps256,
    };
    let (bodies, _) = assertions_sent(credential).await;

    let text = logs.text();
    assert!(
        text.contains("token request"),
        "the exchanges are logged: {text}"
    );
    assert!(text.contains("status=401"), "{text}");
    assert!(
        text.contains("9f8e7d6c-aaaa-bbbb-cccc-000000000002"),
        "correlation id logged: {text}"
    );
    let mut forbidden = vec![SECRET.to_owned(), token.expose_secret().to_owned()];
    for body in &bodies {
        forbidden.push(body["client_assertion"].clone());
        // The signature part alone must not leak either.
        forbidden.push(
            body["client_assertion"]
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    for secret in &forbidden {
        assert!(
            !text.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
        assert!(!err.message.contains(secret.as_str()));
    }
    assert!(!format!("{cache:?}{failing:?}{err:?}").contains(SECRET));
}
