//! The member snapshot's decisions, pure: when a stored snapshot may stand in for a full read
//! of the scoped user group, and how a delta round changes it.
//!
//! The snapshot is a cache of the tenant and nothing more. Its one known blind spot is the UPN
//! of a member: a membership delta carries ids only, so a user renamed in Entra keeps the old
//! UPN in the snapshot. That is why the snapshot is replaced by a full read of the members
//! once it is older than `[scope] member_resync` (default 24 h): a renamed user costs at most
//! one UPN lookup per pass until then (the desired UPN misses the snapshot and is looked up,
//! finding the member by id), and a UPN moved to *another* user is seen within that period.
//! A wrong snapshot never removes a desired member: the planner removes only members the
//! desired state does not list; the worst is an add that finds "already a member" or a remove
//! that finds "not a member", both success, and both correct the snapshot.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::graph::MemberChange;
use crate::model::{GroupMember, ObjectId, Upn, UserId};
use crate::state::MemberSync;

/// Default of `[scope] member_resync`: how old a snapshot's UPNs may get.
pub const DEFAULT_MEMBER_RESYNC: Duration = Duration::from_secs(24 * 3600);

/// A delta link older than this is not used: the service keeps directory delta state for 7
/// days, and a day of margin avoids finding out through an error.
pub const DELTA_LINK_MAX_AGE: Duration = Duration::from_secs(6 * 24 * 3600);

/// Why the members are read in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullRead {
    NoSnapshot,
    /// `user_group_id` changed since the snapshot was taken.
    GroupChanged,
    /// The snapshot's UPNs are older than `member_resync`.
    SnapshotOld,
    /// The delta link is older than [`DELTA_LINK_MAX_AGE`].
    LinkOld,
    /// The service refused the link (`410 Gone`, `syncStateNotFound`, …).
    LinkExpired,
    /// The delta round failed otherwise; the full read is the fallback.
    DeltaFailed,
}

impl FullRead {
    pub fn as_str(self) -> &'static str {
        match self {
            FullRead::NoSnapshot => "no snapshot",
            FullRead::GroupChanged => "user group changed",
            FullRead::SnapshotOld => "snapshot older than member_resync",
            FullRead::LinkOld => "delta link older than 6 days",
            FullRead::LinkExpired => "delta link refused by the service",
            FullRead::DeltaFailed => "delta round failed",
        }
    }
}

/// `None` when the stored snapshot may be continued with its delta link.
pub fn full_read_needed(
    stored: Option<&MemberSync>,
    group: &ObjectId,
    now: DateTime<Utc>,
    resync_every: Duration,
) -> Option<FullRead> {
    let Some(s) = stored else {
        return Some(FullRead::NoSnapshot);
    };
    let older_than = |t: DateTime<Utc>, d: Duration| {
        // A time in the future (clock stepped back) counts as old: trust nothing odd.
        t > now || (now - t).to_std().is_ok_and(|age| age > d)
    };
    if resync_every.is_zero() {
        Some(FullRead::SnapshotOld)
    } else if &s.group != group {
        Some(FullRead::GroupChanged)
    } else if older_than(s.full_at, resync_every) {
        Some(FullRead::SnapshotOld)
    } else if older_than(s.link_at, DELTA_LINK_MAX_AGE) {
        Some(FullRead::LinkOld)
    } else {
        None
    }
}

/// A delta round applied to the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continued {
    /// The members now, ordered by id.
    pub members: Vec<GroupMember>,
    /// Members the round named as present (to store), with the UPNs known so far.
    pub present: Vec<GroupMember>,
    /// Members the round named as gone.
    pub removed: Vec<ObjectId>,
    /// Users the round brought whose UPN is unknown: to look up by id.
    pub unknown_upn: Vec<ObjectId>,
}

/// Applies `changes` in order to `members`. Set operations, so replays are harmless; a user
/// the snapshot knows keeps its UPN (delta carries none).
///
/// The members are sorted in place and searched, not copied into a map: a round usually
/// changes a handful of the 100,000 members, and a map keyed by id strings would hold about
/// 100 bytes more per member for the whole step.
pub fn continue_snapshot(mut members: Vec<GroupMember>, changes: &[MemberChange]) -> Continued {
    // One member per id, the last one listed winning (as a map filled in list order): after
    // the reverse, the stable sort puts the last-listed first among equal ids, and dedup keeps
    // the first.
    members.reverse();
    members.sort_by(|a, b| member_id(a).cmp(member_id(b)));
    members.dedup_by(|a, b| member_id(a) == member_id(b));
    let listed = |id: &str| {
        members
            .binary_search_by(|m| member_id(m).cmp(id))
            .ok()
            .map(|i| &members[i])
    };
    let mut touched: BTreeMap<String, Option<GroupMember>> = BTreeMap::new();
    for c in changes {
        match c {
            MemberChange::Present(m) => {
                let key = member_id(m).to_string();
                let now = match touched.get(&key) {
                    Some(t) => t.as_ref(),
                    None => listed(&key),
                };
                let merged = match (now, m) {
                    (
                        Some(GroupMember::User { upn: Some(u), .. }),
                        GroupMember::User { id, .. },
                    ) => GroupMember::User {
                        id: id.clone(),
                        upn: Some(u.clone()),
                    },
                    _ => m.clone(),
                };
                touched.insert(key, Some(merged));
            }
            MemberChange::Removed(id) => {
                touched.insert(id.to_string(), None);
            }
        }
    }
    members.retain(|m| !touched.contains_key(member_id(m)));
    let mut out = Continued::default();
    for (key, m) in touched {
        match m {
            Some(m) => {
                if let GroupMember::User { id, upn: None } = &m {
                    out.unknown_upn
                        .push(ObjectId::parse(id.as_str()).expect("a user id is a GUID"));
                }
                members.push(m.clone());
                out.present.push(m);
            }
            None => out
                .removed
                .push(ObjectId::parse(&key).expect("snapshot keys are GUIDs")),
        }
    }
    members.sort_by(|a, b| member_id(a).cmp(member_id(b)));
    out.members = members;
    out
}

/// Fills in UPNs found by id lookups, in `members` and in `present`.
pub fn fill_upns(c: &mut Continued, found: &HashMap<UserId, Option<Upn>>) {
    for m in c.members.iter_mut().chain(c.present.iter_mut()) {
        if let GroupMember::User {
            id,
            upn: upn @ None,
        } = m
            && let Some(Some(u)) = found.get(id)
        {
            *upn = Some(u.clone());
        }
    }
}

pub fn member_id(m: &GroupMember) -> &str {
    match m {
        GroupMember::User { id, .. } => id.as_str(),
        GroupMember::Other { id, .. } => id.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u32) -> ObjectId {
        ObjectId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    fn user(n: u32, upn: Option<&str>) -> GroupMember {
        GroupMember::User {
            id: UserId::parse(oid(n).as_str()).unwrap(),
            upn: upn.map(|u| Upn::parse(u).unwrap()),
        }
    }

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    #[test]
    fn a_snapshot_is_continued_only_when_fresh_and_of_the_same_group() {
        let day = Duration::from_secs(24 * 3600);
        let sync = |group: u32, link_h: i64, full_h: i64| MemberSync {
            group: oid(group),
            delta_link: "https://graph/x".into(),
            link_at: at(link_h),
            full_at: at(full_h),
        };
        let cases: Vec<(Option<MemberSync>, i64, Option<FullRead>)> = vec![
            (None, 0, Some(FullRead::NoSnapshot)),
            (Some(sync(1, 0, 0)), 1, None),
            (Some(sync(2, 0, 0)), 1, Some(FullRead::GroupChanged)),
            (Some(sync(1, 0, 0)), 25, Some(FullRead::SnapshotOld)),
            (Some(sync(1, 0, 0)), 24, None),
            (Some(sync(1, 0, 200)), 200, Some(FullRead::LinkOld)),
            (Some(sync(1, 5, 5)), 1, Some(FullRead::SnapshotOld)),
        ];
        for (stored, now_h, want) in cases {
            assert_eq!(
                full_read_needed(stored.as_ref(), &oid(1), at(now_h), day),
                want,
                "{stored:?} at {now_h}"
            );
        }
    }

    #[test]
    fn a_member_listed_twice_is_one_member_and_the_last_listing_wins() {
        // As a map filled in list order would have it; the members come out ordered by id.
        let snapshot = vec![
            user(5, Some("old@x.com")),
            user(2, Some("b@x.com")),
            user(5, Some("new@x.com")),
            user(1, None),
        ];
        let c = continue_snapshot(snapshot, &[MemberChange::Present(user(1, None))]);
        assert_eq!(
            c.members,
            vec![
                user(1, None),
                user(2, Some("b@x.com")),
                user(5, Some("new@x.com"))
            ]
        );
        assert_eq!(c.present, vec![user(1, None)]);
        assert_eq!(c.unknown_upn, vec![oid(1)]);
    }

    #[test]
    fn delta_changes_are_set_operations_that_keep_known_upns() {
        let snapshot = vec![user(1, Some("a@x.com")), user(2, Some("b@x.com"))];
        let changes = vec![
            MemberChange::Present(user(1, None)),
            MemberChange::Present(user(3, None)),
            MemberChange::Removed(oid(2)),
            MemberChange::Removed(oid(2)),
            MemberChange::Removed(oid(9)),
            MemberChange::Present(user(4, None)),
            MemberChange::Removed(oid(4)),
        ];
        let mut c = continue_snapshot(snapshot, &changes);
        assert_eq!(c.members, vec![user(1, Some("a@x.com")), user(3, None)]);
        assert_eq!(c.present, vec![user(1, Some("a@x.com")), user(3, None)]);
        assert_eq!(c.removed, vec![oid(2), oid(4), oid(9)]);
        assert_eq!(c.unknown_upn, vec![oid(3)]);
        let found = HashMap::from([(
            UserId::parse(oid(3).as_str()).unwrap(),
            Some(Upn::parse("c@x.com").unwrap()),
        )]);
        fill_upns(&mut c, &found);
        assert_eq!(c.members[1], user(3, Some("c@x.com")));
        assert_eq!(c.present[1], user(3, Some("c@x.com")));
        // A replay of the same round changes nothing more.
        let again = continue_snapshot(c.members.clone(), &changes[..5]);
        assert_eq!(again.members, c.members);
    }
}
