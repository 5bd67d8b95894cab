//! Priority verification: prove from device placement that the scoped device group is not outranked.
//!
//! [`priority_once`] is one level-triggered pass: list the machines carrying the tag (one MDE
//! request), note the tag time of machines seen tagged for the first time, read every tag time
//! from the state database, and run the pure [`check::check_priority`]. The caller feeds the
//! findings to the alerter (`check::observation`) and records the pass.

pub mod check;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::Scope;
use crate::defender::{self, DefenderClient};
use crate::desired::DesiredState;
use crate::model::{Machine, MachineId};
use crate::scope::{self, DesiredDeviceRef, Unresolved};
use crate::state::{State, StateError};

use check::{Finding, FindingKind, MissingTag, Placement, Sighting, TaggedMachine};

/// What a pass takes besides the tenant: the resolved desired devices (for "missing tag"; `None`
/// when the desired state is not available, e.g. invalid) and the incident poller's sightings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorityInput<'a> {
    pub desired_devices: Option<&'a [DesiredDeviceRef]>,
    pub sightings: &'a [Sighting],
}

/// The outcome of one pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityReport {
    pub findings: Vec<Finding>,
    /// Machines carrying the tag.
    pub tagged: usize,
    /// Machines seen tagged for the first time in this pass (their grace starts now).
    pub newly_seen: usize,
    pub counts: Counts,
}

/// Machines per finding kind, for `check` perfdata and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub in_group: usize,
    pub outranked: usize,
    pub unmatched: usize,
    pub unknown: usize,
    pub pending: usize,
    pub missing_tag: usize,
}

impl Counts {
    pub fn of(findings: &[Finding]) -> Self {
        let mut c = Counts::default();
        for f in findings {
            let slot = match f.kind {
                FindingKind::Ok => &mut c.in_group,
                FindingKind::Outranked { .. } => &mut c.outranked,
                FindingKind::TagNotMatched => &mut c.unmatched,
                FindingKind::PlacementUnknown => &mut c.unknown,
                FindingKind::Pending => &mut c.pending,
                FindingKind::MissingTag => &mut c.missing_tag,
            };
            *slot += f.count;
        }
        c
    }
}

/// Why a priority pass failed (the next tick tries again).
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("priority check: cannot list the machines tagged {tag:?}: {source}")]
    ListTagged {
        tag: String,
        // Boxed: the client's error is large, and every `Result` of a pass carries its size.
        #[source]
        source: Box<defender::Error>,
    },
    #[error("priority check: {0}")]
    State(#[from] StateError),
}

/// One priority pass at `now`.
///
/// Idempotent: it changes nothing in the tenant, and its only write, the first-seen tag times,
/// keeps the earliest time (`note_tagged`), so a pass that runs again after a crash between the
/// note and the check gives the same findings.
pub async fn priority_once(
    defender: &DefenderClient,
    state: &State,
    scope: &Scope,
    input: PriorityInput<'_>,
    now: DateTime<Utc>,
) -> Result<PriorityReport, PriorityError> {
    priority_pass(defender, state, scope, input, now, FirstSeen::Record).await
}

/// The same pass for a reader beside the daemon (`check`), on a read-only state database:
/// nothing is written, and a tagged machine the daemon has not seen yet counts as first seen
/// `now` (inside the propagation grace), exactly as the daemon's next pass would record it.
pub async fn priority_peek(
    defender: &DefenderClient,
    state: &State,
    scope: &Scope,
    input: PriorityInput<'_>,
    now: DateTime<Utc>,
) -> Result<PriorityReport, PriorityError> {
    priority_pass(defender, state, scope, input, now, FirstSeen::Assume).await
}

/// Whether a pass records the first-seen tag times it learns or only assumes them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstSeen {
    Record,
    Assume,
}

/// [`priority_once`] on machines the caller already read: `tagged` must be every machine
/// carrying the scoped tag, with its device group. The daemon reads the machine list once for
/// both the desired devices and this check (see [`machines_for_check`]), so it never holds
/// two lists nor pays for a second read.
pub fn priority_once_with(
    state: &State,
    scope: &Scope,
    input: PriorityInput<'_>,
    tagged: Vec<Machine>,
    now: DateTime<Utc>,
) -> Result<PriorityReport, PriorityError> {
    check_tagged(state, scope, input, tagged, now, FirstSeen::Record)
}

/// Every machine in one read, for a pass that resolves desired devices and checks the tagged
/// machines' placement: each tagged machine whole, each other machine reduced to what
/// resolution reads (`machines_for_scope`'s form). Returns the desired devices resolved
/// against all of them, and the tagged machines.
pub async fn machines_for_check(
    defender: &DefenderClient,
    desired: &DesiredState,
    tag: &str,
) -> Result<(Vec<DesiredDeviceRef>, Vec<Machine>), PriorityError> {
    let all =
        defender
            .machines_for_check(tag)
            .await
            .map_err(|source| PriorityError::ListTagged {
                tag: tag.to_string(),
                source: Box::new(source),
            })?;
    let (devices, _) = resolve_devices(desired, &all);
    Ok((devices, scope::tagged_in(all, tag)))
}

async fn priority_pass(
    defender: &DefenderClient,
    state: &State,
    scope: &Scope,
    input: PriorityInput<'_>,
    now: DateTime<Utc>,
    first_seen: FirstSeen,
) -> Result<PriorityReport, PriorityError> {
    let machines = defender
        .machines_by_tag(&scope.device_tag)
        .await
        .map_err(|source| PriorityError::ListTagged {
            tag: scope.device_tag.clone(),
            source: Box::new(source),
        })?;
    check_tagged(state, scope, input, machines, now, first_seen)
}

/// The pass once the tagged machines are read: first-seen tag times, then the pure check.
fn check_tagged(
    state: &State,
    scope: &Scope,
    input: PriorityInput<'_>,
    machines: Vec<Machine>,
    now: DateTime<Utc>,
    first_seen: FirstSeen,
) -> Result<PriorityReport, PriorityError> {
    let ids: Vec<MachineId> = machines.iter().map(|m| m.id.clone()).collect();
    let mut since = state.tagged_since_all()?;
    let unseen: Vec<MachineId> = ids
        .iter()
        .filter(|id| !since.contains_key(*id))
        .cloned()
        .collect();
    if !unseen.is_empty() {
        if first_seen == FirstSeen::Record {
            state.note_tagged_many(&unseen, now)?;
        }
        since.extend(unseen.iter().map(|id| (id.clone(), now)));
    }
    if first_seen == FirstSeen::Record {
        state.forget_untagged(&ids)?;
    }
    drop(ids);
    let tagged = machines.len();
    let placement = placement(scope, machines, &since, input);
    drop(since);
    let findings = check::check_priority(&placement, now);
    Ok(PriorityReport {
        counts: Counts::of(&findings),
        findings,
        tagged,
        newly_seen: unseen.len(),
    })
}

/// The pure check's input from what the pass read. The machines are consumed: each one's
/// device group name moves into its `TaggedMachine` rather than being copied, so the pass
/// never holds the tagged machines twice (50,000 of them at the scale the daemon is sized for).
fn placement(
    scope: &Scope,
    tagged: Vec<Machine>,
    since: &HashMap<MachineId, DateTime<Utc>>,
    input: PriorityInput<'_>,
) -> Placement {
    let tagged_ids: HashSet<&MachineId> = tagged.iter().map(|m| &m.id).collect();
    let missing_tag = input
        .desired_devices
        .unwrap_or_default()
        .iter()
        .filter(|d| !tagged_ids.contains(&d.id))
        .map(|d| MissingTag {
            id: d.id.clone(),
            label: d.label.clone(),
        })
        .collect();
    drop(tagged_ids);
    Placement {
        device_group_name: scope.device_group_name.clone(),
        propagation_grace: TimeDelta::from_std(scope.propagation_grace).unwrap_or(TimeDelta::MAX),
        tagged: tagged
            .into_iter()
            .map(|m| {
                let at = since.get(&m.id).copied();
                TaggedMachine {
                    label: m
                        .dns_name
                        .as_ref()
                        .map_or_else(|| m.id.to_string(), |d| d.to_string()),
                    id: m.id,
                    rbac_group_name: m.rbac_group_name,
                    tagged_since: at,
                }
            })
            .collect(),
        missing_tag,
        sightings: input.sightings.to_vec(),
    }
}

/// Resolves the desired devices against the machine list with [`scope::resolve_devices`], the
/// resolver the reconcile pass uses: a machine id must exist, a DNS name or an Entra device id
/// (both compared lower-case) must name exactly one machine. Pure. Used by `check` and the
/// daemon, which read the machine list themselves.
pub fn resolve_devices(
    desired: &DesiredState,
    machines: &[Machine],
) -> (Vec<DesiredDeviceRef>, Vec<Unresolved>) {
    scope::resolve_devices(&desired.devices, machines)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{AadDeviceId, DnsName};
    use crate::scope::UnresolvedKind;

    fn machine(n: u32, dns: &str, aad: Option<&str>) -> Machine {
        Machine {
            id: MachineId::parse(&format!("{n:040x}")).unwrap(),
            dns_name: Some(DnsName::parse(dns).unwrap()),
            aad_device_id: aad.map(|a| AadDeviceId::parse(a).unwrap()),
            os_platform: None,
            tags: Vec::new(),
            rbac_group_id: None,
            rbac_group_name: None,
        }
    }

    #[test]
    fn resolves_desired_devices_by_id_name_and_entra_id() {
        let aad = "1a2b3c4d-1111-2222-3333-444455556666";
        let machines = vec![
            machine(1, "ws-01.contoso.local", None),
            machine(2, "dup.contoso.local", None),
            machine(3, "dup.contoso.local", Some(aad)),
        ];
        let text = format!(
            "devices = [\"WS-01.contoso.local\", \"{:040x}\", \"{aad}\", \"dup.contoso.local\", \
             \"gone.contoso.local\", \"{:040x}\"]\n",
            2, 9
        );
        let d = crate::desired::parse_str(
            Path::new("d.toml"),
            &text,
            chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            crate::desired::Mode::Strict,
        )
        .unwrap();
        let (ok, bad) = resolve_devices(&d.state, &machines);
        let ok: Vec<(String, String)> = ok
            .iter()
            .map(|r| (r.id.as_str()[38..].to_string(), r.label.clone()))
            .collect();
        assert_eq!(
            ok,
            [
                ("01".to_string(), "ws-01.contoso.local".to_string()),
                ("02".into(), format!("{:040x}", 2)),
                ("03".into(), aad.to_string()),
            ]
        );
        let bad: Vec<(&str, bool)> = bad
            .iter()
            .map(|u| {
                let ambiguous = matches!(u.problem, UnresolvedKind::AmbiguousName { .. });
                (u.entry.as_str(), ambiguous)
            })
            .collect();
        assert_eq!(
            bad,
            [
                ("dup.contoso.local", true),
                ("gone.contoso.local", false),
                (format!("{:040x}", 9).as_str(), false),
            ]
        );
    }
}
