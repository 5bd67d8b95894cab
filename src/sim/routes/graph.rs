//! The Graph v1.0 subset: groups and members (`$ref`, `members@odata.bind`, delta), users,
//! devices, `$batch`, and security incidents with comments — with Graph's limits and errors.

use std::collections::BTreeMap;
use std::ops::Bound;

use axum::http::Method;
use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::token::Caller;
use super::{ApiReq, Body, Reply, Tok, graph_error, lex, select};
use crate::sim::model::{
    Account, Alert, Comment, DeltaRefusal, EvidenceKind, Incident, ObjKind, Tenant,
};
use crate::sim::quota::{Cost, Surface};

const MEMBER_READ: &[&str] = &[
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const MEMBER_WRITE: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const USER_READ: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const DEVICE_READ: &[&str] = &[
    "Device.Read.All",
    "Device.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const INCIDENT_READ: &[&str] = &[
    "SecurityIncident.Read.All",
    "SecurityIncident.ReadWrite.All",
];
const INCIDENT_WRITE: &[&str] = &["SecurityIncident.ReadWrite.All"];

const ALREADY_MEMBER: &str = "One or more added object references already exist for the following modified properties: 'members'.";

/// A Graph route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    GetGroup(String),
    Delta,
    PatchGroup(String),
    ListMembers(String, Option<String>),
    AddRef(String),
    RemoveRef(String, String),
    DeleteMember(String, String),
    ListUsers,
    GetUser(String),
    ListDevices,
    Batch,
    ListIncidents,
    GetIncident(String),
    PostComment(String),
    Unknown(String),
}

impl Route {
    pub fn parse(method: &Method, segs: &[String]) -> Route {
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = method.as_str();
        if let (Some(first), 1) = (s.first(), s.len())
            && let Some(inner) = first
                .strip_prefix("users('")
                .and_then(|r| r.strip_suffix("')"))
            && m == "GET"
        {
            return Route::GetUser(inner.replace("''", "'"));
        }
        match (m, s.as_slice()) {
            ("GET", ["groups", "delta"]) | ("GET", ["groups", "delta()"]) => Route::Delta,
            ("GET", ["groups", id]) => Route::GetGroup(id.to_string()),
            ("PATCH", ["groups", id]) => Route::PatchGroup(id.to_string()),
            ("GET", ["groups", id, "members"]) => Route::ListMembers(id.to_string(), None),
            ("GET", ["groups", id, "members", cast]) if cast.starts_with("microsoft.graph.") => {
                Route::ListMembers(id.to_string(), Some(cast.to_string()))
            }
            ("POST", ["groups", id, "members", "$ref"]) => Route::AddRef(id.to_string()),
            ("DELETE", ["groups", id, "members", mid, "$ref"]) => {
                Route::RemoveRef(id.to_string(), mid.to_string())
            }
            ("DELETE", ["groups", id, "members", mid]) => {
                Route::DeleteMember(id.to_string(), mid.to_string())
            }
            ("GET", ["users"]) => Route::ListUsers,
            ("GET", ["users", key]) => Route::GetUser(key.to_string()),
            ("GET", ["devices"]) => Route::ListDevices,
            ("POST", ["$batch"]) => Route::Batch,
            ("GET", ["security", "incidents"]) => Route::ListIncidents,
            ("GET", ["security", "incidents", id]) => Route::GetIncident(id.to_string()),
            ("POST", ["security", "incidents", id, "comments"]) => {
                Route::PostComment(id.to_string())
            }
            _ => Route::Unknown(s.join("/")),
        }
    }

    /// The route template counted in the statistics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::GetGroup(_) => "GET /v1.0/groups/{id}",
            Route::Delta => "GET /v1.0/groups/delta",
            Route::PatchGroup(_) => "PATCH /v1.0/groups/{id}",
            Route::ListMembers(..) => "GET /v1.0/groups/{id}/members",
            Route::AddRef(_) => "POST /v1.0/groups/{id}/members/$ref",
            Route::RemoveRef(..) => "DELETE /v1.0/groups/{id}/members/{id}/$ref",
            Route::DeleteMember(..) => "DELETE /v1.0/groups/{id}/members/{id}",
            Route::ListUsers => "GET /v1.0/users",
            Route::GetUser(_) => "GET /v1.0/users/{id}",
            Route::ListDevices => "GET /v1.0/devices",
            Route::Batch => "POST /v1.0/$batch",
            Route::ListIncidents => "GET /v1.0/security/incidents",
            Route::GetIncident(_) => "GET /v1.0/security/incidents/{id}",
            Route::PostComment(_) => "POST /v1.0/security/incidents/{id}/comments",
            Route::Unknown(_) => "other graph",
        }
    }

    pub fn surface(&self) -> Surface {
        match self {
            Route::ListIncidents | Route::GetIncident(_) | Route::PostComment(_) => {
                Surface::GraphSecurity
            }
            _ => Surface::GraphDirectory,
        }
    }

    /// Any one of these application roles allows the call.
    pub fn roles(&self) -> &'static [&'static str] {
        match self {
            Route::GetGroup(_) | Route::Delta | Route::ListMembers(..) => MEMBER_READ,
            Route::PatchGroup(_)
            | Route::AddRef(_)
            | Route::RemoveRef(..)
            | Route::DeleteMember(..) => MEMBER_WRITE,
            Route::ListUsers | Route::GetUser(_) => USER_READ,
            Route::ListDevices => DEVICE_READ,
            Route::ListIncidents | Route::GetIncident(_) => INCIDENT_READ,
            Route::PostComment(_) => INCIDENT_WRITE,
            Route::Batch | Route::Unknown(_) => &[],
        }
    }

    /// Resource units and writes, as the identity throttling page prices them.
    pub fn cost(&self, req: &ApiReq) -> Cost {
        let write = Cost { ru: 1, write: true };
        match self {
            Route::PatchGroup(_)
            | Route::AddRef(_)
            | Route::RemoveRef(..)
            | Route::DeleteMember(..) => write,
            Route::ListMembers(..) => {
                let mut ru = 3;
                if req.q("$select").is_some() {
                    ru -= 1;
                }
                if req
                    .q("$top")
                    .and_then(|t| t.parse::<u32>().ok())
                    .is_some_and(|t| t < 20)
                {
                    ru -= 1;
                }
                Cost { ru, write: false }
            }
            Route::ListUsers | Route::GetUser(_) => Cost {
                ru: 2,
                write: false,
            },
            Route::Delta => Cost {
                ru: 5,
                write: false,
            },
            _ => Cost {
                ru: 1,
                write: false,
            },
        }
    }
}

/// Serves one Graph call (never `$batch`: the server expands it item by item).
pub fn handle(t: &mut Tenant, route: &Route, req: &ApiReq) -> Reply {
    match route {
        Route::GetGroup(id) => get_group(t, id, req),
        Route::Delta => delta(t, req),
        Route::PatchGroup(id) => patch_group(t, id, req),
        Route::ListMembers(id, cast) => list_members(t, id, cast.as_deref(), req),
        Route::AddRef(id) => add_ref(t, id, req),
        Route::RemoveRef(id, mid) => remove_ref(t, id, mid),
        Route::DeleteMember(id, mid) => delete_member(t, id, mid),
        Route::ListUsers => list_users(t, req),
        Route::GetUser(key) => get_user(t, key, req),
        Route::ListDevices => list_devices(t, req),
        Route::ListIncidents => list_incidents(t, req),
        Route::GetIncident(id) => get_incident(t, id, req),
        Route::PostComment(id) => post_comment(t, id, req),
        Route::Batch => graph_error(
            400,
            "BadRequest",
            "Nested batch requests are not supported.",
        ),
        Route::Unknown(path) => graph_error(
            400,
            "BadRequest",
            &format!("Resource not found for the segment '{path}'."),
        ),
    }
}

fn not_found(what: &str) -> Reply {
    graph_error(
        404,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn parse_guid(s: &str) -> Option<Uuid> {
    crate::model::is_guid(s)
        .then(|| Uuid::parse_str(s).ok())
        .flatten()
}

fn find_group(t: &Tenant, id: &str) -> Result<Uuid, Reply> {
    parse_guid(id)
        .filter(|g| t.directory.group(g).is_some())
        .ok_or_else(|| not_found(id))
}

/// `{base}/v1.0{path}?{query without $skiptoken}&$skiptoken={token}`.
fn next_link(req: &ApiReq, key: &str, token: &str) -> String {
    let mut q: Vec<String> = req
        .query
        .iter()
        .filter(|(k, _)| {
            let k = k.trim_start_matches('$').to_ascii_lowercase();
            k != "skiptoken" && k != "deltatoken"
        })
        .map(|(k, v)| {
            format!(
                "{}={}",
                super::encode(k).replace("%24", "$"),
                super::encode(v)
            )
        })
        .collect();
    q.push(format!("{key}={}", super::encode(token)));
    let path = if req.path.starts_with('/') {
        req.path.clone()
    } else {
        format!("/{}", req.path)
    };
    format!("{}/v1.0{}?{}", req.base, path, q.join("&"))
}

fn context(req: &ApiReq, what: &str) -> String {
    format!("{}/v1.0/$metadata#{what}", req.base)
}

fn object_json(t: &Tenant, id: &Uuid, kind: ObjKind) -> Value {
    match kind {
        ObjKind::User => match t.directory.user(id) {
            Some(u) => json!({"@odata.type": kind.odata_type(), "id": u.id.to_string(),
                "displayName": &*u.display_name, "userPrincipalName": &*u.upn,
                "mail": &*u.upn, "accountEnabled": true}),
            None => json!({"@odata.type": kind.odata_type(), "id": id.to_string()}),
        },
        ObjKind::Group => {
            let name = t.directory.group(id).map(|g| g.display_name.clone());
            json!({"@odata.type": kind.odata_type(), "id": id.to_string(),
                "displayName": name, "securityEnabled": true, "mailEnabled": false})
        }
        ObjKind::Device => {
            let d = t
                .directory
                .device_by_id
                .get(id)
                .map(|&i| &t.directory.devices[i as usize]);
            json!({"@odata.type": kind.odata_type(), "id": id.to_string(),
                "deviceId": d.map(|d| d.device_id.to_string()),
                "displayName": d.map(|d| d.display_name.clone()),
                "operatingSystem": "Windows"})
        }
    }
}

fn get_group(t: &Tenant, id: &str, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut v = object_json(t, &gid, ObjKind::Group);
    if let Value::Object(m) = &mut v {
        m.remove("@odata.type");
        m.insert(
            "@odata.context".into(),
            context(req, "groups/$entity").into(),
        );
        m.insert("groupTypes".into(), json!([]));
        m.insert("membershipRule".into(), Value::Null);
    }
    Reply::json(200, super::apply_select(v, &select(req)))
}

fn list_members(t: &Tenant, id: &str, cast: Option<&str>, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let top = match super::top(req, 100, 999) {
        Ok(n) => n,
        Err(v) => {
            return graph_error(
                400,
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{v}'. Must be between 1 and 999 inclusive."
                ),
            );
        }
    };
    let want = match cast {
        None => None,
        Some("microsoft.graph.user") => Some(ObjKind::User),
        Some("microsoft.graph.group") => Some(ObjKind::Group),
        Some("microsoft.graph.device") => Some(ObjKind::Device),
        Some(other) => {
            return graph_error(
                400,
                "Request_BadRequest",
                &format!("'{other}' is not a valid cast for members."),
            );
        }
    };
    let after = match req.q("$skiptoken") {
        None => None,
        Some(tok) => match super::skiptoken_decode(tok).and_then(|s| parse_guid(&s)) {
            Some(u) => Some(u),
            None => {
                return graph_error(
                    400,
                    "Request_BadRequest",
                    "The specified page token value has expired or is invalid.",
                );
            }
        },
    };
    let g = t.directory.group(&gid).expect("group exists");
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let sel = select(req);
    let mut page = Vec::with_capacity(top.min(g.members.len()));
    let mut last = None;
    let mut more = false;
    for m in g.members.range((lower, Bound::Unbounded)) {
        let Some(kind) = t.directory.kind_of(m) else {
            continue;
        };
        if want.is_some_and(|w| w != kind) {
            continue;
        }
        if page.len() == top {
            more = true;
            break;
        }
        page.push(super::apply_select(object_json(t, m, kind), &sel));
        last = Some(*m);
    }
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        context(req, "directoryObjects").into(),
    );
    let count_asked = req
        .q("$count")
        .is_some_and(|c| c.eq_ignore_ascii_case("true"));
    if count_asked && after.is_none() {
        if req.header("consistencylevel") != Some("eventual") {
            return graph_error(
                400,
                "Request_BadRequest",
                "$count is not currently supported.",
            );
        }
        let n = g
            .members
            .iter()
            .filter(|m| {
                let k = t.directory.kind_of(m);
                k.is_some() && (want.is_none() || k == want)
            })
            .count();
        body.insert("@odata.count".into(), n.into());
    }
    if more && let Some(last) = last {
        let tok = super::skiptoken_encode(&last.to_string());
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    body.insert("value".into(), Value::Array(page));
    Reply::json(200, Value::Object(body))
}

/// The object id in `https://graph.microsoft.com/v1.0/directoryObjects/{id}` (or any URL or
/// path ending in the id).
fn object_ref(s: &str) -> Option<Uuid> {
    let last = s.trim().trim_end_matches('/').rsplit('/').next()?;
    let last = last
        .strip_prefix("directoryObjects('")
        .and_then(|r| r.strip_suffix("')"))
        .unwrap_or(last);
    parse_guid(last)
}

/// Validates member references for an add: every id known, none already a member, none the
/// group itself. All or nothing: on error nothing is added.
fn check_adds(t: &Tenant, gid: &Uuid, refs: &[Uuid]) -> Result<(), Reply> {
    let g = t.directory.group(gid).expect("group exists");
    for (i, r) in refs.iter().enumerate() {
        if t.directory.kind_of(r).is_none() {
            return Err(not_found(&r.to_string()));
        }
        if r == gid {
            return Err(graph_error(
                400,
                "Request_BadRequest",
                "A group cannot be a member of itself.",
            ));
        }
        if g.members.contains(r) || refs[..i].contains(r) {
            return Err(graph_error(400, "Request_BadRequest", ALREADY_MEMBER));
        }
    }
    Ok(())
}

fn patch_group(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let Some(Value::Object(body)) = req.json() else {
        return graph_error(400, "BadRequest", "Empty Payload. JSON content expected.");
    };
    let Some(binds) = body.get("members@odata.bind") else {
        // Other properties are accepted and ignored: the simulator models membership only.
        return Reply::empty(204);
    };
    let Some(binds) = binds.as_array() else {
        return graph_error(
            400,
            "BadRequest",
            "Invalid value for 'members@odata.bind': an array of URLs is expected.",
        );
    };
    if binds.len() > 20 {
        return graph_error(
            400,
            "Request_BadRequest",
            &format!(
                "The request contains {} references in 'members@odata.bind'; at most 20 may be added in one request.",
                binds.len()
            ),
        );
    }
    let mut refs = Vec::with_capacity(binds.len());
    for b in binds {
        match b.as_str().and_then(object_ref) {
            Some(u) => refs.push(u),
            None => {
                return graph_error(
                    400,
                    "Request_BadRequest",
                    &format!("Invalid object identifier '{}'.", b.as_str().unwrap_or("")),
                );
            }
        }
    }
    if let Err(r) = check_adds(t, &gid, &refs) {
        return r;
    }
    for r in refs {
        if t.directory.add_member(&gid, r) {
            t.log_write("add", gid.to_string(), r.to_string());
        }
    }
    Reply::empty(204)
}

fn add_ref(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let Some(target) = req
        .json()
        .and_then(|b| b.get("@odata.id"))
        .and_then(Value::as_str)
    else {
        return graph_error(
            400,
            "BadRequest",
            "The request body must contain '@odata.id'.",
        );
    };
    let Some(member) = object_ref(target) else {
        return graph_error(
            400,
            "Request_BadRequest",
            &format!("Invalid object identifier '{target}'."),
        );
    };
    if let Err(r) = check_adds(t, &gid, &[member]) {
        return r;
    }
    if t.directory.add_member(&gid, member) {
        t.log_write("add", gid.to_string(), member.to_string());
    }
    Reply::empty(204)
}

fn remove_ref(t: &mut Tenant, id: &str, mid: &str) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    match parse_guid(mid) {
        Some(m) if t.directory.remove_member(&gid, &m) => {
            t.log_write("remove", gid.to_string(), m.to_string());
            Reply::empty(204)
        }
        _ => not_found(mid),
    }
}

/// `DELETE /groups/{id}/members/{mid}` without `/$ref` deletes the member object itself in
/// Entra. The simulator always does (for users) and records a violation: no dexscope code
/// path may ever send it.
fn delete_member(t: &mut Tenant, id: &str, mid: &str) -> Reply {
    t.record_violation(
        "member_delete_without_ref",
        format!("DELETE /groups/{id}/members/{mid} (no /$ref) deletes the object itself"),
    );
    let Some(m) = parse_guid(mid) else {
        return not_found(mid);
    };
    if find_group(t, id).is_err() {
        return not_found(id);
    }
    match t.directory.kind_of(&m) {
        Some(ObjKind::User) => {
            t.directory.delete_user(&m);
            Reply::empty(204)
        }
        Some(_) => graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        None => not_found(mid),
    }
}

fn user_json(t: &Tenant, i: u32) -> Option<Value> {
    let u = t.directory.users[i as usize].as_ref()?;
    Some(
        json!({"id": u.id.to_string(), "displayName": &*u.display_name,
        "userPrincipalName": &*u.upn, "mail": &*u.upn, "accountEnabled": true,
        "businessPhones": [], "jobTitle": null}),
    )
}

fn get_user(t: &Tenant, key: &str, req: &ApiReq) -> Reply {
    // The plain form of a UPN that starts with `$` is read as a system query option.
    if key.starts_with('$') && !req.path.contains("('") {
        return graph_error(
            400,
            "BadRequest",
            &format!("Resource not found for the segment '{key}'."),
        );
    }
    let i = match parse_guid(key) {
        Some(id) => t.directory.user_by_id.get(&id).copied(),
        None => t
            .directory
            .user_by_upn
            .get(key.to_lowercase().as_str())
            .copied(),
    };
    match i.and_then(|i| user_json(t, i)) {
        Some(mut v) => {
            v["@odata.context"] = context(req, "users/$entity").into();
            Reply::json(200, super::apply_select(v, &select(req)))
        }
        None => not_found(key),
    }
}

/// `prop eq 'v'`, `prop in ('a','b')`, optionally several joined by `or`.
fn parse_in_filter(filter: &str) -> Result<Vec<(String, String)>, String> {
    let toks = lex(filter)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Tok::Word(prop) = &toks[i] else {
            return Err("property name expected".into());
        };
        let op = match toks.get(i + 1) {
            Some(Tok::Word(w)) => w.to_ascii_lowercase(),
            _ => return Err("operator expected".into()),
        };
        i += 2;
        match op.as_str() {
            "eq" => match toks.get(i) {
                Some(Tok::Str(v)) => {
                    out.push((prop.clone(), v.clone()));
                    i += 1;
                }
                _ => return Err("string literal expected".into()),
            },
            "in" => {
                if toks.get(i) != Some(&Tok::LParen) {
                    return Err("'(' expected".into());
                }
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Str(v)) => out.push((prop.clone(), v.clone())),
                        _ => return Err("string literal expected".into()),
                    }
                    i += 1;
                    match toks.get(i) {
                        Some(Tok::Comma) => i += 1,
                        Some(Tok::RParen) => {
                            i += 1;
                            break;
                        }
                        _ => return Err("')' expected".into()),
                    }
                }
            }
            _ => return Err(format!("operator '{op}' is not supported")),
        }
        match toks.get(i) {
            None => break,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("or") => i += 1,
            _ => return Err("'or' expected".into()),
        }
    }
    Ok(out)
}

fn list_users(t: &Tenant, req: &ApiReq) -> Reply {
    let sel = select(req);
    let mut body = Map::new();
    body.insert("@odata.context".into(), context(req, "users").into());
    if let Some(filter) = req.q("$filter") {
        let clauses = match parse_in_filter(filter) {
            Ok(c) => c,
            Err(why) => {
                return graph_error(
                    400,
                    "Request_UnsupportedQuery",
                    &format!("Unsupported or invalid query filter clause specified: {why}."),
                );
            }
        };
        if clauses.len() > 15 {
            return graph_error(
                400,
                "Request_UnsupportedQuery",
                &format!(
                    "Too many child clauses specified in search filter expression containing 'OR' operators: {}. Max allowed: 15.",
                    clauses.len()
                ),
            );
        }
        let mut found = Vec::new();
        for (prop, v) in &clauses {
            let i = match prop.to_ascii_lowercase().as_str() {
                "userprincipalname" | "mail" => t
                    .directory
                    .user_by_upn
                    .get(v.to_lowercase().as_str())
                    .copied(),
                "id" => match parse_guid(v) {
                    Some(id) => t.directory.user_by_id.get(&id).copied(),
                    None => {
                        return graph_error(
                            400,
                            "Request_BadRequest",
                            &format!("Invalid object identifier '{v}'."),
                        );
                    }
                },
                other => {
                    return graph_error(
                        400,
                        "Request_UnsupportedQuery",
                        &format!(
                            "Unsupported or invalid query filter clause specified for property '{other}' of resource 'User'."
                        ),
                    );
                }
            };
            if let Some(i) = i
                && !found.contains(&i)
            {
                found.push(i);
            }
        }
        found.sort_unstable();
        let value: Vec<Value> = found
            .into_iter()
            .filter_map(|i| user_json(t, i))
            .map(|v| super::apply_select(v, &sel))
            .collect();
        body.insert("value".into(), Value::Array(value));
        return Reply::json(200, Value::Object(body));
    }
    let top = match super::top(req, 100, 999) {
        Ok(n) => n,
        Err(v) => {
            return graph_error(
                400,
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{v}'. Must be between 1 and 999 inclusive."
                ),
            );
        }
    };
    let start = req
        .q("$skiptoken")
        .and_then(super::skiptoken_decode)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let mut value = Vec::new();
    let mut i = start;
    while i < t.directory.users.len() && value.len() < top {
        if let Some(v) = user_json(t, i as u32) {
            value.push(super::apply_select(v, &sel));
        }
        i += 1;
    }
    if i < t.directory.users.len() {
        let tok = super::skiptoken_encode(&i.to_string());
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    body.insert("value".into(), Value::Array(value));
    Reply::json(200, Value::Object(body))
}

fn list_devices(t: &Tenant, req: &ApiReq) -> Reply {
    let clauses = match req.q("$filter").map(parse_in_filter) {
        Some(Ok(c)) => c,
        Some(Err(why)) => {
            return graph_error(
                400,
                "Request_UnsupportedQuery",
                &format!("Unsupported or invalid query filter clause specified: {why}."),
            );
        }
        None => Vec::new(),
    };
    let value: Vec<Value> = t
        .directory
        .devices
        .iter()
        .filter(|d| {
            clauses.is_empty()
                || clauses
                    .iter()
                    .any(|(p, v)| match p.to_ascii_lowercase().as_str() {
                        "deviceid" => d.device_id.to_string().eq_ignore_ascii_case(v),
                        "id" => d.id.to_string().eq_ignore_ascii_case(v),
                        "displayname" => d.display_name.eq_ignore_ascii_case(v),
                        _ => false,
                    })
        })
        .map(|d| super::apply_select(object_json(t, &d.id, ObjKind::Device), &select(req)))
        .collect();
    Reply::json(
        200,
        json!({"@odata.context": context(req, "devices"), "value": value}),
    )
}

// ---------------------------------------------------------------------------------------------
// Delta

/// Members per page in the first (full) round of a delta query.
const DELTA_PAGE: usize = 500;

fn delta(t: &Tenant, req: &ApiReq) -> Reply {
    let bad_token = || {
        graph_error(
            400,
            "syncStateNotFound",
            "The delta token is invalid or has expired. Restart the synchronisation without a token.",
        )
    };
    // Token forms: full|{seq}|{group index}|{after id or -}|{ids}; delta|{seq}|{ids}.
    let state = if let Some(tok) = req.q("$deltatoken") {
        match super::skiptoken_decode(tok) {
            Some(s) => {
                if let Some(refused) = refused_link(t, req, &s) {
                    return refused;
                }
                s
            }
            None => return bad_token(),
        }
    } else if let Some(tok) = req.q("$skiptoken") {
        match super::skiptoken_decode(tok) {
            Some(s) => s,
            None => return bad_token(),
        }
    } else {
        let ids = match req.q("$filter") {
            None => t
                .directory
                .groups
                .iter()
                .map(|g| g.id.to_string())
                .collect::<Vec<_>>(),
            Some(f) => match parse_in_filter(f) {
                Ok(c) if c.iter().all(|(p, _)| p.eq_ignore_ascii_case("id")) && c.len() <= 50 => {
                    c.into_iter().map(|(_, v)| v.to_lowercase()).collect()
                }
                _ => {
                    return graph_error(
                        400,
                        "Request_UnsupportedQuery",
                        "Unsupported query: only 'id eq' filters (at most 50) are supported on groups delta.",
                    );
                }
            },
        };
        format!("full|{}|0|-|{}", t.directory.delta_seq, ids.join(","))
    };
    let parts: Vec<&str> = state.split('|').collect();
    let with_members = req
        .q("$select")
        .is_none_or(|s| s.to_ascii_lowercase().contains("members"));
    let mut body = Map::new();
    body.insert("@odata.context".into(), context(req, "groups").into());
    match parts.as_slice() {
        ["full", seq, gi, after, ids] => {
            let ids: Vec<Uuid> = ids.split(',').filter_map(parse_guid).collect();
            let (Ok(seq), Ok(mut gi)) = (seq.parse::<u64>(), gi.parse::<usize>()) else {
                return bad_token();
            };
            let mut after = parse_guid(after);
            let mut value = Vec::new();
            let mut budget = DELTA_PAGE;
            while gi < ids.len() && budget > 0 {
                let Some(g) = t.directory.group(&ids[gi]) else {
                    gi += 1;
                    after = None;
                    continue;
                };
                let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
                let chunk: Vec<Uuid> = g
                    .members
                    .range((lower, Bound::Unbounded))
                    .take(budget)
                    .copied()
                    .collect();
                budget -= chunk.len();
                let mut obj = json!({"@odata.type": "#microsoft.graph.group", "id": g.id.to_string(),
                    "displayName": g.display_name});
                if with_members {
                    obj["members@delta"] = chunk
                        .iter()
                        .map(|m| {
                            let k = t.directory.kind_of(m).unwrap_or(ObjKind::User);
                            json!({"@odata.type": k.odata_type(), "id": m.to_string()})
                        })
                        .collect();
                }
                value.push(obj);
                // Done when no member follows the chunk (an exact page multiple ends here too).
                let done = g
                    .members
                    .range((
                        chunk.last().map_or(lower, |l| Bound::Excluded(*l)),
                        Bound::Unbounded,
                    ))
                    .next()
                    .is_none();
                if done {
                    gi += 1;
                    after = None;
                } else {
                    after = chunk.last().copied();
                }
            }
            let id_list = ids
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",");
            if gi < ids.len() {
                let next = format!(
                    "full|{seq}|{gi}|{}|{id_list}",
                    after.map_or("-".to_string(), |a| a.to_string())
                );
                let link = next_link(req, "$skiptoken", &super::skiptoken_encode(&next));
                body.insert("@odata.nextLink".into(), link.into());
            } else {
                let next = format!("delta|{seq}|{id_list}");
                let link = next_link(req, "$deltatoken", &super::skiptoken_encode(&next));
                body.insert("@odata.deltaLink".into(), link.into());
            }
            body.insert("value".into(), Value::Array(value));
        }
        ["delta", seq, ids] => {
            let Ok(seq) = seq.parse::<u64>() else {
                return bad_token();
            };
            let ids: Vec<Uuid> = ids.split(',').filter_map(parse_guid).collect();
            let mut value = Vec::new();
            for gid in &ids {
                let Some(g) = t.directory.group(gid) else {
                    continue;
                };
                // The last change per member since the token, in member order.
                let mut last: BTreeMap<Uuid, bool> = BTreeMap::new();
                for (s, m, added) in g.log.iter().rev() {
                    if *s <= seq {
                        break;
                    }
                    last.entry(*m).or_insert(*added);
                }
                if last.is_empty() {
                    continue;
                }
                let mut obj =
                    json!({"@odata.type": "#microsoft.graph.group", "id": g.id.to_string()});
                if with_members {
                    obj["members@delta"] = last
                        .iter()
                        .map(|(m, added)| {
                            let k = t.directory.kind_of(m).unwrap_or(ObjKind::User);
                            let mut v = json!({"@odata.type": k.odata_type(), "id": m.to_string()});
                            if !added {
                                v["@removed"] = json!({"reason": "deleted"});
                            }
                            v
                        })
                        .collect();
                }
                value.push(obj);
            }
            let id_list = ids
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let next = format!("delta|{}|{id_list}", t.directory.delta_seq);
            let link = next_link(req, "$deltatoken", &super::skiptoken_encode(&next));
            body.insert("@odata.deltaLink".into(), link.into());
            body.insert("value".into(), Value::Array(value));
        }
        _ => return bad_token(),
    }
    Reply::json(200, Value::Object(body))
}

/// The refusal of a delta link the simulator declared expired (`/_sim/delta/expire`).
fn refused_link(t: &Tenant, req: &ApiReq, state: &str) -> Option<Reply> {
    let (upto, how) = t.directory.delta_refused_upto?;
    let mut parts = state.split('|');
    let seq = match (parts.next(), parts.next()) {
        (Some("delta"), Some(seq)) => seq.parse::<u64>().ok()?,
        _ => return None,
    };
    if seq > upto {
        return None;
    }
    Some(match how {
        DeltaRefusal::SyncStateNotFound => graph_error(
            400,
            "syncStateNotFound",
            "The sync state was not found. Restart the synchronisation without a token.",
        ),
        DeltaRefusal::Gone => {
            // Location: the same query without a token, where a full resync starts.
            let link = next_link(req, "$deltatoken", "");
            let start = link
                .trim_end_matches("$deltatoken=")
                .trim_end_matches(['&', '?'])
                .to_string();
            graph_error(
                410,
                "resyncRequired",
                "The delta token has expired; resynchronise from the start.",
            )
            .with_header("Location", start)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// $batch

/// Serves `POST /$batch`: validates the envelope, runs every item through `call` (which counts,
/// throttles and injects faults per item) and returns the responses in shuffled order.
pub fn batch(
    t: &mut Tenant,
    caller: &Caller,
    req: &ApiReq,
    call: impl Fn(&mut Tenant, &Caller, &ApiReq) -> Reply,
) -> Reply {
    let Some(items) = req
        .json()
        .and_then(|b| b.get("requests"))
        .and_then(Value::as_array)
    else {
        return graph_error(400, "BadRequest", "Invalid batch payload format.");
    };
    if items.len() > 20 {
        return graph_error(
            400,
            "BadRequest",
            &format!(
                "Number of requests in the batch ({}) exceeds the maximum of 20.",
                items.len()
            ),
        );
    }
    let mut ids: Vec<&str> = Vec::new();
    for it in items {
        let Some(id) = it.get("id").and_then(Value::as_str) else {
            return graph_error(400, "BadRequest", "Each batch request needs an 'id'.");
        };
        if ids.contains(&id) {
            return graph_error(
                400,
                "BadRequest",
                &format!("Batch request contains duplicated request id '{id}'."),
            );
        }
        ids.push(id);
    }
    let mut responses: Vec<Value> = Vec::with_capacity(items.len());
    let mut statuses: Vec<(String, u16)> = Vec::new();
    for it in items {
        let id = it["id"].as_str().unwrap_or_default().to_string();
        let reply = batch_item(t, caller, req, it, &statuses, &call);
        statuses.push((id.clone(), reply.status));
        let mut headers = Map::new();
        for (k, v) in &reply.headers {
            headers.insert(k.clone(), Value::String(v.clone()));
        }
        let mut r = json!({"id": id, "status": reply.status});
        if let Some(body) = reply.body {
            headers.insert("Content-Type".into(), "application/json".into());
            r["body"] = body;
        }
        r["headers"] = Value::Object(headers);
        responses.push(r);
    }
    responses.shuffle(&mut t.rng);
    Reply::json(200, json!({"responses": responses}))
}

fn batch_item(
    t: &mut Tenant,
    caller: &Caller,
    envelope: &ApiReq,
    it: &Value,
    done: &[(String, u16)],
    call: &impl Fn(&mut Tenant, &Caller, &ApiReq) -> Reply,
) -> Reply {
    if let Some(deps) = it.get("dependsOn").and_then(Value::as_array) {
        for d in deps.iter().filter_map(Value::as_str) {
            match done.iter().find(|(id, _)| id == d) {
                Some((_, s)) if *s < 400 => {}
                Some(_) => {
                    return graph_error(
                        424,
                        "FailedDependency",
                        "A dependency of this request failed.",
                    );
                }
                None => {
                    return graph_error(
                        400,
                        "BadRequest",
                        &format!(
                            "dependsOn names '{d}', which does not come earlier in the batch."
                        ),
                    );
                }
            }
        }
    }
    let method = it
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok());
    let url = it.get("url").and_then(Value::as_str).unwrap_or("");
    let Some(method) = method else {
        return graph_error(
            400,
            "BadRequest",
            "Each batch request needs a valid 'method'.",
        );
    };
    if url.is_empty() || url.contains("://") {
        return graph_error(
            400,
            "BadRequest",
            "Batch request urls must be relative, e.g. '/users/{id}'.",
        );
    }
    let headers: std::collections::HashMap<String, String> = it
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let body = match it.get("body") {
        None | Some(Value::Null) => Body::None,
        Some(b) => {
            if !headers.contains_key("content-type") {
                return graph_error(
                    400,
                    "BadRequest",
                    "Content-Type header must be specified for a batch request with a body.",
                );
            }
            Body::Json(b.clone())
        }
    };
    let url = url.strip_prefix("/v1.0").unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut all_headers = envelope.headers.clone();
    all_headers.extend(headers);
    let item = ApiReq {
        method,
        path: if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        },
        query: super::parse_query(query),
        headers: all_headers,
        body,
        base: envelope.base.clone(),
    };
    call(t, caller, &item)
}

// ---------------------------------------------------------------------------------------------
// Security incidents

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
        "assignedTo": null, "classification": e.out(&inc.classification, &[]),
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

fn list_incidents(t: &Tenant, req: &ApiReq) -> Reply {
    let top = match super::top(req, 50, 50) {
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
            let key = super::skiptoken_decode(tok).and_then(|s| {
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
        let tok = super::skiptoken_encode(&format!(
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

fn get_incident(t: &Tenant, id: &str, req: &ApiReq) -> Reply {
    match id.parse::<u64>().ok().and_then(|n| t.incidents.get(n)) {
        Some(inc) => {
            let mut v = incident_json(t, inc, expands_alerts(req), include_unknown(req));
            v["@odata.context"] = context(req, "security/incidents/$entity").into();
            Reply::json(200, v)
        }
        None => incident_not_found(id),
    }
}

fn post_comment(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
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
        reply.after = super::After::StallThenDrop(ms);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_labels() {
        let cases: &[(&str, &str, &str)] = &[
            ("GET", "/groups/g/members", "GET /v1.0/groups/{id}/members"),
            (
                "GET",
                "/groups/g/members/microsoft.graph.user",
                "GET /v1.0/groups/{id}/members",
            ),
            (
                "DELETE",
                "/groups/g/members/m/$ref",
                "DELETE /v1.0/groups/{id}/members/{id}/$ref",
            ),
            (
                "DELETE",
                "/groups/g/members/m",
                "DELETE /v1.0/groups/{id}/members/{id}",
            ),
            ("GET", "/users('$x@y.com')", "GET /v1.0/users/{id}"),
            ("POST", "/$batch", "POST /v1.0/$batch"),
            ("GET", "/groups/delta", "GET /v1.0/groups/delta"),
            (
                "POST",
                "/security/incidents/7/comments",
                "POST /v1.0/security/incidents/{id}/comments",
            ),
            ("PUT", "/groups/g", "other graph"),
        ];
        for (m, path, label) in cases {
            let segs: Vec<String> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let r = Route::parse(&Method::from_bytes(m.as_bytes()).unwrap(), &segs);
            assert_eq!(r.label(), *label, "{m} {path}");
        }
    }

    #[test]
    fn in_filters_parse_and_count_values() {
        let c = parse_in_filter("userPrincipalName in ('a@x.com','o''neil@x.com') or id eq 'z'")
            .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].1, "o'neil@x.com");
        assert!(parse_in_filter("userPrincipalName startswith 'a'").is_err());
    }

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
