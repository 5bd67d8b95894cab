//! Graph users and Entra devices: read a user by id or UPN, list users (paged, or by an
//! `eq`/`in` filter of at most 15 values) and list devices by filter.

use serde_json::{Map, Value, json};

use super::shared::{
    context, next_link, not_found, object_json, parse_guid, parse_in_filter, user_json,
};
use crate::sim::model::{ObjKind, Tenant};
use crate::sim::routes::{self, ApiReq, Reply, graph_error, select};

pub(super) fn get_user(t: &Tenant, key: &str, req: &ApiReq) -> Reply {
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
            Reply::json(200, routes::apply_select(v, &select(req)))
        }
        None => not_found(key),
    }
}

pub(super) fn list_users(t: &Tenant, req: &ApiReq) -> Reply {
    let sel = select(req);
    let mut body = Map::new();
    body.insert("@odata.context".into(), context(req, "users").into());
    let listed = match req.q("$filter") {
        Some(filter) if super::selectors::is_attribute_filter(filter) => {
            super::selectors::users_by_attributes(t, req, filter, &sel, &mut body)
        }
        Some(filter) => users_by_filter(t, filter, &sel),
        None => users_page(t, req, &sel, &mut body),
    };
    match listed {
        Ok(value) => {
            body.insert("value".into(), Value::Array(value));
            Reply::json(200, Value::Object(body))
        }
        Err(r) => r,
    }
}

/// The users a `$filter` of `eq`/`in` clauses names, in directory order.
fn users_by_filter(t: &Tenant, filter: &str, sel: &[String]) -> Result<Vec<Value>, Reply> {
    let clauses = match parse_in_filter(filter) {
        Ok(c) => c,
        Err(why) => {
            return Err(graph_error(
                400,
                "Request_UnsupportedQuery",
                &format!("Unsupported or invalid query filter clause specified: {why}."),
            ));
        }
    };
    if clauses.len() > 15 {
        return Err(graph_error(
            400,
            "Request_UnsupportedQuery",
            &format!(
                "Too many child clauses specified in search filter expression containing 'OR' operators: {}. Max allowed: 15.",
                clauses.len()
            ),
        ));
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
                    return Err(graph_error(
                        400,
                        "Request_BadRequest",
                        &format!("Invalid object identifier '{v}'."),
                    ));
                }
            },
            other => {
                return Err(graph_error(
                    400,
                    "Request_UnsupportedQuery",
                    &format!(
                        "Unsupported or invalid query filter clause specified for property '{other}' of resource 'User'."
                    ),
                ));
            }
        };
        if let Some(i) = i
            && !found.contains(&i)
        {
            found.push(i);
        }
    }
    found.sort_unstable();
    Ok(found
        .into_iter()
        .filter_map(|i| user_json(t, i))
        .map(|v| routes::apply_select(v, sel))
        .collect())
}

/// One page of every user, in directory order; adds the next link to `body` when more follow.
fn users_page(
    t: &Tenant,
    req: &ApiReq,
    sel: &[String],
    body: &mut Map<String, Value>,
) -> Result<Vec<Value>, Reply> {
    let top = match routes::top(req, 100, 999) {
        Ok(n) => n,
        Err(v) => {
            return Err(graph_error(
                400,
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{v}'. Must be between 1 and 999 inclusive."
                ),
            ));
        }
    };
    let start = req
        .q("$skiptoken")
        .and_then(routes::skiptoken_decode)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let mut value = Vec::new();
    let mut i = start;
    while i < t.directory.users.len() && value.len() < top {
        if let Some(v) = user_json(t, i as u32) {
            value.push(routes::apply_select(v, sel));
        }
        i += 1;
    }
    if i < t.directory.users.len() {
        let tok = routes::skiptoken_encode(&i.to_string());
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    Ok(value)
}

pub(super) fn list_devices(t: &Tenant, req: &ApiReq) -> Reply {
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
        .map(|d| routes::apply_select(object_json(t, &d.id, ObjKind::Device), &select(req)))
        .collect();
    Reply::json(
        200,
        json!({"@odata.context": context(req, "devices"), "value": value}),
    )
}
