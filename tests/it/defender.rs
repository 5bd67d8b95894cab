//! The Defender client over real HTTP (wiremock): machine listing, 404 as empty, bulk tags.

use dexscope::defender::{DefenderClient, TagAction};
use dexscope::http::{Client, Surface};
use dexscope::model::MachineId;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::http::{TestBearer, test_settings};

fn defender(server: &MockServer) -> (DefenderClient, Client) {
    let http = Client::new(test_settings(server), TestBearer::new()).unwrap();
    (DefenderClient::new(http.clone()), http)
}

fn mid(n: usize) -> MachineId {
    MachineId::parse(&format!("{n:040x}")).unwrap()
}

#[tokio::test]
async fn no_recent_machines_is_an_empty_list() {
    let server = MockServer::start().await;
    Mock::given(path("/api/machines"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {"code": "ResourceNotFound", "message": "no machines", "target": "corr-1"}})))
        .mount(&server)
        .await;
    let (d, _) = defender(&server);

    let machines = d.all_machines().await.unwrap();

    assert!(machines.is_empty());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let r = &server.received_requests().await.unwrap()[0];
    assert_eq!(r.url.query(), Some("$top=10000"));
}

#[tokio::test]
async fn machines_by_tag_filter_page_and_convert() {
    let server = MockServer::start().await;
    let next = format!("{}/api/machines?$skiptoken=abc", server.uri());
    Mock::given(path("/api/machines"))
        .respond_with(move |r: &wiremock::Request| {
            if r.url.query() == Some("$skiptoken=abc") {
                ResponseTemplate::new(200).set_body_json(json!({"value": [
                    {"id": "not-a-machine-id"},
                    {"id": "73E7E2DE709DFF64EF64B1D0C30E67FAB63279DB", "computerDnsName": "WS1.contoso.local",
                     "aadDeviceId": null, "osPlatform": "Windows11", "machineTags": ["O'Brien"],
                     "rbacGroupId": 140, "rbacGroupName": "Defender_Experts_Scoped_Coverage_Devices"}
                ]}))
            } else {
                ResponseTemplate::new(200).set_body_json(json!({"value": [
                    {"id": "0000000000000000000000000000000000000001", "machineTags": null}
                ], "@odata.nextLink": next}))
            }
        })
        .mount(&server)
        .await;
    let (d, _) = defender(&server);

    let machines = d.machines_by_tag("O'Brien").await.unwrap();

    assert_eq!(
        machines.len(),
        2,
        "the machine with an invalid id is skipped"
    );
    let m = &machines[1];
    assert_eq!(m.id.as_str(), "73e7e2de709dff64ef64b1d0c30e67fab63279db");
    assert_eq!(m.dns_name.as_ref().unwrap().as_str(), "ws1.contoso.local");
    assert_eq!(m.tags, vec![std::sync::Arc::from("O'Brien")]);
    assert_eq!(m.rbac_group_id, Some(140));
    let first = &server.received_requests().await.unwrap()[0];
    let params: Vec<(String, String)> = first
        .url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(
        params,
        vec![
            (
                "$filter".into(),
                "machineTags/any(tag: tag eq 'O''Brien')".into()
            ),
            ("$top".into(), "10000".into()),
        ]
    );
}

/// A machine page is parsed item by item as its body arrives: a throttled answer's body
/// (which has a `value` array of its own) delivers nothing, strings that look like JSON
/// structure stay strings, fields dexscope does not keep (nested ones with a `value` of their
/// own) are skipped, and a page that cannot be split fails with the reason.
#[tokio::test]
async fn machine_pages_are_split_as_their_bodies_arrive() {
    let server = MockServer::start().await;
    let throttled = format!(
        r#"{{"value":[{{"id":"{}"}}],"error":{{"code":"TooManyRequests"}}}}"#,
        mid(9)
    );
    Mock::given(path("/api/machines"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "0")
                .set_body_raw(throttled, "application/json"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let page = format!(
        r#"{{"@odata.context":"https://api.security.microsoft.com/api/$metadata#Machines",
        "value" : [ {{"id":"{}","computerDnsName":"ws1.contoso.local","osPlatform":"Windows11",
        "machineTags":["DEX-Scoped","a]b{{\"c\\"],"vmMetadata":{{"value":[{{"id":"{}"}}]}},
        "rbacGroupName":"Workstations"}} , {{"id":"{}","machineTags":[]}} ]}}"#,
        mid(1),
        mid(8),
        mid(2)
    );
    Mock::given(path("/api/machines"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page, "application/json"))
        .mount(&server)
        .await;
    let (d, _) = defender(&server);

    let machines = d.all_machines().await.unwrap();

    let ids: Vec<&str> = machines.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [mid(1).as_str(), mid(2).as_str()]);
    let tags: Vec<&str> = machines[0].tags.iter().map(|t| &**t).collect();
    assert_eq!(tags, ["DEX-Scoped", r#"a]b{"c\"#]);
    assert_eq!(machines[0].rbac_group_name.as_deref(), Some("Workstations"));
    assert_eq!(server.received_requests().await.unwrap().len(), 2);

    let server = MockServer::start().await;
    let page = format!(r#"{{"value":[{{"id":"{}"}},"{}"]}}"#, mid(1), mid(2));
    Mock::given(path("/api/machines"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page, "application/json"))
        .mount(&server)
        .await;
    let (d, _) = defender(&server);
    let err = d.all_machines().await.unwrap_err().to_string();
    assert!(err.contains("not an object"), "{err}");
}

#[tokio::test]
async fn unknown_machine_is_none() {
    let server = MockServer::start().await;
    Mock::given(path(format!("/api/machines/{}", mid(5))))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let (d, _) = defender(&server);

    assert_eq!(d.get_machine(&mid(5)).await.unwrap(), None);
}

#[tokio::test]
async fn bulk_tags_go_500_per_call_with_exact_keys() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/machines/AddOrRemoveTagForMultipleMachines"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .mount(&server)
        .await;
    let (d, http) = defender(&server);
    let ids: Vec<MachineId> = (0..1201).map(mid).collect();

    let calls = d
        .tag_machines("DEX-Scoped", TagAction::Add, &ids)
        .await
        .unwrap();

    assert_eq!(calls, 3);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 3);
    let mut sent = Vec::new();
    for r in &reqs {
        let body: Value = r.body_json().unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3);
        for k in ["Value", "Action", "MachineIds"] {
            assert!(body.get(k).is_some(), "missing {k} in {body}");
        }
        assert_eq!(body["Value"], "DEX-Scoped");
        assert_eq!(body["Action"], "Add");
        let ids = body["MachineIds"].as_array().unwrap();
        sent.push(ids.len());
    }
    assert_eq!(sent, vec![500, 500, 201]);
    assert_eq!(http.stats().surface(Surface::Defender).status_2xx, 3);
}

#[tokio::test]
async fn a_failed_bulk_tag_says_how_far_it_got() {
    let server = MockServer::start().await;
    Mock::given(path("/api/machines/AddOrRemoveTagForMultipleMachines"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/machines/AddOrRemoveTagForMultipleMachines"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": {"code": "InvalidInput", "message": "bad id", "target": "corr-9"}}),
        ))
        .mount(&server)
        .await;
    let (d, _) = defender(&server);
    let ids: Vec<MachineId> = (0..700).map(mid).collect();

    let err = d
        .tag_machines("DEX-Scoped", TagAction::Remove, &ids)
        .await
        .unwrap_err();

    let msg = err.to_string();
    assert!(msg.contains("after 500 were done"), "{msg}");
    assert!(
        msg.contains("InvalidInput") && msg.contains("corr-9"),
        "{msg}"
    );
    assert!(!err.is_transient());
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}
