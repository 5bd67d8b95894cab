//! What the Graph routes share: error and paging shapes, object ids and their JSON, and the
//! `eq`/`in` filters the users, devices and delta routes accept.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::sim::model::{ObjKind, Tenant};
use crate::sim::routes::{self, ApiReq, Reply, Tok, graph_error, lex};

pub(super) fn not_found(what: &str) -> Reply {
    graph_error(
        404,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

pub(super) fn parse_guid(s: &str) -> Option<Uuid> {
    crate::model::is_guid(s)
        .then(|| Uuid::parse_str(s).ok())
        .flatten()
}

pub(super) fn find_group(t: &Tenant, id: &str) -> Result<Uuid, Reply> {
    parse_guid(id)
        .filter(|g| t.directory.group(g).is_some())
        .ok_or_else(|| not_found(id))
}

/// `{base}/v1.0{path}?{query without $skiptoken}&$skiptoken={token}`.
pub(super) fn next_link(req: &ApiReq, key: &str, token: &str) -> String {
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
                routes::encode(k).replace("%24", "$"),
                routes::encode(v)
            )
        })
        .collect();
    q.push(format!("{key}={}", routes::encode(token)));
    let path = if req.path.starts_with('/') {
        req.path.clone()
    } else {
        format!("/{}", req.path)
    };
    format!("{}/v1.0{}?{}", req.base, path, q.join("&"))
}

pub(super) fn context(req: &ApiReq, what: &str) -> String {
    format!("{}/v1.0/$metadata#{what}", req.base)
}

pub(super) fn object_json(t: &Tenant, id: &Uuid, kind: ObjKind) -> Value {
    match kind {
        ObjKind::User => match t.directory.user(id) {
            Some(u) => json!({"@odata.type": kind.odata_type(), "id": u.id.to_string(),
                "displayName": &*u.display_name, "userPrincipalName": &*u.upn,
                "mail": &*u.upn,
                "accountEnabled": !t.directory.user_attrs.get(id).is_some_and(|a| a.disabled)}),
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
        ObjKind::Contact | ObjKind::ServicePrincipal => {
            json!({"@odata.type": kind.odata_type(), "id": id.to_string(), "displayName": null})
        }
    }
}

/// A user as `/users` lists it, with the attributes the simulator keeps.
pub(super) fn user_json(t: &Tenant, i: u32) -> Option<Value> {
    let u = t.directory.users[i as usize].as_ref()?;
    let attrs = t
        .directory
        .user_attrs
        .get(&u.id)
        .cloned()
        .unwrap_or_default();
    Some(
        json!({"id": u.id.to_string(), "displayName": &*u.display_name,
        "userPrincipalName": &*u.upn, "mail": &*u.upn, "accountEnabled": !attrs.disabled,
        "businessPhones": [], "jobTitle": attrs.job_title, "department": attrs.department,
        "country": attrs.country, "companyName": attrs.company_name,
        "officeLocation": attrs.office_location, "usageLocation": attrs.usage_location,
        "employeeType": attrs.employee_type}),
    )
}

/// `prop eq 'v'`, `prop in ('a','b')`, optionally several joined by `or`.
pub(super) fn parse_in_filter(filter: &str) -> Result<Vec<(String, String)>, String> {
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
    fn in_filters_parse_and_count_values() {
        let c = parse_in_filter("userPrincipalName in ('a@x.com','o''neil@x.com') or id eq 'z'")
            .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].1, "o'neil@x.com");
        assert!(parse_in_filter("userPrincipalName startswith 'a'").is_err());
    }
}
