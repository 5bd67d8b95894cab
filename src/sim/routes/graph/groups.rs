//! Graph groups and their members: read a group, page its members (with casts and
//! `$count`), add members by `$ref` or `members@odata.bind`, remove them by `$ref`, and the
//! member `DELETE` without `/$ref` that no caller may send.

use std::ops::Bound;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::shared::{context, find_group, next_link, not_found, object_json, parse_guid};
use crate::sim::model::{ObjKind, Tenant};
use crate::sim::routes::{self, ApiReq, Reply, graph_error, select};

const ALREADY_MEMBER: &str = "One or more added object references already exist for the following modified properties: 'members'.";

pub(super) fn get_group(t: &Tenant, id: &str, req: &ApiReq) -> Reply {
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
    Reply::json(200, routes::apply_select(v, &select(req)))
}

pub(super) fn list_members(t: &Tenant, id: &str, cast: Option<&str>, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let top = match routes::top(req, 100, 999) {
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
        Some(tok) => match routes::skiptoken_decode(tok).and_then(|s| parse_guid(&s)) {
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
        page.push(routes::apply_select(object_json(t, m, kind), &sel));
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
        let tok = routes::skiptoken_encode(&last.to_string());
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

pub(super) fn patch_group(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
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

pub(super) fn add_ref(t: &mut Tenant, id: &str, req: &ApiReq) -> Reply {
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

pub(super) fn remove_ref(t: &mut Tenant, id: &str, mid: &str) -> Reply {
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
pub(super) fn delete_member(t: &mut Tenant, id: &str, mid: &str) -> Reply {
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
