//! Graph `groups/delta`: a full first round paged by `$skiptoken` (or, with
//! `$deltatoken=latest`, an empty round from now), then member changes since a `$deltatoken`
//! (a deleted group shows as `@removed`), and the refusal of links the simulator declared
//! expired.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::shared::{context, next_link, parse_guid, parse_in_filter};
use crate::sim::model::{DeltaRefusal, ObjKind, Tenant};
use crate::sim::routes::{self, ApiReq, Reply, graph_error};

/// Members per page in the first (full) round of a delta query.
const DELTA_PAGE: usize = 500;

pub(super) fn bad_token() -> Reply {
    graph_error(
        400,
        "syncStateNotFound",
        "The delta token is invalid or has expired. Restart the synchronisation without a token.",
    )
}

pub(super) fn delta(t: &Tenant, req: &ApiReq) -> Reply {
    let state = match round_state(t, req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let parts: Vec<&str> = state.split('|').collect();
    let with_members = req
        .q("$select")
        .is_none_or(|s| s.to_ascii_lowercase().contains("members"));
    let round = match parts.as_slice() {
        ["full", seq, gi, after, ids] => full_round(t, req, with_members, seq, gi, after, ids),
        ["delta", seq, ids] => changes_round(t, req, with_members, seq, ids),
        _ => Err(bad_token()),
    };
    let (link_key, link, value) = match round {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut body = Map::new();
    body.insert("@odata.context".into(), context(req, "groups").into());
    body.insert(link_key.into(), link.into());
    body.insert("value".into(), Value::Array(value));
    Reply::json(200, Value::Object(body))
}

/// The state a request continues from, decoded from its token or started afresh. Token forms:
/// `full|{seq}|{group index}|{after id or -}|{ids}` and `delta|{seq}|{ids}`.
fn round_state(t: &Tenant, req: &ApiReq) -> Result<String, Reply> {
    let latest = req.q("$deltatoken") == Some("latest");
    if let Some(tok) = req.q("$deltatoken").filter(|_| !latest) {
        let s = routes::skiptoken_decode(tok).ok_or_else(bad_token)?;
        return match refused_link(t, req, &s) {
            Some(refused) => Err(refused),
            None => Ok(s),
        };
    }
    if let Some(tok) = req.q("$skiptoken") {
        return routes::skiptoken_decode(tok).ok_or_else(bad_token);
    }
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
                return Err(graph_error(
                    400,
                    "Request_UnsupportedQuery",
                    "Unsupported query: only 'id eq' filters (at most 50) are supported on groups delta.",
                ));
            }
        },
    };
    // `$deltatoken=latest` ("sync from now"): a round of changes since now, which is empty
    // and carries the deltaLink to start from.
    let round = if latest { "delta" } else { "full" };
    let from = if latest { "" } else { "|0|-" };
    Ok(format!(
        "{round}|{}{from}|{}",
        t.directory.delta_seq,
        ids.join(",")
    ))
}

/// One round's answer: the link property (`@odata.nextLink` or `@odata.deltaLink`), the link,
/// and the groups.
type Round = (&'static str, String, Vec<Value>);

fn id_list(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A page of the first round: every member of every group, at most [`DELTA_PAGE`] per page.
fn full_round(
    t: &Tenant,
    req: &ApiReq,
    with_members: bool,
    seq: &str,
    gi: &str,
    after: &str,
    ids: &str,
) -> Result<Round, Reply> {
    let ids: Vec<Uuid> = ids.split(',').filter_map(parse_guid).collect();
    let (Ok(seq), Ok(mut gi)) = (seq.parse::<u64>(), gi.parse::<usize>()) else {
        return Err(bad_token());
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
    let id_list = id_list(&ids);
    if gi < ids.len() {
        let next = format!(
            "full|{seq}|{gi}|{}|{id_list}",
            after.map_or("-".to_string(), |a| a.to_string())
        );
        let link = next_link(req, "$skiptoken", &routes::skiptoken_encode(&next));
        Ok(("@odata.nextLink", link, value))
    } else {
        let next = format!("delta|{seq}|{id_list}");
        let link = next_link(req, "$deltatoken", &routes::skiptoken_encode(&next));
        Ok(("@odata.deltaLink", link, value))
    }
}

/// A later round: per group, the last change of each member since the token's sequence.
fn changes_round(
    t: &Tenant,
    req: &ApiReq,
    with_members: bool,
    seq: &str,
    ids: &str,
) -> Result<Round, Reply> {
    let Ok(seq) = seq.parse::<u64>() else {
        return Err(bad_token());
    };
    let ids: Vec<Uuid> = ids.split(',').filter_map(parse_guid).collect();
    let mut value = Vec::new();
    for gid in &ids {
        let Some(g) = t.directory.group(gid) else {
            // A tracked group that was deleted shows as removed itself.
            value.push(
                json!({"@odata.type": "#microsoft.graph.group", "id": gid.to_string(),
                "@removed": {"reason": "deleted"}}),
            );
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
        let mut obj = json!({"@odata.type": "#microsoft.graph.group", "id": g.id.to_string()});
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
    let next = format!("delta|{}|{}", t.directory.delta_seq, id_list(&ids));
    let link = next_link(req, "$deltatoken", &routes::skiptoken_encode(&next));
    Ok(("@odata.deltaLink", link, value))
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
