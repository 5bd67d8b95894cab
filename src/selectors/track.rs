//! Following a group selector's tree with `groups/delta`, so a pass over an unchanged tree
//! costs one request per 50 groups instead of a full read.
//!
//! `groups/delta` does not report changes inside nested groups, so every group of the tree is
//! tracked, at most 50 ids per query (Graph's limit for the `id` filter). After a full read
//! the tree is subscribed from now (`$deltatoken=latest`); a later pass follows each stored
//! link: no group in any answer means nothing changed and the last expansion stands. Any
//! member added or removed in any tracked group (a nested group added or removed included), a
//! group removed, or a link the service no longer knows (`syncStateNotFound`, `410 Gone`)
//! means a full re-read and a fresh subscription. Replays only cost a needless re-read.
//!
//! What delta with `$select=members` does not see: a member's own properties (a UPN rename,
//! an account disabled). Those are picked up by the full re-read every [`FULL_READ_EVERY`],
//! and a change made between a group's read and the subscription that follows it waits for
//! that re-read too (or for the next change in the tree).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::graph::{DeltaError, GraphClient, MAX_DELTA_IDS};
use crate::model::ObjectId;

/// A tree is read in full at least this often, whatever delta says.
pub const FULL_READ_EVERY: Duration = Duration::hours(24);

/// What a group selector stores to follow its tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// One deltaLink per chunk of at most 50 groups of the tree.
    pub links: Vec<String>,
    /// Groups in the tree when it was read.
    pub groups: usize,
    /// Why its users are in scope, for people ("via group Berlin-Staff").
    #[serde(default)]
    pub origin: String,
    /// The counts of the last full read, shown again while nothing changes.
    pub other_types: usize,
    pub skipped_disabled: usize,
    /// When the tree was last read in full.
    pub read_at: DateTime<Utc>,
}

impl Tracking {
    /// Whether the last full read is recent enough to stand in for one.
    pub fn fresh(&self, now: DateTime<Utc>) -> bool {
        now - self.read_at < FULL_READ_EVERY
    }
}

/// What following the stored links said.
pub enum Followed {
    /// No tracked group changed; the links to store for the next pass.
    Unchanged(Vec<String>),
    /// Something changed, or a link expired: the tree must be read again.
    Changed(String),
}

/// Follows every stored link of the tree under `root`. An error other than an expired link
/// is returned (the caller reads the tree in full).
pub async fn follow(
    graph: &GraphClient,
    root: &ObjectId,
    links: &[String],
) -> Result<Followed, DeltaError> {
    let mut next = Vec::with_capacity(links.len());
    for link in links {
        match graph.groups_delta_changes(root, link).await {
            Ok(round) if round.changed.is_empty() => next.push(round.delta_link),
            Ok(round) => {
                let ids: Vec<String> = round.changed.iter().map(|g| g.to_string()).collect();
                return Ok(Followed::Changed(format!(
                    "members of group(s) {} changed",
                    ids.join(", ")
                )));
            }
            Err(e @ DeltaError::Expired { .. }) => return Ok(Followed::Changed(e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(Followed::Unchanged(next))
}

/// Subscribes every group of a tree from now: ⌈groups/50⌉ requests, one link each.
pub async fn subscribe(
    graph: &GraphClient,
    root: &ObjectId,
    groups: &[ObjectId],
) -> Result<Vec<String>, DeltaError> {
    let mut links = Vec::with_capacity(groups.len().div_ceil(MAX_DELTA_IDS));
    for chunk in groups.chunks(MAX_DELTA_IDS) {
        links.push(graph.groups_delta_subscribe(root, chunk).await?);
    }
    Ok(links)
}
