//! `/_sim/…`: JSON inspection of the simulated tenant (requests, early retries, violations,
//! throttling, comments, members, tags, placement, the write log) and runtime controls (device
//! groups, incidents and analysts' changes to them, faults, tokens, clock, out-of-band member
//! changes, expired delta links).
//! Not authenticated: loopback only, tests and demo.

use std::collections::BTreeMap;

use axum::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Reply;
use crate::sim::faults::FaultConfig;
use crate::sim::model::{DeltaRefusal, GroupRule, IncidentChange, Tenant};
use crate::sim::seed::{IncidentSpec, create_incident};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    rank: u32,
    #[serde(flatten)]
    rule: GroupRule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaExpire {
    how: DeltaRefusal,
}

#[derive(Deserialize)]
struct Rank {
    rank: u32,
}

/// An analyst's change to an incident, made before the `after_polls`-th incident poll from
/// now (at once when 0 or absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    after_polls: u64,
    assigned_to: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct Advance {
    seconds: f64,
}

fn bad(msg: String) -> Reply {
    Reply::json(400, json!({"error": msg}))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

/// Serves `/_sim{rest}` against the tenant (the caller holds its lock).
pub fn handle(
    t: &mut Tenant,
    method: &Method,
    rest: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Reply {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let m = method.as_str();
    let reply = match segs.first().copied() {
        Some("stats" | "writes" | "faults" | "tokens" | "clock") => runtime(t, m, &segs, body),
        Some("comments" | "incidents") => incidents(t, m, &segs, body),
        Some("groups" | "delta") => directory(t, m, &segs, body),
        Some("machines" | "device-groups") => mde(t, m, &segs, query, body),
        _ => None,
    };
    reply.unwrap_or_else(|| {
        Reply::json(
            404,
            json!({"error": format!("no inspection route {method} /_sim{rest}")}),
        )
    })
}

/// Figures and controls of the simulator itself: statistics, the write log, faults, tokens
/// and the clock.
fn runtime(t: &mut Tenant, method: &str, segs: &[&str], body: &[u8]) -> Option<Reply> {
    Some(match (method, segs) {
        ("GET", ["stats"]) => Reply::json(200, serde_json::to_value(&t.stats).unwrap_or_default()),
        ("POST", ["stats", "reset"]) => {
            t.stats = Default::default();
            Reply::empty(204)
        }
        ("GET", ["writes"]) => Reply::json(
            200,
            json!({"writes": t.writes, "dropped": t.writes_dropped}),
        ),
        ("GET", ["faults"]) => Reply::json(
            200,
            serde_json::to_value(t.faults.config()).unwrap_or_default(),
        ),
        ("POST", ["faults"]) => match parse::<FaultConfig>(body) {
            Ok(f) => {
                t.faults.set(f);
                Reply::empty(204)
            }
            Err(r) => r,
        },
        ("POST", ["tokens", "invalidate"]) => {
            t.tokens.clear();
            Reply::empty(204)
        }
        ("POST", ["clock", "advance"]) => match parse::<Advance>(body) {
            Ok(a) if a.seconds >= 0.0 => {
                t.clock_offset_ms += (a.seconds * 1000.0) as i64;
                Reply::empty(204)
            }
            Ok(_) => bad("seconds must not be negative: the clock only moves forward".into()),
            Err(r) => r,
        },
        _ => return None,
    })
}

/// Comments posted so far and incidents created by hand.
fn incidents(t: &mut Tenant, method: &str, segs: &[&str], body: &[u8]) -> Option<Reply> {
    Some(match (method, segs) {
        ("GET", ["comments"]) => {
            let counts: BTreeMap<String, usize> = t
                .incidents
                .list
                .iter()
                .filter(|i| !i.comments.is_empty())
                .map(|i| (i.id.to_string(), i.comments.len()))
                .collect();
            Reply::json(200, json!(counts))
        }
        ("GET", ["incidents", id, "comments"]) => {
            match id.parse::<u64>().ok().and_then(|n| t.incidents.get(n)) {
                Some(i) => Reply::json(
                    200,
                    i.comments
                        .iter()
                        .map(|c| json!(c.comment))
                        .collect::<Value>(),
                ),
                None => Reply::json(404, json!({"error": format!("no incident {id}")})),
            }
        }
        ("POST", ["incidents", id, "change"]) => match parse::<Change>(body) {
            Ok(c) => {
                let now = t.now();
                let change = IncidentChange {
                    assigned_to: c.assigned_to,
                    status: c.status,
                };
                let id = id.parse::<u64>().ok();
                match id.filter(|n| t.incidents.plan(*n, c.after_polls, change, now)) {
                    Some(_) => Reply::empty(204),
                    None => Reply::json(404, json!({"error": "no such incident"})),
                }
            }
            Err(r) => r,
        },
        ("POST", ["incidents"]) => match parse::<IncidentSpec>(body) {
            Ok(spec) => {
                let id = create_incident(t, &spec);
                Reply::json(201, json!({"id": id.to_string()}))
            }
            Err(r) => r,
        },
        _ => return None,
    })
}

/// Group members, out-of-band membership changes and expired delta links.
fn directory(t: &mut Tenant, method: &str, segs: &[&str], body: &[u8]) -> Option<Reply> {
    Some(match (method, segs) {
        ("GET", ["groups", id, "members"]) => match uuid::Uuid::parse_str(id) {
            Ok(g) => {
                let members: Vec<Value> = t
                    .group_members(&g)
                    .into_iter()
                    .map(|(m, k)| json!({"id": m.to_string(), "type": k.map(|k| k.odata_type())}))
                    .collect();
                Reply::json(200, Value::Array(members))
            }
            Err(_) => bad(format!("{id} is not a group id")),
        },
        // Out-of-band membership changes, as an administrator makes them in the portal.
        ("POST" | "DELETE", ["groups", id, "members", member]) => {
            match (uuid::Uuid::parse_str(id), uuid::Uuid::parse_str(member)) {
                (Ok(g), Ok(m)) if t.directory.group(&g).is_some() => {
                    let changed = if method == "POST" {
                        t.directory.add_member(&g, m)
                    } else {
                        t.directory.remove_member(&g, &m)
                    };
                    Reply::json(200, json!({ "changed": changed }))
                }
                _ => bad(format!(
                    "{id} is not a group or {member} is not an object id"
                )),
            }
        }
        // Declares every delta link issued so far expired: the next use of one is refused.
        ("POST", ["delta", "expire"]) => match parse::<DeltaExpire>(body) {
            Ok(e) => {
                t.directory.expire_delta_links(e.how);
                Reply::empty(204)
            }
            Err(r) => r,
        },
        _ => return None,
    })
}

/// Machines with their tags and placement, and the device groups.
fn mde(
    t: &mut Tenant,
    method: &str,
    segs: &[&str],
    query: &[(String, String)],
    body: &[u8],
) -> Option<Reply> {
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    Some(match (method, segs) {
        ("GET", ["machines"]) => {
            let list = match q("tag") {
                Some(tag) => t.machines_with_tag(tag),
                None => (0..t.mde.machines.len() as u32)
                    .map(|i| t.view_of(i))
                    .collect(),
            };
            Reply::json(200, serde_json::to_value(list).unwrap_or_default())
        }
        ("GET", ["machines", id]) => match t.machine_view(id) {
            Some(v) => Reply::json(200, serde_json::to_value(v).unwrap_or_default()),
            None => Reply::json(404, json!({"error": format!("no machine {id}")})),
        },
        ("GET", ["device-groups"]) => {
            Reply::json(200, serde_json::to_value(&t.mde.groups).unwrap_or_default())
        }
        ("POST", ["device-groups"]) => match parse::<NewGroup>(body) {
            Ok(g) => {
                let id = t.add_device_group(&g.name, g.rank, g.rule);
                Reply::json(201, json!({"id": id}))
            }
            Err(r) => r,
        },
        ("DELETE", ["device-groups", id]) => match id.parse::<i64>() {
            Ok(id) if t.remove_device_group(id) => Reply::empty(204),
            _ => Reply::json(404, json!({"error": format!("no device group {id}")})),
        },
        ("POST", ["device-groups", id, "rank"]) => match (id.parse::<i64>(), parse::<Rank>(body)) {
            (Ok(id), Ok(r)) if t.set_device_group_rank(id, r.rank) => Reply::empty(204),
            (_, Err(r)) => r,
            _ => Reply::json(404, json!({"error": format!("no device group {id}")})),
        },
        _ => return None,
    })
}
