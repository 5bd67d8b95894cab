//! Resolution: the desired state's users and devices turned into object ids and machine ids
//! against the tenant, with the fewest requests, and the tenant read the planner compares with.
//!
//! Users: the group's direct members are read first (they are needed anyway); a desired UPN or
//! object id that is already a member needs no lookup. Only the rest are looked up, 15 values
//! per `in` filter and 20 filters per `$batch` (300 per round trip). Devices: the machine list
//! is read once (`$top` 10,000 per page) and names, machine ids and Entra device ids are
//! resolved against it in memory — fewer requests than one filter per entry at any size that
//! matters, and the tagged machines fall out of the same list. With no desired devices only the
//! tagged machines are read.
//!
//! The members come from [`read_members`]: the snapshot in the state database continued with
//! one membership delta round when it is fresh (one request when nothing changed), else a full
//! read (see [`super::snapshot`] for when, and why that is safe).
//!
//! Unknown and ambiguous entries are returned as [`Unresolved`]: they are skipped, they never
//! block the other entries, and the planner makes sure they never cause a removal.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::defender::{self, DefenderClient};
use crate::desired::{DesiredState, DeviceKey, UserKey};
use crate::graph::{self, DeltaError, GraphClient};
use crate::incidents::poll::trace_memory;
use crate::model::{GroupMember, Machine, MachineId, ObjectId, Upn, UserId};
use crate::state::{MemberSync, State};

use super::snapshot::{self, FullRead};

use super::plan::UnresolvedKind;
use super::plan::{Actual, DesiredDeviceRef, DesiredUserRef, ResolvedDesired, Unresolved};

/// A read of the tenant that failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the scoped user group failed: {0}")]
    Members(#[source] graph::Error),
    #[error("resolving desired users failed: {0}")]
    Users(#[source] graph::Error),
    #[error("reading the machine list failed: {0}")]
    Machines(#[source] defender::Error),
}

impl ResolveError {
    /// True when the next pass may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        match self {
            ResolveError::Members(e) | ResolveError::Users(e) => e.is_transient(),
            ResolveError::Machines(e) => e.is_transient(),
        }
    }
}

/// The desired state resolved, and the tenant as read for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub desired: ResolvedDesired,
    pub actual: Actual,
}

/// Where the members come from.
#[derive(Clone, Copy)]
pub struct MemberSource<'a> {
    /// The state database holding the snapshot, if any.
    pub state: Option<&'a State>,
    /// Store what was read. The reconcile pass does; `plan` only reads the snapshot and keeps
    /// the daemon's delta link where it was (a link may be used more than once, so reading
    /// from it takes nothing from the daemon).
    pub store: bool,
    /// `[scope] member_resync`.
    pub resync_every: Duration,
    pub now: DateTime<Utc>,
}

/// How the members were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembersRead {
    /// The snapshot continued with one delta round of `pages` pages carrying `changes`.
    Delta { pages: usize, changes: usize },
    /// A full read of the members, and why.
    Full(FullRead),
}

/// The members as read, and whether the state database now holds a snapshot of them.
#[derive(Debug, Clone)]
pub struct Members {
    pub members: Vec<GroupMember>,
    pub how: MembersRead,
    /// A snapshot is stored: applied changes are to be written into it.
    pub snapshot_stored: bool,
}

/// Reads the direct members of `group`: the stored snapshot continued with its delta link
/// when [`snapshot::full_read_needed`] allows, else in full. Any trouble with the snapshot or
/// the delta round ends in the full read, never in a removal. With `store`, a full read is
/// preceded by a fresh delta round whose link is stored with the listed members: the link
/// predates the listing, so changes in between show up again next round (replays are
/// harmless), and none are missed.
pub async fn read_members(
    graph: &GraphClient,
    group: &ObjectId,
    src: MemberSource<'_>,
) -> Result<Members, ResolveError> {
    let stored = src.state.and_then(|s| {
        s.member_snapshot()
            .inspect_err(|e| tracing::warn!(error = %e, "member snapshot unreadable; reading the members in full"))
            .ok()
            .flatten()
    });
    trace_memory("snapshot load");
    let mut reason = snapshot::full_read_needed(
        stored.as_ref().map(|(s, _)| s),
        group,
        src.now,
        src.resync_every,
    );
    if let (None, Some((sync, members))) = (reason, stored) {
        match continue_members(graph, group, src, sync, members).await {
            Ok(m) => {
                trace_memory("delta");
                return Ok(m);
            }
            Err(Continue::Expired(e)) => {
                tracing::info!(error = %e, "membership delta link refused; full resync");
                reason = Some(FullRead::LinkExpired);
            }
            Err(Continue::Failed(e)) => {
                tracing::warn!(error = %e, "membership delta round failed; reading the members in full");
                reason = Some(FullRead::DeltaFailed);
            }
            Err(Continue::Lookup(e)) => return Err(ResolveError::Users(e)),
        }
    }
    let reason = reason.unwrap_or(FullRead::NoSnapshot);
    let store_in = src.state.filter(|_| src.store);
    let link = match store_in {
        Some(_) => match graph.members_delta(group, None).await {
            Ok(round) => Some(round.delta_link),
            Err(e) => {
                tracing::warn!(error = %e, "starting the membership delta failed; the next pass reads in full again");
                None
            }
        },
        None => None,
    };
    let members = graph
        .list_group_members(group)
        .await
        .map_err(ResolveError::Members)?;
    tracing::info!(
        reason = reason.as_str(),
        members = members.len(),
        "members read in full"
    );
    trace_memory("members full");
    let mut snapshot_stored = false;
    if let Some(state) = store_in {
        let saved = match link {
            Some(delta_link) => {
                let sync = MemberSync {
                    group: group.clone(),
                    delta_link,
                    link_at: src.now,
                    full_at: src.now,
                };
                state
                    .replace_member_snapshot(&sync, &members)
                    .map(|()| true)
            }
            // No link: an older snapshot must not be continued past this read.
            None => state.clear_member_snapshot().map(|()| false),
        };
        snapshot_stored = saved
            .inspect_err(|e| tracing::warn!(error = %e, "storing the member snapshot failed"))
            .unwrap_or(false);
    }
    Ok(Members {
        members,
        how: MembersRead::Full(reason),
        snapshot_stored,
    })
}

enum Continue {
    Expired(DeltaError),
    Failed(DeltaError),
    Lookup(graph::Error),
}

/// The snapshot plus one delta round; users new to it are looked up by id for their UPN.
async fn continue_members(
    graph: &GraphClient,
    group: &ObjectId,
    src: MemberSource<'_>,
    sync: MemberSync,
    members: Vec<GroupMember>,
) -> Result<Members, Continue> {
    let round = graph
        .members_delta(group, Some(&sync.delta_link))
        .await
        .map_err(|e| match e {
            DeltaError::Expired { .. } => Continue::Expired(e),
            _ => Continue::Failed(e),
        })?;
    let mut c = snapshot::continue_snapshot(members, &round.changes);
    if !c.unknown_upn.is_empty() {
        let found = graph
            .users_by_id(&c.unknown_upn)
            .await
            .map_err(Continue::Lookup)?;
        snapshot::fill_upns(&mut c, &found);
    }
    let mut snapshot_stored = false;
    if let Some(state) = src.state.filter(|_| src.store) {
        let next = MemberSync {
            delta_link: round.delta_link,
            link_at: src.now,
            ..sync
        };
        snapshot_stored = state
            .update_member_snapshot(Some(&next), &c.present, &c.removed)
            .inspect_err(|e| tracing::warn!(error = %e, "updating the member snapshot failed"))
            .is_ok();
    }
    tracing::debug!(
        pages = round.pages,
        changes = round.changes.len(),
        "members continued from the snapshot"
    );
    Ok(Members {
        members: c.members,
        how: MembersRead::Delta {
            pages: round.pages,
            changes: round.changes.len(),
        },
        snapshot_stored,
    })
}

/// Resolves `desired` against `members` (the group as just read) and the machine list.
/// Read-only.
pub async fn resolve(
    graph: &GraphClient,
    defender: &DefenderClient,
    members: Vec<GroupMember>,
    device_tag: &str,
    desired: &DesiredState,
) -> Result<Resolution, ResolveError> {
    let (mut users, mut unresolved) = resolve_users(graph, desired, &members).await?;

    let (tagged, devices) = if desired.devices.is_empty() {
        let tagged = defender
            .machines_by_tag(device_tag)
            .await
            .map_err(ResolveError::Machines)?;
        (tagged, Vec::new())
    } else {
        let all = defender
            .all_machines()
            .await
            .map_err(ResolveError::Machines)?;
        trace_memory("machines");
        let (devices, bad) = resolve_devices(&desired.devices, &all);
        unresolved.extend(bad);
        (tagged_in(all, device_tag), devices)
    };
    users.sort_by(|a, b| a.label.cmp(&b.label));

    Ok(Resolution {
        desired: ResolvedDesired {
            users,
            devices,
            unresolved,
            declared_empty_ok: desired.allow_empty,
            listed_nothing: desired.is_empty(),
        },
        actual: Actual { members, tagged },
    })
}

/// The machines of `all` carrying `tag` (exact match, as the `machineTags/any` filter).
pub fn tagged_in(all: Vec<Machine>, tag: &str) -> Vec<Machine> {
    all.into_iter()
        .filter(|m| m.tags.iter().any(|t| t == tag))
        .collect()
}

async fn resolve_users(
    graph: &GraphClient,
    desired: &DesiredState,
    members: &[GroupMember],
) -> Result<(Vec<DesiredUserRef>, Vec<Unresolved>), ResolveError> {
    let split = split_users(desired, members);
    let by_upn = if split.upn_lookups.is_empty() {
        HashMap::new()
    } else {
        graph
            .users_by_upn(&split.upn_lookups)
            .await
            .map_err(ResolveError::Users)?
    };
    let by_id: HashSet<UserId> = if split.id_lookups.is_empty() {
        HashSet::new()
    } else {
        let ids: Vec<ObjectId> = split
            .id_lookups
            .iter()
            .map(|id| ObjectId::parse(id.as_str()).expect("a user id is a GUID"))
            .collect();
        graph
            .users_by_id(&ids)
            .await
            .map_err(ResolveError::Users)?
            .into_keys()
            .collect()
    };
    Ok(finish_users(split, &by_upn, &by_id))
}

/// Desired users split into those already resolved by the member list and those to look up.
#[derive(Debug, Default, PartialEq, Eq)]
struct UserSplit {
    resolved: Vec<DesiredUserRef>,
    upn_lookups: Vec<Upn>,
    id_lookups: Vec<UserId>,
}

/// Pure: resolves desired users against the direct members; the rest need a lookup.
fn split_users(desired: &DesiredState, members: &[GroupMember]) -> UserSplit {
    let mut member_by_upn: HashMap<&str, &UserId> = HashMap::new();
    let mut member_ids: HashSet<&str> = HashSet::new();
    for m in members {
        if let GroupMember::User { id, upn } = m {
            member_ids.insert(id.as_str());
            if let Some(upn) = upn {
                member_by_upn.insert(upn.as_str(), id);
            }
        }
    }
    let mut split = UserSplit::default();
    for entry in &desired.users {
        match &entry.key {
            UserKey::Upn(upn) => match member_by_upn.get(upn.as_str()) {
                Some(id) => split.resolved.push(DesiredUserRef {
                    id: (*id).clone(),
                    label: upn.to_string(),
                }),
                None => split.upn_lookups.push(upn.clone()),
            },
            UserKey::Id(id) if member_ids.contains(id.as_str()) => {
                split.resolved.push(DesiredUserRef {
                    id: id.clone(),
                    label: id.to_string(),
                })
            }
            UserKey::Id(id) => split.id_lookups.push(id.clone()),
        }
    }
    split
}

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
                label: upn.to_string(),
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

/// Pure: resolves desired devices against the machine list. A DNS name or Entra device id that
/// several machines report is ambiguous (acting on one would be a guess); an id or name no
/// machine reports is unknown.
pub fn resolve_devices(
    entries: &[crate::desired::DesiredDevice],
    machines: &[Machine],
) -> (Vec<DesiredDeviceRef>, Vec<Unresolved>) {
    // Only the indexes some entry asks for: each is a map over every machine (megabytes at
    // 50k machines), and a desired state usually lists its devices one way.
    let wants = |kind: fn(&DeviceKey) -> bool| entries.iter().any(|e| kind(&e.key));
    let want_id = wants(|k| matches!(k, DeviceKey::Machine(_)));
    let want_name = wants(|k| matches!(k, DeviceKey::Name(_)));
    let want_aad = wants(|k| matches!(k, DeviceKey::AadDevice(_)));
    let size = |wanted: bool| if wanted { machines.len() } else { 0 };
    let mut by_id: HashSet<&str> = HashSet::with_capacity(size(want_id));
    let mut by_name: HashMap<&str, Found<'_>> = HashMap::with_capacity(size(want_name));
    let mut by_aad: HashMap<&str, Found<'_>> = HashMap::new();
    for m in machines {
        if want_id {
            by_id.insert(m.id.as_str());
        }
        if let Some(n) = m.dns_name.as_ref().filter(|_| want_name) {
            Found::add(&mut by_name, n.as_str(), &m.id);
        }
        if let Some(a) = m.aad_device_id.as_ref().filter(|_| want_aad) {
            Found::add(&mut by_aad, a.as_str(), &m.id);
        }
    }
    let mut devices = Vec::new();
    let mut unresolved = Vec::new();
    for entry in entries {
        let found: Vec<&MachineId> = match &entry.key {
            DeviceKey::Machine(id) if by_id.contains(id.as_str()) => vec![id],
            DeviceKey::Machine(_) => Vec::new(),
            DeviceKey::Name(n) => by_name.get(n.as_str()).map(Found::ids).unwrap_or_default(),
            DeviceKey::AadDevice(a) => by_aad.get(a.as_str()).map(Found::ids).unwrap_or_default(),
        };
        let label = entry.key.to_string();
        let mut found: Vec<MachineId> = found.into_iter().cloned().collect();
        found.sort();
        found.dedup();
        match found.len() {
            0 => unresolved.push(Unresolved {
                entry: label,
                problem: UnresolvedKind::UnknownDevice,
            }),
            1 => devices.push(DesiredDeviceRef {
                id: found.remove(0),
                label,
            }),
            _ => unresolved.push(Unresolved {
                entry: label,
                problem: UnresolvedKind::AmbiguousName { candidates: found },
            }),
        }
    }
    (devices, unresolved)
}

/// The machines reporting one name or Entra device id. Almost always one, so one is kept
/// without a list of its own (50k names do not each own a `Vec`).
enum Found<'a> {
    One(&'a MachineId),
    Many(Vec<&'a MachineId>),
}

impl<'a> Found<'a> {
    fn add(map: &mut HashMap<&'a str, Found<'a>>, key: &'a str, id: &'a MachineId) {
        match map.get_mut(key) {
            None => {
                map.insert(key, Found::One(id));
            }
            Some(Found::Many(ids)) => ids.push(id),
            Some(found) => {
                if let Found::One(first) = *found {
                    *found = Found::Many(vec![first, id]);
                }
            }
        }
    }

    fn ids(&self) -> Vec<&'a MachineId> {
        match self {
            Found::One(id) => vec![*id],
            Found::Many(ids) => ids.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;

    use super::*;
    use crate::desired::{self, Mode};
    use crate::model::{AadDeviceId, DnsName};

    fn desired(text: &str) -> DesiredState {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        desired::parse_str(Path::new("d.toml"), text, today, Mode::Runtime)
            .unwrap()
            .state
    }

    fn uid(n: u32) -> UserId {
        UserId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    fn mid(n: u32) -> MachineId {
        MachineId::parse(&format!("{n:040x}")).unwrap()
    }

    fn machine(n: u32, name: &str, aad: Option<&str>) -> Machine {
        Machine {
            id: mid(n),
            dns_name: Some(DnsName::parse(name).unwrap()),
            aad_device_id: aad.map(|a| AadDeviceId::parse(a).unwrap()),
            os_platform: Some("Windows11".into()),
            tags: if n.is_multiple_of(2) {
                vec!["T".into()]
            } else {
                vec![]
            },
            rbac_group_id: None,
            rbac_group_name: None,
        }
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
        let split = split_users(&d, &members);
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

    #[test]
    fn devices_resolve_by_name_id_and_entra_id_in_memory() {
        let aad = "1a2b3c4d-1111-2222-3333-444455556666";
        let machines = vec![
            machine(1, "ws-1.contoso.local", None),
            machine(2, "ws-2.contoso.local", Some(aad)),
            machine(3, "dup.contoso.local", None),
            machine(4, "DUP.contoso.local", None),
            machine(5, "ws-5.contoso.local", None),
        ];
        let d = desired(&format!(
            "devices = ['WS-1.contoso.local', {{ aad_device_id = '{aad}' }}, '{}', \
             'dup.contoso.local', '{}', 'gone.contoso.local']",
            mid(5),
            mid(99)
        ));
        let (devices, unresolved) = resolve_devices(&d.devices, &machines);
        let got: Vec<(&str, &str)> = devices
            .iter()
            .map(|d| (d.label.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ws-1.contoso.local", mid(1).as_str()),
                (aad, mid(2).as_str()),
                (mid(5).as_str(), mid(5).as_str()),
            ]
        );
        assert_eq!(
            unresolved,
            vec![
                Unresolved {
                    entry: "dup.contoso.local".into(),
                    problem: UnresolvedKind::AmbiguousName {
                        candidates: vec![mid(3), mid(4)]
                    },
                },
                Unresolved {
                    entry: mid(99).to_string(),
                    problem: UnresolvedKind::UnknownDevice,
                },
                Unresolved {
                    entry: "gone.contoso.local".into(),
                    problem: UnresolvedKind::UnknownDevice,
                },
            ]
        );
        let tagged: Vec<MachineId> = tagged_in(machines, "T").into_iter().map(|m| m.id).collect();
        assert_eq!(tagged, vec![mid(2), mid(4)]);
    }
}
