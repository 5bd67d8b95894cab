//! The Graph client over real HTTP (wiremock): members, user lookups, adds and removes in
//! `$batch`, incidents and comments.

use std::time::Duration;

use dexscope::graph::{GraphClient, IncidentQuery, MemberResult};
use dexscope::model::{
    DetectionSource, EvidenceKind, EvidenceRole, GroupMember, IncidentStatus, ObjectId,
    ServiceSource, Severity, Upn,
};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::http::{TestBearer, test_settings};

const GROUP: &str = "11111111-1111-1111-1111-111111111111";

fn oid(n: u32) -> ObjectId {
    ObjectId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
}

fn graph(server: &MockServer) -> GraphClient {
    graph_with(server, |_| {})
}

fn graph_with(
    server: &MockServer,
    tweak: impl FnOnce(&mut dexscope::http::Settings),
) -> GraphClient {
    let mut s = test_settings(server);
    tweak(&mut s);
    GraphClient::new(dexscope::http::Client::new(s, TestBearer::new()).unwrap())
}

/// A `$batch` responder: `item(method, url, body)` gives each item's (status, body).
fn batch_responder(
    item: impl Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync,
) -> impl Fn(&wiremock::Request) -> ResponseTemplate + Send + Sync {
    move |r: &wiremock::Request| {
        let b: Value = r.body_json().unwrap();
        let responses: Vec<Value> = b["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let (status, body) = item(i["method"].as_str().unwrap(), i["url"].as_str().unwrap(), &i["body"]);
                json!({"id": i["id"], "status": status, "headers": {"request-id": format!("rid-{}", i["id"].as_str().unwrap())}, "body": body})
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({"responses": responses}))
    }
}

async fn batch_items(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/v1.0/$batch")
        .flat_map(|r| {
            r.body_json::<Value>().unwrap()["requests"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn members_are_read_over_three_pages_and_split_by_type() {
    let server = MockServer::start().await;
    let base = format!("{}/v1.0/groups/{GROUP}/members", server.uri());
    let odd = "$skiptoken=X%27Y+Z~%2B";
    let (l2, l3) = (format!("{base}?{odd}"), format!("{base}?$skiptoken=3"));
    Mock::given(path(format!("/v1.0/groups/{GROUP}/members")))
        .respond_with(move |r: &wiremock::Request| {
            let body = match r.url.query() {
                Some(q) if q == odd => json!({"value": [], "@odata.nextLink": l3}),
                Some("$skiptoken=3") => json!({"value": [
                    {"@odata.type": "#microsoft.graph.group", "id": "22222222-2222-2222-2222-222222222222", "displayName": "Nested"}
                ]}),
                _ => json!({"value": [
                    {"@odata.type": "#microsoft.graph.user", "id": "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14", "userPrincipalName": "Ann@Contoso.com"},
                    {"@odata.type": "#microsoft.graph.user", "id": "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b15", "userPrincipalName": null}
                ], "@odata.nextLink": l2}),
            };
            ResponseTemplate::new(200).set_body_json(body)
        })
        .mount(&server)
        .await;

    let members = graph(&server)
        .list_group_members(&ObjectId::parse(GROUP).unwrap())
        .await
        .unwrap();

    assert_eq!(members.len(), 3);
    assert!(
        matches!(&members[0], GroupMember::User { upn: Some(u), .. } if u.as_str() == "ann@contoso.com")
    );
    assert!(matches!(&members[1], GroupMember::User { upn: None, .. }));
    assert!(
        matches!(&members[2], GroupMember::Other { odata_type, .. } if &**odata_type == "#microsoft.graph.group")
    );
    let reqs = server.received_requests().await.unwrap();
    let queries: Vec<&str> = reqs.iter().map(|r| r.url.query().unwrap()).collect();
    assert_eq!(
        queries,
        vec![
            "$select=id,userPrincipalName,displayName&$top=999",
            odd,
            "$skiptoken=3"
        ]
    );
}

#[tokio::test]
async fn users_are_resolved_fifteen_per_filter_in_one_batch() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1.0/$batch"))
        .respond_with(batch_responder(|_, url, _| {
            // Finds exactly the users whose UPN starts with "found".
            let mut found: Vec<Value> = Vec::new();
            if url.contains("'found0@") {
                found.push(json!({"id": "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14", "userPrincipalName": "Found0@contoso.com"}));
            }
            if url.contains("'o''neil@contoso.com'") {
                found.push(json!({"id": "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b15", "userPrincipalName": "o'neil@contoso.com"}));
            }
            (200, json!({"value": found}))
        }))
        .mount(&server)
        .await;
    let mut upns: Vec<Upn> = (0..38)
        .map(|i| Upn::parse(&format!("user{i}@contoso.com")).unwrap())
        .collect();
    upns.push(Upn::parse("found0@contoso.com").unwrap());
    upns.push(Upn::parse("o'neil@contoso.com").unwrap());

    let found = graph(&server).users_by_upn(&upns).await.unwrap();

    assert_eq!(found.len(), 2);
    assert!(found.contains_key(&Upn::parse("found0@contoso.com").unwrap()));
    assert!(found.contains_key(&Upn::parse("O'Neil@contoso.com").unwrap()));
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "40 UPNs in one round trip"
    );
    let items = batch_items(&server).await;
    assert_eq!(items.len(), 3);
    for it in &items {
        let url = it["url"].as_str().unwrap();
        assert!(
            url.starts_with("/users?$filter=userPrincipalName%20in%20("),
            "{url}"
        );
        assert!(url.matches("@").count() <= 15, "{url}");
    }
}

#[tokio::test]
async fn add_falls_back_to_single_adds_and_reports_every_member() {
    let server = MockServer::start().await;
    let existing = oid(2).to_string();
    let missing = oid(3).to_string();
    Mock::given(path("/v1.0/$batch"))
        .respond_with(batch_responder(move |m, _url, body| match m {
            "PATCH" => (400, json!({"error": {"code": "Request_BadRequest", "message": "One or more added object references already exist for the following modified properties: 'members'."}})),
            "POST" => {
                let target = body["@odata.id"].as_str().unwrap();
                if target.ends_with(&existing) {
                    (400, json!({"error": {"code": "Request_BadRequest", "message": "One or more added object references already exist for the following modified properties: 'members'."}}))
                } else if target.ends_with(&missing) {
                    (404, json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist"}}))
                } else {
                    (204, Value::Null)
                }
            }
            other => panic!("unexpected {other}"),
        }))
        .mount(&server)
        .await;

    let out = graph(&server)
        .add_members(
            &ObjectId::parse(GROUP).unwrap(),
            &[oid(1), oid(2), oid(3), oid(1)],
        )
        .await
        .unwrap();

    let results: Vec<(String, MemberResult)> = out
        .iter()
        .map(|o| (o.member.to_string(), o.result.clone()))
        .collect();
    assert_eq!(results.len(), 3, "duplicates are added once");
    assert_eq!(results[0], (oid(1).to_string(), MemberResult::Added));
    assert_eq!(
        results[1],
        (oid(2).to_string(), MemberResult::AlreadyMember)
    );
    assert!(matches!(
        &results[2].1,
        MemberResult::Failed { status: 404, .. }
    ));
    assert!(out.iter().all(|o| o.request_id.is_some()));
    let items = batch_items(&server).await;
    let patch = &items[0];
    assert_eq!(patch["url"], format!("/groups/{GROUP}"));
    assert_eq!(
        patch["body"]["members@odata.bind"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        patch["body"]["members@odata.bind"][0],
        format!("{}/v1.0/directoryObjects/{}", server.uri(), oid(1))
    );
    let singles: Vec<&Value> = items.iter().filter(|i| i["method"] == "POST").collect();
    assert_eq!(singles.len(), 3);
    assert!(
        singles
            .iter()
            .all(|i| i["url"] == format!("/groups/{GROUP}/members/$ref"))
    );
}

#[tokio::test]
async fn add_of_400_members_takes_one_round_trip() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/$batch"))
        .respond_with(batch_responder(|_, _, _| (204, Value::Null)))
        .mount(&server)
        .await;
    let ids: Vec<ObjectId> = (0..400).map(oid).collect();

    let out = graph(&server)
        .add_members(&ObjectId::parse(GROUP).unwrap(), &ids)
        .await
        .unwrap();

    assert!(out.iter().all(|o| o.result == MemberResult::Added));
    assert_eq!(out.len(), 400);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let items = batch_items(&server).await;
    assert_eq!(items.len(), 20);
    assert!(
        items
            .iter()
            .all(|i| i["body"]["members@odata.bind"].as_array().unwrap().len() == 20)
    );
}

#[tokio::test]
async fn removing_non_members_succeeds_and_always_uses_ref() {
    let server = MockServer::start().await;
    let (gone404, gone400) = (oid(2).to_string(), oid(3).to_string());
    Mock::given(path("/v1.0/$batch"))
        .respond_with(batch_responder(move |m, url, _| {
            assert_eq!(m, "DELETE");
            if url.contains(&gone404) {
                (404, json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist or one of its queried reference-property objects are not present."}}))
            } else if url.contains(&gone400) {
                (400, json!({"error": {"code": "Request_BadRequest", "message": "One or more removed object references do not exist for the following modified properties: 'members'."}}))
            } else if url.contains(&oid(4).to_string()) {
                (403, json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}))
            } else {
                (204, Value::Null)
            }
        }))
        .mount(&server)
        .await;
    let ids: Vec<ObjectId> = (1..=25).map(oid).collect();

    let out = graph(&server)
        .remove_members(&ObjectId::parse(GROUP).unwrap(), &ids)
        .await
        .unwrap();

    assert_eq!(out[0].result, MemberResult::Removed);
    assert_eq!(out[1].result, MemberResult::NotMember);
    assert_eq!(out[2].result, MemberResult::NotMember);
    assert!(matches!(
        out[3].result,
        MemberResult::Failed { status: 403, .. }
    ));
    assert_eq!(out.iter().filter(|o| o.is_success()).count(), 24);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2, "25 removals in two batches");
    for r in &reqs {
        assert_ne!(r.method.as_str(), "DELETE", "deletes go inside $batch only");
    }
    let items = batch_items(&server).await;
    assert_eq!(items.len(), 25);
    for i in items {
        if i["method"] == "DELETE" {
            assert!(i["url"].as_str().unwrap().ends_with("/$ref"), "{i}");
        }
    }
}

fn incident_json(id: &str) -> Value {
    json!({
        "id": id,
        "displayName": "Multi-stage incident",
        "severity": "Medium",
        "status": "AwaitingAction",
        "createdDateTime": "2025-03-01T10:00:00.1234567Z",
        "lastUpdateDateTime": "2025-03-02T10:00:00Z",
        "comments": [{"comment": "hello", "createdByDisplayName": "soc", "createdDateTime": "2025-03-02T09:00:00Z"}],
        "alerts": [{
            "id": "da1",
            "title": "Suspicious process",
            "severity": "HIGH",
            "serviceSource": "MicrosoftDefenderForEndpoint",
            "detectionSource": "customdetection",
            "evidence": [
                {"@odata.type": "#microsoft.graph.security.deviceEvidence", "roles": ["Compromised"],
                 "mdeDeviceId": "73e7e2de709dff64ef64b1d0c30e67fab63279db", "osPlatform": "Windows11",
                 "rbacGroupId": 75, "rbacGroupName": "UnassignedGroup", "deviceDnsName": "ws1"},
                {"@odata.type": "#microsoft.graph.security.userEvidence", "roles": [],
                 "userAccount": {"azureAdUserId": "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14", "userPrincipalName": "ann@contoso.com"}},
                {"@odata.type": "#microsoft.graph.security.quantumEvidence", "roles": ["somethingNew"]},
                {"@odata.type": "#microsoft.graph.security.mailboxEvidence", "primaryAddress": "ann@contoso.com", "userAccount": null}
            ]
        }]
    })
}

#[tokio::test]
async fn incidents_cap_top_send_prefer_and_parse_open_enums() {
    let server = MockServer::start().await;
    let next = format!("{}/v1.0/security/incidents?$skiptoken=2", server.uri());
    let first = json!({"value": [incident_json("1"), {"id": "2", "createdDateTime": "not a date"}], "@odata.nextLink": next});
    Mock::given(path("/v1.0/security/incidents"))
        .and(header("Prefer", "include-unknown-enum-members"))
        .respond_with(move |r: &wiremock::Request| {
            if r.url.query() == Some("$skiptoken=2") {
                ResponseTemplate::new(200).set_body_json(json!({"value": [incident_json("3")]}))
            } else {
                ResponseTemplate::new(200).set_body_json(first.clone())
            }
        })
        .mount(&server)
        .await;
    let since = "2025-03-01T00:00:00Z".parse().unwrap();

    let got = graph(&server)
        .list_incidents(
            since,
            IncidentQuery {
                top: 500,
                expand_alerts: true,
            },
        )
        .await
        .unwrap();

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    let params: Vec<(String, String)> = reqs[0]
        .url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(
        params,
        vec![
            (
                "$filter".into(),
                "lastUpdateDateTime ge 2025-03-01T00:00:00Z".into()
            ),
            ("$top".into(), "50".into()),
            ("$expand".into(), "alerts".into()),
        ]
    );
    assert_eq!(got.len(), 3);
    let bad = got[1].as_ref().unwrap_err();
    assert_eq!(bad.id.as_deref(), Some("2"));
    let inc = got[0].as_ref().unwrap();
    assert_eq!(inc.severity, Severity::Medium);
    assert_eq!(inc.status, IncidentStatus::AwaitingAction);
    assert_eq!(inc.comments[0].created_by.as_deref(), Some("soc"));
    let alert = &inc.alerts[0];
    assert_eq!(alert.severity, Severity::High);
    assert_eq!(
        alert.service_source,
        ServiceSource::MicrosoftDefenderForEndpoint
    );
    assert_eq!(alert.detection_source, DetectionSource::CustomDetection);
    assert!(
        matches!(&alert.evidence[0].kind, EvidenceKind::Device { rbac_group_id: Some(75), rbac_group_name: Some(n), .. } if n == "UnassignedGroup")
    );
    assert_eq!(alert.evidence[0].roles, vec![EvidenceRole::Compromised]);
    assert!(
        matches!(&alert.evidence[1].kind, EvidenceKind::User { account } if account.azure_ad_user_id.is_some())
    );
    assert_eq!(
        alert.evidence[2].kind,
        EvidenceKind::Other {
            odata_type: "#microsoft.graph.security.quantumEvidence".into()
        }
    );
    assert_eq!(
        alert.evidence[2].roles,
        vec![EvidenceRole::Other("somethingNew".into())]
    );
    assert!(matches!(
        &alert.evidence[3].kind,
        EvidenceKind::Mailbox { account: None, .. }
    ));
    assert!(got[2].is_ok());
}

#[tokio::test]
async fn get_incident_expands_alerts() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/security/incidents/42"))
        .and(header("Prefer", "include-unknown-enum-members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(incident_json("42")))
        .mount(&server)
        .await;

    let inc = graph(&server).get_incident("42").await.unwrap();

    assert_eq!(inc.id, "42");
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs[0].url.query(), Some("$expand=alerts"));
    assert!(graph(&server).get_incident("42/../x").await.is_err());
}

#[tokio::test]
async fn comment_post_sends_the_documented_body_and_returns_the_list() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1.0/security/incidents/7/comments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            {"comment": "old", "createdBy": "someone", "createdTime": "2025-01-01T00:00:00Z"},
            {"comment": "IN SCOPE", "createdByDisplayName": "dexscope", "createdDateTime": "2025-01-02T00:00:00Z"}
        ]})))
        .mount(&server)
        .await;

    let list = graph(&server).post_comment("7", "IN SCOPE").await.unwrap();

    assert_eq!(list.len(), 2);
    assert_eq!(list[0].created_by.as_deref(), Some("someone"));
    let body: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(
        body,
        json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "IN SCOPE"})
    );
}

#[tokio::test]
async fn comment_post_that_times_out_is_ambiguous_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1.0/security/incidents/7/comments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"value": []}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let g = graph_with(&server, |s| s.request_timeout = Duration::from_millis(300));

    let err = g.post_comment("7", "IN SCOPE").await.unwrap_err();

    assert!(err.is_ambiguous(), "{err:?}");
    assert!(err.to_string().contains("read the current state"), "{err}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn comment_post_with_server_error_is_ambiguous_but_throttling_is_retried() {
    let server = MockServer::start().await;
    Mock::given(path("/v1.0/security/incidents/8/comments"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    Mock::given(path("/v1.0/security/incidents/9/comments"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0.05"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1.0/security/incidents/9/comments"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"value": [{"comment": "x"}]})),
        )
        .mount(&server)
        .await;
    let g = graph(&server);

    let err = g.post_comment("8", "x").await.unwrap_err();
    assert!(err.is_ambiguous());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    let list = g.post_comment("9", "x").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        3,
        "a 429 was certainly not processed"
    );
}
