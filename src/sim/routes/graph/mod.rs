//! The Graph v1.0 subset: groups and members (`$ref`, `members@odata.bind`, delta), users,
//! devices, `$batch`, and security incidents with comments — with Graph's limits and errors.
//! This file holds the route table and the helpers every Graph route shares; the routes live
//! in one file per resource.

mod batch;
mod delta;
mod groups;
mod incidents;
mod users;

use axum::http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiReq, Reply, Tok, graph_error, lex};
use crate::sim::model::{ObjKind, Tenant};
use crate::sim::quota::{Cost, Surface};

pub use batch::batch;

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
        Route::GetGroup(id) => groups::get_group(t, id, req),
        Route::Delta => delta::delta(t, req),
        Route::PatchGroup(id) => groups::patch_group(t, id, req),
        Route::ListMembers(id, cast) => groups::list_members(t, id, cast.as_deref(), req),
        Route::AddRef(id) => groups::add_ref(t, id, req),
        Route::RemoveRef(id, mid) => groups::remove_ref(t, id, mid),
        Route::DeleteMember(id, mid) => groups::delete_member(t, id, mid),
        Route::ListUsers => users::list_users(t, req),
        Route::GetUser(key) => users::get_user(t, key, req),
        Route::ListDevices => users::list_devices(t, req),
        Route::ListIncidents => incidents::list_incidents(t, req),
        Route::GetIncident(id) => incidents::get_incident(t, id, req),
        Route::PostComment(id) => incidents::post_comment(t, id, req),
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
}
