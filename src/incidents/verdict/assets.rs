//! Impacted assets: what the evidence of one incident says about each device and user, merged
//! across alerts.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Every UPN and mailbox address seen for the identity, lower-case, first seen first: a
    /// mailbox's primary address need not be the account's UPN, and either may be the one a
    /// desired state lists.
    pub(super) upns: Vec<String>,
    pub(super) display_name: Option<String>,
}

impl UserFacts {
    fn add_upns(&mut self, upns: Vec<String>) {
        for upn in upns {
            if !self.upns.contains(&upn) {
                self.upns.push(upn);
            }
        }
    }
}

/// Everything the evidence of one incident gives: the impacted devices and users, and what
/// could not be read or matched, so the verdict can say so.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub(super) devices: Vec<DeviceFacts>,
    pub(super) users: Vec<UserFacts>,
    /// Alert id → how many of its evidence items carry no `@odata.type` (unreadable).
    pub(super) untyped: BTreeMap<String, usize>,
    /// Local or system accounts (only `accountName`/`domainName`), distinct: impacted, but
    /// nothing a user group can hold.
    pub(super) local_accounts: usize,
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

/// The identity an account (and any other addresses seen with it) names; `Err` with the
/// lower-case `domain\name` of a local or system account, which cannot be matched to the group.
fn user_facts(
    account: Option<&UserAccount>,
    other_upns: &[Option<&str>],
) -> Result<UserFacts, Option<String>> {
    let id = account
        .and_then(|a| a.azure_ad_user_id.as_deref())
        .and_then(|id| UserId::parse(id.trim()).ok());
    let mut facts = UserFacts {
        id,
        upns: Vec::new(),
        display_name: present(account.and_then(|a| a.display_name.as_deref())),
    };
    let upns = std::iter::once(account.and_then(|a| a.user_principal_name.as_deref()))
        .chain(other_upns.iter().copied())
        .filter_map(norm)
        .collect();
    facts.add_upns(upns);
    if facts.id.is_some() || !facts.upns.is_empty() {
        return Ok(facts);
    }
    let local = account
        .and_then(|a| norm(a.account_name.as_deref()))
        .map(|name| {
            let domain = account.and_then(|a| norm(a.domain_name.as_deref()));
            format!("{}\\{name}", domain.unwrap_or_default())
        });
    Err(local)
}

/// Collects the impacted devices and users of every alert, deduplicated, and what evidence
/// could not be read or matched.
pub(super) fn collect(incident: &Incident, policy: &Policy) -> Collected {
    let mut devices: BTreeMap<String, DeviceFacts> = BTreeMap::new();
    let mut users: Vec<UserFacts> = Vec::new();
    let mut locals: BTreeSet<String> = BTreeSet::new();
    let mut untyped: BTreeMap<String, usize> = BTreeMap::new();
    let mut add_device = |facts: DeviceFacts| {
        if let Some(key) = facts.key() {
            devices.entry(key).or_default().merge(facts);
        }
    };
    let mut add_user = |found: Result<UserFacts, Option<String>>| match found {
        Ok(facts) => users.push(facts),
        Err(local) => locals.extend(local),
    };
    for alert in &incident.alerts {
        for evidence in &alert.evidence {
            if let EvidenceKind::Other { odata_type } = &evidence.kind
                && odata_type.trim().is_empty()
            {
                // Without `@odata.type` nothing says what the item is: never lost silently.
                *untyped.entry(alert.id.clone()).or_default() += 1;
                continue;
            }
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
                EvidenceKind::User { account } => add_user(user_facts(Some(account), &[])),
                EvidenceKind::Mailbox {
                    primary_address,
                    upn,
                    display_name,
                    account,
                } => {
                    let other = [upn.as_deref(), primary_address.as_deref()];
                    add_user(user_facts(account.as_ref(), &other).map(|mut facts| {
                        facts.display_name = facts
                            .display_name
                            .or_else(|| present(display_name.as_deref()));
                        facts
                    }));
                }
                EvidenceKind::Process {
                    account,
                    mde_device_id,
                } => {
                    if account.is_some() {
                        add_user(user_facts(account.as_ref(), &[]));
                    }
                    add_device(DeviceFacts {
                        mde_id: norm(mde_device_id.as_deref()),
                        ..DeviceFacts::default()
                    });
                }
                EvidenceKind::File { mde_device_id } => add_device(DeviceFacts {
                    mde_id: norm(mde_device_id.as_deref()),
                    ..DeviceFacts::default()
                }),
                EvidenceKind::Other { .. } => {}
            }
        }
    }
    Collected {
        devices: devices.into_values().collect(),
        users: dedup_users(users),
        untyped,
        local_accounts: locals.len(),
    }
}

/// Merges user identities: by object id, then UPN-only identities into an id-bearing one with
/// the same UPN, then the rest by UPN.
fn dedup_users(users: Vec<UserFacts>) -> Vec<UserFacts> {
    let mut merged: Vec<UserFacts> = Vec::new();
    let (with_id, upn_only): (Vec<_>, Vec<_>) = users.into_iter().partition(|u| u.id.is_some());
    for user in with_id.into_iter().chain(upn_only) {
        let same = merged.iter_mut().find(|seen| match (&user.id, &seen.id) {
            (Some(a), Some(b)) => a == b,
            (None, _) => user.upns.iter().any(|upn| seen.upns.contains(upn)),
            (Some(_), None) => false,
        });
        match same {
            Some(seen) => {
                seen.add_upns(user.upns);
                if seen.display_name.is_none() {
                    seen.display_name = user.display_name;
                }
            }
            None => merged.push(user),
        }
    }
    merged
}
