//! The scoped user group's direct members, read with the fewest requests: the snapshot in the
//! state database continued with one membership delta round when it is fresh (one request when
//! nothing changed), else a full read (see [`super::snapshot`] for when, and why that is safe).
//! The reconcile pass stores what it reads; the incident poller and `plan` only read.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::graph::{self, DeltaError, GraphClient};
use crate::model::{GroupMember, ObjectId};
use crate::state::{MemberSync, State};
use crate::telemetry::trace_memory;

use super::ResolveError;
use super::snapshot::{self, FullRead};

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

/// For logs: "delta round: 1 pages, 0 changes" or "full read: no snapshot".
impl std::fmt::Display for MembersRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembersRead::Delta { pages, changes } => {
                write!(f, "delta round: {pages} pages, {changes} changes")
            }
            MembersRead::Full(why) => write!(f, "full read: {}", why.as_str()),
        }
    }
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
