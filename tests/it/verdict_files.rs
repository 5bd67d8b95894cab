//! `verdict --file` on incidents in the shapes Microsoft Graph publishes (`security-incident-get`,
//! `security-list-incidents`, the evidence types): identities seen under several addresses,
//! incidents read without their alerts, the list form, evidence that is easy to lose, and the
//! offline wording.

use std::path::{Path, PathBuf};

use dexscope::incidents::command::{self, CommandError, OutputFormat, VerdictArgs};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/incidents")
        .join(name)
}

fn desired(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("desired.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `verdict --file <file> --desired <desired> --format <format>` offline.
async fn run(file: PathBuf, desired: PathBuf, format: OutputFormat) -> Result<String, String> {
    let args = VerdictArgs {
        incident: None,
        file: Some(file),
        desired: Some(desired),
        post: false,
        format,
    };
    let mut out = Vec::new();
    command::verdict(&args, None, &mut out)
        .await
        .map(|()| String::from_utf8(out).unwrap())
        .map_err(|e: CommandError| e.to_string())
}

async fn json(file: PathBuf, desired: PathBuf) -> Vec<serde_json::Value> {
    let out = run(file, desired, OutputFormat::Json).await.unwrap();
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn reasons(v: &serde_json::Value) -> Vec<&str> {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn every_address_seen_for_an_identity_matches() {
    let dir = tempfile::tempdir().unwrap();
    // The mailbox shows the primary address, the user evidence the account's real UPN.
    for listed in ["patricia.doe@contoso.com", "pat.doe@contoso.com"] {
        let d = desired(dir.path(), &format!("users = [\"{listed}\"]\n"));
        let v = json(data("two_upns.json"), d).await;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["verdict"], "in_scope", "{listed}: {}", v[0]);
        let assets = v[0]["assets"].as_array().unwrap();
        assert_eq!(assets.len(), 1, "one identity: {}", v[0]);
        assert_eq!(assets[0]["reason"], "listed in the desired state");
    }
    let d = desired(dir.path(), "users = [\"someone.else@contoso.com\"]\n");
    let v = json(data("two_upns.json"), d).await;
    assert_eq!(v[0]["verdict"], "out_of_scope");
}

#[tokio::test]
async fn an_incident_without_alerts_is_refused_not_judged() {
    let dir = tempfile::tempdir().unwrap();
    let d = desired(dir.path(), "users = [\"pat.doe@contoso.com\"]\n");
    let err = run(data("no_alerts_key.json"), d, OutputFormat::Text)
        .await
        .unwrap_err();
    assert!(
        err.contains("incident 4102")
            && err.contains("has no `alerts`")
            && err.contains("unknown, not none")
            && err.contains("$expand=alerts"),
        "{err}"
    );
}

#[tokio::test]
async fn the_list_form_is_read_and_each_failure_has_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = desired(dir.path(), "users = [\"patricia.doe@contoso.com\"]\n");
    let one: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("two_upns.json")).unwrap()).unwrap();
    let mut other = one.clone();
    other["id"] = "4199".into();
    other["alerts"][1]["evidence"][0]["userAccount"]["azureAdUserId"] =
        "0b2a1c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into();
    other["alerts"][1]["evidence"][0]["userAccount"]["userPrincipalName"] =
        "lee.roe@contoso.com".into();
    other["alerts"][0]["evidence"][0]["userAccount"]["azureAdUserId"] =
        "0b2a1c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into();
    other["alerts"][0]["evidence"][0]["primaryAddress"] = "lee.roe@contoso.com".into();
    let write = |name: &str, v: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let context = "https://graph.microsoft.com/v1.0/$metadata#security/incidents(alerts())";

    let single = write(
        "one.json",
        serde_json::json!({"@odata.context": context, "value": [one.clone()]}),
    );
    let v = json(single, d.clone()).await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["incident_id"], "4101");
    assert_eq!(v[0]["verdict"], "in_scope");

    let both = write(
        "both.json",
        serde_json::json!({"@odata.context": context, "value": [one.clone(), other]}),
    );
    let v = json(both.clone(), d.clone()).await;
    let got: Vec<(&str, &str)> = v
        .iter()
        .map(|v| {
            (
                v["incident_id"].as_str().unwrap(),
                v["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("4101", "in_scope"), ("4199", "out_of_scope")]);
    let text = run(both, d.clone(), OutputFormat::Text).await.unwrap();
    let verdicts = text.lines().filter(|l| l.starts_with("verdict: ")).count();
    assert_eq!(verdicts, 2, "{text}");

    // Each way a file can be wrong says what is wrong; only a missing `alerts` (or an export
    // from the older API, which is told the Graph request to use) mentions `$expand=alerts`.
    let mut no_alerts = one.clone();
    no_alerts.as_object_mut().unwrap().remove("alerts");
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (
            write("syntax.json", serde_json::Value::Null),
            &["is not a Graph incident"],
        ),
        (
            {
                let p = dir.path().join("broken.json");
                std::fs::write(&p, "{\"value\": [").unwrap();
                p
            },
            &["is not JSON"],
        ),
        (
            write("empty.json", serde_json::json!({"value": []})),
            &["empty incident list"],
        ),
        (
            write(
                "legacy.json",
                serde_json::json!({
                    "incidentId": 924518,
                    "incidentName": "Email reported by user as malware or phish",
                    "status": "Active",
                    "severity": "Informational",
                    "createdTime": "2026-11-30T08:00:00Z",
                    "alerts": [{"alertId": "fa1", "entities": [{"entityType": "MailBox"}]}],
                }),
            ),
            &["older Microsoft 365 Defender API"],
        ),
        (
            write(
                "list_no_alerts.json",
                serde_json::json!({"value": [one.clone(), no_alerts]}),
            ),
            &[
                "incident 4101",
                "(incident 2 of 2 in its list)",
                "has no `alerts`",
            ],
        ),
        (
            write(
                "list_bad_item.json",
                serde_json::json!({"value": [{"id": "5", "alerts": [], "createdDateTime": "soon"}]}),
            ),
            &["(incident 1 of 1 in its list)", "is not a Graph incident"],
        ),
    ];
    for (path, want) in cases {
        let err = run(path.clone(), d.clone(), OutputFormat::Text)
            .await
            .unwrap_err();
        for w in want {
            assert!(err.contains(w), "{}: {err:?} lacks {w:?}", path.display());
        }
        if !err.contains("has no `alerts`") && !err.contains("older Microsoft 365 Defender") {
            assert!(!err.contains("$expand=alerts"), "{}: {err}", path.display());
        }
    }
}

#[tokio::test]
async fn no_evidence_is_lost_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let listed = |devices: &str| desired(dir.path(), &format!("devices = [{devices}]\n"));

    // A file's device is an impacted asset, as a process's is; the file names no platform.
    let v = json(
        data("evidence_mix.json"),
        listed("\"c0ffee0000000000000000000000000000004103\""),
    )
    .await;
    let file_device = v[0]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "c0ffee0000000000000000000000000000004103")
        .unwrap_or_else(|| panic!("the file's device is an asset: {}", v[0]));
    assert_eq!(
        file_device["reason"], "platform not reported, so coverage is not established",
        "{}",
        v[0]
    );
    // The item without `@odata.type` is named, and the SYSTEM account is counted.
    let r = reasons(&v[0]);
    assert!(
        r.contains(&"alert da4103-1: 1 evidence item has no @odata.type and was not read"),
        "{r:?}"
    );
    assert!(
        r.contains(&"1 local or system account in the evidence, which no user group can hold"),
        "{r:?}"
    );
    let comment = v[0]["comment"].as_str().unwrap();
    assert!(
        comment.contains("impacted assets and 1 local account."),
        "{comment}"
    );

    // `hostName` with `dnsDomain` matches the listed DNS name; a bare `hostName` its first label.
    for name in ["kiosk-7.branch.contoso.local", "lab-2.contoso.local"] {
        let v = json(
            data("evidence_mix.json"),
            listed(&format!("{{ name = \"{name}\" }}")),
        )
        .await;
        assert_eq!(v[0]["verdict"], "in_scope", "{name}: {}", v[0]);
        let covered = v[0]["covered"].as_array().unwrap();
        assert_eq!(covered.len(), 1, "{name}: {}", v[0]);
    }
}

#[tokio::test]
async fn offline_wording_claims_only_what_was_observed() {
    let dir = tempfile::tempdir().unwrap();
    let mut incident: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("evidence_mix.json")).unwrap()).unwrap();
    // The endpoint alert's device says where MDE placed it when the alert fired.
    incident["alerts"][1]["evidence"][0]["mdeDeviceId"] =
        "c0ffee0000000000000000000000000000007777".into();
    incident["alerts"][1]["evidence"][0]["rbacGroupName"] = "Clients".into();
    // A data loss prevention alert alongside: the policy keeps a mixed incident eligible.
    incident["alerts"][0]["serviceSource"] = "dataLossPrevention".into();
    incident["severity"] = "low".into();
    let file = dir.path().join("incident.json");
    std::fs::write(&file, incident.to_string()).unwrap();
    let d = desired(
        dir.path(),
        "devices = [\"c0ffee0000000000000000000000000000007777\"]\n",
    );
    let v = json(file.clone(), d.clone()).await;
    assert_eq!(v[0]["verdict"], "out_of_scope");
    assert_eq!(v[0]["priority_findings"], serde_json::json!([]), "{}", v[0]);
    let text = run(file, d, OutputFormat::Text).await.unwrap();
    assert!(
        text.contains(
            ": at the time of the alert the device was in group Clients, not the scoped device group"
        ),
        "{text}"
    );
    assert!(
        !text.contains("outranked") && !text.contains("tag not matched"),
        "{text}"
    );
    // The policy note is not printed among the reasons of the OUT verdict.
    let reasons = text.split("Reasons:\n").nth(1).unwrap();
    let reasons = reasons.split("\nAssets").next().unwrap();
    assert!(!reasons.contains("policy:"), "{text}");
    let notes = text.split("\nNotes:\n").nth(1).expect("a Notes section");
    assert!(
        notes.contains("- policy: mixed incident kept eligible"),
        "{text}"
    );
}

/// An incident as Graph returns it once Defender Experts took it on: assigned to them and in
/// progress.
fn taken(incident: &str, assignee: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data(incident)).unwrap()).unwrap();
    v["assignedTo"] = assignee.into();
    v["status"] = "inProgress".into();
    v
}

#[tokio::test]
async fn a_comment_acknowledges_defender_experts_and_never_contradicts_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = desired(dir.path(), "users = [\"patricia.doe@contoso.com\"]\n");
    let write = |name: &str, v: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let untaken = json(data("two_upns.json"), d.clone()).await.remove(0);
    assert_eq!(untaken.get("taken_by_experts"), None);
    assert!(
        !untaken["comment"]
            .as_str()
            .unwrap()
            .contains("Defender Experts are handling")
    );

    // In scope and taken: acknowledged, and no new marker (nothing to answer).
    let v = json(
        write("in.json", taken("two_upns.json", "defender experts")),
        d.clone(),
    )
    .await
    .remove(0);
    assert_eq!(
        (v["verdict"].as_str(), v["taken_by_experts"].as_bool()),
        (Some("in_scope"), Some(true))
    );
    let comment = v["comment"].as_str().unwrap();
    assert!(
        comment.contains("\nDefender Experts:\n- Defender Experts are handling this incident.\n"),
        "{comment}"
    );
    assert_eq!(v["digest"], untaken["digest"]);

    // Someone else's assignment is not a pickup.
    let v = json(
        write(
            "soc.json",
            taken("two_upns.json", "soc-analyst@contoso.com"),
        ),
        d.clone(),
    )
    .await
    .remove(0);
    assert_eq!(v.get("taken_by_experts"), None);

    // Out of scope but taken: the comment says the scope pictures disagree, before the reasons,
    // and the digest changes so the next comment says so.
    let other = desired(dir.path(), "users = [\"someone.else@contoso.com\"]\n");
    let before = json(data("two_upns.json"), other.clone()).await.remove(0);
    let v = json(
        write("out.json", taken("two_upns.json", "Defender Experts")),
        other,
    )
    .await
    .remove(0);
    assert_eq!(v["verdict"], "out_of_scope");
    assert_ne!(v["digest"], before["digest"]);
    let comment = v["comment"].as_str().unwrap();
    let experts = comment.find("\nDefender Experts:\n- Defender Experts are handling this incident, though dexscope judged it out of scope");
    let reasons = comment.find("\nReasons:\n");
    assert!(experts.is_some() && experts < reasons, "{comment}");
}
