//! The Graph v1.0 subset: groups and members (`$ref`, `members@odata.bind`, delta), users,
//! devices, `$batch`, and security incidents with comments — with Graph's limits and errors.
//! This file holds the route table; the routes live in one file per resource, the helpers
//! they share in `shared.rs`.

mod batch;
mod delta;
mod groups;
mod incidents;
mod selectors;
mod shared;
mod users;

use axum::http::Method;

use super::{ApiReq, Reply, graph_error};
use crate::sim::model::Tenant;
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
    TransitiveMembers(String),
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
            ("GET", ["groups", id, "transitiveMembers"]) => {
                Route::TransitiveMembers(id.to_string())
            }
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
            Route::TransitiveMembers(_) => "GET /v1.0/groups/{id}/transitiveMembers",
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
            Route::GetGroup(_)
            | Route::Delta
            | Route::ListMembers(..)
            | Route::TransitiveMembers(_) => MEMBER_READ,
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
            // Five resource units, one off with `$select`.
            Route::TransitiveMembers(_) => Cost {
                ru: if req.q("$select").is_some() { 4 } else { 5 },
                write: false,
            },
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
        Route::TransitiveMembers(id) => selectors::transitive_members(t, id, req),
        Route::AddRef(id) => groups::add_ref(t, id, req),
        Route::RemoveRef(id, mid) => groups::remove_ref(t, id, mid),
        Route::DeleteMember(id, mid) => groups::delete_member(t, id, mid),
        Route::ListUsers => users::list_users(t, req),
        Route::GetUser(key) => users::get_user(t, key, req),
        Route::ListDevices => users::list_devices(t, req),
        Route::ListIncidents => incidents::poll_incidents(t, req),
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
}
