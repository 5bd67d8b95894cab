//! Resolution: the desired state's users and devices turned into object ids and machine ids
//! against the tenant, with the fewest requests, and the tenant read the planner compares with.
//!
//! Users: the group's direct members are read first (they are needed anyway); a desired UPN or
//! object id that is already a member needs no lookup. Only the rest are looked up, 15 values
//! per `in` filter and 20 filters per `$batch` (300 per round trip). Devices: the machine list
//! is read once (`$top` 10,000 per page) and names, machine ids and Entra device ids are
//! resolved against it in memory by [`crate::scope::resolve_devices`] — fewer requests than one filter
//! per entry at any size that matters, and the tagged machines fall out of the same list. With
//! no desired devices only the tagged machines are read.
//!
//! The members come from [`crate::scope::read_members`] (the snapshot continued with one delta round
//! when it is fresh, else a full read).
//!
//! Unknown and ambiguous entries are returned as [`Unresolved`]: they are skipped, they never
//! block the other entries, and the planner makes sure they never cause a removal.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::defender::DefenderClient;
use crate::desired::{DesiredDevice, DesiredState, DeviceKey, UserKey};
use crate::graph::GraphClient;
use crate::model::{GroupMember, ObjectId, Upn, UserId};
use crate::scope::{
    DesiredUserRef, ResolveError, Unresolved, UnresolvedKind, resolve_device_keys, resolve_devices,
    tagged_in,
};
use crate::telemetry::trace_memory;

use crate::graph::MAX_UPNS_PER_FILTER;
use crate::http::MAX_BATCH_ITEMS;
use crate::text::label;
use futures::channel::mpsc::UnboundedSender;

use super::plan::{Actual, Change, ObjectKind, Reason, ResolvedDesired};

/// The desired state resolved, and the tenant as read for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub desired: ResolvedDesired,
    pub actual: Actual,
}

/// Where [`resolve`] hands the adds it finds safe while lookups still run: each lookup round's
/// resolved users who are not direct members (see [`EarlyAdds`]). `None` for a read-only
/// pass. Dropped when the users are resolved, which closes the channel.
pub type AddFeed = Option<UnboundedSender<Vec<Change<UserId>>>>;

/// Resolves `desired` against `members` (the group as just read) and the machine list.
/// Read-only; user adds found safe on the way go to `feed`.
///
/// A borrowed desired state is left as it was (the daemon keeps its own between passes). An
/// owned one is used up: its user entries are gone once split against the members (each UPN
/// moves into its label), and the rest once the devices are resolved, so the entries are not
/// live while the machine list and the plan are.
pub async fn resolve(
    graph: &GraphClient,
    defender: &DefenderClient,
    members: Vec<GroupMember>,
    device_tag: &str,
    desired: Cow<'_, DesiredState>,
    feed: AddFeed,
) -> Result<Resolution, ResolveError> {
    let declared_empty_ok = desired.allow_empty;
    let listed_nothing = desired.is_empty();
    let removals_held = held_for_selectors(&desired);
    let mut desired = desired;
    let split = match &mut desired {
        Cow::Borrowed(d) => split_users(d.users.iter().map(|e| e.key.clone()), &members),
        Cow::Owned(d) => {
            let mut split = split_users(
                Shrinking(std::mem::take(&mut d.users)).map(|e| e.key),
                &members,
            );
            // Taken from the end: back in entry order.
            split.resolved.reverse();
            split.upn_lookups.reverse();
            split.id_lookups.reverse();
            split
        }
    };
    let (mut users, mut unresolved) = resolve_users_in_rounds(graph, split, &members, feed).await?;
    trace_memory("users");
    // Owned, only the device keys live through the machine read (48 bytes of each 96-byte
    // entry); the rest of the desired state is dropped here. A fresh list, filled by
    // `extend`: `collect` from the entries' own iterator reuses their buffer in place and
    // would keep all of its room.
    let wanted = match desired {
        Cow::Borrowed(d) => WantedDevices::Entries(&d.devices),
        Cow::Owned(d) => {
            let mut keys = Vec::with_capacity(d.devices.len());
            keys.extend(d.devices.into_iter().map(|e| e.key));
            WantedDevices::Keys(keys)
        }
    };

    let (tagged, devices) = if wanted.is_empty() {
        let tagged = defender
            .machines_by_tag(device_tag)
            .await
            .map_err(ResolveError::Machines)?;
        (tagged, Vec::new())
    } else {
        let all = defender
            .machines_for_scope(device_tag)
            .await
            .map_err(ResolveError::Machines)?;
        trace_memory("machines");
        let (devices, bad) = match &wanted {
            WantedDevices::Entries(entries) => resolve_devices(entries, &all),
            WantedDevices::Keys(keys) => resolve_device_keys(keys, &all),
        };
        drop(wanted);
        unresolved.extend(bad);
        (tagged_in(all, device_tag), devices)
    };
    // Unstable: a stable sort borrows a buffer as large as the list (6 MB at 100k users) at
    // the pass's peak. The order is the same: labels are unique (merging drops duplicate
    // entries, and a UPN label has an `@` that an id label never has).
    users.sort_unstable_by(|a, b| a.label.cmp(&b.label));

    Ok(Resolution {
        desired: ResolvedDesired {
            users,
            devices,
            unresolved,
            declared_empty_ok,
            listed_nothing,
            removals_held,
            selector_hold: None,
        },
        actual: Actual { members, tagged },
    })
}

/// The desired devices to resolve: the entries of a borrowed desired state, or the keys alone
/// of an owned one.
enum WantedDevices<'a> {
    Entries(&'a [DesiredDevice]),
    Keys(Vec<DeviceKey>),
}

impl WantedDevices<'_> {
    fn is_empty(&self) -> bool {
        match self {
            WantedDevices::Entries(e) => e.is_empty(),
            WantedDevices::Keys(k) => k.is_empty(),
        }
    }
}

/// Selectors still in `desired` were not expanded against the tenant: what they would keep
/// in scope is unknown, so nothing is removed (the desired state's own hold, if any, comes first).
fn held_for_selectors(desired: &DesiredState) -> Option<String> {
    desired.removals_held.clone().or_else(|| {
        (!desired.selectors.is_empty()).then(|| {
            format!(
                "{} selector(s) were not expanded against the tenant, so what they keep in scope \
                 is unknown",
                desired.selectors.len()
            )
        })
    })
}

/// Resolves the desired users: those among `members` (direct members, as last read) by the
/// list, the rest by a lookup. Read-only.
pub async fn resolve_users(
    graph: &GraphClient,
    desired: &DesiredState,
    members: &[GroupMember],
) -> Result<(Vec<DesiredUserRef>, Vec<Unresolved>), ResolveError> {
    let keys = desired.users.iter().map(|e| e.key.clone());
    look_up_all(graph, split_users(keys, members)).await
}

/// Looks up what `split` left unresolved, all at once.
async fn look_up_all(
    graph: &GraphClient,
    split: UserSplit,
) -> Result<(Vec<DesiredUserRef>, Vec<Unresolved>), ResolveError> {
    let by_upn = if split.upn_lookups.is_empty() {
        HashMap::new()
    } else {
        graph
            .users_by_upn(&split.upn_lookups)
            .await
            .map_err(ResolveError::Users)?
    };
    let by_id = users_by_id(graph, &split.id_lookups).await?;
    Ok(finish_users(split, &by_upn, &by_id))
}

/// Desired users looked up per round: one `$batch` envelope of `in` filters. The whole list
/// looked up at once goes out as the same envelopes, so rounds cost no extra request.
const LOOKUPS_PER_ROUND: usize = MAX_UPNS_PER_FILTER * MAX_BATCH_ITEMS;

/// Like [`resolve_users`] for the users `split` left to look up, in rounds of
/// [`LOOKUPS_PER_ROUND`] entries, several in flight (the
/// configured envelopes in flight; the read surface's own slots bound them too). After each
/// round its users who are not direct members go to `feed`: an add is safe as soon as its
/// entry resolves, whatever the other entries turn out to be. Removals are not decided here;
/// they wait for the full resolution and the plan. The result is the one [`resolve_users`]
/// gives. A failed round fails the resolution (rounds still in flight are dropped).
async fn resolve_users_in_rounds(
    graph: &GraphClient,
    split: UserSplit,
    members: &[GroupMember],
    feed: AddFeed,
) -> Result<(Vec<DesiredUserRef>, Vec<Unresolved>), ResolveError> {
    use futures::StreamExt;
    let Some(feed) = feed else {
        return look_up_all(graph, split).await;
    };
    let mut early = EarlyAdds::new(members);
    let in_flight = graph.http().settings().write_batches_in_flight.max(1);
    let upns = dedup_upns(&split.upn_lookups);
    // Rounds by index: a closure taking a borrowed round would not be `Send` for every
    // lifetime, which the daemon's pass future must be.
    let upns = &upns;
    let round = move |i: usize| async move {
        let round = &upns[i * LOOKUPS_PER_ROUND..upns.len().min((i + 1) * LOOKUPS_PER_ROUND)];
        (round, graph.users_by_upn(round).await)
    };
    let mut rounds = futures::stream::iter((0..upns.len().div_ceil(LOOKUPS_PER_ROUND)).map(round))
        .buffered(in_flight);
    let mut by_upn: HashMap<Upn, UserId> = HashMap::new();
    while let Some((round, found)) = rounds.next().await {
        let found = found.map_err(ResolveError::Users)?;
        let resolved: Vec<DesiredUserRef> = round
            .iter()
            .filter_map(|upn| {
                found.get(upn).map(|id| DesiredUserRef {
                    id: id.clone(),
                    label: upn.to_string(),
                })
            })
            .collect();
        send_adds(&feed, early.adds(&resolved));
        by_upn.extend(found);
    }
    drop(rounds);
    let by_id = users_by_id(graph, &split.id_lookups).await?;
    let resolved: Vec<DesiredUserRef> = split
        .id_lookups
        .iter()
        .filter(|id| by_id.contains(*id))
        .map(|id| DesiredUserRef {
            id: id.clone(),
            label: id.to_string(),
        })
        .collect();
    send_adds(&feed, early.adds(&resolved));
    Ok(finish_users(split, &by_upn, &by_id))
}

/// Hands `adds` to the writer. A writer that stopped (its audit write failed) drops them: the
/// pass then fails on that error and the plan never relies on an add sent here.
fn send_adds(feed: &UnboundedSender<Vec<Change<UserId>>>, adds: Vec<Change<UserId>>) {
    if !adds.is_empty() {
        let _ = feed.unbounded_send(adds);
    }
}

/// The UPNs to look up, each once, in their first order.
fn dedup_upns(upns: &[Upn]) -> Vec<Upn> {
    let mut seen: HashSet<&Upn> = HashSet::new();
    upns.iter().filter(|u| seen.insert(*u)).cloned().collect()
}

/// Which of `ids` are existing users; no request when there are none.
async fn users_by_id(graph: &GraphClient, ids: &[UserId]) -> Result<HashSet<UserId>, ResolveError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<ObjectId> = ids
        .iter()
        .map(|id| ObjectId::parse(id.as_str()).expect("a user id is a GUID"))
        .collect();
    Ok(graph
        .users_by_id(&ids)
        .await
        .map_err(ResolveError::Users)?
        .into_keys()
        .collect())
}

/// Pure: picks the user adds that are safe before every desired entry is resolved. A desired
/// user who resolved and is not a direct user member is an add in the plan of the full
/// resolution whatever the rest resolves to (adds are never held, guarded or protected), so
/// it may be sent at once. It never picks a removal: what may be removed is known only when
/// every entry is resolved. Each user is picked once across calls.
pub struct EarlyAdds<'a> {
    members: HashSet<&'a str>,
    picked: HashSet<UserId>,
}

impl<'a> EarlyAdds<'a> {
    pub fn new(members: &'a [GroupMember]) -> Self {
        Self {
            members: user_ids(members),
            picked: Default::default(),
        }
    }

    /// The adds among `resolved` not picked before, as the planner words them.
    pub fn adds(&mut self, resolved: &[DesiredUserRef]) -> Vec<Change<UserId>> {
        let (members, picked) = (&self.members, &mut self.picked);
        resolved
            .iter()
            .filter(|u| !members.contains(u.id.as_str()) && picked.insert(u.id.clone()))
            .map(|u| Change {
                id: u.id.clone(),
                kind: ObjectKind::User,
                label: label(&u.label),
                reason: Reason::NotAMember,
            })
            .collect()
    }
}

/// Desired users split into those already resolved by the member list and those to look up.
#[derive(Debug, Default, PartialEq, Eq)]
struct UserSplit {
    resolved: Vec<DesiredUserRef>,
    upn_lookups: Vec<Upn>,
    id_lookups: Vec<UserId>,
}

/// Pure: resolves desired users (their keys, in entry order) against the direct members; the
/// rest need a lookup. A UPN resolved here moves into its label.
fn split_users(keys: impl ExactSizeIterator<Item = UserKey>, members: &[GroupMember]) -> UserSplit {
    let mut member_by_upn: HashMap<&str, &UserId> = HashMap::new();
    for m in members {
        if let GroupMember::User { id, upn: Some(upn) } = m {
            member_by_upn.insert(upn.as_str(), id);
        }
    }
    // Built at the first entry by id: most desired files list UPNs only, and the set is
    // 2 MB at 100k members.
    let mut member_ids: Option<HashSet<&str>> = None;
    // Sized once: most desired users are members, and doubling would leave up to half the
    // list's room unused through the pass.
    let mut split = UserSplit {
        resolved: Vec::with_capacity(keys.len()),
        ..UserSplit::default()
    };
    for key in keys {
        match key {
            UserKey::Upn(upn) => match member_by_upn.get(upn.as_str()) {
                Some(id) => split.resolved.push(DesiredUserRef {
                    id: (*id).clone(),
                    label: upn.into_string(),
                }),
                None => split.upn_lookups.push(upn),
            },
            UserKey::Id(id)
                if member_ids
                    .get_or_insert_with(|| user_ids(members))
                    .contains(id.as_str()) =>
            {
                split.resolved.push(DesiredUserRef {
                    label: id.to_string(),
                    id,
                })
            }
            UserKey::Id(id) => split.id_lookups.push(id),
        }
    }
    split
}

/// The ids of the members that are users.
fn user_ids(members: &[GroupMember]) -> HashSet<&str> {
    members
        .iter()
        .filter_map(|m| match m {
            GroupMember::User { id, .. } => Some(id.as_str()),
            GroupMember::Other { .. } => None,
        })
        .collect()
}

/// A list's items taken from its end, its room handed back as it empties: the desired
/// entries and the list built from them are not both whole at once (at 100k users, 8.8 MB of
/// entries beside 6.4 MB of resolved users). A list this large is mapped on its own by the
/// allocator, so shrinking it returns its tail pages without a copy.
struct Shrinking<T>(Vec<T>);

impl<T> Iterator for Shrinking<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.0.pop()?;
        let room = self.0.capacity();
        if room > 4096 && self.0.len() < room / 4 * 3 {
            self.0.shrink_to_fit();
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.0.len()))
    }
}

impl<T> ExactSizeIterator for Shrinking<T> {}

/// Pure: completes the split with the lookup answers; what was not found is unknown.
fn finish_users(
    split: UserSplit,
    by_upn: &HashMap<Upn, UserId>,
    existing_ids: &HashSet<UserId>,
) -> (Vec<DesiredUserRef>, Vec<Unresolved>) {
    let mut users = split.resolved;
    let mut unresolved = Vec::new();
    for upn in split.upn_lookups {
        match by_upn.get(&upn) {
            Some(id) => users.push(DesiredUserRef {
                id: id.clone(),
                label: upn.into_string(),
            }),
            None => unresolved.push(Unresolved {
                entry: upn.to_string(),
                problem: UnresolvedKind::UnknownUser,
            }),
        }
    }
    for id in split.id_lookups {
        if existing_ids.contains(&id) {
            users.push(DesiredUserRef {
                label: id.to_string(),
                id,
            });
        } else {
            unresolved.push(Unresolved {
                entry: id.to_string(),
                problem: UnresolvedKind::UnknownUser,
            });
        }
    }
    (users, unresolved)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;

    use super::*;
    use crate::desired::{self, Mode};

    fn desired(text: &str) -> DesiredState {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        desired::parse_str(Path::new("d.toml"), text, today, Mode::Runtime)
            .unwrap()
            .state
    }

    fn uid(n: u32) -> UserId {
        UserId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    #[test]
    fn early_adds_are_the_plans_adds_picked_once_and_never_a_member() {
        let member = |n| GroupMember::User {
            id: uid(n),
            upn: None,
        };
        let members = vec![member(1), member(2)];
        let desired: Vec<DesiredUserRef> = (1..=6)
            .map(|n| DesiredUserRef {
                id: uid(n),
                label: format!("u{n}@contoso.com"),
            })
            .collect();
        let mut early = EarlyAdds::new(&members);
        // Resolved in two rounds, the second repeating a user of the first.
        let mut picked = early.adds(&desired[..4]);
        picked.extend(early.adds(&desired[3..]));
        let settings = super::super::plan::PlanSettings {
            prune: true,
            max_removals: 10,
            allow_mass_removal: false,
            user_group: "g".into(),
            device_tag: "t".into(),
        };
        let full = super::super::plan::plan(
            &ResolvedDesired {
                users: desired,
                ..ResolvedDesired::default()
            },
            &Actual {
                members,
                tagged: Vec::new(),
            },
            &settings,
        );
        let ids = |c: &[Change<UserId>]| {
            let mut v: Vec<String> = c.iter().map(|c| c.id.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&picked), ids(&full.users.add));
        assert_eq!(picked, full.users.add);
    }

    #[test]
    fn members_need_no_lookup_and_the_rest_are_looked_up_once() {
        let d = desired(&format!(
            "users = ['Ann@contoso.com', 'bob@contoso.com', '{}', '{}', 'zed@contoso.com']",
            uid(3),
            uid(4)
        ));
        let members = vec![
            GroupMember::User {
                id: uid(1),
                upn: Some(Upn::parse("ann@contoso.com").unwrap()),
            },
            GroupMember::User {
                id: uid(3),
                upn: None,
            },
        ];
        let split = split_users(d.users.iter().map(|e| e.key.clone()), &members);
        assert_eq!(
            split
                .resolved
                .iter()
                .map(|u| u.id.clone())
                .collect::<Vec<_>>(),
            vec![uid(1), uid(3)]
        );
        assert_eq!(
            split.upn_lookups,
            vec![
                Upn::parse("bob@contoso.com").unwrap(),
                Upn::parse("zed@contoso.com").unwrap()
            ]
        );
        assert_eq!(split.id_lookups, vec![uid(4)]);

        let by_upn = HashMap::from([(Upn::parse("bob@contoso.com").unwrap(), uid(2))]);
        let (users, unresolved) = finish_users(split, &by_upn, &HashSet::new());
        let got: Vec<(String, String)> = users
            .iter()
            .map(|u| (u.label.clone(), u.id.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ann@contoso.com".into(), uid(1).to_string()),
                (uid(3).to_string(), uid(3).to_string()),
                ("bob@contoso.com".into(), uid(2).to_string()),
            ]
        );
        let unknown: Vec<&str> = unresolved.iter().map(|u| u.entry.as_str()).collect();
        assert_eq!(unknown, vec!["zed@contoso.com", uid(4).as_str()]);
        assert!(
            unresolved
                .iter()
                .all(|u| u.problem == UnresolvedKind::UnknownUser)
        );
    }
}
