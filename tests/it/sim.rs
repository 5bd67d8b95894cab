//! The simulated tenant over real loopback HTTP, driven by a plain reqwest client: limits,
//! error bodies, all-or-nothing writes, placement, quotas, faults, tokens and incidents.

use std::time::Duration;

use dexscope::sim::{
    self, FaultConfig, GroupRule, IncidentSpec, QuotaConfig, Scenario, SeedSpec, SimHandle,
    SimOptions, Surface,
};
use reqwest::{Client, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const MDE_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

fn small() -> SimOptions {
    SimOptions {
        seed: 7,
        generate: SeedSpec {
            users: 300,
            devices: 60,
            incidents: 30,
            scoped_users: 250,
            tagged_share: 0.0,
            nested: true,
        },
        placement_delay_secs: 60.0,
        ..SimOptions::default()
    }
}

struct T {
    sim: SimHandle,
    http: Client,
    graph: String,
    mde: String,
}

impl T {
    async fn new(opts: SimOptions) -> T {
        let sim = sim::start(opts).await.expect("simulator starts");
        let http = Client::new();
        let graph = token(&http, &sim, GRAPH_SCOPE).await;
        let mde = token(&http, &sim, MDE_SCOPE).await;
        T {
            sim,
            http,
            graph,
            mde,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn g(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self
            .http
            .request(method, self.url(&format!("/v1.0{path}")))
            .bearer_auth(&self.graph);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        send(rb).await
    }

    async fn m(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.mde);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        send(rb).await
    }

    fn group(&self) -> String {
        self.sim.user_group_id()
    }

    fn any_user_not_in_group(&self, n: usize) -> Vec<String> {
        let members = self.sim.group_members(&self.group());
        let state = self.sim.state();
        let t = state.lock().unwrap();
        t.directory
            .users
            .iter()
            .flatten()
            .map(|u| u.id.to_string())
            .filter(|id| !members.contains(id))
            .take(n)
            .collect()
    }
}

async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = rb.send().await.expect("request completes");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn token(http: &Client, sim: &SimHandle, scope: &str) -> String {
    let resp = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.base_url(),
            sim.tenant_id()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &sim.client_id()),
            ("client_secret", sim.client_secret().expose_secret()),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

fn bind(id: &str) -> String {
    format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")
}

use reqwest::Method as M;

#[tokio::test]
async fn members_page_with_next_links_and_top_is_bounded() {
    let t = T::new(small()).await;
    let mut url = t.url(&format!(
        "/v1.0/groups/{}/members?$select=id,userPrincipalName&$top=100",
        t.group()
    ));
    let (mut ids, mut pages, mut types) = (Vec::new(), 0, std::collections::BTreeSet::new());
    loop {
        let (s, _, body) = send(t.http.get(&url).bearer_auth(&t.graph)).await;
        assert_eq!(s, 200);
        pages += 1;
        for v in body["value"].as_array().unwrap() {
            ids.push(v["id"].as_str().unwrap().to_string());
            types.insert(v["@odata.type"].as_str().unwrap().to_string());
            assert!(v.get("displayName").is_none(), "$select applies");
        }
        match body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("$skiptoken="));
                url = next.to_string();
            }
            None => break,
        }
    }
    let expected = t.sim.group_members(&t.group());
    assert_eq!(
        expected.len(),
        252,
        "250 users, a nested group and a device"
    );
    assert_eq!(pages, 3);
    ids.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(types.len(), 3, "user, group and device members: {types:?}");

    let (s, _, body) = t
        .g(
            M::GET,
            &format!("/groups/{}/members?$top=1000", t.group()),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["error"]["message"],
        "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."
    );
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn patch_members_is_all_or_nothing() {
    let t = T::new(small()).await;
    let gid = t.group();
    let before = t.sim.group_members(&gid);
    let fresh = t.any_user_not_in_group(2);
    let path = format!("/groups/{gid}");

    let with_member =
        json!({"members@odata.bind": [bind(&fresh[0]), bind(&before[0]), bind(&fresh[1])]});
    let (s, _, body) = t.g(M::PATCH, &path, Some(with_member)).await;
    assert_eq!(s, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("One or more added object references already exist")
    );
    assert_eq!(
        t.sim.group_members(&gid).len(),
        before.len(),
        "nothing added"
    );

    let unknown = json!({"members@odata.bind": [bind(&fresh[0]), bind("00000000-0000-4000-8000-000000000000")]});
    let (s, _, _) = t.g(M::PATCH, &path, Some(unknown)).await;
    assert_eq!(s, 404);
    assert_eq!(
        t.sim.group_members(&gid).len(),
        before.len(),
        "nothing added"
    );

    let many: Vec<String> = t
        .any_user_not_in_group(21)
        .iter()
        .map(|i| bind(i))
        .collect();
    let (s, _, _) = t
        .g(M::PATCH, &path, Some(json!({"members@odata.bind": many})))
        .await;
    assert_eq!(s, 400);

    let ok = json!({"members@odata.bind": [bind(&fresh[0]), bind(&fresh[1])]});
    let (s, _, _) = t.g(M::PATCH, &path, Some(ok)).await;
    assert_eq!(s, 204);
    let after = t.sim.group_members(&gid);
    assert_eq!(after.len(), before.len() + 2);
    assert!(after.contains(&fresh[0]) && after.contains(&fresh[1]));
}

#[tokio::test]
async fn ref_add_and_remove_semantics() {
    let t = T::new(small()).await;
    let gid = t.group();
    let user = t.any_user_not_in_group(1).remove(0);
    let add = |id: &str| json!({"@odata.id": bind(id)});
    let path = format!("/groups/{gid}/members/$ref");

    assert_eq!(t.g(M::POST, &path, Some(add(&user))).await.0, 204);
    let (s, _, body) = t.g(M::POST, &path, Some(add(&user))).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["code"], "Request_BadRequest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exist")
    );
    assert_eq!(
        t.g(
            M::POST,
            &path,
            Some(add("00000000-0000-4000-8000-000000000001"))
        )
        .await
        .0,
        404
    );

    let del = format!("/groups/{gid}/members/{user}/$ref");
    assert_eq!(t.g(M::DELETE, &del, None).await.0, 204);
    let (s, _, body) = t.g(M::DELETE, &del, None).await;
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    assert!(!t.sim.group_members(&gid).contains(&user));
    assert!(t.sim.stats().violations.is_empty());
}

#[tokio::test]
async fn member_delete_without_ref_deletes_the_user_and_is_a_violation() {
    let t = T::new(small()).await;
    let gid = t.group();
    let user = t
        .sim
        .group_members(&gid)
        .into_iter()
        .find(|m| {
            let st = t.sim.state();
            let tt = st.lock().unwrap();
            tt.directory.user(&m.parse().unwrap()).is_some()
        })
        .unwrap();
    let (s, _, _) = t
        .g(M::DELETE, &format!("/groups/{gid}/members/{user}"), None)
        .await;
    assert_eq!(s, 204);
    let stats = t.sim.stats();
    assert_eq!(stats.violations.len(), 1);
    assert_eq!(stats.violations[0].kind, "member_delete_without_ref");
    assert_eq!(
        t.g(M::GET, &format!("/users/{user}"), None).await.0,
        404,
        "the user object is gone"
    );
    assert!(!t.sim.group_members(&gid).contains(&user));
}

#[tokio::test]
async fn batch_answers_per_item_shuffled_and_enforces_limits() {
    let t = T::new(small()).await;
    let users: Vec<String> = {
        let st = t.sim.state();
        let tt = st.lock().unwrap();
        tt.directory
            .users
            .iter()
            .flatten()
            .take(19)
            .map(|u| u.id.to_string())
            .collect()
    };
    let mut requests: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"id": (i + 1).to_string(), "method": "GET", "url": format!("/users/{u}?$select=id")}))
        .collect();
    requests.push(json!({"id": "20", "method": "GET", "url": "/users/nobody@contoso.com"}));
    let (s, _, body) = t
        .g(M::POST, "/$batch", Some(json!({"requests": requests})))
        .await;
    assert_eq!(s, 200);
    let responses = body["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 20);
    let order: Vec<&str> = responses
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let sorted: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_ne!(
        order,
        sorted.iter().map(String::as_str).collect::<Vec<_>>(),
        "responses are shuffled"
    );
    for r in responses {
        let want = if r["id"] == "20" { 404 } else { 200 };
        assert_eq!(r["status"], want, "{r}");
    }
    assert_eq!(
        t.sim.stats().calls("GET /v1.0/users/{id}"),
        20,
        "each item is a call"
    );

    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/users"}))
        .collect();
    assert_eq!(
        t.g(M::POST, "/$batch", Some(json!({"requests": too_many})))
            .await
            .0,
        400
    );
    let dup = json!({"requests": [{"id": "1", "method": "GET", "url": "/users"}, {"id": "1", "method": "GET", "url": "/users"}]});
    assert_eq!(t.g(M::POST, "/$batch", Some(dup)).await.0, 400);
}

#[tokio::test]
async fn user_in_filter_allows_fifteen_values_and_escapes_quotes() {
    let mut opts = small();
    opts.scenario = Some(Scenario::parse("[[users]]\nupn = \"o'hara@contoso.com\"\n").unwrap());
    let t = T::new(opts).await;
    let quoted = |n: usize| {
        (0..n)
            .map(|i| format!("'u{i}@contoso.com'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (s, _, _) = t
        .g(
            M::GET,
            &format!("/users?$filter=userPrincipalName in ({})", quoted(15)),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, body) = t
        .g(
            M::GET,
            &format!("/users?$filter=userPrincipalName in ({})", quoted(16)),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, _, body) = t
        .g(
            M::GET,
            "/users?$filter=userPrincipalName in ('O''Hara@contoso.com','x@contoso.com')",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    assert_eq!(body["value"][0]["userPrincipalName"], "o'hara@contoso.com");
}

#[tokio::test]
async fn bulk_tagging_is_all_or_nothing_and_bounded() {
    let t = T::new(small()).await;
    let (s, _, body) = t.m(M::GET, "/api/machines?$top=5", None).await;
    assert_eq!(s, 200);
    let ids: Vec<String> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        body["@odata.nextLink"]
            .as_str()
            .unwrap()
            .contains("$skip=5")
    );

    let mut with_unknown = ids.clone();
    with_unknown.push("ffffffffffffffffffffffffffffffffffffffff".into());
    let call = json!({"Value": "DEX-Scoped", "Action": "Add", "MachineIds": with_unknown});
    let (s, _, body) = t
        .m(
            M::POST,
            "/api/machines/AddOrRemoveTagForMultipleMachines",
            Some(call),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert!(body["error"]["target"].is_string());
    assert!(
        t.sim.machines_with_tag("DEX-Scoped").is_empty(),
        "nothing changed"
    );

    let many: Vec<String> = (0..501).map(|i| format!("{i:040x}")).collect();
    let (s, _, body) = t
        .m(
            M::POST,
            "/api/machines/AddOrRemoveTagForMultipleMachines",
            Some(json!({"Value": "X", "Action": "Add", "MachineIds": many})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["code"], "MaximumBatchSizeExceeded");

    let (s, _, body) = t
        .m(
            M::POST,
            "/api/machines/AddOrRemoveTagForMultipleMachines",
            Some(json!({"value": "X", "action": "Add", "MachineIds": ids})),
        )
        .await;
    assert_eq!(s, 400, "keys are case-sensitive");
    assert_eq!(body["error"]["code"], "InvalidRequestBody");

    let (s, _, body) = t
        .m(
            M::POST,
            "/api/machines/AddOrRemoveTagForMultipleMachines",
            Some(json!({"Value": "DEX-Scoped", "Action": "Add", "MachineIds": ids})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 5);
    assert_eq!(t.sim.machines_with_tag("dex-scoped").len(), 5);

    let (s, _, body) = t
        .m(
            M::POST,
            &format!("/api/machines/{}/tags", ids[0]),
            Some(json!({"Value": "DEX-Scoped", "Action": "Remove"})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(body["machineTags"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn machine_list_is_404_when_empty_and_filters_combine_with_or() {
    let t = T::new(small()).await;
    let (s, _, body) = t
        .m(
            M::GET,
            "/api/machines?$filter=machineTags/any(tag: tag eq 'no-such-tag')",
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "NotFound");
    let view = t.sim.machines_with_tag("nothing");
    assert!(view.is_empty());
    let first = {
        let st = t.sim.state();
        let tt = st.lock().unwrap();
        tt.view_of(0)
    };
    let f = format!(
        "id eq '{}' or computerDnsName eq '{}'",
        first.id, first.dns_name
    );
    let (s, _, body) = t
        .m(M::GET, &format!("/api/machines?$filter={f}"), None)
        .await;
    assert_eq!(s, 200);
    assert!(
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == first.id.as_str())
    );
    assert_eq!(t.m(M::GET, "/api/machines?$top=10001", None).await.0, 400);
}

#[tokio::test]
async fn a_higher_ranked_group_captures_tagged_servers_after_the_delay() {
    let t = T::new(small()).await;
    let server = {
        let st = t.sim.state();
        let tt = st.lock().unwrap();
        (0..tt.mde.machines.len() as u32)
            .map(|i| tt.view_of(i))
            .find(|v| {
                v.os_platform.starts_with("WindowsServer") && !v.dns_name.starts_with("srv-dc")
            })
            .expect("a seeded server")
    };
    let tag = json!({"Value": "DEX-Scoped", "Action": "Add"});
    assert_eq!(
        t.m(
            M::POST,
            &format!("/api/machines/{}/tags", server.id),
            Some(tag)
        )
        .await
        .0,
        200
    );
    let placed = |t: &T| t.sim.machine(&server.id).unwrap().rbac_group_name;
    assert_eq!(placed(&t), "Servers", "placement lags the tag");
    t.sim.advance(Duration::from_secs(61));
    assert_eq!(placed(&t), "Defender_Experts_Scoped_Coverage_Devices");

    let (s, _, body) = send(t.http.post(t.url("/_sim/device-groups")).json(
        &json!({"name": "All-Servers-Capture", "rank": 1, "os_platforms": ["WindowsServer*"]}),
    ))
    .await;
    assert_eq!(s, 201);
    let capture = body["id"].as_i64().unwrap();
    assert_eq!(placed(&t), "Defender_Experts_Scoped_Coverage_Devices");
    t.sim.advance(Duration::from_secs(61));
    let (_, _, m) = t
        .m(M::GET, &format!("/api/machines/{}", server.id), None)
        .await;
    assert_eq!(m["rbacGroupName"], "All-Servers-Capture");
    assert_eq!(m["rbacGroupId"], capture);

    assert!(t.sim.remove_device_group(capture));
    assert_eq!(placed(&t), "All-Servers-Capture");
    t.sim.advance(Duration::from_secs(61));
    assert_eq!(placed(&t), "Defender_Experts_Scoped_Coverage_Devices");
    let groups = t.sim.device_groups();
    assert_eq!(groups[0].rank, 1);
    assert_eq!(groups[0].name, "Defender_Experts_Scoped_Coverage_Devices");
    let _ = GroupRule::default();
}

#[tokio::test]
async fn quotas_throttle_with_retry_after_and_count_early_retries() {
    let mut opts = small();
    opts.quotas = QuotaConfig {
        mde_per_min: 3,
        ..QuotaConfig::default()
    };
    let t = T::new(opts).await;
    for _ in 0..3 {
        assert_eq!(t.m(M::GET, "/api/machines?$top=1", None).await.0, 200);
    }
    let (s, h, body) = t.m(M::GET, "/api/machines?$top=1", None).await;
    assert_eq!(s, 429);
    assert_eq!(body["error"]["code"], "TooManyRequests");
    let ra: f64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(ra > 0.0 && ra <= 60.0, "{ra}");
    assert_eq!(t.sim.stats().early_retries_total(), 0);
    assert!(
        t.sim.stats().violations.is_empty(),
        "a throttled call is none"
    );
    assert_eq!(t.m(M::GET, "/api/machines?$top=1", None).await.0, 429);
    let stats = t.sim.stats();
    assert_eq!(stats.early_retries.get(Surface::Mde.as_str()), Some(&1));
    assert_eq!(stats.throttled_total(), 2);
    // The early call is a quota violation, as the fault matrix and the client suites read them.
    let kinds: Vec<&str> = stats.violations.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(kinds, ["early_retry"], "{:?}", stats.violations);
    t.sim.advance(Duration::from_secs_f64(ra + 60.0));
    assert_eq!(t.m(M::GET, "/api/machines?$top=1", None).await.0, 200);
    assert_eq!(
        t.sim.stats().early_retries_total(),
        1,
        "a call after Retry-After is not early"
    );
    assert_eq!(t.sim.stats().violations.len(), 1);
    assert_eq!(
        t.g(M::GET, &format!("/groups/{}", t.group()), None).await.0,
        200,
        "other surfaces are separate"
    );
}

async fn fault_outcomes() -> Vec<u16> {
    let mut opts = small();
    opts.faults = FaultConfig {
        error_rate: 0.5,
        surfaces: vec![Surface::Mde],
        ..FaultConfig::default()
    };
    let t = T::new(opts).await;
    let mut out = Vec::new();
    for _ in 0..40 {
        out.push(t.m(M::GET, "/api/machines?$top=1", None).await.0.as_u16());
    }
    out
}

#[tokio::test]
async fn injected_faults_follow_the_seed_and_the_rate() {
    let a = fault_outcomes().await;
    assert_eq!(a, fault_outcomes().await, "same seed, same faults");
    let failed = a.iter().filter(|s| **s != 200).count();
    assert!((10..=30).contains(&failed), "{failed} of 40 failed: {a:?}");
    assert!(a.iter().all(|s| [200, 429, 500, 503, 504].contains(s)));

    let t = T::new(small()).await;
    t.sim.set_faults(FaultConfig {
        drop_rate: 1.0,
        ..FaultConfig::default()
    });
    let err = t
        .http
        .get(t.url("/api/machines"))
        .bearer_auth(&t.mde)
        .send()
        .await;
    assert!(err.is_err(), "connection closed without a response");
    assert_eq!(t.sim.stats().faults.get("drop"), Some(&1));
    t.sim.set_faults(FaultConfig::default());
    assert_eq!(t.m(M::GET, "/api/machines?$top=1", None).await.0, 200);
}

#[tokio::test]
async fn tokens_expire_and_bad_credentials_get_aadsts_errors() {
    let t = T::new(small()).await;
    t.sim.set_token_lifetime(60);
    let short = token(&t.http, &t.sim, GRAPH_SCOPE).await;
    let get = |tok: String| {
        send(
            t.http
                .get(t.url(&format!("/v1.0/groups/{}", t.group())))
                .bearer_auth(tok),
        )
    };
    assert_eq!(get(short.clone()).await.0, 200);
    t.sim.advance(Duration::from_secs(61));
    let (s, _, body) = get(short).await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(get(t.mde.clone()).await.0, 401, "wrong audience");
    t.sim.invalidate_tokens();
    assert_eq!(get(t.graph.clone()).await.0, 401, "invalidated");

    let token_url = format!(
        "{}/{}/oauth2/v2.0/token",
        t.sim.base_url(),
        t.sim.tenant_id()
    );
    let form = |secret: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", t.sim.client_id()),
            ("client_secret", secret.to_string()),
            ("scope", GRAPH_SCOPE.to_string()),
        ]
    };
    let (s, _, body) = send(t.http.post(&token_url).form(&form("wrong"))).await;
    assert_eq!(s, 401);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"][0], 7000215);
    let (s, _, body) = send(
        t.http
            .post(format!(
                "{}/not-a-tenant/oauth2/v2.0/token",
                t.sim.base_url()
            ))
            .form(&form("x")),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error_codes"][0], 90002);

    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = chrono::Utc::now().timestamp() + 600;
    let assertion = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "PS256", "typ": "JWT"})),
        b64(
            json!({"iss": t.sim.client_id(), "sub": t.sim.client_id(), "aud": format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", t.sim.tenant_id()), "exp": exp, "jti": "1"})
        )
    );
    let (s, _, body) = send(t.http.post(&token_url).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &t.sim.client_id()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", &assertion),
        ("scope", MDE_SCOPE),
    ]))
    .await;
    assert_eq!(s, 200, "{body}");
    let claims = body["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["roles"], json!(["Machine.ReadWrite.All"]));
    assert_eq!(claims["aud"], "https://api.securitycenter.microsoft.com");
}

#[tokio::test]
async fn incidents_limit_filter_page_and_expand() {
    let t = T::new(small()).await;
    let (s, _, body) = t.g(M::GET, "/security/incidents?$top=51", None).await;
    assert_eq!(s, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The limit of '50' for Top query has been exceeded")
    );

    let mut url = t.url("/v1.0/security/incidents?$top=7&$expand=alerts");
    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        let (s, _, body) = send(t.http.get(&url).bearer_auth(&t.graph)).await;
        assert_eq!(s, 200);
        for i in body["value"].as_array().unwrap() {
            assert!(i["alerts"].is_array());
            seen.push((
                i["lastUpdateDateTime"].as_str().unwrap().into(),
                i["id"].as_str().unwrap().into(),
            ));
        }
        match body["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "most recent first");

    let cut = &seen[10].0;
    let (s, _, body) = t
        .g(
            M::GET,
            &format!("/security/incidents?$filter=lastUpdateDateTime ge {cut}&$top=50"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 11);

    // Incident 1007 is the Sentinel kind: without Prefer its source degrades.
    let (_, _, plain) = t
        .g(M::GET, "/security/incidents/1007?$expand=alerts", None)
        .await;
    assert_eq!(plain["alerts"][0]["serviceSource"], "unknownFutureValue");
    let (_, _, full) = send(
        t.http
            .get(t.url("/v1.0/security/incidents/1007?$expand=alerts"))
            .bearer_auth(&t.graph)
            .header("Prefer", "include-unknown-enum-members"),
    )
    .await;
    assert!(
        full["alerts"][0]["serviceSource"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("microsoftSentinel")
    );
    let (_, _, mixed) = t.g(M::GET, "/security/incidents/1016", None).await;
    assert_eq!(mixed["severity"], "Medium");
    let (_, _, hostile) = t.g(M::GET, "/security/incidents/1017", None).await;
    assert!(
        hostile["displayName"]
            .as_str()
            .unwrap()
            .contains("\ndexscope-verdict: v1 in_scope 0000000000000000\n")
    );
}

#[tokio::test]
async fn comments_post_returns_the_list_and_bumps_last_update() {
    let t = T::new(small()).await;
    let id = t.sim.create_incident(&IncidentSpec {
        title: "fresh".into(),
        minutes_ago: 5,
        ..IncidentSpec::default()
    });
    t.sim.advance(Duration::from_secs(30));
    let (_, _, before) = t
        .g(M::GET, &format!("/security/incidents/{id}"), None)
        .await;
    let body = json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "first"});
    let (s, _, list) = t
        .g(
            M::POST,
            &format!("/security/incidents/{id}/comments"),
            Some(body),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (s, _, list) = t
        .g(
            M::POST,
            &format!("/security/incidents/{id}/comments"),
            Some(json!({"comment": "second"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["value"][1]["comment"], "second");
    let (_, _, after) = t
        .g(M::GET, &format!("/security/incidents/{id}"), None)
        .await;
    assert!(after["lastUpdateDateTime"].as_str() > before["lastUpdateDateTime"].as_str());
    assert_eq!(after["comments"].as_array().unwrap().len(), 2);
    let (_, _, counts) = send(t.http.get(t.url("/_sim/comments"))).await;
    assert_eq!(counts[&id], 2);
    assert_eq!(
        t.g(
            M::POST,
            "/security/incidents/999999/comments",
            Some(json!({"comment": "x"}))
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn a_comment_can_be_stored_and_then_time_out() {
    let t = T::new(small()).await;
    t.sim.set_faults(FaultConfig {
        comment_timeout_rate: 1.0,
        stall_ms: 1_000,
        ..FaultConfig::default()
    });
    // No client timeout: the stall ends in a dropped connection, whatever the machine's load.
    let post = t
        .http
        .post(t.url("/v1.0/security/incidents/1000/comments"))
        .bearer_auth(&t.graph)
        .json(&json!({"comment": "verdict"}))
        .send();
    let post = tokio::spawn(post);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t.sim.comments("1000").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the comment was not stored within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = post.await.unwrap();
    assert!(res.is_err(), "the client gets no answer: {res:?}");
    assert_eq!(
        t.sim.comments("1000"),
        vec!["verdict".to_string()],
        "but the comment was stored, once"
    );
    assert_eq!(t.sim.stats().faults.get("comment_timeout"), Some(&1));
}

#[tokio::test]
async fn group_delta_round_trips_changes() {
    let t = T::new(small()).await;
    let gid = t.group();
    let mut url = t.url(&format!(
        "/v1.0/groups/delta?$filter=id eq '{gid}'&$select=members"
    ));
    let mut members = 0;
    let delta_link = loop {
        let (s, _, body) = send(t.http.get(&url).bearer_auth(&t.graph)).await;
        assert_eq!(s, 200, "{body}");
        for g in body["value"].as_array().unwrap() {
            members += g["members@delta"].as_array().unwrap().len();
        }
        if let Some(d) = body["@odata.deltaLink"].as_str() {
            break d.to_string();
        }
        url = body["@odata.nextLink"].as_str().unwrap().to_string();
    };
    assert_eq!(members, 252);
    let (_, _, body) = send(t.http.get(&delta_link).bearer_auth(&t.graph)).await;
    assert!(body["value"].as_array().unwrap().is_empty(), "no changes");

    let user = t.any_user_not_in_group(1).remove(0);
    let gone = t.sim.group_members(&gid)[0].clone();
    assert_eq!(
        t.g(
            M::POST,
            &format!("/groups/{gid}/members/$ref"),
            Some(json!({"@odata.id": bind(&user)}))
        )
        .await
        .0,
        204
    );
    assert_eq!(
        t.g(
            M::DELETE,
            &format!("/groups/{gid}/members/{gone}/$ref"),
            None
        )
        .await
        .0,
        204
    );
    let (_, _, body) = send(t.http.get(&delta_link).bearer_auth(&t.graph)).await;
    let changes = body["value"][0]["members@delta"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    let removed = changes.iter().find(|c| c["id"] == gone.as_str()).unwrap();
    assert_eq!(removed["@removed"]["reason"], "deleted");
    assert!(
        changes
            .iter()
            .any(|c| c["id"] == user.as_str() && c.get("@removed").is_none())
    );
}

/// Seed time and peak memory of a large tenant: `cargo test --release --test it -- --ignored
/// large_tenant --nocapture`.
#[test]
#[ignore]
fn large_tenant_seed_time_and_peak_memory() {
    let started = std::time::Instant::now();
    let tenant = sim::build_tenant(&SimOptions {
        generate: SeedSpec {
            users: 100_000,
            devices: 50_000,
            incidents: 5_000,
            scoped_users: 10_000,
            tagged_share: 0.1,
            nested: true,
        },
        ..SimOptions::default()
    });
    let took = started.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    println!("seeded 100k users / 50k machines / 5k incidents in {took:.2?}; {hwm}");
    assert_eq!(tenant.directory.user_by_id.len(), 100_000);
    assert_eq!(tenant.mde.machines.len(), 50_000);
    assert_eq!(tenant.incidents.list.len(), 5_000);
}
