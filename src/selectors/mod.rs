//! Selectors expanded against the tenant: `{ group = … }` users are the enabled users of the
//! group's tree, read group by group ([`tree`]) so each says the path it came by, and followed
//! with `groups/delta` ([`track`]) so a pass over an unchanged tree costs one request per 50
//! groups. `{ where = … }` users are one paged `$filter` read. `{ group = … }` devices are the
//! tree's Entra devices joined to MDE machines by Entra device id (`aadDeviceId`);
//! `{ where = … }` devices are read from the machine list with the service's `$filter` and
//! checked locally for every condition. What they yield joins the desired users and devices
//! of the reconcile pass, so adds, removals and the removal guard treat them like single
//! entries; [`expand`] decides the safety rules (pure).
//! `health_status` and `onboarding_status` are evaluated by the service only (the machine list
//! as read here does not keep them).

pub mod expand;
pub mod track;
pub mod tree;

use std::collections::HashMap;

use crate::defender::DefenderClient;
use crate::desired::{Condition, DesiredState, Selector, SelectorSource, Subject};
use crate::graph::{GraphClient, TreeMember};
use crate::model::{Machine, ObjectId};
use crate::state::State;

pub use expand::{Expansion, Finding, Found, Read, Status};
use track::{Followed, Tracking};

/// The two API clients a selector reads through.
#[derive(Clone, Copy)]
pub struct Clients<'a> {
    pub graph: &'a GraphClient,
    pub defender: &'a DefenderClient,
}

/// Reads every selector of `desired` and combines the answers with each selector's last good
/// expansion from `state`. With `store`, the expansions read well this pass are written back
/// (the `plan` command reads only), and group trees are subscribed to `groups/delta` so the
/// next pass over an unchanged tree is cheap. Never fails: a source that cannot be read is a
/// finding.
pub async fn expand_selectors(
    clients: Clients<'_>,
    state: Option<&State>,
    store: bool,
    desired: &DesiredState,
) -> Expansion {
    let now = chrono::Utc::now();
    let mut reads = Vec::with_capacity(desired.selectors.len());
    let mut last = HashMap::new();
    let mut tracked: HashMap<String, Tracking> = HashMap::new();
    let mut machines = None;
    for selector in &desired.selectors {
        let key = selector.key();
        let stored = state.map(|s| stored_selector(s, &key)).unwrap_or_default();
        let has_last = stored.0.is_some();
        if let Some(yielded) = stored.0 {
            last.insert(key.clone(), yielded);
        }
        let read = match (&selector.subject, &selector.source) {
            (Subject::Users, SelectorSource::Group(root)) => {
                let previous = stored.1.filter(|t| has_last && t.fresh(now));
                let (read, tracking) =
                    read_user_tree(clients.graph, root, previous, store, now).await;
                if let Some(t) = tracking {
                    tracked.insert(key, t);
                }
                read
            }
            (Subject::Users, _) => read_users(clients.graph, selector).await,
            (Subject::Devices, _) => read_devices(clients, selector, &mut machines).await,
        };
        reads.push((selector, read));
    }
    let mut expansion = expand::combine(desired, reads, &last);
    for f in &mut expansion.findings {
        f.tree_groups = tracked.get(&f.selector).map(|t| t.groups);
    }
    for f in &expansion.findings {
        match f.warning() {
            Some(w) => tracing::warn!(alert = "selector_unresolved", "{w}"),
            None => tracing::info!(selector = %f.selector, identities = f.identities,
                skipped_other_types = f.skipped_other_types, skipped_disabled = f.skipped_disabled,
                excluded = f.excluded, no_machine = f.no_machine, "selector expanded"),
        }
    }
    if store && let Some(state) = state {
        store_expansion(state, &expansion, tracked);
    }
    expansion
}

/// A selector's last good expansion and its change tracking; what cannot be read is taken as
/// never stored (the tree is then read in full).
fn stored_selector(state: &State, key: &str) -> (Option<Vec<(String, String)>>, Option<Tracking>) {
    let last = state.selector_expansion(key).unwrap_or_else(|e| {
        tracing::warn!(error = %e, selector = %key,
            "reading the selector's last expansion failed; it is taken as never read");
        None
    });
    let tracking = match state.selector_tracking(key) {
        Ok(Some(text)) => serde_json::from_str(&text).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, selector = %key,
                "reading the selector's change tracking failed; its tree is read in full");
            None
        }
    };
    (last, tracking)
}

/// Writes back the expansions read well, and the tracking of each tree that expanded; a
/// selector that did not expand (unreadable, empty) forgets its tracking, so the next pass
/// reads its tree in full.
fn store_expansion(state: &State, expansion: &Expansion, mut tracked: HashMap<String, Tracking>) {
    let findings = serde_json::to_string(&expansion.findings).unwrap_or_else(|_| "[]".into());
    if let Err(e) = state.set_selector_findings(&findings) {
        tracing::warn!(error = %e, "storing how the selectors fared failed; status shows the last stored");
    }
    for (key, yielded) in &expansion.store {
        if let Err(e) = state.set_selector_expansion(key, yielded) {
            tracing::warn!(error = %e, selector = %key,
                "storing the selector's expansion failed; the last stored one stays");
        }
    }
    for f in &expansion.findings {
        let tracking = match (tracked.remove(&f.selector), &f.status) {
            (Some(mut t), Status::Expanded) => {
                t.other_types = f.skipped_other_types;
                t.skipped_disabled = f.skipped_disabled;
                serde_json::to_string(&t).ok()
            }
            _ => None,
        };
        if let Err(e) = state.set_selector_tracking(&f.selector, tracking.as_deref()) {
            tracing::warn!(error = %e, selector = %f.selector,
                "storing the selector's change tracking failed; its tree is read in full next time");
        }
    }
}

/// A user group selector: unchanged when every stored link of `previous` says so, otherwise
/// the tree read in full and, with `subscribe`, subscribed from now. Returns the read and the
/// tracking to store if the selector expands.
async fn read_user_tree(
    graph: &GraphClient,
    root: &ObjectId,
    previous: Option<Tracking>,
    subscribe: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> (Read, Option<Tracking>) {
    if let Some(previous) = previous {
        match track::follow(graph, root, &previous.links).await {
            Ok(Followed::Unchanged(links)) => {
                let read = Read::Unchanged {
                    origin: previous.origin.clone(),
                    other_types: previous.other_types,
                    skipped_disabled: previous.skipped_disabled,
                    no_machine: 0,
                };
                return (read, Some(Tracking { links, ..previous }));
            }
            Ok(Followed::Changed(why)) => {
                tracing::info!(group = %root, "{why}; reading the selector's tree again");
            }
            Err(e) => tracing::warn!(error = %e, group = %root,
                "following the selector's tree with groups/delta failed; reading it again"),
        }
    }
    let tree = match tree::read_tree(graph, root).await {
        Ok(t) => t,
        Err(e) => return (Read::Unreadable { why: e.to_string() }, None),
    };
    let tracking = if subscribe {
        match track::subscribe(graph, root, &tree.group_ids()).await {
            Ok(links) => Some(Tracking {
                links,
                groups: tree.groups.len(),
                origin: format!("via group {}", tree.path(0)),
                other_types: 0,
                skipped_disabled: 0,
                read_at: now,
            }),
            Err(e) => {
                tracing::warn!(error = %e, group = %root,
                    "subscribing the selector's tree to groups/delta failed; it is read in full next pass");
                None
            }
        }
    } else {
        None
    };
    let paths: Vec<String> = (0..tree.groups.len()).map(|i| tree.path(i)).collect();
    let mut found = Vec::new();
    let mut other_types = tree.groups.len() - 1;
    for (m, at) in tree.members {
        match m {
            TreeMember::User { id, upn, enabled } => found.push(Found {
                id: id.to_string(),
                name: upn.map(|u| u.to_string()),
                aad: None,
                enabled,
                origin: (at > 0).then(|| format!("via group {}", paths[at])),
            }),
            _ => other_types += 1,
        }
    }
    let read = Read::Answered {
        origin: format!("via group {}", paths[0]),
        found,
        other_types,
        no_machine: 0,
    };
    (read, tracking)
}

/// What one `where` user selector's source answers now.
async fn read_users(graph: &GraphClient, selector: &Selector) -> Read {
    let SelectorSource::Where(conditions) = &selector.source else {
        return Read::NotExpanded;
    };
    let props: Vec<(&str, &[String])> = conditions
        .iter()
        .filter_map(|c| Some((property(Subject::Users, c)?, c.values.as_slice())))
        .collect();
    match graph.users_matching(&props).await {
        Ok(rows) => Read::Answered {
            origin: format!("via {}", selector.source),
            found: rows
                .into_iter()
                .map(|r| Found {
                    id: r.id.to_string(),
                    name: r.upn.map(|u| u.to_string()),
                    aad: None,
                    enabled: r.enabled,
                    origin: None,
                })
                .collect(),
            other_types: 0,
            no_machine: 0,
        },
        Err(e) => Read::Unreadable { why: e.to_string() },
    }
}

/// What one device selector's source answers now. `machines` is the whole machine list, read
/// at most once per pass and only for a device group.
async fn read_devices(
    clients: Clients<'_>,
    selector: &Selector,
    machines: &mut Option<Vec<Machine>>,
) -> Read {
    match &selector.source {
        SelectorSource::Group(group) => {
            let tree = match tree::read_tree(clients.graph, group).await {
                Ok(t) => t,
                Err(e) => return Read::Unreadable { why: e.to_string() },
            };
            if machines.is_none() {
                match clients.defender.all_machines().await {
                    Ok(all) => *machines = Some(all),
                    Err(e) => return Read::Unreadable { why: e.to_string() },
                }
            }
            let all = machines.as_deref().unwrap_or_default();
            let by_aad: HashMap<&str, &Machine> = all
                .iter()
                .filter_map(|m| Some((m.aad_device_id.as_ref()?.as_str(), m)))
                .collect();
            let (mut found, mut other_types, mut no_machine) =
                (Vec::new(), tree.groups.len() - 1, 0);
            for (m, at) in &tree.members {
                let TreeMember::Device { device_id, .. } = m else {
                    other_types += 1;
                    continue;
                };
                // A device that is not Entra-joined in MDE (null aadDeviceId) cannot be matched.
                match device_id.as_ref().and_then(|d| by_aad.get(d.as_str())) {
                    Some(machine) => found.push(Found {
                        origin: (*at > 0).then(|| format!("via device group {}", tree.path(*at))),
                        ..machine_found(machine)
                    }),
                    None => no_machine += 1,
                }
            }
            Read::Answered {
                origin: format!("via device group {}", tree.path(0)),
                found,
                other_types,
                no_machine,
            }
        }
        SelectorSource::Where(conditions) => match where_machines(clients, conditions).await {
            Ok(list) => Read::Answered {
                origin: format!("via {}", selector.source),
                found: list
                    .iter()
                    .filter(|m| conditions.iter().all(|c| machine_matches(m, c)))
                    .map(machine_found)
                    .collect(),
                other_types: 0,
                no_machine: 0,
            },
            Err(e) => Read::Unreadable { why: e.to_string() },
        },
    }
}

/// The machines a device `where` may match: one machine list per filter the service serves,
/// kept where every list has them (by machine id); the whole list when it serves none.
async fn where_machines(
    clients: Clients<'_>,
    conditions: &[Condition],
) -> Result<Vec<Machine>, crate::defender::Error> {
    let filters = service_filters(conditions);
    let Some((first, rest)) = filters.split_first() else {
        return clients.defender.all_machines().await;
    };
    let mut list = clients.defender.machines(Some(first)).await?;
    for filter in rest {
        if list.is_empty() {
            break;
        }
        let also: std::collections::HashSet<String> = clients
            .defender
            .machines(Some(filter))
            .await?
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        list.retain(|m| also.contains(&m.id.to_string()));
    }
    Ok(list)
}

/// The parts of a device `where` the machine list's `$filter` serves, one filter per key,
/// each key's values joined by `or` (the forms MDE documents: `machineTags/any(tag: tag eq
/// 'X')`, `osPlatform eq 'X'`, `healthStatus eq 'X'`, `onboardingStatus eq 'X'`). Keys are
/// not joined with `and` in one filter: the documented examples never combine fields, so
/// each is its own read and the answers are intersected. `os` is served only without a
/// `tag` (it is checked locally on what the tag read returns); `name_prefix` is always local.
/// `healthStatus` and `onboardingStatus` are only ever evaluated by the service: the machine
/// list as read here does not keep them.
pub fn service_filters(conditions: &[Condition]) -> Vec<String> {
    let quoted = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let any_of = |c: &Condition, field: &str| {
        c.values
            .iter()
            .map(|v| format!("{field} eq {}", quoted(v)))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let has_tag = conditions.iter().any(|c| c.key == "tag");
    conditions
        .iter()
        .filter_map(|c| match c.key {
            "tag" => Some(
                c.values
                    .iter()
                    .map(|v| crate::defender::tag_filter(v))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            "os" if !has_tag => Some(any_of(c, "osPlatform")),
            "health_status" => Some(any_of(c, "healthStatus")),
            "onboarding_status" => Some(any_of(c, "onboardingStatus")),
            _ => None,
        })
        .collect()
}

/// Whether `machine` meets one device condition (case-insensitive, as MDE compares).
pub fn machine_matches(machine: &Machine, c: &Condition) -> bool {
    let any = |have: &str| c.values.iter().any(|v| v.eq_ignore_ascii_case(have));
    match c.key {
        "tag" => machine.tags.iter().any(|t| any(t)),
        "os" => machine.os_platform.as_deref().is_some_and(any),
        "name_prefix" => machine.dns_name.as_ref().is_some_and(|n| {
            c.values
                .iter()
                .any(|p| n.as_str().starts_with(&p.to_ascii_lowercase()))
        }),
        // Evaluated by the service only (see [`service_filters`]).
        "health_status" | "onboarding_status" => true,
        _ => false,
    }
}

fn machine_found(m: &Machine) -> Found {
    Found {
        id: m.id.to_string(),
        name: m.dns_name.as_ref().map(|n| n.to_string()),
        aad: m.aad_device_id.as_ref().map(|a| a.to_string()),
        enabled: true,
        origin: None,
    }
}

/// The service's property for a `where` key.
fn property(subject: Subject, c: &Condition) -> Option<&'static str> {
    subject
        .where_keys()
        .iter()
        .find(|(k, _)| *k == c.key)
        .map(|(_, p)| *p)
}

/// How each selector fared in the last pass that stored its expansions (`status`, `check`);
/// empty when none did or the record cannot be read.
pub fn last_findings(state: &State) -> Vec<Finding> {
    match state.selector_findings() {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "reading how the selectors fared failed");
            Vec::new()
        }
    }
}
