//! Selectors expanded against the tenant: `{ group = … }` users are the group's transitive
//! user members (one paged `transitiveMembers` read), `{ where = … }` users are one paged
//! `$filter` read. What they yield joins the desired users of the reconcile pass, so adds,
//! removals and the removal guard treat them like single entries; [`expand`] decides the
//! safety rules (pure).
//!
//! Device selectors are parsed and validated but not expanded yet: while one is in the
//! desired state every removal is held.

pub mod expand;

use std::collections::HashMap;

use crate::desired::{DesiredState, Selector, SelectorSource, Subject};
use crate::graph::{GraphClient, TreeMember};
use crate::state::State;

pub use expand::{Expansion, Finding, Found, Read, Status};

/// Reads every selector of `desired` and combines the answers with each selector's last good
/// expansion from `state`. With `store`, the expansions read well this pass are written back
/// (the `plan` command reads only). Never fails: a source that cannot be read is a finding.
pub async fn expand_selectors(
    graph: &GraphClient,
    state: Option<&State>,
    store: bool,
    desired: &DesiredState,
) -> Expansion {
    let mut reads = Vec::with_capacity(desired.selectors.len());
    let mut last = HashMap::new();
    for selector in &desired.selectors {
        let key = selector.key();
        if let Some(state) = state {
            match state.selector_expansion(&key) {
                Ok(Some(yielded)) => {
                    last.insert(key, yielded);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, selector = %key,
                    "reading the selector's last expansion failed; it is taken as never read"),
            }
        }
        reads.push((selector, read(graph, selector).await));
    }
    let expansion = expand::combine(desired, reads, &last);
    for f in &expansion.findings {
        match f.warning() {
            Some(w) => tracing::warn!(alert = "selector_unresolved", "{w}"),
            None => tracing::info!(selector = %f.selector, users = f.users,
                skipped_not_users = f.skipped_not_users, skipped_disabled = f.skipped_disabled,
                excluded = f.excluded, "selector expanded"),
        }
    }
    if store && let Some(state) = state {
        for (key, yielded) in &expansion.store {
            if let Err(e) = state.set_selector_expansion(key, yielded) {
                tracing::warn!(error = %e, selector = %key,
                    "storing the selector's expansion failed; the last stored one stays");
            }
        }
    }
    expansion
}

/// What one selector's source answers now.
async fn read(graph: &GraphClient, selector: &Selector) -> Read {
    match (&selector.subject, &selector.source) {
        (Subject::Devices, _) => Read::NotExpanded,
        (Subject::Users, SelectorSource::Group(group)) => {
            let members = match graph.transitive_members(group).await {
                Ok(m) => m,
                Err(e) => return Read::Unreadable { why: e.to_string() },
            };
            // The name is for people only: a group whose name cannot be read is shown by id.
            let name = graph
                .group_name(group)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| group.to_string());
            let mut users = Vec::new();
            let mut not_users = 0;
            for m in members {
                match m {
                    TreeMember::User { id, upn, enabled } => users.push(Found { id, upn, enabled }),
                    _ => not_users += 1,
                }
            }
            Read::Answered {
                origin: format!("via group {name}"),
                users,
                not_users,
            }
        }
        (Subject::Users, SelectorSource::Where(conditions)) => {
            let props: Vec<(&str, &[String])> = conditions
                .iter()
                .filter_map(|c| {
                    let (_, prop) = Subject::Users
                        .where_keys()
                        .iter()
                        .find(|(k, _)| *k == c.key)?;
                    Some((*prop, c.values.as_slice()))
                })
                .collect();
            match graph.users_matching(&props).await {
                Ok(rows) => Read::Answered {
                    origin: format!("via {}", selector.source),
                    users: rows
                        .into_iter()
                        .map(|r| Found {
                            id: r.id,
                            upn: r.upn,
                            enabled: r.enabled,
                        })
                        .collect(),
                    not_users: 0,
                },
                Err(e) => Read::Unreadable { why: e.to_string() },
            }
        }
    }
}
