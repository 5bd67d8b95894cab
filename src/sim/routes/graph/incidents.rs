//! Graph security incidents: list (filtered, newest update first, keyset paging), read one
//! (optionally with its alerts and their evidence), and post a comment; enum values degrade
//! to `unknownFutureValue` unless the caller opts in, as Graph does. Each poll (a listing's
//! first page) first makes the analysts' changes planned for it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::shared::{context, next_link};
use crate::sim::model::{Account, Alert, Comment, EvidenceKind, Incident, Tenant};
use crate::sim::routes::{self, ApiReq, Reply, Tok, graph_error, lex};

const NEWER_STATUS: &[&str] = &["awaitingAction"];
const NEWER_SERVICE: &[&str] = &[
    "microsoftSentinel",
    "microsoftInsiderRiskManagement",
    "microsoftThreatIntelligence",
];
const NEWER_DETECTION: &[&str] = &[
    "microsoftDefenderForCloud",
    "microsoftDefenderForIoT",
    "microsoftDefenderForServers",
    "microsoftInsiderRiskManagement",
    "microsoftSentinel",
    "microsoftThreatIntelligence",
];

/// How enums are written for one response.
#[derive(Clone, Copy)]
struct Enums {
    mixed: bool,
    include_unknown: bool,
}

impl Enums {
    fn out(self, v: &str, newer: &[&str]) -> String {
        if !self.include_unknown && newer.iter().any(|n| n.eq_ignore_ascii_case(v)) {
            return "unknownFutureValue".into();
        }
        if self.mixed {
            let mut c = v.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        } else {
            v.to_string()
        }
    }
}

fn ts(d: &DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn account_json(a: &Account) -> Value {
    json!({"accountName": a.account_name, "azureAdUserId": a.azure_ad_user_id,
        "displayName": a.display_name, "domainName": a.domain_name,
        "userPrincipalName": a.user_principal_name, "userSid": null})
}

fn alert_json(t: &Tenant, inc: &Incident, a: &Alert, e: Enums) -> Value {
    let evidence: Vec<Value> = a
        .evidence
        .iter()
        .map(|ev| {
            let (ty, mut v) = match &ev.kind {
                EvidenceKind::Device {
                    mde_device_id,
                    azure_ad_device_id,
                    dns_name,
                    os_platform,
                    rbac_group_id,
                    rbac_group_name,
                } => (
                    "deviceEvidence",
                    json!({"mdeDeviceId": mde_device_id, "azureAdDeviceId": azure_ad_device_id,
                        "deviceDnsName": dns_name, "osPlatform": os_platform, "osBuild": 22631,
                        "version": "23H2", "healthStatus": e.out("active", &[]),
                        "onboardingStatus": e.out("onboarded", &[]), "riskScore": e.out("high", &[]),
                        "rbacGroupId": rbac_group_id, "rbacGroupName": rbac_group_name,
                        "defenderAvStatus": "updated", "loggedOnUsers": [], "ipInterfaces": [],
                        "firstSeenDateTime": ts(&inc.created), "vmMetadata": null}),
                ),
                EvidenceKind::User(acc) => ("userEvidence", json!({"userAccount": account_json(acc)})),
                EvidenceKind::Mailbox {
                    primary_address,
                    upn,
                    display_name,
                    account,
                } => (
                    "mailboxEvidence",
                    json!({"primaryAddress": primary_address, "upn": upn,
                        "displayName": display_name,
                        "userAccount": account.as_ref().map(account_json)}),
                ),
                EvidenceKind::Process {
                    account,
                    mde_device_id,
                    image,
                } => (
                    "processEvidence",
                    json!({"processId": 4242, "imageFile": {"fileName": image},
                        "processCommandLine": format!("{image} -enc SQBFAFgA"),
                        "mdeDeviceId": mde_device_id,
                        "userAccount": account.as_ref().map(account_json),
                        "detectionStatus": "detected"}),
                ),
                EvidenceKind::File { name } => (
                    "fileEvidence",
                    json!({"fileDetails": {"fileName": name, "sha256": "0".repeat(64)}}),
                ),
                EvidenceKind::Ip { address } => ("ipEvidence", json!({"ipAddress": address})),
                EvidenceKind::Unknown { odata_type } => (
                    odata_type.as_str(),
                    json!({"someNewProperty": {"nested": [1, 2, 3]}}),
                ),
            };
            let ty = if ty.starts_with('#') {
                ty.to_string()
            } else {
                format!("#microsoft.graph.security.{ty}")
            };
            v["@odata.type"] = ty.into();
            v["createdDateTime"] = ts(&inc.created).into();
            v["verdict"] = e.out("suspicious", &[]).into();
            v["remediationStatus"] = e.out("none", &[]).into();
            v["remediationStatusDetails"] = Value::Null;
            v["roles"] = ev.roles.iter().map(|r| e.out(r, &[])).collect();
            v["detailedRoles"] = json!([]);
            v["tags"] = json!([]);
            v
        })
        .collect();
    json!({
        "id": a.id, "providerAlertId": a.id, "incidentId": inc.id.to_string(),
        "status": e.out("new", &[]), "severity": e.out(&a.severity, &[]),
        "classification": null, "determination": null,
        "serviceSource": e.out(&a.service_source, NEWER_SERVICE),
        "detectionSource": e.out(&a.detection_source, NEWER_DETECTION),
        "detectorId": "7f1c3a9e-0000-4000-8000-000000000001",
        "tenantId": t.ids.tenant_id.to_string(), "title": a.title, "description": a.title,
        "recommendedActions": "", "category": a.category,
        "assignedTo": null, "alertWebUrl": format!("https://security.microsoft.com/alerts/{}", a.id),
        "incidentWebUrl": format!("https://security.microsoft.com/incidents/{}?tid={}", inc.id, t.ids.tenant_id),
        "actorDisplayName": null, "threatDisplayName": null, "threatFamilyName": null,
        "mitreTechniques": [], "createdDateTime": ts(&inc.created),
        "lastUpdateDateTime": ts(&inc.last_update), "resolvedDateTime": null,
        "firstActivityDateTime": ts(&inc.created), "lastActivityDateTime": ts(&inc.created),
        "comments": [], "systemTags": [], "evidence": evidence,
    })
}

fn comments_json(inc: &Incident) -> Vec<Value> {
    inc.comments
        .iter()
        .map(|c| {
            json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": c.comment,
                "createdByDisplayName": c.created_by, "createdDateTime": ts(&c.created_at)})
        })
        .collect()
}

fn incident_json(t: &Tenant, inc: &Incident, expand: bool, include_unknown: bool) -> Value {
    let e = Enums {
        mixed: inc.mixed_case,
        include_unknown,
    };
    let mut v = json!({
        "id": inc.id.to_string(), "tenantId": t.ids.tenant_id.to_string(),
        "status": e.out(&inc.status, NEWER_STATUS),
        "incidentWebUrl": format!("https://security.microsoft.com/incidents/{}?tid={}", inc.id, t.ids.tenant_id),
        "redirectIncidentId": inc.redirect_to.map(|r| r.to_string()),
        "displayName": inc.display_name, "description": null,
        "createdDateTime": ts(&inc.created), "lastUpdateDateTime": ts(&inc.last_update),
        "assignedTo": inc.assigned_to, "classification": e.out(&inc.classification, &[]),
        "determination": e.out(&inc.determination, &[]), "severity": e.out(&inc.severity, &[]),
        "customTags": [], "systemTags": inc.system_tags, "summary": null,
        "comments": comments_json(inc),
    });
    if expand {
        v["alerts"] = inc
            .alerts
            .iter()
            .map(|a| alert_json(t, inc, a, e))
            .collect();
    }
    v
}

fn include_unknown(req: &ApiReq) -> bool {
    req.header("prefer").is_some_and(|p| {
        p.to_ascii_lowercase()
            .contains("include-unknown-enum-members")
    })
}

fn expands_alerts(req: &ApiReq) -> bool {
    req.q("$expand").is_some_and(|x| {
        x.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("alerts"))
    })
}

/// One incident `$filter` clause.
struct Clause {
    field: String,
    op: String,
    value: String,
}

fn parse_incident_filter(f: &str) -> Result<Vec<Clause>, String> {
    let toks = lex(f)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (Some(Tok::Word(field)), Some(Tok::Word(op))) = (toks.get(i), toks.get(i + 1)) else {
            return Err("'<property> <operator> <value>' expected".into());
        };
        let value = match toks.get(i + 2) {
            Some(Tok::Word(v)) | Some(Tok::Str(v)) => v.clone(),
            _ => return Err("value expected".into()),
        };
        out.push(Clause {
            field: field.to_ascii_lowercase(),
            op: op.to_ascii_lowercase(),
            value,
        });
        i += 3;
        match toks.get(i) {
            None => break,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            _ => return Err("'and' expected".into()),
        }
    }
    Ok(out)
}

fn clause_matches(c: &Clause, inc: &Incident) -> Result<bool, String> {
    let cmp_time = |d: &DateTime<Utc>| -> Result<bool, String> {
        let v = DateTime::parse_from_rfc3339(&c.value)
            .map_err(|_| format!("'{}' is not a valid DateTimeOffset", c.value))?
            .with_timezone(&Utc);
        Ok(match c.op.as_str() {
            "ge" => *d >= v,
            "gt" => *d > v,
            "le" => *d <= v,
            "lt" => *d < v,
            "eq" => *d == v,
            op => return Err(format!("operator '{op}' is not supported")),
        })
    };
    match (c.field.as_str(), c.op.as_str()) {
        ("lastupdatedatetime", _) => cmp_time(&inc.last_update),
        ("createddatetime", _) => cmp_time(&inc.created),
        ("severity", "eq") => Ok(inc.severity.eq_ignore_ascii_case(&c.value)),
        ("status", "eq") => Ok(inc.status.eq_ignore_ascii_case(&c.value)),
        (f, _) => Err(format!("property '{f}' is not supported in the filter")),
    }
}

/// A list request that starts a listing (no `$skiptoken`) is one incident poll: the changes
/// planned for it are made first, so it sees them.
pub(super) fn poll_incidents(t: &mut Tenant, req: &ApiReq) -> Reply {
    if req.q("$skiptoken").is_none() {
        let now = t.now();
        t.incidents.poll(now);
    }
    list_incidents(t, req)
}

fn list_incidents(t: &Tenant, req: &ApiReq) -> Reply {
    let top = match routes::top(req, 50, 50) {
        Ok(n) => n,
        Err(v) => {
            return graph_error(
                400,
                "BadRequest",
                &format!(
                    "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '{v}'."
                ),
            );
        }
    };
    let clauses = match req.q("$filter").map(parse_incident_filter) {
        None => Vec::new(),
        Some(Ok(c)) => c,
        Some(Err(why)) => {
            return graph_error(
                400,
                "BadRequest",
                &format!("The query specified in the URI is not valid: {why}."),
            );
        }
    };
    let mut matching: Vec<&Incident> = Vec::new();
    for inc in &t.incidents.list {
        let mut ok = true;
        for c in &clauses {
            match clause_matches(c, inc) {
                Ok(true) => {}
                Ok(false) => {
                    ok = false;
                    break;
                }
                Err(why) => {
                    return graph_error(
                        400,
                        "BadRequest",
                        &format!("The query specified in the URI is not valid: {why}."),
                    );
                }
            }
        }
        if ok {
            matching.push(inc);
        }
    }
    // Most recently updated first; the keyset (update time, id) makes paging stable.
    matching.sort_unstable_by_key(|i| std::cmp::Reverse((i.last_update, i.id)));
    let start = match req.q("$skiptoken") {
        None => 0,
        Some(tok) => {
            let key = routes::skiptoken_decode(tok).and_then(|s| {
                let (ms, id) = s.split_once(':')?;
                Some((ms.parse::<i64>().ok()?, id.parse::<u64>().ok()?))
            });
            let Some((ms, id)) = key else {
                return graph_error(400, "BadRequest", "The skip token is not valid.");
            };
            matching
                .iter()
                .position(|i| (i.last_update.timestamp_millis(), i.id) < (ms, id))
                .unwrap_or(matching.len())
        }
    };
    let expand = expands_alerts(req);
    let unknown = include_unknown(req);
    let page: Vec<&Incident> = matching.iter().skip(start).take(top).copied().collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        context(req, "security/incidents").into(),
    );
    if start + page.len() < matching.len()
        && let Some(last) = page.last()
    {
        let tok = routes::skiptoken_encode(&format!(
            "{}:{}",
            last.last_update.timestamp_millis(),
            last.id
        ));
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    body.insert(
        "value".into(),
        page.iter()
            .map(|i| incident_json(t, i, expand, unknown))
            .collect(),
    );
    Reply::json(200, Value::Object(body))
}

fn incident_not_found(id: &str) -> Reply {
    graph_error(404, "NotFound", &format!("Incident '{id}' was not found."))
}

pub(super) fn get_incident(t: &Tenant, id: &str, req: &ApiReq) -> Reply {
    match id.parse::<u64>().ok().and_then(|n| t.incidents.get(n)) {
        Some(inc) => {
            let mut v = incident_json(t, inc, expands_alerts(req), include_unknown(req));
            v["@odata.context"] = context(req, "security/incidents/$entity").into();
            Reply::json(200, v)
        }
        None => incident_not_found(id),
    }
}

pub(super) fn post_comment(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
    let Some(n) = id
        .parse::<u64>()
        .ok()
        .filter(|n| t.incidents.get(*n).is_some())
    else {
        return incident_not_found(id);
    };
    let text = match req
        .json()
        .and_then(|b| b.get("comment"))
        .and_then(Value::as_str)
    {
        Some(c) if !c.trim().is_empty() => c.to_string(),
        _ => {
            return graph_error(
                400,
                "BadRequest",
                "The request body must contain a non-empty 'comment'.",
            );
        }
    };
    let now = t.now();
    let stall = t.faults.comment_times_out();
    let inc = t.incidents.get_mut(n).expect("incident exists");
    inc.comments.push(Comment {
        comment: text,
        created_by: "dexscope".into(),
        created_at: now,
    });
    inc.last_update = now;
    let value = comments_json(inc);
    let mut reply = Reply::json(
        200,
        json!({"@odata.context": context(req, "Collection(microsoft.graph.security.alertComment)"),
            "value": value}),
    );
    if let Some(ms) = stall {
        *t.stats.faults.entry("comment_timeout".into()).or_default() += 1;
        reply.after = routes::After::StallThenDrop(ms);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_degrade_without_prefer_and_capitalise_when_mixed() {
        let plain = Enums {
            mixed: false,
            include_unknown: false,
        };
        let mixed = Enums {
            mixed: true,
            include_unknown: true,
        };
        assert_eq!(
            plain.out("microsoftSentinel", NEWER_SERVICE),
            "unknownFutureValue"
        );
        assert_eq!(
            mixed.out("microsoftSentinel", NEWER_SERVICE),
            "MicrosoftSentinel"
        );
        assert_eq!(mixed.out("medium", &[]), "Medium");
    }
}
