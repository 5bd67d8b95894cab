//! The effective scope a verdict is judged against: users and devices, live or from the desired
//! state, with the lookups that match evidence to them.

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
    pub os_platform: Option<std::sync::Arc<str>>,
    /// Where MDE currently places the machine (`rbacGroupName`); used when the evidence does
    /// not say.
    pub rbac_group_name: Option<std::sync::Arc<str>>,
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
///
/// Users and devices are kept once, in two lists; the lookups are lists of positions into them
/// sorted by the key they look up (4 bytes per entry), searched by bisection. Maps keyed by
/// copies of the id strings held about 100 bytes per entry and key, which at 100,000 members
/// and 50,000 machines was tens of megabytes for the whole incident pass.
#[derive(Debug, Clone)]
pub struct Scope {
    source: ScopeSource,
    pub(super) device_group: String,
    pub(super) propagation_grace: TimeDelta,
    users: Vec<ScopedUser>,
    /// Users with an object id, by id.
    by_user_id: Vec<u32>,
    /// Users with a UPN, by UPN (stored lower-case).
    by_upn: Vec<u32>,
    devices: Vec<ScopedDevice>,
    by_machine: Vec<u32>,
    by_dns: Vec<u32>,
    by_aad: Vec<u32>,
    /// Devices with a DNS name, by its first label.
    by_host: Vec<u32>,
}

/// Positions `0..len` whose `key` is set, sorted by it. Stable, so among equal keys the later
/// position comes later (the lookups take the last one, as a map filled in order would).
fn index<'a, T: 'a>(items: &'a [T], key: impl Fn(&'a T) -> Option<&'a str>) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..items.len())
        .filter(|&i| key(&items[i]).is_some())
        .map(|i| u32::try_from(i).expect("fewer than 4 billion scope entries"))
        .collect();
    idx.sort_by(|&a, &b| key(&items[a as usize]).cmp(&key(&items[b as usize])));
    idx.shrink_to_fit();
    idx
}

/// The positions in `idx` whose key is `want`, in insertion order.
fn lookup<'a, T: 'a>(
    items: &'a [T],
    idx: &'a [u32],
    key: impl Fn(&'a T) -> Option<&'a str>,
    want: &str,
) -> &'a [u32] {
    let at = |i: &u32| key(&items[*i as usize]).unwrap_or_default();
    let from = idx.partition_point(|i| at(i) < want);
    let to = from + idx[from..].partition_point(|i| at(i) == want);
    &idx[from..to]
}

fn user_id(u: &ScopedUser) -> Option<&str> {
    u.id.as_ref().map(UserId::as_str)
}

fn user_upn(u: &ScopedUser) -> Option<&str> {
    u.upn.as_ref().map(Upn::as_str)
}

fn machine_id(d: &ScopedDevice) -> Option<&str> {
    d.id.as_ref().map(MachineId::as_str)
}

fn dns(d: &ScopedDevice) -> Option<&str> {
    d.dns_name.as_ref().map(DnsName::as_str)
}

fn aad(d: &ScopedDevice) -> Option<&str> {
    d.aad_device_id.as_ref().map(AadDeviceId::as_str)
}

fn host(d: &ScopedDevice) -> Option<&str> {
    dns(d).map(|n| n.split('.').next().unwrap_or_default())
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
        let mut users: Vec<ScopedUser> = users.into_iter().collect();
        users.shrink_to_fit();
        let mut devices: Vec<ScopedDevice> = devices.into_iter().collect();
        devices.shrink_to_fit();
        Scope {
            source,
            device_group: device_group.into(),
            // A grace beyond chrono's range (~292 billion years) is as good as forever.
            propagation_grace: TimeDelta::from_std(propagation_grace).unwrap_or(TimeDelta::MAX),
            by_user_id: index(&users, user_id),
            by_upn: index(&users, user_upn),
            by_machine: index(&devices, machine_id),
            by_dns: index(&devices, dns),
            by_aad: index(&devices, aad),
            by_host: index(&devices, host),
            users,
            devices,
        }
    }

    /// The live scope: the user group's direct members and the machines carrying the tag, each
    /// with when it was tagged (or first seen tagged) where known. Members that are not users
    /// (nested groups, devices) cover nobody: the service ignores them. Both are taken, not
    /// copied: the scope is the one copy of them for the incident pass.
    pub fn live(
        device_group: impl Into<String>,
        propagation_grace: std::time::Duration,
        members: impl IntoIterator<Item = GroupMember>,
        tagged: impl IntoIterator<Item = (Machine, Option<DateTime<Utc>>)>,
    ) -> Self {
        let users = members.into_iter().filter_map(|member| match member {
            GroupMember::User { id, upn } => Some(ScopedUser { id: Some(id), upn }),
            GroupMember::Other { .. } => None,
        });
        let devices = tagged.into_iter().map(|(m, added_at)| ScopedDevice {
            id: Some(m.id),
            dns_name: m.dns_name,
            aad_device_id: m.aad_device_id,
            os_platform: m.os_platform,
            rbac_group_name: m.rbac_group_name,
            added_at,
        });
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
        let d = &self.devices;
        let by = |idx: &[u32], key: fn(&ScopedDevice) -> Option<&str>, want: &Option<String>| {
            want.as_deref()
                .and_then(|w| lookup(d, idx, key, w).last().copied())
        };
        by(&self.by_machine, machine_id, &asset.mde_id)
            .or_else(|| by(&self.by_aad, aad, &asset.aad_id))
            .or_else(|| by(&self.by_dns, dns, &asset.dns_name))
            .or_else(|| self.by_bare_host(asset.dns_name.as_deref()))
            .map(|index| &self.devices[index as usize])
    }

    /// Evidence may name a device by its host name alone (`hostName` without a domain): it
    /// matches the one listed DNS name with that first label, never one of several.
    fn by_bare_host(&self, name: Option<&str>) -> Option<u32> {
        name.filter(|name| !name.contains('.')).and_then(|h| {
            match lookup(&self.devices, &self.by_host, host, h) {
                [one] => Some(*one),
                _ => None,
            }
        })
    }

    /// A member matches by object id; failing that, by UPN (case-insensitively) unless both
    /// sides know an object id and the ids differ: a UPN reused by a different account must not
    /// inherit the old account's coverage.
    /// Every UPN or address seen for the identity is tried.
    pub(super) fn has_user(&self, id: Option<&UserId>, upns: &[String]) -> bool {
        let u = &self.users;
        if id.is_some_and(|id| !lookup(u, &self.by_user_id, user_id, id.as_str()).is_empty()) {
            return true;
        }
        upns.iter().any(|upn| {
            // The last user listed with the UPN decides, as a map filled in order would.
            match lookup(u, &self.by_upn, user_upn, upn).last() {
                Some(&i) => match &u[i as usize].id {
                    Some(member_id) => id.is_none_or(|id| id == member_id),
                    None => true,
                },
                None => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: u32, dns: &str, os: &str) -> ScopedDevice {
        ScopedDevice {
            id: Some(MachineId::parse(&format!("{id:040x}")).unwrap()),
            dns_name: Some(DnsName::parse(dns).unwrap()),
            os_platform: Some(os.into()),
            ..ScopedDevice::default()
        }
    }

    fn facts(mde: Option<u32>, dns: Option<&str>) -> DeviceFacts {
        DeviceFacts {
            mde_id: mde.map(|n| format!("{n:040x}")),
            dns_name: dns.map(str::to_string),
            ..DeviceFacts::default()
        }
    }

    fn user(id: u32, upn: &str) -> ScopedUser {
        ScopedUser {
            id: Some(UserId::parse(&format!("{id:08x}-0000-4000-8000-000000000000")).unwrap()),
            upn: Some(Upn::parse(upn).unwrap()),
        }
    }

    #[test]
    fn lookups_take_the_last_listed_and_a_shared_host_name_matches_nobody() {
        let scope = Scope::new(
            ScopeSource::Live,
            "g",
            std::time::Duration::ZERO,
            [
                user(1, "ann@x.com"),
                user(2, "bob@x.com"),
                user(3, "ann@x.com"),
            ],
            [
                device(1, "ws-1.a.local", "first"),
                device(2, "ws-2.a.local", "x"),
                device(1, "ws-9.a.local", "second"),
                device(3, "ws-2.b.local", "y"),
            ],
        );
        let os = |f: DeviceFacts| scope.find_device(&f).and_then(|d| d.os_platform.clone());
        // A machine id listed twice: the later listing, as a map filled in order.
        assert_eq!(os(facts(Some(1), None)).as_deref(), Some("second"));
        assert_eq!(os(facts(None, Some("ws-2.b.local"))).as_deref(), Some("y"));
        assert_eq!(os(facts(None, Some("ws-9"))).as_deref(), Some("second"));
        // Two devices named `ws-2.…`: the bare host name is ambiguous.
        assert_eq!(os(facts(None, Some("ws-2"))), None);
        assert_eq!(os(facts(Some(7), Some("ws-7.a.local"))), None);

        let id = |n: u32| user(n, "z@x.com").id.unwrap();
        assert!(scope.has_user(Some(&id(2)), &[]));
        assert!(!scope.has_user(Some(&id(9)), &[]));
        // The UPN belongs to the last member listed with it (3): another id does not match.
        assert!(scope.has_user(Some(&id(3)), &["ann@x.com".into()]));
        assert!(!scope.has_user(Some(&id(8)), &["ann@x.com".into()]));
        assert!(scope.has_user(None, &["ann@x.com".into()]));
        assert!(!scope.has_user(None, &["cat@x.com".into()]));
    }
}
