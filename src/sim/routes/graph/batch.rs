//! Graph `$batch`: at most 20 items with unique ids, `dependsOn` honoured, each item run as
//! its own call, the responses returned in shuffled order as Graph does.

use axum::http::Method;
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};

use crate::sim::model::Tenant;
use crate::sim::routes::token::Caller;
use crate::sim::routes::{self, ApiReq, Body, Reply, graph_error};

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
        query: routes::parse_query(query),
        headers: all_headers,
        body,
        base: envelope.base.clone(),
    };
    call(t, caller, &item)
}
