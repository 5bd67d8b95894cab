//! Turning what each selector's source answered into desired users: exclusions, disabled
//! accounts, non-user objects, and the safety rules for a source that could not be read or
//! yielded nothing. Pure: the reads and the last expansions are parameters.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::desired::{DesiredState, DeviceKey, Selector, Subject, UserKey};
use crate::model::{MachineId, UserId};
use crate::scope::{DesiredDeviceRef, DesiredUserRef};

/// One identity a source yielded: a user (object id, UPN) or a device (MDE machine id, DNS
/// name, Entra device id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    /// The UPN of a user, the DNS name of a machine.
    pub name: Option<String>,
    /// The Entra device id of a machine.
    pub aad: Option<String>,
    pub enabled: bool,
    /// Why this one is in scope when it differs from the read's origin ("via group
    /// Berlin-Staff › SOC-Tier2" for a member of a nested group).
    pub origin: Option<String>,
}

/// What reading one selector's source gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The source answered. `origin` says why its identities are in scope ("via group
    /// Berlin-Staff"), `other_types` counts the tree's objects of another type (groups,
    /// contacts, service principals, devices or users).
    Answered {
        origin: String,
        found: Vec<Found>,
        other_types: usize,
        /// Devices of an Entra device group that have no MDE machine.
        no_machine: usize,
    },
    /// The source reported no change since its last good expansion (every group of the tree
    /// followed with `groups/delta`): that expansion stands, with the counts it had.
    Unchanged {
        origin: String,
        other_types: usize,
        skipped_disabled: usize,
        no_machine: usize,
    },
    /// The source could not be read: deleted, forbidden, a filter the service rejected.
    Unreadable { why: String },
    /// This version does not expand the selector (device selectors).
    NotExpanded,
}

/// How one selector fared in this pass, for `plan`, the logs, the alert, `status` and `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The selector's stable key (`users: group …`).
    pub selector: String,
    /// Its source for people: `group Berlin-Staff`, `where department = Finance` (a group
    /// that was not read is named by its id).
    #[serde(default)]
    pub source: String,
    /// Groups in the tree of a group selector, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_groups: Option<usize>,
    /// Where it is written (`file:line:col`).
    pub at: String,
    /// Users or devices it puts in scope this pass (after exclusions; kept ones included).
    pub identities: usize,
    /// Objects of the tree of another type (groups, contacts, service principals, and devices for a user selector or users for a device selector), skipped.
    pub skipped_other_types: usize,
    /// Disabled accounts skipped (the entry does not say `include_disabled = true`).
    pub skipped_disabled: usize,
    /// Identities left out by `exclude_users` / `exclude_devices`.
    pub excluded: usize,
    /// Entra devices of the group without an MDE machine (cannot be tagged; unresolved).
    pub no_machine: usize,
    pub status: Status,
}

/// Whether a selector's users are what its source says now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let users = self.noun();
        let what = match &self.status {
            Status::Expanded => return None,
            Status::Unresolved { why, kept } => format!(
                "could not be read ({why}); keeping the {kept} {users} it yielded last time, \
                 nothing removed because of it; fix the selector or restore its source"
            ),
            Status::Empty { kept } => format!(
                "yielded no {users}; keeping the {kept} {users} it yielded last time, nothing \
                 removed because of it; if the source is meant to be empty, remove the selector"
            ),
            Status::NotExpanded => "is not expanded by this version of dexscope; every removal \
                                    is held while it is in the desired state"
                .to_string(),
        };
        Some(format!("selector {} at {} {what}", self.selector, self.at))
    }
}

impl Finding {
    /// `users` or `devices`, from the selector's key.
    fn noun(&self) -> &'static str {
        if self.selector.starts_with("devices") {
            "devices"
        } else {
            "users"
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(w) = self.warning() {
            return f.write_str(&w);
        }
        write!(
            f,
            "selector {}: {} {} ({} of other types skipped, {} disabled skipped, {} excluded, \
             {} without an MDE machine)",
            self.selector,
            self.identities,
            self.noun(),
            self.skipped_other_types,
            self.skipped_disabled,
            self.excluded,
            self.no_machine
        )
    }
}

/// The users every selector puts in scope, labelled with their origin, and what to store as
/// each selector's last good expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    pub users: Vec<DesiredUserRef>,
    pub devices: Vec<DesiredDeviceRef>,
    pub findings: Vec<Finding>,
    /// (selector key, yielded (id, label)) for each selector read well this pass.
    pub store: Vec<(String, Vec<(String, String)>)>,
    /// The selector (key and place) that is not expanded and has no earlier expansion to
    /// keep: what it would keep is unknown, so every removal is held.
    pub held_by: Option<String>,
}

fn user_key(k: &UserKey) -> &str {
    match k {
        UserKey::Id(id) => id.as_str(),
        UserKey::Upn(upn) => upn.as_str(),
    }
}

fn device_key(k: &DeviceKey) -> &str {
    match k {
        DeviceKey::Name(n) => n.as_str(),
        DeviceKey::Machine(m) => m.as_str(),
        DeviceKey::AadDevice(a) => a.as_str(),
    }
}

/// The identities a source answered with, as (id, label): disabled accounts skipped unless
/// the selector includes them.
fn labelled(
    found: Vec<Found>,
    selector: &Selector,
    origin: &str,
    finding: &mut Finding,
) -> Vec<(String, String)> {
    let mut now = Vec::new();
    for u in found {
        if !u.enabled && !selector.include_disabled {
            finding.skipped_disabled += 1;
            continue;
        }
        let name = u.name.unwrap_or_else(|| u.id.clone()).to_lowercase();
        let origin = u.origin.as_deref().unwrap_or(origin);
        // The label leads with the name, then the Entra device id if any: what exclusions
        // match on.
        let aad = u
            .aad
            .map(|a| format!(" {}", a.to_lowercase()))
            .unwrap_or_default();
        now.push((u.id.to_lowercase(), format!("{name}{aad} ({origin})")));
    }
    now
}

/// Combines the reads (one per selector of `desired`, same order) with each selector's last
/// good expansion (`last`, by key). Users listed explicitly are not repeated.
pub fn combine(
    desired: &DesiredState,
    reads: Vec<(&Selector, Read)>,
    last: &HashMap<String, Vec<(String, String)>>,
) -> Expansion {
    // Ids, names and Entra device ids (all lower-case) excluded, and listed as single entries.
    let mut excluded: HashSet<&str> = HashSet::new();
    for e in &desired.exclude_users {
        excluded.insert(user_key(&e.key));
    }
    for e in &desired.exclude_devices {
        excluded.insert(device_key(&e.key));
    }
    let mut explicit: HashSet<&str> = desired.users.iter().map(|e| user_key(&e.key)).collect();
    explicit.extend(desired.devices.iter().map(|e| device_key(&e.key)));
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Expansion::default();
    for (selector, read) in reads {
        let key = selector.key();
        let mut finding = Finding {
            selector: key.clone(),
            source: selector.source.to_string(),
            tree_groups: None,
            at: selector.at.to_string(),
            identities: 0,
            skipped_other_types: 0,
            skipped_disabled: 0,
            excluded: 0,
            no_machine: 0,
            status: Status::Expanded,
        };
        let Some(yielded) = yielded(selector, read, last, &mut finding, &mut out) else {
            out.findings.push(finding);
            continue;
        };
        for (id, label) in yielded {
            // The label's words before the origin: the name, and a device's Entra id.
            let names: Vec<&str> = label.split(" (").next().unwrap_or("").split(' ').collect();
            if excluded.contains(id.as_str()) || names.iter().any(|n| excluded.contains(n)) {
                finding.excluded += 1;
                continue;
            }
            finding.identities += 1;
            let listed =
                explicit.contains(id.as_str()) || names.iter().any(|n| explicit.contains(n));
            if listed || !seen.insert(id.clone()) {
                continue;
            }
            match selector.subject {
                Subject::Users => {
                    if let Ok(id) = UserId::parse(&id) {
                        out.users.push(DesiredUserRef { id, label });
                    }
                }
                Subject::Devices => {
                    if let Ok(id) = MachineId::parse(&id) {
                        out.devices.push(DesiredDeviceRef { id, label });
                    }
                }
            }
        }
        out.findings.push(finding);
    }
    out
}

/// What one selector's read puts forward (before exclusions), its finding filled in; `None`
/// for a selector this version does not expand.
fn yielded(
    selector: &Selector,
    read: Read,
    last: &HashMap<String, Vec<(String, String)>>,
    finding: &mut Finding,
    out: &mut Expansion,
) -> Option<Vec<(String, String)>> {
    let key = &finding.selector.clone();
    Some(match read {
        Read::NotExpanded => {
            finding.status = Status::NotExpanded;
            hold(out, finding);
            return None;
        }
        Read::Unchanged {
            origin,
            other_types,
            skipped_disabled,
            no_machine,
        } => {
            finding.source = source_of(&origin);
            finding.skipped_other_types = other_types;
            finding.skipped_disabled = skipped_disabled;
            finding.no_machine = no_machine;
            match last.get(key) {
                Some(kept) => kept.clone(),
                None => {
                    // Only read as unchanged with a stored expansion; without one what it
                    // keeps in scope is unknown.
                    hold(out, finding);
                    finding.status = Status::Unresolved {
                        why: "no stored expansion to compare with".into(),
                        kept: 0,
                    };
                    Vec::new()
                }
            }
        }
        Read::Unreadable { why } => {
            // Never read well before: what it would keep in scope is unknown.
            if !last.contains_key(key) {
                hold(out, finding);
            }
            let kept = last.get(key).cloned().unwrap_or_default();
            finding.status = Status::Unresolved {
                why,
                kept: kept.len(),
            };
            kept
        }
        Read::Answered {
            origin,
            found,
            other_types,
            no_machine,
        } => {
            finding.skipped_other_types = other_types;
            finding.no_machine = no_machine;
            finding.source = source_of(&origin);
            let now = labelled(found, selector, &origin, finding);
            if now.is_empty() {
                let kept = last.get(key).cloned().unwrap_or_default();
                finding.status = Status::Empty { kept: kept.len() };
                kept
            } else {
                out.store.push((key.clone(), now.clone()));
                now
            }
        }
    })
}

/// Every removal is held because of this selector (the first one named).
fn hold(out: &mut Expansion, finding: &Finding) {
    if out.held_by.is_none() {
        out.held_by = Some(format!("{} at {}", finding.selector, finding.at));
    }
}

/// The source named in an origin: `via group Berlin-Staff` → `group Berlin-Staff`.
fn source_of(origin: &str) -> String {
    origin.strip_prefix("via ").unwrap_or(origin).to_string()
}

/// One line for people: each selector's source and what it yields, then the ones that did not
/// expand with what they keep ("group Berlin-Staff 1,234 users (tree of 7 groups); where
/// department = Finance 56 users; 1 unresolved (kept 12 from last expansion)").
pub fn summary(findings: &[Finding]) -> String {
    let mut parts = Vec::new();
    let (mut unresolved, mut kept) = (0, 0);
    for f in findings {
        match &f.status {
            Status::Expanded => {
                let tree = f
                    .tree_groups
                    .map(|g| format!(" (tree of {g} groups)"))
                    .unwrap_or_default();
                parts.push(format!(
                    "{} {} {}{tree}",
                    f.source,
                    thousands(f.identities),
                    f.noun()
                ));
            }
            Status::Unresolved { kept: k, .. } | Status::Empty { kept: k } => {
                unresolved += 1;
                kept += k;
            }
            Status::NotExpanded => unresolved += 1,
        }
    }
    if unresolved > 0 {
        parts.push(format!(
            "{unresolved} unresolved (kept {} from last expansion)",
            thousands(kept)
        ));
    }
    parts.join("; ")
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(source: &str, identities: usize, tree: Option<usize>, status: Status) -> Finding {
        Finding {
            selector: format!("users: {source}"),
            source: source.into(),
            tree_groups: tree,
            at: "d.toml:1:1".into(),
            identities,
            skipped_other_types: 0,
            skipped_disabled: 0,
            excluded: 0,
            no_machine: 0,
            status,
        }
    }

    #[test]
    fn the_summary_names_each_source_and_what_unresolved_ones_keep() {
        let findings = [
            finding("group Berlin-Staff", 1234, Some(7), Status::Expanded),
            finding("where department = Finance", 56, None, Status::Expanded),
            finding(
                "group 6e000000-0000-0000-0000-000000000404",
                12,
                None,
                Status::Unresolved {
                    why: "404".into(),
                    kept: 12,
                },
            ),
        ];
        assert_eq!(
            summary(&findings),
            "group Berlin-Staff 1,234 users (tree of 7 groups); where department = Finance \
             56 users; 1 unresolved (kept 12 from last expansion)"
        );
        assert_eq!(summary(&[]), "");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
