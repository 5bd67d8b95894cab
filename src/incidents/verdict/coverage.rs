//! Coverage of each impacted asset: a device by its place in the scope and its machine groups,
//! a user by membership.

use chrono::{DateTime, Utc};

use crate::model::{Incident, UNASSIGNED_GROUP};

use super::assets::{DeviceFacts, UserFacts, collect, present};
use super::{
    Asset, AssetKind, AssetReason, PlatformClass, Policy, PriorityFinding, PriorityProblem, Reason,
    Scope, ScopeSource, ScopedDevice,
};

/// Judges every impacted asset; what the evidence holds that cannot be judged (unreadable
/// items, local accounts) goes to `notes`.
pub(super) fn judge_assets(
    incident: &Incident,
    scope: &Scope,
    policy: &Policy,
    now: DateTime<Utc>,
    findings: &mut Vec<PriorityFinding>,
    notes: &mut Vec<Reason>,
) -> Vec<Asset> {
    let collected = collect(incident, policy);
    let mut assets: Vec<Asset> = collected
        .devices
        .into_iter()
        .map(|device| judge_device(device, scope, policy, now, findings))
        .collect();
    let mut user_assets: Vec<Asset> = collected
        .users
        .into_iter()
        .map(|user| judge_user(user, scope))
        .collect();
    user_assets.sort_by(|a, b| a.id.cmp(&b.id));
    assets.extend(user_assets);
    findings.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    notes.extend(
        collected
            .untyped
            .into_iter()
            .map(|(alert, count)| Reason::UntypedEvidence { alert, count }),
    );
    if collected.local_accounts > 0 {
        notes.push(Reason::LocalAccounts {
            count: collected.local_accounts,
        });
    }
    assets
}

fn judge_user(user: UserFacts, scope: &Scope) -> Asset {
    let covered = scope.has_user(user.id.as_ref(), &user.upns);
    let first_upn = user.upns.first().cloned();
    // `collect` only keeps identities with an object id or a UPN.
    let id = user
        .id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .or_else(|| first_upn.clone())
        .unwrap_or_default();
    let reason = match (covered, scope.source()) {
        (false, _) => AssetReason::NotInScope,
        (true, ScopeSource::Live) => AssetReason::DirectMember,
        (true, ScopeSource::Desired) => AssetReason::Listed,
    };
    Asset {
        kind: AssetKind::User,
        id,
        name: first_upn.or(user.display_name),
        platform: None,
        covered,
        reason,
    }
}

fn judge_device(
    device: DeviceFacts,
    scope: &Scope,
    policy: &Policy,
    now: DateTime<Utc>,
    findings: &mut Vec<PriorityFinding>,
) -> Asset {
    let scoped = scope.find_device(&device);
    let platform = device
        .os_platform
        .clone()
        .or_else(|| scoped.and_then(|s| present(s.os_platform.as_deref())));
    let placement = device
        .rbac_group_name
        .clone()
        .or_else(|| scoped.and_then(|s| present(s.rbac_group_name.as_deref())));
    let in_group_by_placement = placement
        .as_deref()
        .is_some_and(|group| group.eq_ignore_ascii_case(&scope.device_group));
    let platform_ok = policy
        .covered_platforms
        .contains(&PlatformClass::classify(platform.as_deref()));
    let id = device
        .mde_id
        .clone()
        .or_else(|| device.aad_id.clone())
        .or_else(|| device.dns_name.clone())
        .expect("a collected device has at least one identifier");

    let offline = scope.source() == ScopeSource::Desired;
    let reason = if in_group_by_placement || (scoped.is_some() && placement.is_none()) {
        if !platform_ok {
            AssetReason::PlatformNotCovered {
                platform: platform.clone(),
            }
        } else if offline && !in_group_by_placement {
            // Offline nothing was observed about the device group: only the listing is known.
            AssetReason::Listed
        } else {
            AssetReason::InDeviceGroup {
                group: scope.device_group.clone(),
            }
        }
    } else if let (true, Some(_), Some(group)) = (offline, scoped, placement.as_deref()) {
        // Offline neither the tag nor the group ranks were read: only the evidence's placement.
        AssetReason::ElsewhereAtAlert {
            group: group.to_owned(),
        }
    } else if let (Some(scoped), Some(group)) = (scoped, placement.as_deref()) {
        misplaced(scoped, group, &id, &device, scope, now, findings)
    } else {
        AssetReason::NotInScope
    };
    Asset {
        kind: AssetKind::Device,
        covered: matches!(
            reason,
            AssetReason::InDeviceGroup { .. } | AssetReason::Listed
        ),
        id,
        // Evidence often omits the DNS name; the tagged machine's name helps the reader.
        name: device
            .dns_name
            .or_else(|| scoped.and_then(|s| s.dns_name.as_ref().map(|d| d.to_string()))),
        platform,
        reason,
    }
}

/// A device in scope that MDE places in another group: still propagating within the grace
/// period, otherwise a priority finding (outranked, or the rule does not match the tag).
fn misplaced(
    scoped: &ScopedDevice,
    group: &str,
    id: &str,
    device: &DeviceFacts,
    scope: &Scope,
    now: DateTime<Utc>,
    findings: &mut Vec<PriorityFinding>,
) -> AssetReason {
    let age = scoped.added_at.map(|at| now.signed_duration_since(at));
    if let Some(age) = age.filter(|age| *age < scope.propagation_grace) {
        // A clock skew may put `added_at` slightly in the future: say 0 minutes, not -1.
        return AssetReason::Propagating {
            minutes: age.num_minutes().max(0),
        };
    }
    let (problem, reason) = if group.eq_ignore_ascii_case(UNASSIGNED_GROUP) {
        (PriorityProblem::TagNotMatched, AssetReason::TagNotMatched)
    } else {
        (
            PriorityProblem::Outranked {
                group: group.to_owned(),
            },
            AssetReason::Outranked {
                group: group.to_owned(),
            },
        )
    };
    findings.push(PriorityFinding {
        device_id: id.to_owned(),
        dns_name: device.dns_name.clone(),
        problem,
    });
    reason
}
