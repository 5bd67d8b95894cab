//! The scoped user group: list direct members, resolve users, add and remove members.
//!
//! Adds and removes are idempotent on their own: "already a member" and "not a member" are
//! success, so a pass killed half-way and run again converges without errors.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde::Deserialize;

use super::{Error, GraphClient, wire};
use crate::http::{BatchItem, BatchOutcome, Request, Surface, cost, encode_query_value};
use crate::model::{GroupMember, ObjectId, Upn, UserId};

/// Values per `in (…)` filter (Graph's default limit is 15 expressions).
pub const MAX_UPNS_PER_FILTER: usize = 15;
/// Ids per `PATCH members@odata.bind`.
pub const MAX_BIND_PER_PATCH: usize = 20;

const ALREADY_MEMBER: &str = "added object references already exist";
const NOT_A_MEMBER: &str = "removed object references do not exist";

/// What happened to one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberResult {
    Added,
    /// The add found the member already there (success).
    AlreadyMember,
    Removed,
    /// The remove found no such member (success).
    NotMember,
    /// The change was not made: 404 when the object does not exist, or any other failure.
    Failed {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberOutcome {
    pub member: ObjectId,
    pub result: MemberResult,
    /// The request id of the request that decided the outcome.
    pub request_id: Option<String>,
}

impl MemberOutcome {
    pub fn is_success(&self) -> bool {
        !matches!(self.result, MemberResult::Failed { .. })
    }
}

impl GraphClient {
    /// The group's **direct** members, every page, users and everything else apart.
    pub async fn list_group_members(&self, group: &ObjectId) -> Result<Vec<GroupMember>, Error> {
        let url = self.http.graph_url(&format!(
            "/groups/{group}/members?$select=id,userPrincipalName,displayName&$top=999"
        ))?;
        let req = Request::get(Surface::GraphRead, url).with_cost(cost::MEMBERS_PAGE);
        let members: Vec<MemberItem> =
            self.http
                .get_all(req)
                .await
                .map_err(|source| Error::ListMembers {
                    group: Box::new(group.clone()),
                    source,
                })?;
        let mut members: Vec<GroupMember> = members.into_iter().filter_map(|m| m.0).collect();
        // The list grew page by page (doubling) and is held through the pass: up to a third
        // of its room unused at 100k members. One mapped block, so shrinking copies nothing.
        members.shrink_to_fit();
        Ok(members)
    }

    /// Object ids of the users with these UPNs; an unknown UPN is absent from the map.
    /// 15 UPNs per `in` filter, 20 filters per `$batch`: 300 UPNs per round trip.
    pub async fn users_by_upn(&self, upns: &[Upn]) -> Result<HashMap<Upn, UserId>, Error> {
        let values: Vec<&str> = dedup(upns.iter().map(Upn::as_str));
        let users = self.users_where("userPrincipalName", &values).await?;
        Ok(users
            .into_iter()
            .filter_map(|u| {
                let upn = Upn::parse(u.user_principal_name.as_deref()?).ok()?;
                Some((upn, UserId::parse(&u.id).ok()?))
            })
            .collect())
    }

    /// Which of these object ids are existing users (with their UPN when Graph gives one).
    pub async fn users_by_id(
        &self,
        ids: &[ObjectId],
    ) -> Result<HashMap<UserId, Option<Upn>>, Error> {
        let values: Vec<&str> = dedup(ids.iter().map(ObjectId::as_str));
        let users = self.users_where("id", &values).await?;
        Ok(users
            .into_iter()
            .filter_map(|u| {
                let id = UserId::parse(&u.id).ok()?;
                let upn = u
                    .user_principal_name
                    .as_deref()
                    .and_then(|s| Upn::parse(s).ok());
                Some((id, upn))
            })
            .collect())
    }

    async fn users_where(
        &self,
        field: &'static str,
        values: &[&str],
    ) -> Result<Vec<wire::User>, Error> {
        let items: Vec<BatchItem> = values
            .chunks(MAX_UPNS_PER_FILTER)
            .map(|chunk| {
                let list = chunk
                    .iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(",");
                let filter = format!("{field} in ({list})");
                let url = format!(
                    "/users?$filter={}&$select=id,userPrincipalName",
                    encode_query_value(&filter)
                );
                BatchItem::new(Method::GET, Surface::GraphRead, url).with_cost(cost::USERS)
            })
            .collect();
        let outcomes = self
            .http
            .batch(&items)
            .await
            .map_err(|source| Error::LookupUsers {
                count: values.len(),
                source,
            })?;
        let mut users = Vec::new();
        for (o, chunk) in outcomes.iter().zip(values.chunks(MAX_UPNS_PER_FILTER)) {
            if !o.is_success() {
                return Err(Error::LookupItem {
                    filter_on: field,
                    count: chunk.len(),
                    status: o.status,
                    code: o.api_error().code,
                    request_id: o.request_id.clone(),
                });
            }
            let body = o.body.clone().unwrap_or(serde_json::Value::Null);
            let list = wire::List::<wire::User>::deserialize(body).map_err(|e| {
                crate::http::Error::Decode {
                    method: "GET".into(),
                    path: "/users".into(),
                    detail: e.to_string(),
                }
            })?;
            users.extend(list.value);
        }
        Ok(users)
    }

    /// Adds members with `PATCH members@odata.bind` (20 ids each, 20 PATCHes per `$batch`).
    /// A PATCH is all-or-nothing, so a chunk that fails with 400 or 404 is redone as single
    /// `POST …/members/$ref` items to learn each member's outcome. Idempotent: "already a
    /// member" is success, so it may run again after a crash between the write and the audit.
    pub async fn add_members(
        &self,
        group: &ObjectId,
        members: &[ObjectId],
    ) -> Result<Vec<MemberOutcome>, Error> {
        let members: Vec<&ObjectId> = dedup(members.iter());
        let chunks: Vec<&[&ObjectId]> = members.chunks(MAX_BIND_PER_PATCH).collect();
        let items: Vec<BatchItem> = chunks
            .iter()
            .map(|chunk| {
                let binds: Vec<String> =
                    chunk.iter().map(|m| self.directory_object_url(m)).collect();
                BatchItem::new(
                    Method::PATCH,
                    Surface::GraphWrite,
                    format!("/groups/{group}"),
                )
                .with_body(serde_json::json!({ "members@odata.bind": binds }))
            })
            .collect();
        let add_err = |source| Error::AddMembers {
            group: Box::new(group.clone()),
            count: members.len(),
            source,
        };
        let outcomes = self.http.batch(&items).await.map_err(add_err)?;
        let mut results = Vec::with_capacity(members.len());
        let mut singles: Vec<&ObjectId> = Vec::new();
        for (o, chunk) in outcomes.iter().zip(&chunks) {
            if o.is_success() {
                results.extend(chunk.iter().map(|m| outcome(m, MemberResult::Added, o)));
            } else if matches!(o.status, 400 | 404) {
                singles.extend(chunk.iter().copied());
            } else {
                results.extend(chunk.iter().map(|m| outcome(m, failed(o), o)));
            }
        }
        if !singles.is_empty() {
            let items: Vec<BatchItem> = singles
                .iter()
                .map(|m| {
                    BatchItem::new(
                        Method::POST,
                        Surface::GraphWrite,
                        format!("/groups/{group}/members/$ref"),
                    )
                    .with_body(serde_json::json!({ "@odata.id": self.directory_object_url(m) }))
                })
                .collect();
            let outcomes = self.http.batch(&items).await.map_err(add_err)?;
            for (o, m) in outcomes.iter().zip(&singles) {
                let r = if o.is_success() {
                    MemberResult::Added
                } else if o.status == 400 && o.api_error().message_contains(ALREADY_MEMBER) {
                    MemberResult::AlreadyMember
                } else {
                    failed(o)
                };
                results.push(outcome(m, r, o));
            }
        }
        Ok(results)
    }

    /// Removes members, always with `DELETE /groups/{id}/members/{member}/$ref` (without
    /// `/$ref` Graph would delete the object itself), 20 per `$batch`. "Not a member" (404, or
    /// 400 "removed object references do not exist") is success, so it may run again.
    pub async fn remove_members(
        &self,
        group: &ObjectId,
        members: &[ObjectId],
    ) -> Result<Vec<MemberOutcome>, Error> {
        let members: Vec<&ObjectId> = dedup(members.iter());
        let items: Vec<BatchItem> = members
            .iter()
            .map(|m| {
                BatchItem::new(
                    Method::DELETE,
                    Surface::GraphWrite,
                    member_ref_path(group, m),
                )
            })
            .collect();
        let outcomes = self
            .http
            .batch(&items)
            .await
            .map_err(|source| Error::RemoveMembers {
                group: Box::new(group.clone()),
                count: members.len(),
                source,
            })?;
        Ok(outcomes
            .iter()
            .zip(&members)
            .map(|(o, m)| {
                let r = if o.is_success() {
                    MemberResult::Removed
                } else if o.status == 404
                    || (o.status == 400 && o.api_error().message_contains(NOT_A_MEMBER))
                {
                    MemberResult::NotMember
                } else {
                    failed(o)
                };
                outcome(m, r, o)
            })
            .collect())
    }

    fn directory_object_url(&self, id: &ObjectId) -> String {
        format!(
            "{}/v1.0/directoryObjects/{id}",
            self.http
                .settings()
                .graph_root
                .as_str()
                .trim_end_matches('/')
        )
    }
}

/// The only way a member removal path is built: it always ends in `/$ref`.
fn member_ref_path(group: &ObjectId, member: &ObjectId) -> String {
    format!("/groups/{group}/members/{member}/$ref")
}

/// One member of a list page, converted the moment it is parsed: 100,000 members are never
/// held as wire strings (three `String`s each) beside their converted form. A malformed item
/// still fails the page, as the plain mirror did.
struct MemberItem(Option<GroupMember>);

impl<'de> Deserialize<'de> for MemberItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        wire::Member::deserialize(d).map(|m| MemberItem(group_member(m)))
    }
}

pub(super) fn group_member(m: wire::Member) -> Option<GroupMember> {
    let odata_type = m.odata_type.unwrap_or_default();
    if odata_type.eq_ignore_ascii_case("#microsoft.graph.user")
        && let Ok(id) = UserId::parse(&m.id)
    {
        let upn = m
            .user_principal_name
            .as_deref()
            .and_then(|u| Upn::parse(u).ok());
        return Some(GroupMember::User { id, upn });
    }
    match ObjectId::parse(&m.id) {
        Ok(id) => Some(GroupMember::Other {
            id,
            odata_type: odata_type.into(),
            // A tenant's display name is free text; from here on it is a one-line label.
            display_name: m
                .display_name
                .as_deref()
                .map(|name| crate::text::label(name).into()),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "group member with an id that is not a GUID is ignored");
            None
        }
    }
}

fn outcome(m: &ObjectId, result: MemberResult, o: &BatchOutcome) -> MemberOutcome {
    MemberOutcome {
        member: m.clone(),
        result,
        request_id: o.request_id.clone(),
    }
}

fn failed(o: &BatchOutcome) -> MemberResult {
    let api = o.api_error();
    MemberResult::Failed {
        status: o.status,
        code: api.code,
        message: api.message,
    }
}

/// Drops repeats, keeping the first occurrence's position.
fn dedup<T: Eq + std::hash::Hash + Copy>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    it.filter(|x| seen.insert(*x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_path_always_ends_in_ref() {
        let g = ObjectId::parse("11111111-1111-1111-1111-111111111111").unwrap();
        let m = ObjectId::parse("22222222-2222-2222-2222-222222222222").unwrap();
        assert_eq!(
            member_ref_path(&g, &m),
            "/groups/11111111-1111-1111-1111-111111111111/members/22222222-2222-2222-2222-222222222222/$ref"
        );
    }

    #[test]
    fn members_split_by_type() {
        let user = wire::Member {
            odata_type: Some("#microsoft.graph.user".into()),
            id: "6F1C2A9E-0B7D-4A57-9A51-2D9F0C3E7B14".into(),
            user_principal_name: None,
            display_name: None,
        };
        let group = wire::Member {
            odata_type: Some("#microsoft.graph.group".into()),
            id: "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b15".into(),
            user_principal_name: None,
            display_name: Some("nested".into()),
        };
        assert!(matches!(
            group_member(user),
            Some(GroupMember::User { upn: None, .. })
        ));
        assert!(matches!(
            group_member(group),
            Some(GroupMember::Other { .. })
        ));
    }
}
