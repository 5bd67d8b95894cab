//! Turning what each selector's source answered into desired users: exclusions, disabled
//! accounts, non-user objects, and the safety rules for a source that could not be read or
//! yielded nothing. Pure: the reads and the last expansions are parameters.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::desired::{DesiredState, Selector, UserKey};
use crate::model::{Upn, UserId};
use crate::scope::DesiredUserRef;

/// One user a source yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: UserId,
    pub upn: Option<Upn>,
    pub enabled: bool,
}

/// What reading one selector's source gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The source answered. `origin` says why its users are in scope ("via group Berlin-Staff"),
    /// `not_users` counts the tree's objects that are not users (groups, devices, contacts,
    /// service principals).
    Answered {
        origin: String,
        users: Vec<Found>,
        not_users: usize,
    },
    /// The source could not be read: deleted, forbidden, a filter the service rejected.
    Unreadable { why: String },
    /// This version does not expand the selector (device selectors).
    NotExpanded,
}

/// How one selector fared in this pass, for `plan`, the logs and the alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The selector's stable key (`users: group …`).
    pub selector: String,
    /// Where it is written (`file:line:col`).
    pub at: String,
    /// Users it puts in scope this pass (after exclusions; kept ones included).
    pub users: usize,
    /// Objects of the tree that are not users, skipped.
    pub skipped_not_users: usize,
    /// Disabled accounts skipped (the entry does not say `include_disabled = true`).
    pub skipped_disabled: usize,
    /// Users left out by `exclude_users`.
    pub excluded: usize,
    pub status: Status,
}

/// Whether a selector's users are what its source says now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Expanded,
    /// The source could not be read: the users of its last good expansion are kept.
    Unresolved {
        why: String,
        kept: usize,
    },
    /// The source yielded no user: the last good expansion is kept, never "remove all".
    Empty {
        kept: usize,
    },
    /// Not expanded by this version: every removal is held while it is in the desired state.
    NotExpanded,
}

impl Finding {
    /// A warning for people, or none when the selector expanded normally.
    pub fn warning(&self) -> Option<String> {
        let what = match &self.status {
            Status::Expanded => return None,
            Status::Unresolved { why, kept } => format!(
                "could not be read ({why}); keeping the {kept} users it yielded last time, \
                 nothing removed because of it; fix the selector or restore its source"
            ),
            Status::Empty { kept } => format!(
                "yielded no users; keeping the {kept} users it yielded last time, nothing \
                 removed because of it; if the source is meant to be empty, remove the selector"
            ),
            Status::NotExpanded => "is not expanded by this version of dexscope; every removal \
                                    is held while it is in the desired state"
                .to_string(),
        };
        Some(format!("selector {} at {} {what}", self.selector, self.at))
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(w) = self.warning() {
            return f.write_str(&w);
        }
        write!(
            f,
            "selector {}: {} users ({} not users skipped, {} disabled skipped, {} excluded)",
            self.selector, self.users, self.skipped_not_users, self.skipped_disabled, self.excluded
        )
    }
}

/// The users every selector puts in scope, labelled with their origin, and what to store as
/// each selector's last good expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    pub users: Vec<DesiredUserRef>,
    pub findings: Vec<Finding>,
    /// (selector key, yielded (id, label)) for each selector read well this pass.
    pub store: Vec<(String, Vec<(String, String)>)>,
    /// Some selector is not expanded: what it would keep is unknown.
    pub hold_removals: bool,
}

/// Combines the reads (one per selector of `desired`, same order) with each selector's last
/// good expansion (`last`, by key). Users listed explicitly are not repeated.
pub fn combine(
    desired: &DesiredState,
    reads: Vec<(&Selector, Read)>,
    last: &HashMap<String, Vec<(String, String)>>,
) -> Expansion {
    let mut excluded_ids: HashSet<&str> = HashSet::new();
    let mut excluded_upns: HashSet<&str> = HashSet::new();
    for e in &desired.exclude_users {
        match &e.key {
            UserKey::Id(id) => excluded_ids.insert(id.as_str()),
            UserKey::Upn(upn) => excluded_upns.insert(upn.as_str()),
        };
    }
    let mut seen: HashSet<String> = HashSet::new();
    for e in &desired.users {
        if let UserKey::Id(id) = &e.key {
            seen.insert(id.as_str().to_string());
        }
    }
    let explicit_upns: HashSet<&str> = desired
        .users
        .iter()
        .filter_map(|e| match &e.key {
            UserKey::Upn(u) => Some(u.as_str()),
            UserKey::Id(_) => None,
        })
        .collect();
    let mut out = Expansion::default();
    for (selector, read) in reads {
        let key = selector.key();
        let mut finding = Finding {
            selector: key.clone(),
            at: selector.at.to_string(),
            users: 0,
            skipped_not_users: 0,
            skipped_disabled: 0,
            excluded: 0,
            status: Status::Expanded,
        };
        let yielded: Vec<(String, String)> = match read {
            Read::NotExpanded => {
                finding.status = Status::NotExpanded;
                out.hold_removals = true;
                out.findings.push(finding);
                continue;
            }
            Read::Unreadable { why } => {
                // Never read well before: what it would keep in scope is unknown.
                out.hold_removals |= !last.contains_key(&key);
                let kept = last.get(&key).cloned().unwrap_or_default();
                finding.status = Status::Unresolved {
                    why,
                    kept: kept.len(),
                };
                kept
            }
            Read::Answered {
                origin,
                users,
                not_users,
            } => {
                finding.skipped_not_users = not_users;
                let mut now = Vec::new();
                for u in users {
                    if !u.enabled && !selector.include_disabled {
                        finding.skipped_disabled += 1;
                        continue;
                    }
                    let name = u.upn.as_ref().map_or(u.id.to_string(), |p| p.to_string());
                    now.push((u.id.to_string(), format!("{name} ({origin})")));
                }
                if now.is_empty() {
                    let kept = last.get(&key).cloned().unwrap_or_default();
                    finding.status = Status::Empty { kept: kept.len() };
                    kept
                } else {
                    out.store.push((key, now.clone()));
                    now
                }
            }
        };
        for (id, label) in yielded {
            let Ok(id) = UserId::parse(&id) else { continue };
            // The label starts with the UPN (or the id when Graph gave none).
            let name = label.split(' ').next().unwrap_or("");
            if excluded_ids.contains(id.as_str()) || excluded_upns.contains(name) {
                finding.excluded += 1;
                continue;
            }
            finding.users += 1;
            if explicit_upns.contains(name) || !seen.insert(id.as_str().to_string()) {
                continue;
            }
            out.users.push(DesiredUserRef { id, label });
        }
        out.findings.push(finding);
    }
    out
}
