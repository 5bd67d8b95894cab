//! The bad-input corpus for API responses: members, users, machines, incidents and the token
//! endpoint answering 200 with missing fields, wrong types, huge values (a 10 MB body, a
//! 1,000,000-element array, absurd numbers), non-JSON and truncated JSON. Each yields an error
//! that names the object and says what to do, without a panic, and no write is sent.
//! Config and desired-state files have their corpus in `config` and `desired`.

use std::time::Duration;

use dexscope::auth::{BearerSource, Credential, Resource, TokenCache, TokenSettings};
use dexscope::defender::DefenderClient;
use dexscope::graph::{GraphClient, IncidentQuery};
use dexscope::model::{ObjectId, Upn};
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::http::{TestBearer, test_settings};

const GROUP: &str = "11111111-1111-1111-1111-111111111111";
const TOKEN_PATH: &str = "/contoso.onmicrosoft.com/oauth2/v2.0/token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object {
    Members,
    Users,
    Machines,
    Incidents,
    Token,
}

impl Object {
    fn route(self) -> (&'static str, String) {
        match self {
            Object::Members => ("GET", format!("/v1.0/groups/{GROUP}/members")),
            Object::Users => ("POST", "/v1.0/$batch".into()),
            Object::Machines => ("GET", "/api/machines".into()),
            Object::Incidents => ("GET", "/v1.0/security/incidents".into()),
            Object::Token => ("POST", TOKEN_PATH.into()),
        }
    }

    /// A word the error must contain: the object it could not read.
    fn noun(self) -> &'static str {
        match self {
            Object::Members => "member",
            Object::Users => "user",
            Object::Machines => "machine",
            Object::Incidents => "incident",
            Object::Token => "token",
        }
    }
}

/// The bodies of the corpus, by name: (name, content type, bytes).
fn bodies(object: Object) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let j = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let array_key = match object {
        Object::Users => "responses",
        _ => "value",
    };
    let huge_array = {
        let mut s = format!("{{\"{array_key}\":[");
        s.push_str(&vec!["1"; 1_000_000].join(","));
        s.push_str("]}");
        s.into_bytes()
    };
    let ten_mb = {
        let mut s = format!("{{\"{array_key}\":[{{\"id\":\"");
        s.push_str(&"x".repeat(10 * 1024 * 1024));
        s.push_str("\"}]}");
        s.into_bytes()
    };
    let missing = match object {
        Object::Members | Object::Machines | Object::Incidents => j(json!({"value": [{}]})),
        Object::Users => j(json!({"responses": [{"status": 200}]})),
        Object::Token => j(json!({"token_type": "Bearer", "expires_in": 3599})),
    };
    let wrong_type = match object {
        Object::Members => j(json!({"value": [{"@odata.type": 7, "id": ["x"]}]})),
        Object::Users => j(json!({"responses": "none"})),
        Object::Machines => j(json!({"value": [{"id": 42, "machineTags": "DEX"}]})),
        Object::Incidents => j(json!({"value": [{"id": true, "createdDateTime": 5}]})),
        Object::Token => j(json!({"access_token": 12, "expires_in": "soon"})),
    };
    let absurd = match object {
        Object::Token => {
            br#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":1e400}"#.to_vec()
        }
        _ => format!("{{\"{array_key}\":[{{\"id\":-1e400,\"status\":18446744073709551616999}}]}}")
            .into_bytes(),
    };
    vec![
        ("missing fields", "application/json", missing),
        ("wrong types", "application/json", wrong_type),
        ("absurd numbers", "application/json", absurd),
        ("a 1,000,000-element array", "application/json", huge_array),
        ("a 10 MB body", "application/json", ten_mb),
        (
            "not JSON",
            "text/html",
            b"<html><body>Service Unavailable</body></html>".to_vec(),
        ),
        (
            "truncated JSON",
            "application/json",
            format!("{{\"{array_key}\":[{{\"id\":\"0000").into_bytes(),
        ),
        ("an empty body", "application/json", Vec::new()),
    ]
}

/// Runs the operation that reads `object`; returns how many items it took, or its error.
async fn read(object: Object, server: &MockServer) -> Result<usize, String> {
    let mut settings = test_settings(server);
    settings.retry.max_attempts = 2;
    settings.request_timeout = Duration::from_secs(20);
    let http = dexscope::http::Client::new(settings, TestBearer::new()).unwrap();
    let graph = GraphClient::new(http.clone());
    let defender = DefenderClient::new(http);
    match object {
        Object::Members => graph
            .list_group_members(&ObjectId::parse(GROUP).unwrap())
            .await
            .map(|v| v.len())
            .map_err(|e| e.to_string()),
        Object::Users => graph
            .users_by_upn(&[Upn::parse("ann@contoso.com").unwrap()])
            .await
            .map(|v| v.len())
            .map_err(|e| e.to_string()),
        Object::Machines => defender
            .all_machines()
            .await
            .map(|v| v.len())
            .map_err(|e| e.to_string()),
        Object::Incidents => graph
            .list_incidents(
                chrono::Utc::now() - chrono::Duration::days(1),
                IncidentQuery {
                    top: 50,
                    expand_alerts: true,
                },
            )
            .await
            // A malformed incident is kept as an error of its own (the poll logs and skips
            // it, holding the cursor); only well-formed ones count.
            .map(|v| v.iter().filter(|i| i.is_ok()).count())
            .map_err(|e| e.to_string()),
        Object::Token => {
            let url = url::Url::parse(&format!("{}{TOKEN_PATH}", server.uri())).unwrap();
            let mut s = TokenSettings::new(
                url,
                "11111111-2222-3333-4444-555555555555",
                Credential::Secret(SecretString::from("Zq8~client-secret-value_41")),
                "https://graph.microsoft.com/.default",
                "https://api.securitycenter.microsoft.com/.default",
            );
            s.request_timeout = Some(Duration::from_secs(20));
            let cache = TokenCache::new(s, reqwest::Client::new()).unwrap();
            cache
                .bearer(Resource::Graph, false)
                .await
                .map(|_| 1)
                .map_err(|e| e.message.clone())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_api_responses_fail_clearly_without_a_write() {
    let mut table = Vec::new();
    for object in [
        Object::Members,
        Object::Users,
        Object::Machines,
        Object::Incidents,
        Object::Token,
    ] {
        for (name, content_type, body) in bodies(object) {
            let server = MockServer::start().await;
            let (verb, route) = object.route();
            Mock::given(method(verb))
                .and(path(route.as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_raw(body, content_type))
                .mount(&server)
                .await;
            let result = read(object, &server).await;
            let what = format!("{object:?} / {name}");
            let failed = result.is_err();
            let err = match result {
                Err(e) => e,
                Ok(taken) => {
                    // By design a list with malformed items is read and the items are
                    // skipped with a warning (a member or machine whose id is not an id, an
                    // incident that does not parse): nothing malformed is ever taken.
                    assert!(
                        matches!(
                            object,
                            Object::Members | Object::Machines | Object::Incidents
                        ),
                        "{what}: accepted"
                    );
                    assert_eq!(taken, 0, "{what}: a malformed item was taken");
                    format!("read, the malformed item skipped ({taken} taken)")
                }
            };
            assert!(
                !failed || err.to_lowercase().contains(object.noun()),
                "{what}: the error names the object: {err}"
            );
            assert!(
                !failed || err.contains("report it") || err.contains("check "),
                "{what}: the error says what to do: {err}"
            );
            assert!(
                err.len() < 2_000,
                "{what}: the error stays short: {} bytes",
                err.len()
            );
            assert!(!err.contains("client-secret-value"), "{what}: {err}");
            let requests = server.received_requests().await.unwrap();
            let writes: Vec<String> = requests
                .iter()
                .filter(|r| {
                    let p = r.url.path();
                    matches!(r.method.as_str(), "PATCH" | "DELETE" | "PUT")
                        || (r.method.as_str() == "POST" && p != "/v1.0/$batch" && p != TOKEN_PATH)
                })
                .map(|r| format!("{} {}", r.method, r.url.path()))
                .collect();
            assert!(writes.is_empty(), "{what}: writes sent: {writes:?}");
            if object == Object::Users {
                // The user lookup goes in a $batch of GETs only.
                for r in requests.iter().filter(|r| r.url.path() == "/v1.0/$batch") {
                    let b: serde_json::Value = r.body_json().unwrap();
                    assert!(
                        b["requests"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|i| i["method"] == "GET"),
                        "{what}: {b}"
                    );
                }
            }
            table.push((what, requests.len(), err));
        }
    }
    for (what, requests, err) in &table {
        let short: String = err.chars().take(150).collect();
        println!("{what:<42} {requests:>2} requests  {short}");
    }
}
