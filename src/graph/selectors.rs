//! What selectors read from Graph: a group's direct members (a tree is read group by group)
//! and users by attribute, each a few paged requests rather than one lookup per identity.

use reqwest::Method;

use super::{GraphClient, wire};
use crate::http::{self, Request, Surface, encode_query_value};
use crate::model::{AadDeviceId, ObjectId, Upn, UserId};

/// Objects per page: Graph's maximum `$top` for directory object lists.
pub const PAGE: usize = 999;

/// Resource units of one `members` page with `$select` (3, one off for `$select`).
const MEMBERS_PAGE_COST: u32 = http::cost::MEMBERS_PAGE - 1;

/// User properties that Graph filters with `eq`/`in` only as an *advanced query*: with the
/// `ConsistencyLevel: eventual` header and `$count=true` on every page (Graph docs, "Advanced
/// query capabilities on Microsoft Entra ID objects", user properties).
pub const ADVANCED_USER_PROPERTIES: &[&str] = &["companyName", "officeLocation", "employeeType"];

/// One object of a group tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeMember {
    User {
        id: UserId,
        upn: Option<Upn>,
        enabled: bool,
    },
    Group {
        id: ObjectId,
        name: Option<String>,
    },
    Device {
        id: ObjectId,
        device_id: Option<AadDeviceId>,
    },
    /// A contact, service principal or any other type: not a user, not a device.
    Other {
        id: String,
        odata_type: String,
    },
}

/// A user read by attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: UserId,
    pub upn: Option<Upn>,
    pub enabled: bool,
}

/// A selector's source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {what} failed: {source}")]
pub struct SelectorError {
    pub what: String,
    #[source]
    pub source: http::Error,
}

impl SelectorError {
    /// The HTTP status of a final answer (404 gone, 403 not allowed, 400 rejected filter).
    pub fn status(&self) -> Option<u16> {
        self.source.status()
    }
}

impl GraphClient {
    /// The objects directly in `group` (users, nested groups, devices, contacts, service
    /// principals), all pages: ⌈members/999⌉ requests. Reading a tree group by group costs at
    /// most one partial page per group more than `transitiveMembers`, and says which group
    /// each object sits in, which the flat transitive list does not.
    pub async fn direct_members(&self, group: &ObjectId) -> Result<Vec<TreeMember>, SelectorError> {
        let err = selector_error(|| format!("the members of group {group}"));
        let url = self
            .http
            .graph_url(&format!(
                "/groups/{group}/members?$select=id,userPrincipalName,displayName,\
                 accountEnabled,deviceId&$top={PAGE}"
            ))
            .map_err(&err)?;
        let req = Request::get(Surface::GraphRead, url).with_cost(MEMBERS_PAGE_COST);
        let objects: Vec<wire::TreeObject> = self.http.get_all(req).await.map_err(&err)?;
        Ok(objects.into_iter().map(tree_member).collect())
    }

    /// The group's display name.
    pub async fn group_name(&self, group: &ObjectId) -> Result<Option<String>, SelectorError> {
        let err = selector_error(|| format!("group {group}"));
        let url = self
            .http
            .graph_url(&format!("/groups/{group}?$select=id,displayName"))
            .map_err(&err)?;
        let resp = self
            .http
            .send(Request::new(Method::GET, Surface::GraphRead, url))
            .await
            .map_err(&err)?;
        let obj: wire::TreeObject = resp.json().map_err(&err)?;
        Ok(obj.display_name)
    }

    /// Every user whose properties match all `conditions` (property, any of these values),
    /// all pages. Sent as an advanced query when any property needs it.
    pub async fn users_matching(
        &self,
        conditions: &[(&str, &[String])],
    ) -> Result<Vec<UserRow>, SelectorError> {
        let filter = conditions
            .iter()
            .map(|(prop, values)| match values {
                [one] => format!("{prop} eq {}", quoted(one)),
                many => format!(
                    "{prop} in ({})",
                    many.iter().map(|v| quoted(v)).collect::<Vec<_>>().join(",")
                ),
            })
            .collect::<Vec<_>>()
            .join(" and ");
        let advanced = conditions
            .iter()
            .any(|(p, _)| ADVANCED_USER_PROPERTIES.contains(p));
        let err = selector_error(|| format!("users where {filter}"));
        let count = if advanced { "&$count=true" } else { "" };
        let url = self
            .http
            .graph_url(&format!(
                "/users?$filter={}&$select=id,userPrincipalName,accountEnabled&$top={PAGE}{count}",
                encode_query_value(&filter)
            ))
            .map_err(&err)?;
        let mut req = Request::get(Surface::GraphRead, url).with_cost(http::cost::USERS);
        if advanced {
            // Sent on every page: the paging keeps the request's headers.
            req = req.with_header("ConsistencyLevel", "eventual");
        }
        let objects: Vec<wire::TreeObject> = self.http.get_all(req).await.map_err(&err)?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                Some(UserRow {
                    id: UserId::parse(&o.id).ok()?,
                    upn: o
                        .user_principal_name
                        .as_deref()
                        .and_then(|u| Upn::parse(u).ok()),
                    enabled: o.account_enabled.unwrap_or(true),
                })
            })
            .collect())
    }
}

/// The one way a failed read becomes a [`SelectorError`]: `what` names the object read.
fn selector_error(what: impl Fn() -> String) -> impl Fn(http::Error) -> SelectorError {
    move |source| SelectorError {
        what: what(),
        source,
    }
}

/// An OData string literal: quotes doubled.
fn quoted(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn tree_member(o: wire::TreeObject) -> TreeMember {
    let kind = o.odata_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let other = |kind: String| TreeMember::Other {
        id: o.id.clone(),
        odata_type: kind,
    };
    match kind.as_str() {
        "#microsoft.graph.user" => match UserId::parse(&o.id) {
            Ok(id) => TreeMember::User {
                id,
                upn: o
                    .user_principal_name
                    .as_deref()
                    .and_then(|u| Upn::parse(u).ok()),
                // A member read without the property is taken as enabled only if Graph
                // omitted it; Graph returns it when `$select` names it.
                enabled: o.account_enabled.unwrap_or(true),
            },
            Err(_) => other(kind),
        },
        "#microsoft.graph.group" => match ObjectId::parse(&o.id) {
            Ok(id) => TreeMember::Group {
                id,
                name: o.display_name,
            },
            Err(_) => other(kind),
        },
        "#microsoft.graph.device" => match ObjectId::parse(&o.id) {
            Ok(id) => TreeMember::Device {
                id,
                device_id: o
                    .device_id
                    .as_deref()
                    .and_then(|d| AadDeviceId::parse(d).ok()),
            },
            Err(_) => other(kind),
        },
        _ => other(kind),
    }
}
