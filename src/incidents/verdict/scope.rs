//! The effective scope a verdict is judged against: users and devices, live or from the desired
//! state, with the lookups that match evidence to them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::model::{AadDeviceId, DnsName, GroupMember, Machine, MachineId, Upn, UserId};

use super::assets::DeviceFacts;

/// A user in scope: a direct member of the scoped user group (live), or a user listed in the
/// desired state (offline). At least one of the two identifiers should be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedUser {
    pub id: Option<UserId>,
    pub upn: Option<Upn>,
}

/// A device in scope: a machine carrying the scoped tag (live), or a device listed in the
/// desired state (offline, where only the identifier it was listed by is known).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopedDevice {
    pub id: Option<MachineId>,
    pub dns_name: Option<DnsName>,
    pub aad_device_id: Option<AadDeviceId>,
    /// The platform MDE reports for the machine; used when the evidence does not carry one.
    pub os_platform: Option<String>,
    /// Where MDE currently places the machine (`rbacGroupName`); used when the evidence does
    /// not say.
    pub rbac_group_name: Option<String>,
    /// When the machine was tagged (by dexscope) or first seen tagged; drives the propagation
    /// grace period. `None` when unknown: then no grace is given.
    pub added_at: Option<DateTime<Utc>>,
}

impl ScopedDevice {
    /// A tagged MDE machine as the defender client lists it.
    pub fn from_machine(machine: &Machine, added_at: Option<DateTime<Utc>>) -> Self {
        Self {
            id: Some(machine.id.clone()),
            dns_name: machine.dns_name.clone(),
            aad_device_id: machine.aad_device_id.clone(),
            os_platform: machine.os_platform.clone(),
            rbac_group_name: machine.rbac_group_name.clone(),
            added_at,
        }
    }
}

/// One entry of a desired state's `users` list, as far as the verdict cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredUser {
    Upn(Upn),
    Id(UserId),
}

/// One entry of a desired state's `devices` list, as far as the verdict cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredDevice {
    Machine(MachineId),
    Dns(DnsName),
    AadDevice(AadDeviceId),
}

/// Whether the scope was read from the tenant or built from a desired-state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeSource {
    Live,
    Desired,
}

/// The effective scope an incident is judged against.
#[derive(Debug, Clone)]
pub struct Scope {
    source: ScopeSource,
    pub(super) device_group: String,
    pub(super) propagation_grace: TimeDelta,
    user_ids: HashSet<UserId>,
    /// Lower-case UPN → the member's object id where known (`None` offline, or when the
    /// member read did not return it).
    user_upns: HashMap<String, Option<UserId>>,
    devices: Vec<ScopedDevice>,
    by_machine: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    by_aad: HashMap<String, usize>,
    /// First label of a listed DNS name → the device, `None` when two devices share it.
    by_host: HashMap<String, Option<usize>>,
}

impl Scope {
    /// A scope from explicit users and devices. `device_group` is the configured MDE device group
    /// name; `propagation_grace` is how long a fresh scope change may take to show up.
    pub fn new(
        source: ScopeSource,
        device_group: impl Into<String>,
        propagation_grace: std::time::Duration,
        users: impl IntoIterator<Item = ScopedUser>,
        devices: impl IntoIterator<Item = ScopedDevice>,
    ) -> Self {
        let mut scope = Scope {
            source,
            device_group: device_group.into(),
            // A grace beyond chrono's range (~292 billion years) is as good as forever.
            propagation_grace: TimeDelta::from_std(propagation_grace).unwrap_or(TimeDelta::MAX),
            user_ids: HashSet::new(),
            user_upns: HashMap::new(),
            devices: Vec::new(),
            by_machine: HashMap::new(),
            by_dns: HashMap::new(),
            by_aad: HashMap::new(),
            by_host: HashMap::new(),
        };
        for user in users {
            if let Some(id) = &user.id {
                scope.user_ids.insert(id.clone());
            }
            if let Some(upn) = &user.upn {
                scope
                    .user_upns
                    .insert(upn.as_str().to_lowercase(), user.id.clone());
            }
        }
        for device in devices {
            let index = scope.devices.len();
            if let Some(id) = &device.id {
                scope.by_machine.insert(id.as_str().to_owned(), index);
            }
            if let Some(dns) = &device.dns_name {
                scope.by_dns.insert(dns.as_str().to_owned(), index);
                let host = dns
                    .as_str()
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                scope
                    .by_host
                    .entry(host)
                    .and_modify(|seen| *seen = seen.filter(|&i| i == index))
                    .or_insert(Some(index));
            }
            if let Some(aad) = &device.aad_device_id {
                scope.by_aad.insert(aad.as_str().to_owned(), index);
            }
            scope.devices.push(device);
        }
        scope
    }

    /// The live scope: the user group's direct members and the machines carrying the tag, each
    /// with when it was tagged (or first seen tagged) where known. Members that are not users
    /// (nested groups, devices) cover nobody: the service ignores them.
    pub fn live(
        device_group: impl Into<String>,
        propagation_grace: std::time::Duration,
        members: &[GroupMember],
        tagged: &[(Machine, Option<DateTime<Utc>>)],
    ) -> Self {
        let users = members.iter().filter_map(|member| match member {
            GroupMember::User { id, upn } => Some(ScopedUser {
                id: Some(id.clone()),
                upn: upn.clone(),
            }),
            GroupMember::Other { .. } => None,
        });
        let devices = tagged
            .iter()
            .map(|(machine, added_at)| ScopedDevice::from_machine(machine, *added_at));
        Self::new(
            ScopeSource::Live,
            device_group,
            propagation_grace,
            users,
            devices,
        )
    }

    /// The offline scope of `verdict --desired`: what the desired state lists, taken as if it
    /// were already applied. Nothing is known about placement or timing, so no grace applies.
    pub fn offline(
        device_group: impl Into<String>,
        users: &[DesiredUser],
        devices: &[DesiredDevice],
    ) -> Self {
        let users = users.iter().map(|user| match user {
            DesiredUser::Upn(upn) => ScopedUser {
                id: None,
                upn: Some(upn.clone()),
            },
            DesiredUser::Id(id) => ScopedUser {
                id: Some(id.clone()),
                upn: None,
            },
        });
        let devices = devices.iter().map(|device| match device {
            DesiredDevice::Machine(id) => ScopedDevice {
                id: Some(id.clone()),
                ..ScopedDevice::default()
            },
            DesiredDevice::Dns(dns) => ScopedDevice {
                dns_name: Some(dns.clone()),
                ..ScopedDevice::default()
            },
            DesiredDevice::AadDevice(aad) => ScopedDevice {
                aad_device_id: Some(aad.clone()),
                ..ScopedDevice::default()
            },
        });
        Self::new(
            ScopeSource::Desired,
            device_group,
            std::time::Duration::ZERO,
            users,
            devices,
        )
    }

    pub fn source(&self) -> ScopeSource {
        self.source
    }

    pub fn device_group(&self) -> &str {
        &self.device_group
    }

    pub(super) fn find_device(&self, asset: &DeviceFacts) -> Option<&ScopedDevice> {
        let by = |map: &HashMap<String, usize>, key: &Option<String>| {
            key.as_ref().and_then(|k| map.get(k)).copied()
        };
        by(&self.by_machine, &asset.mde_id)
            .or_else(|| by(&self.by_aad, &asset.aad_id))
            .or_else(|| by(&self.by_dns, &asset.dns_name))
            .or_else(|| self.by_bare_host(asset.dns_name.as_deref()))
            .map(|index| &self.devices[index])
    }

    /// Evidence may name a device by its host name alone (`hostName` without a domain): it
    /// matches the one listed DNS name with that first label, never one of several.
    fn by_bare_host(&self, name: Option<&str>) -> Option<usize> {
        name.filter(|name| !name.contains('.'))
            .and_then(|host| self.by_host.get(host).copied().flatten())
    }

    /// A member matches by object id; failing that, by UPN (case-insensitively) unless both
    /// sides know an object id and the ids differ: a UPN reused by a different account must not
    /// inherit the old account's coverage.
    /// Every UPN or address seen for the identity is tried.
    pub(super) fn has_user(&self, id: Option<&UserId>, upns: &[String]) -> bool {
        if id.is_some_and(|id| self.user_ids.contains(id)) {
            return true;
        }
        upns.iter()
            .any(|upn| match self.user_upns.get(upn.as_str()) {
                Some(Some(member_id)) => id.is_none_or(|id| id == member_id),
                Some(None) => true,
                None => false,
            })
    }
}
