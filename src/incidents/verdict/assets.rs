//! Impacted assets: what the evidence of one incident says about each device and user, merged
//! across alerts.

use std::collections::BTreeMap;

use crate::model::{EvidenceKind, Incident, UserAccount, UserId};

use super::Policy;

/// What the evidence of one incident says about one device, merged across alerts.
#[derive(Debug, Default)]
pub(super) struct DeviceFacts {
    pub(super) mde_id: Option<String>,
    pub(super) aad_id: Option<String>,
    pub(super) dns_name: Option<String>,
    pub(super) os_platform: Option<String>,
    pub(super) rbac_group_name: Option<String>,
}

impl DeviceFacts {
    /// Fills fields this evidence knows and earlier evidence did not (first value wins).
    fn merge(&mut self, other: DeviceFacts) {
        fn fill(slot: &mut Option<String>, value: Option<String>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        fill(&mut self.mde_id, other.mde_id);
        fill(&mut self.aad_id, other.aad_id);
        fill(&mut self.dns_name, other.dns_name);
        fill(&mut self.os_platform, other.os_platform);
        fill(&mut self.rbac_group_name, other.rbac_group_name);
    }

    fn key(&self) -> Option<String> {
        self.mde_id
            .as_ref()
            .map(|id| format!("mde:{id}"))
            .or_else(|| self.aad_id.as_ref().map(|id| format!("aad:{id}")))
            .or_else(|| self.dns_name.as_ref().map(|dns| format!("dns:{dns}")))
    }
}

/// What the evidence says about one user identity.
#[derive(Debug, Default)]
pub(super) struct UserFacts {
    pub(super) id: Option<UserId>,
    pub(super) upn: Option<String>,
    pub(super) display_name: Option<String>,
}

/// Trimmed, lower-cased, `None` when empty.
fn norm(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_lowercase)
}

pub(super) fn present(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn user_facts(account: Option<&UserAccount>, fallback_upn: Option<&str>) -> Option<UserFacts> {
    let id = account
        .and_then(|a| a.azure_ad_user_id.as_deref())
        .and_then(|id| UserId::parse(id.trim()).ok());
    let upn =
        norm(account.and_then(|a| a.user_principal_name.as_deref())).or_else(|| norm(fallback_upn));
    let display_name = present(account.and_then(|a| a.display_name.as_deref()));
    // A local or system account (only accountName/domainName) cannot be matched to the group.
    (id.is_some() || upn.is_some()).then_some(UserFacts {
        id,
        upn,
        display_name,
    })
}

/// Collects the impacted devices and users of every alert, deduplicated.
pub(super) fn collect(incident: &Incident, policy: &Policy) -> (Vec<DeviceFacts>, Vec<UserFacts>) {
    let mut devices: BTreeMap<String, DeviceFacts> = BTreeMap::new();
    let mut users: Vec<UserFacts> = Vec::new();
    let mut add_device = |facts: DeviceFacts| {
        if let Some(key) = facts.key() {
            devices.entry(key).or_default().merge(facts);
        }
    };
    for evidence in incident.alerts.iter().flat_map(|alert| &alert.evidence) {
        if !policy.counts_as_impacted(&evidence.roles) {
            continue;
        }
        match &evidence.kind {
            EvidenceKind::Device {
                mde_device_id,
                azure_ad_device_id,
                dns_name,
                os_platform,
                rbac_group_name,
                ..
            } => add_device(DeviceFacts {
                mde_id: norm(mde_device_id.as_deref()),
                aad_id: norm(azure_ad_device_id.as_deref()),
                dns_name: norm(dns_name.as_deref()),
                os_platform: present(os_platform.as_deref()),
                rbac_group_name: present(rbac_group_name.as_deref()),
            }),
            EvidenceKind::User { account } => users.extend(user_facts(Some(account), None)),
            EvidenceKind::Mailbox {
                primary_address,
                upn,
                display_name,
                account,
            } => {
                let fallback = upn.as_deref().or(primary_address.as_deref());
                if let Some(mut facts) = user_facts(account.as_ref(), fallback) {
                    facts.display_name = facts
                        .display_name
                        .or_else(|| present(display_name.as_deref()));
                    users.push(facts);
                }
            }
            EvidenceKind::Process {
                account,
                mde_device_id,
            } => {
                users.extend(user_facts(account.as_ref(), None));
                add_device(DeviceFacts {
                    mde_id: norm(mde_device_id.as_deref()),
                    ..DeviceFacts::default()
                });
            }
            EvidenceKind::Other { .. } => {}
        }
    }
    (devices.into_values().collect(), dedup_users(users))
}

/// Merges user identities: by object id, then UPN-only identities into an id-bearing one with
/// the same UPN, then the rest by UPN.
fn dedup_users(users: Vec<UserFacts>) -> Vec<UserFacts> {
    let mut merged: Vec<UserFacts> = Vec::new();
    let (with_id, upn_only): (Vec<_>, Vec<_>) = users.into_iter().partition(|u| u.id.is_some());
    for user in with_id.into_iter().chain(upn_only) {
        let same = merged.iter_mut().find(|seen| match (&user.id, &seen.id) {
            (Some(a), Some(b)) => a == b,
            (None, _) => user.upn.is_some() && user.upn == seen.upn,
            (Some(_), None) => false,
        });
        match same {
            Some(seen) => {
                if seen.upn.is_none() {
                    seen.upn = user.upn;
                }
                if seen.display_name.is_none() {
                    seen.display_name = user.display_name;
                }
            }
            None => merged.push(user),
        }
    }
    merged
}
