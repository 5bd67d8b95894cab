//! Membership changes of the scoped user group through `GET /groups/delta`.
//!
//! A round without a link starts from nothing and lists the whole membership; a round from a
//! stored `@odata.deltaLink` lists only what changed since. Either way every `@odata.nextLink`
//! is followed verbatim until a deltaLink arrives, and the group's `members@delta` entries are
//! merged across pages in the order they came (a large group spans several pages). Delta gives
//! only `id` and `@odata.type` of members; the caller keeps the UPNs.
//!
//! Selectors track every group of a nested tree the same way, up to 50 ids per query: a
//! deltaLink taken from now, then rounds that only say which groups changed.

use reqwest::Url;

use super::{GraphClient, members::group_member, wire};
use crate::http::{self, Request, Surface, encode_query_value};
use crate::model::{GroupMember, ObjectId};

/// At most this many pages per round: 5 million members at the service's page sizes.
pub const MAX_DELTA_PAGES: usize = 10_000;

/// One member change from a delta round, in the order the service sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Now a member (or still one: replays happen). A user's `upn` is `None`: delta omits it.
    Present(GroupMember),
    /// No longer a member (`@removed`, whatever the reason).
    Removed(ObjectId),
}

/// The merged result of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRound {
    pub changes: Vec<MemberChange>,
    /// Where the next round starts.
    pub delta_link: String,
    pub pages: usize,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The stored link is no longer usable (`410 Gone`, `syncStateNotFound` and the other 4xx
    /// answers to a link): only a full resync helps.
    #[error(
        "the membership delta link of group {group} is no longer valid (status {status}{}); a full read of the members replaces it",
        .code.as_deref().map(|c| format!(", {c}")).unwrap_or_default()
    )]
    Expired {
        group: ObjectId,
        status: u16,
        code: Option<String>,
    },
    /// The group itself shows as deleted.
    #[error("group {group} shows as deleted in the membership delta; check user_group_id")]
    GroupRemoved { group: ObjectId },
    #[error("no group to track with groups/delta was given")]
    NoGroups,
    #[error("the membership delta of group {group} did not end after {MAX_DELTA_PAGES} pages")]
    TooManyPages { group: ObjectId },
    #[error("reading the membership delta of group {group} failed: {source}")]
    Read {
        group: ObjectId,
        #[source]
        source: http::Error,
    },
}

/// What a round over several tracked groups said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsRound {
    /// Groups with a member added or removed, or the group itself removed (replays included).
    pub changed: Vec<ObjectId>,
    /// Where the next round starts.
    pub delta_link: String,
}

/// At most this many ids in one `groups/delta` `$filter` (Graph's documented limit).
pub const MAX_DELTA_IDS: usize = 50;

impl GraphClient {
    /// One delta round for `group`: from `link` (a stored deltaLink) or, without one, from the
    /// start (`$filter=id eq '{group}'&$select=members`, the full membership). Read-only.
    pub async fn members_delta(
        &self,
        group: &ObjectId,
        link: Option<&str>,
    ) -> Result<DeltaRound, DeltaError> {
        let first = match link {
            Some(l) => parse_link(group, l, "the stored delta link")?,
            None => self.delta_start_url(std::slice::from_ref(group), false)?,
        };
        let mut changes = Vec::new();
        let (delta_link, pages) = self
            .follow_delta(group, first, link.is_some(), |page| {
                merge_page(group, page, &mut changes)
            })
            .await?;
        Ok(DeltaRound {
            changes,
            delta_link,
            pages,
        })
    }

    /// A deltaLink that tracks the members of `groups` (at most [`MAX_DELTA_IDS`]) from now
    /// on. Graph documents `$deltatoken=latest` for directory resources ("sync from now": a
    /// deltaLink and no resource data). Whether it combines with the `id` filter is not
    /// documented, so a service that refuses it (400) gets the plain first round instead,
    /// which lists the whole membership and is read to its deltaLink and dropped.
    /// `label` names the tree in errors (its root group).
    pub async fn groups_delta_subscribe(
        &self,
        label: &ObjectId,
        groups: &[ObjectId],
    ) -> Result<String, DeltaError> {
        let latest = self.delta_start_url(groups, true)?;
        match self.follow_delta(label, latest, false, |_| Ok(())).await {
            Ok((link, _)) => Ok(link),
            Err(DeltaError::Read { source, .. }) if source.status() == Some(400) => {
                tracing::info!(group = %label, "groups delta refused $deltatoken=latest; \
                    reading the first round to its deltaLink instead");
                let start = self.delta_start_url(groups, false)?;
                Ok(self.follow_delta(label, start, false, |_| Ok(())).await?.0)
            }
            Err(e) => Err(e),
        }
    }

    /// The groups of a stored deltaLink whose membership changed since it was issued.
    /// `label` names the tree in errors (its root group).
    pub async fn groups_delta_changes(
        &self,
        label: &ObjectId,
        link: &str,
    ) -> Result<GroupsRound, DeltaError> {
        let first = parse_link(label, link, "the stored delta link")?;
        let mut changed: Vec<ObjectId> = Vec::new();
        let (delta_link, _) = self
            .follow_delta(label, first, true, |page| {
                for g in page {
                    let members = g.members.as_ref().is_some_and(|m| !m.is_empty());
                    if (members || g.removed.is_some())
                        && let Ok(id) = ObjectId::parse(&g.id)
                        && !changed.contains(&id)
                    {
                        changed.push(id);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(GroupsRound {
            changed,
            delta_link,
        })
    }

    /// `/groups/delta?$filter=id eq 'a' or id eq 'b'…&$select=members`, from now with `latest`.
    fn delta_start_url(&self, groups: &[ObjectId], latest: bool) -> Result<Url, DeltaError> {
        let filter = groups
            .iter()
            .map(|g| format!("id eq '{g}'"))
            .collect::<Vec<_>>()
            .join(" or ");
        let latest = if latest { "&$deltatoken=latest" } else { "" };
        let label = groups.first().cloned();
        self.http
            .graph_url(&format!(
                "/groups/delta?$filter={}&$select=members{latest}",
                encode_query_value(&filter)
            ))
            .map_err(|source| match label {
                Some(group) => DeltaError::Read { group, source },
                None => DeltaError::NoGroups,
            })
    }

    /// Follows a round from `first` through every `@odata.nextLink` to its deltaLink, handing
    /// each page's groups to `on_page`. `from_link`: `first` is a stored link, so a final 4xx
    /// means it expired. Returns the deltaLink and the pages read.
    async fn follow_delta(
        &self,
        group: &ObjectId,
        first: Url,
        from_link: bool,
        mut on_page: impl FnMut(Vec<wire::DeltaGroup>) -> Result<(), DeltaError>,
    ) -> Result<(String, usize), DeltaError> {
        let read_err = |source| DeltaError::Read {
            group: group.clone(),
            source,
        };
        let origin = self.http.graph_url("/").map_err(read_err)?.origin();
        let mut url = first;
        for page_no in 1..=MAX_DELTA_PAGES {
            if url.origin() != origin {
                return Err(read_err(http::Error::ForeignLink {
                    host: url.host_str().unwrap_or("").to_string(),
                    expected: "the configured graph host".into(),
                }));
            }
            let req = Request::get(Surface::GraphRead, url.clone());
            let page: wire::DeltaPage = match self.http.send(req).await {
                Ok(resp) => resp.json().map_err(read_err)?,
                Err(e) if from_link && link_expired(&e) => {
                    return Err(DeltaError::Expired {
                        group: group.clone(),
                        status: e.status().unwrap_or_default(),
                        code: e.api().and_then(|a| a.code.clone()),
                    });
                }
                Err(e) => return Err(read_err(e)),
            };
            on_page(page.value)?;
            if let Some(delta_link) = page.delta_link {
                return Ok((delta_link, page_no));
            }
            let Some(next) = page.next_link else {
                // Neither link: the service ended the round without a way to continue.
                return Err(read_err(http::Error::Decode {
                    method: "GET".into(),
                    path: "/groups/delta".into(),
                    detail: "a page with neither @odata.nextLink nor @odata.deltaLink".into(),
                }));
            };
            // Verbatim: the link carries the query options and the state token.
            url = parse_link(group, &next, "@odata.nextLink")?;
        }
        Err(DeltaError::TooManyPages {
            group: group.clone(),
        })
    }
}

fn parse_link(group: &ObjectId, link: &str, what: &str) -> Result<Url, DeltaError> {
    Url::parse(link).map_err(|e| DeltaError::Read {
        group: group.clone(),
        source: http::Error::Url {
            input: what.into(),
            detail: e.to_string(),
        },
    })
}

/// A stored link is dead when the service answers it with `410 Gone` or another final 4xx
/// (`syncStateNotFound`, `syncStateInvalid`, `resyncRequired`, a 400 on a token it no longer
/// knows). 401/403 are credential problems and 429 is throttling: a resync would not help.
fn link_expired(e: &http::Error) -> bool {
    matches!(e.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 403 | 408 | 429))
}

/// Appends this page's changes of `group`; other groups (none, given the filter) are ignored.
fn merge_page(
    group: &ObjectId,
    groups: Vec<wire::DeltaGroup>,
    changes: &mut Vec<MemberChange>,
) -> Result<(), DeltaError> {
    for g in groups
        .into_iter()
        .filter(|g| g.id.eq_ignore_ascii_case(group.as_str()))
    {
        if g.removed.is_some() {
            return Err(DeltaError::GroupRemoved {
                group: group.clone(),
            });
        }
        for m in g.members.unwrap_or_default() {
            if m.removed.is_some() {
                match ObjectId::parse(&m.id) {
                    Ok(id) => changes.push(MemberChange::Removed(id)),
                    Err(e) => {
                        tracing::warn!(error = %e, "removed member with an id that is not a GUID is ignored")
                    }
                }
                continue;
            }
            let member = group_member(wire::Member {
                odata_type: m.odata_type,
                id: m.id,
                user_principal_name: None,
                display_name: None,
            });
            changes.extend(member.map(MemberChange::Present));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: serde_json::Value) -> Vec<wire::DeltaGroup> {
        serde_json::from_value::<wire::DeltaPage>(json)
            .unwrap()
            .value
    }

    #[test]
    fn pages_merge_by_group_and_removals_are_kept_in_order() {
        let g = ObjectId::parse("11111111-1111-1111-1111-111111111111").unwrap();
        let u = "22222222-2222-2222-2222-222222222222";
        let n = "33333333-3333-3333-3333-333333333333";
        let mut changes = Vec::new();
        let first = page(serde_json::json!({"value": [
            {"id": g.as_str(), "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": u}]},
            {"id": "44444444-4444-4444-4444-444444444444", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": n}]}
        ]}));
        merge_page(&g, first, &mut changes).unwrap();
        let second = page(serde_json::json!({"value": [
            {"id": g.as_str().to_uppercase(), "members@delta": [
                {"@odata.type": "#microsoft.graph.group", "id": n},
                {"@odata.type": "#microsoft.graph.user", "id": u, "@removed": {"reason": "deleted"}}]}
        ]}));
        merge_page(&g, second, &mut changes).unwrap();
        assert_eq!(changes.len(), 3);
        assert!(
            matches!(&changes[0], MemberChange::Present(GroupMember::User { id, upn: None }) if id.as_str() == u)
        );
        assert!(
            matches!(&changes[1], MemberChange::Present(GroupMember::Other { odata_type, .. }) if &**odata_type == "#microsoft.graph.group")
        );
        assert_eq!(
            changes[2],
            MemberChange::Removed(ObjectId::parse(u).unwrap())
        );

        let gone = page(
            serde_json::json!({"value": [{"id": g.as_str(), "@removed": {"reason": "deleted"}}]}),
        );
        assert!(matches!(
            merge_page(&g, gone, &mut changes),
            Err(DeltaError::GroupRemoved { .. })
        ));
    }
}
