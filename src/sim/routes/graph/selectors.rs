//! What selectors read from Graph: a group's transitive members (nested groups flattened,
//! paged up to 999) and users by attribute (`eq`/`in` clauses joined by `and`), with the
//! advanced-query rule: some properties filter only with `ConsistencyLevel: eventual` and
//! `$count=true`, as Graph's "advanced query capabilities" page lists them.

use serde_json::{Map, Value};

use super::shared::{context, find_group, next_link, object_json, user_json};
use crate::sim::model::{Tenant, UserAttrs};
use crate::sim::routes::{self, ApiReq, Reply, Tok, graph_error, lex, select};

/// User properties Graph filters with `eq`/`in` only as an advanced query (Graph docs,
/// "Advanced query capabilities on Microsoft Entra ID objects", user properties table).
const ADVANCED_ONLY: &[&str] = &["companyname", "officelocation", "employeetype"];

/// `GET /groups/{id}/transitiveMembers`: every object in the tree, nested groups included.
pub(super) fn transitive_members(t: &Tenant, id: &str, req: &ApiReq) -> Reply {
    let gid = match find_group(t, id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let top = match routes::top(req, 100, 999) {
        Ok(n) => n,
        Err(v) => return bad_top(&v),
    };
    let Some(start) = offset(req) else {
        return bad_token();
    };
    let all = t.directory.transitive_members(&gid).unwrap_or_default();
    let sel = select(req);
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(top)
        .map(|(m, kind)| routes::apply_select(object_json(t, m, *kind), &sel))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        context(req, "directoryObjects").into(),
    );
    if start + top < all.len() {
        let tok = routes::skiptoken_encode(&(start + top).to_string());
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    body.insert("value".into(), Value::Array(page));
    Reply::json(200, Value::Object(body))
}

/// Whether `filter` is about user attributes (not the UPN and id lookups of the resolver).
pub(super) fn is_attribute_filter(filter: &str) -> bool {
    matches!(lex(filter).ok().as_deref(), Some([Tok::Word(p), ..]) if UserAttrs::known(p))
}

/// One page of the users matching every clause of `filter`, in directory order.
pub(super) fn users_by_attributes(
    t: &Tenant,
    req: &ApiReq,
    filter: &str,
    sel: &[String],
    body: &mut Map<String, Value>,
) -> Result<Vec<Value>, Reply> {
    let clauses = parse_and_filter(filter).map_err(|why| unsupported(&why))?;
    let advanced = req
        .header("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"))
        && req
            .q("$count")
            .is_some_and(|c| c.eq_ignore_ascii_case("true"));
    for (prop, _) in &clauses {
        if !UserAttrs::known(prop) {
            return Err(unsupported_property(prop));
        }
        if ADVANCED_ONLY.contains(&prop.to_ascii_lowercase().as_str()) && !advanced {
            return Err(unsupported_property(prop));
        }
    }
    let top = routes::top(req, 100, 999).map_err(|v| bad_top(&v))?;
    let start = offset(req).ok_or_else(bad_token)?;
    let matching: Vec<u32> = t
        .directory
        .users
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let u = u.as_ref()?;
            let attrs = t.directory.user_attrs.get(&u.id)?;
            let all = clauses.iter().all(|(prop, values)| {
                attrs
                    .get(prop)
                    .is_some_and(|v| values.iter().any(|w| w.eq_ignore_ascii_case(v)))
            });
            all.then_some(i as u32)
        })
        .collect();
    if advanced && start == 0 {
        body.insert("@odata.count".into(), matching.len().into());
    }
    if start + top < matching.len() {
        let tok = routes::skiptoken_encode(&(start + top).to_string());
        body.insert(
            "@odata.nextLink".into(),
            next_link(req, "$skiptoken", &tok).into(),
        );
    }
    Ok(matching
        .iter()
        .skip(start)
        .take(top)
        .filter_map(|&i| user_json(t, i))
        .map(|v| routes::apply_select(v, sel))
        .collect())
}

/// `a eq 'x' and b in ('y','z')`: each property with the values any of which matches.
fn parse_and_filter(filter: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let toks = lex(filter)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Some(Tok::Word(prop)) = toks.get(i) else {
            return Err("property name expected".into());
        };
        let op = match toks.get(i + 1) {
            Some(Tok::Word(w)) => w.to_ascii_lowercase(),
            _ => return Err("operator expected".into()),
        };
        i += 2;
        let mut values = Vec::new();
        match (op.as_str(), toks.get(i)) {
            ("eq", Some(Tok::Str(v))) => {
                values.push(v.clone());
                i += 1;
            }
            ("in", Some(Tok::LParen)) => {
                i += 1;
                loop {
                    let Some(Tok::Str(v)) = toks.get(i) else {
                        return Err("string literal expected".into());
                    };
                    values.push(v.clone());
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
        out.push((prop.clone(), values));
        match toks.get(i) {
            None => break,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            _ => return Err("'and' expected".into()),
        }
    }
    Ok(out)
}

/// The `$skiptoken` offset (0 on the first page); `None` when the token is not ours.
fn offset(req: &ApiReq) -> Option<usize> {
    match req.q("$skiptoken") {
        None => Some(0),
        Some(tok) => routes::skiptoken_decode(tok).and_then(|s| s.parse().ok()),
    }
}

fn bad_top(v: &str) -> Reply {
    graph_error(
        400,
        "Request_BadRequest",
        &format!("Invalid page size specified: '{v}'. Must be between 1 and 999 inclusive."),
    )
}

fn bad_token() -> Reply {
    graph_error(
        400,
        "Request_BadRequest",
        "The specified page token value has expired or is invalid.",
    )
}

fn unsupported(why: &str) -> Reply {
    graph_error(
        400,
        "Request_UnsupportedQuery",
        &format!("Unsupported or invalid query filter clause specified: {why}."),
    )
}

fn unsupported_property(prop: &str) -> Reply {
    graph_error(
        400,
        "Request_UnsupportedQuery",
        &format!(
            "Unsupported or invalid query filter clause specified for property '{prop}' of resource 'User'."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn and_filters_parse_with_lists() {
        let c = parse_and_filter("department eq 'Finance' and country in ('DE','AT')").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[1],
            ("country".to_string(), vec!["DE".into(), "AT".into()])
        );
        assert!(parse_and_filter("department eq 'a' or country eq 'b'").is_err());
        assert!(is_attribute_filter("companyName eq 'x'"));
        assert!(!is_attribute_filter("userPrincipalName eq 'a@b.c'"));
    }
}
