//! The Defender for Endpoint subset: list and get machines (`$filter`, `$top`, `$skip`, 404 when
//! empty), tag one machine, and tag many machines in one all-or-nothing call.

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{ApiReq, Reply, Tok, lex, mde_error};
use crate::sim::model::{HEALTH_STATUSES, Machine, ONBOARDING_STATUSES, Tenant};
use crate::sim::quota::Cost;

const READ: &[&str] = &["Machine.Read.All", "Machine.ReadWrite.All"];
const WRITE: &[&str] = &["Machine.ReadWrite.All"];

/// An MDE route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ListMachines,
    GetMachine(String),
    TagMachine(String),
    BulkTag,
    Unknown,
}

impl Route {
    pub fn parse(method: &Method, segs: &[String]) -> Route {
        let mut s: Vec<&str> = segs.iter().map(String::as_str).collect();
        // `/api/v1.0/machines` is the versioned form of `/api/machines`.
        if s.get(1).is_some_and(|v| v.eq_ignore_ascii_case("v1.0")) {
            s.remove(1);
        }
        match (method.as_str(), s.as_slice()) {
            ("GET", ["api", "machines"]) => Route::ListMachines,
            ("POST", ["api", "machines", "AddOrRemoveTagForMultipleMachines"]) => Route::BulkTag,
            ("GET", ["api", "machines", id]) => Route::GetMachine(id.to_string()),
            ("POST", ["api", "machines", id, "tags"]) => Route::TagMachine(id.to_string()),
            _ => Route::Unknown,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Route::ListMachines => "GET /api/machines",
            Route::GetMachine(_) => "GET /api/machines/{id}",
            Route::TagMachine(_) => "POST /api/machines/{id}/tags",
            Route::BulkTag => "POST /api/machines/AddOrRemoveTagForMultipleMachines",
            Route::Unknown => "other mde",
        }
    }

    pub fn roles(&self) -> &'static [&'static str] {
        match self {
            Route::ListMachines | Route::GetMachine(_) => READ,
            Route::TagMachine(_) | Route::BulkTag => WRITE,
            Route::Unknown => &[],
        }
    }

    pub fn cost(&self) -> Cost {
        Cost {
            ru: 1,
            write: matches!(self, Route::TagMachine(_) | Route::BulkTag),
        }
    }
}

pub fn handle(t: &mut Tenant, route: &Route, req: &ApiReq) -> Reply {
    match route {
        Route::ListMachines => list(t, req),
        Route::GetMachine(id) => match t.mde.machine_index(id) {
            Some(i) => {
                let mut v = machine_json(t, i);
                v["@odata.context"] = format!("{}/api/$metadata#Machines/$entity", req.base).into();
                Reply::json(200, v)
            }
            None => machine_not_found(id),
        },
        Route::TagMachine(id) => tag_one(t, id, req),
        Route::BulkTag => tag_many(t, req),
        Route::Unknown => mde_error(
            404,
            "NotFound",
            &format!("No API matches '{} {}'.", req.method, req.path),
        ),
    }
}

fn machine_not_found(id: &str) -> Reply {
    mde_error(
        404,
        "ResourceNotFound",
        &format!("Machine {id} was not found"),
    )
}

/// The machine as `/api/machines` returns it, with the placement it reports right now.
pub fn machine_json(t: &Tenant, i: u32) -> Value {
    let m: &Machine = &t.mde.machines[i as usize];
    let group = t.mde.placement(m, t.now_ms(), t.placement_delay_ms());
    let first_seen = t.now() - chrono::Duration::minutes(i64::from(m.first_seen_min));
    let last_seen = t.now() - chrono::Duration::minutes(i64::from(m.first_seen_min % 720));
    let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let status = t.mde.status_of(i);
    json!({
        "id": m.id_hex(), "computerDnsName": &*m.dns,
        "firstSeen": first_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "lastSeen": last_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "osPlatform": m.os.as_str(), "version": "22H2", "osProcessor": "x64",
        "osArchitecture": "64-bit", "osBuild": 19045,
        "lastIpAddress": ip, "lastExternalIpAddress": "203.0.113.7",
        "healthStatus": status.health, "onboardingStatus": status.onboarding,
        "deviceValue": "Normal",
        "rbacGroupId": group, "rbacGroupName": t.mde.group_name(group),
        "riskScore": "Low", "exposureLevel": "Medium",
        "isAadJoined": m.aad_device_id.is_some(),
        "aadDeviceId": m.aad_device_id.map(|a| a.to_string()),
        "machineTags": m.tags.iter().map(|t2| &*t.mde.tag_names[*t2 as usize]).collect::<Vec<_>>(),
    })
}

/// One `$filter` clause of `/api/machines`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    Tag(String),
    Id(String),
    Dns(String),
    Aad(String),
    RbacGroupId(i64),
    Os(String),
    Health(&'static str),
    Onboarding(&'static str),
}

/// Clauses joined by `or`: `machineTags/any(tag: tag eq 'X')`, `id eq '…'`,
/// `computerDnsName eq '…'`, `aadDeviceId eq '…'`, `rbacGroupId eq 140`, `osPlatform eq '…'`,
/// `healthStatus eq '…'` and `onboardingStatus eq '…'` (a value the service does not document
/// for the field is refused).
fn parse_filter(f: &str) -> Result<Vec<Clause>, String> {
    let toks = lex(f)?;
    let mut out = Vec::new();
    let mut i = 0;
    let word = |i: usize| match toks.get(i) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    while i < toks.len() {
        let Some(field) = word(i) else {
            return Err("property name expected".into());
        };
        if field.eq_ignore_ascii_case("machineTags/any") {
            // machineTags/any ( var: var eq 'X' )
            if toks.get(i + 1) != Some(&Tok::LParen) {
                return Err("'(' expected after machineTags/any".into());
            }
            let mut j = i + 2;
            let Some(var) = word(j) else {
                return Err("lambda variable expected".into());
            };
            // `tag: tag eq`, `tag : tag eq` and `t:t eq` are all the same lambda.
            let (var, used) = if let Some(v) = var.strip_suffix(':') {
                j += 1;
                (v.to_string(), word(j).map(str::to_string))
            } else if word(j + 1) == Some(":") {
                j += 2;
                (var.to_string(), word(j).map(str::to_string))
            } else if let Some((v, u)) = var.split_once(':') {
                (v.to_string(), Some(u.to_string()))
            } else {
                return Err("':' expected in lambda".into());
            };
            if used.as_deref() != Some(var.as_str())
                || !word(j + 1).is_some_and(|o| o.eq_ignore_ascii_case("eq"))
            {
                return Err(format!("'{var} eq <value>' expected in lambda"));
            }
            let Some(Tok::Str(tag)) = toks.get(j + 2) else {
                return Err("tag string expected".into());
            };
            if toks.get(j + 3) != Some(&Tok::RParen) {
                return Err("')' expected".into());
            }
            out.push(Clause::Tag(tag.clone()));
            i = j + 4;
        } else {
            if !word(i + 1).is_some_and(|o| o.eq_ignore_ascii_case("eq")) {
                return Err(format!("only 'eq' is supported on {field}"));
            }
            let value = match toks.get(i + 2) {
                Some(Tok::Str(v)) | Some(Tok::Word(v)) => v.clone(),
                _ => return Err("value expected".into()),
            };
            let c = match field.to_ascii_lowercase().as_str() {
                "id" => Clause::Id(value),
                "computerdnsname" => Clause::Dns(value),
                "aaddeviceid" => Clause::Aad(value),
                "osplatform" => Clause::Os(value),
                "healthstatus" => {
                    Clause::Health(documented(&value, "healthStatus", HEALTH_STATUSES)?)
                }
                "onboardingstatus" => {
                    Clause::Onboarding(documented(&value, "onboardingStatus", ONBOARDING_STATUSES)?)
                }
                "rbacgroupid" => Clause::RbacGroupId(
                    value
                        .parse()
                        .map_err(|_| format!("'{value}' is not a valid rbacGroupId"))?,
                ),
                other => return Err(format!("filtering on '{other}' is not supported")),
            };
            out.push(c);
            i += 3;
        }
        match word(i) {
            None if i >= toks.len() => break,
            Some(w) if w.eq_ignore_ascii_case("or") => i += 1,
            _ => return Err("'or' expected".into()),
        }
    }
    Ok(out)
}

/// The documented spelling of `value` for `field` (compared case-insensitively).
fn documented(value: &str, field: &str, values: &[&'static str]) -> Result<&'static str, String> {
    values
        .iter()
        .find(|v| v.eq_ignore_ascii_case(value))
        .copied()
        .ok_or_else(|| format!("'{value}' is not a valid value of {field}"))
}

fn matching(t: &Tenant, clauses: &[Clause]) -> Vec<u32> {
    if clauses.is_empty() {
        return (0..t.mde.machines.len() as u32).collect();
    }
    let now = t.now_ms();
    let delay = t.placement_delay_ms();
    let mut out: Vec<u32> = Vec::new();
    for c in clauses {
        match c {
            Clause::Tag(tag) => {
                if let Some(set) = t.mde.tag_id(tag).and_then(|id| t.mde.by_tag.get(&id)) {
                    out.extend(set.iter());
                }
            }
            Clause::Id(id) => out.extend(t.mde.machine_index(id)),
            Clause::Dns(d) => {
                if let Some(v) = t.mde.by_dns.get(d.to_lowercase().as_str()) {
                    out.extend(v);
                }
            }
            Clause::Aad(a) => {
                if let Some(v) = uuid::Uuid::parse_str(a)
                    .ok()
                    .and_then(|u| t.mde.by_aad.get(&u))
                {
                    out.extend(v);
                }
            }
            Clause::Os(os) => out.extend(
                t.mde
                    .machines
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.os.as_str().eq_ignore_ascii_case(os))
                    .map(|(i, _)| i as u32),
            ),
            Clause::Health(h) => out.extend(
                (0..t.mde.machines.len() as u32).filter(|i| t.mde.status_of(*i).health == *h),
            ),
            Clause::Onboarding(o) => out.extend(
                (0..t.mde.machines.len() as u32).filter(|i| t.mde.status_of(*i).onboarding == *o),
            ),
            Clause::RbacGroupId(g) => out.extend(
                t.mde
                    .machines
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| t.mde.placement(m, now, delay) == *g)
                    .map(|(i, _)| i as u32),
            ),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn list(t: &Tenant, req: &ApiReq) -> Reply {
    let top = match super::top(req, 10_000, 10_000) {
        Ok(n) => n,
        Err(v) => {
            return mde_error(
                400,
                "ODataError",
                &format!(
                    "The limit of '10000' for Top query has been exceeded. The value from the incoming request is '{v}'."
                ),
            );
        }
    };
    let skip = match req.q("$skip").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return mde_error(400, "InvalidInput", "$skip must be a non-negative integer");
        }
    };
    let clauses = match req.q("$filter").map(parse_filter) {
        None => Vec::new(),
        Some(Ok(c)) => c,
        Some(Err(why)) => {
            return mde_error(400, "ODataError", &format!("Invalid filter: {why}"));
        }
    };
    let all = matching(t, &clauses);
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|i| machine_json(t, *i))
        .collect();
    if page.is_empty() {
        // MDE answers 404 rather than an empty list when no machine matches.
        return mde_error(404, "NotFound", "Machines were not found");
    }
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        format!("{}/api/$metadata#Machines", req.base).into(),
    );
    if skip + page.len() < all.len() {
        let mut q: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| !k.trim_start_matches('$').eq_ignore_ascii_case("skip"))
            .map(|(k, v)| format!("{}={}", k, super::encode(v)))
            .collect();
        q.push(format!("$skip={}", skip + page.len()));
        body.insert(
            "@odata.nextLink".into(),
            format!("{}{}?{}", req.base, req.path, q.join("&")).into(),
        );
    }
    body.insert("value".into(), Value::Array(page));
    Reply::json(200, Value::Object(body))
}

/// `Value` and `Action` with exactly these key names (MDE body parameters are case-sensitive).
fn tag_body(req: &ApiReq) -> Result<(String, bool), Reply> {
    let invalid = |msg: &str| mde_error(400, "InvalidRequestBody", msg);
    let Some(Value::Object(b)) = req.json() else {
        return Err(invalid("Request body is not valid JSON"));
    };
    let value = match b.get("Value") {
        Some(Value::String(v)) if !v.trim().is_empty() && v.chars().count() <= 200 => v.clone(),
        Some(_) => {
            return Err(invalid(
                "Value must be a non-empty tag of at most 200 characters",
            ));
        }
        None => {
            return Err(invalid(
                "Missing required parameter 'Value' (names are case-sensitive)",
            ));
        }
    };
    let add = match b.get("Action").and_then(Value::as_str) {
        Some("Add") => true,
        Some("Remove") => false,
        Some(other) => {
            return Err(invalid(&format!(
                "Action must be 'Add' or 'Remove', not '{other}'"
            )));
        }
        None => {
            return Err(invalid(
                "Missing required parameter 'Action' (names are case-sensitive)",
            ));
        }
    };
    Ok((value, add))
}

fn tag_one(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
    let (tag, add) = match tag_body(req) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(i) = t.mde.machine_index(id) else {
        return machine_not_found(id);
    };
    let (now, delay) = (t.now_ms(), t.placement_delay_ms());
    if t.mde.set_tag(i, &tag, add, now, delay) {
        let id = t.mde.machines[i as usize].id_hex();
        t.log_write(if add { "tag" } else { "untag" }, tag.clone(), id);
    }
    let mut v = machine_json(t, i);
    v["@odata.context"] = format!("{}/api/$metadata#Machines/$entity", req.base).into();
    Reply::json(200, v)
}

fn tag_many(t: &mut Tenant, req: &ApiReq) -> Reply {
    let (tag, add) = match tag_body(req) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ids = match req.json().and_then(|b| b.get("MachineIds")) {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => a,
        Some(_) => {
            return mde_error(
                400,
                "InvalidRequestBody",
                "MachineIds must be a non-empty array of machine ids",
            );
        }
        None => {
            return mde_error(
                400,
                "MissingRequiredParameter",
                "Missing required parameter 'MachineIds' (names are case-sensitive)",
            );
        }
    };
    if ids.len() > 500 {
        return mde_error(
            400,
            "MaximumBatchSizeExceeded",
            &format!(
                "Maximum batch size exceeded. Received: {}, allowed: 500",
                ids.len()
            ),
        );
    }
    let mut found = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids.iter().filter_map(Value::as_str) {
        match t.mde.machine_index(id) {
            Some(i) => found.push(i),
            None => missing.push(id),
        }
    }
    if !missing.is_empty() {
        // One unknown id fails the whole call and nothing changes. The exact status of the
        // real API is not documented; 404 with the ids named is what clients see in the field.
        let shown: Vec<&str> = missing.iter().take(10).copied().collect();
        return mde_error(
            404,
            "ResourceNotFound",
            &format!("Machines were not found: {}", shown.join(", ")),
        );
    }
    let (now, delay) = (t.now_ms(), t.placement_delay_ms());
    for i in &found {
        if t.mde.set_tag(*i, &tag, add, now, delay) {
            let id = t.mde.machines[*i as usize].id_hex();
            t.log_write(if add { "tag" } else { "untag" }, tag.clone(), id);
        }
    }
    found.sort_unstable();
    found.dedup();
    let value: Vec<Value> = found.iter().map(|i| machine_json(t, *i)).collect();
    Reply::json(
        200,
        json!({"@odata.context": format!("{}/api/$metadata#Machines", req.base), "value": value}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let cases: &[(&str, Result<Vec<Clause>, ()>)] = &[
            (
                "machineTags/any(tag: tag eq 'DEX-Scoped')",
                Ok(vec![Clause::Tag("DEX-Scoped".into())]),
            ),
            (
                "machineTags/any(t:t eq 'a''b')",
                Ok(vec![Clause::Tag("a'b".into())]),
            ),
            (
                "id eq 'abc' or computerDnsName eq 'ws-1' or aadDeviceId eq 'x'",
                Ok(vec![
                    Clause::Id("abc".into()),
                    Clause::Dns("ws-1".into()),
                    Clause::Aad("x".into()),
                ]),
            ),
            ("rbacGroupId eq 140", Ok(vec![Clause::RbacGroupId(140)])),
            (
                "healthStatus eq 'active' or onboardingStatus eq 'CanBeOnboarded'",
                Ok(vec![
                    Clause::Health("Active"),
                    Clause::Onboarding("CanBeOnboarded"),
                ]),
            ),
            ("healthStatus eq 'Sleepy'", Err(())),
            ("riskScore eq 'High'", Err(())),
            ("lastSeen gt 2018-08-01Z", Err(())),
            ("id eq 'a' and id eq 'b'", Err(())),
        ];
        for (f, want) in cases {
            assert_eq!(parse_filter(f).map_err(|_| ()), *want, "{f}");
        }
    }
}
