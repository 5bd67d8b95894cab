//! The bad-input corpus for API responses: members, users, machines, incidents and the token
//! endpoint answering 200 with missing fields, wrong types, huge values (a 10 MB body, a
//! 1,000,000-element array, absurd numbers), non-JSON and truncated JSON. Each yields an error
//! that names the object and says what to do, without a panic; and the pass that would act on
//! the object (a reconcile pass, or an incident pass posting comments), run against a tenant
//! that answers everything else well, sends no write: the server counts them.
//! Config and desired-state files have their corpus in `config` and `desired`.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use dexscope::auth::{BearerSource, Credential, Resource, TokenCache, TokenSettings};
use dexscope::config::Config;
use dexscope::defender::DefenderClient;
use dexscope::graph::{GraphClient, IncidentQuery};
use dexscope::incidents::poll::{self, PollSettings};
use dexscope::model::{ObjectId, Upn};
use dexscope::reconcile::{self, Context};
use dexscope::state::State;
use dexscope::tenant::Tenant;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::http::{TestBearer, test_settings};

const GROUP: &str = "11111111-1111-1111-1111-111111111111";
const TENANT: &str = "33333333-3333-3333-3333-333333333333";
const TOKEN_PATH: &str = "/33333333-3333-3333-3333-333333333333/oauth2/v2.0/token";
/// The one user of the well-answering tenant, a member of the group.
const ANN: &str = "22222222-2222-2222-2222-222222222222";
/// The one machine of the well-answering tenant, tagged.
const MACHINE: &str = "73e7e2de709dff64ef64b1d0c30e67fab63279db";
const TAG: &str = "DEX-Scoped";

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
    let dir = tempfile::tempdir().unwrap();
    // The well-answering tenant is in step with the desired state; one user missing from
    // its group makes the same pass write, so the count below can see a write.
    let server = MockServer::start().await;
    mount_tenant(&server, false).await;
    let writes = pass_writes(Object::Users, &server, dir.path()).await;
    assert!(writes.is_empty(), "in step, yet {writes:?}");
    let server = MockServer::start().await;
    mount_tenant(&server, true).await;
    let writes = pass_writes(Object::Users, &server, dir.path()).await;
    assert_eq!(writes.len(), 1, "the add is counted: {writes:?}");
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
                .with_priority(1)
                .mount(&server)
                .await;
            mount_tenant(&server, false).await;
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
            let writes = pass_writes(object, &server, dir.path()).await;
            assert!(
                writes.is_empty(),
                "{what}: the pass sent writes: {writes:?}"
            );
            table.push((what, requests.len(), err));
        }
    }
    for (what, requests, err) in &table {
        let short: String = err.chars().take(150).collect();
        println!("{what:<42} {requests:>2} requests  {short}");
    }
}

/// Answers, below the corpus's own mock, everything a reconcile or incident pass asks of a
/// tenant in step with the desired state: a token, the group holding Ann (or nobody when
/// `ann_missing`), Ann found by her UPN, the tagged machine, and no incident. Writes are
/// answered as done.
async fn mount_tenant(server: &MockServer, ann_missing: bool) {
    let ok = |body: serde_json::Value| ResponseTemplate::new(200).set_body_json(body);
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ok(json!({
            "access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3599
        })))
        .mount(server)
        .await;
    let members = if ann_missing {
        json!({"value": []})
    } else {
        // No UPN on the member, as the delta gives them: the pass looks Ann up by UPN.
        json!({"value": [{"@odata.type": "#microsoft.graph.user", "id": ANN}]})
    };
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{GROUP}/members")))
        .respond_with(ok(members))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1.0/$batch"))
        .respond_with(|req: &Request| {
            let body: serde_json::Value = req.body_json().unwrap_or_default();
            let responses: Vec<serde_json::Value> = body["requests"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| {
                    if item["method"] == "GET" {
                        json!({"id": item["id"], "status": 200, "body": {"value": [{
                            "id": ANN, "userPrincipalName": "ann@contoso.com"
                        }]}})
                    } else {
                        json!({"id": item["id"], "status": 204})
                    }
                })
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({ "responses": responses }))
        })
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/machines"))
        .respond_with(ok(json!({"value": [{
            "id": MACHINE, "computerDnsName": "ws-0001.contoso.local", "aadDeviceId": null,
            "osPlatform": "Windows11", "machineTags": [TAG]
        }]})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/security/incidents"))
        .respond_with(ok(json!({"value": []})))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(server)
        .await;
}

/// Runs the pass that would act on what `object` answers, against `server`, and returns the
/// writes the server received: every request but reads, token requests and `$batch`
/// envelopes of reads (a `$batch` with a write in it counts, named by its item methods).
async fn pass_writes(object: Object, server: &MockServer, dir: &Path) -> Vec<String> {
    // With the member list malformed, the desired state lists no user: a member taken from
    // the malformed list could then only be removed, never found wanted.
    let users = if object == Object::Members {
        ""
    } else {
        "\"ann@contoso.com\""
    };
    let config = load_config(server, dir);
    let tenant = Tenant::from_config(&config).unwrap();
    let db = tempfile::tempdir_in(dir).unwrap();
    let state = State::open(db.path().join("state.db")).unwrap();
    let before = server.received_requests().await.unwrap().len();
    if object == Object::Incidents {
        let settings = PollSettings::from_config(&config);
        let _ = poll::poll_once(&tenant, &state, &settings, Utc::now()).await;
    } else {
        let desired = dexscope::desired::parse_str(
            Path::new("desired.toml"),
            &format!("users = [{users}]\ndevices = [\"ws-0001.contoso.local\"]\n"),
            Utc::now().date_naive(),
            dexscope::desired::Mode::Runtime,
        )
        .unwrap()
        .state;
        let ctx = Context {
            tenant: &tenant,
            state: &state,
            user_group: &config.scope.user_group_id,
            device_tag: &config.scope.device_tag,
            member_resync: config.scope.member_resync,
        };
        let settings = reconcile::settings_from_config(&config, false);
        let _ = reconcile::reconcile_once(ctx, &desired, &settings, Utc::now()).await;
    }
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .skip(before)
        .filter_map(|r| {
            let p = r.url.path();
            let m = r.method.as_str();
            if m == "GET" || (m == "POST" && p == TOKEN_PATH) {
                return None;
            }
            if m == "POST" && p == "/v1.0/$batch" {
                let b: serde_json::Value = r.body_json().unwrap_or_default();
                let methods: Vec<String> = b["requests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["method"].as_str())
                    .filter(|m| *m != "GET")
                    .map(str::to_string)
                    .collect();
                return (!methods.is_empty()).then(|| format!("{m} {p}: {}", methods.join(" ")));
            }
            Some(format!("{m} {p}"))
        })
        .collect()
}

/// A config pointed at `server`, pruning, posting comments, retrying little.
fn load_config(server: &MockServer, dir: &Path) -> Config {
    let base = server.uri();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[tenant]\ntenant_id = \"{TENANT}\"\n\
             client_id = \"11111111-2222-3333-4444-555555555555\"\n\
             [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
             [scope]\nuser_group_id = \"{GROUP}\"\ndevice_tag = \"{TAG}\"\n\
             desired_state = \"desired.toml\"\nprune = true\n\
             [incidents]\npost_comments = true\n\
             [http]\nmax_attempts = 2\n\
             [state]\npath = \"state.db\"\n",
        ),
    )
    .unwrap();
    Config::load(
        &path,
        [("DEXSCOPE_CLIENT_SECRET", "Zq8~client-secret-value_41")],
    )
    .unwrap()
}
