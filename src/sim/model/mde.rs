//! The simulated Defender for Endpoint: machines with interned tags, device groups ranked by
//! their rules, and placement that follows a tag or rule change only after a delay.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `rbacGroupName` of devices that match no group.
pub const UNASSIGNED_GROUP: &str = "UnassignedGroup";
/// `rbacGroupId` reported for unassigned devices.
pub const UNASSIGNED_GROUP_ID: i64 = 75;

/// The OS platforms the simulator seeds, with their MDE `osPlatform` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Os {
    Windows10,
    Windows11,
    WindowsServer2016,
    WindowsServer2019,
    WindowsServer2022,
    Linux,
    MacOs,
    Ios,
    Android,
}

impl Os {
    pub const ALL: [Os; 9] = [
        Os::Windows10,
        Os::Windows11,
        Os::WindowsServer2016,
        Os::WindowsServer2019,
        Os::WindowsServer2022,
        Os::Linux,
        Os::MacOs,
        Os::Ios,
        Os::Android,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Os::Windows10 => "Windows10",
            Os::Windows11 => "Windows11",
            Os::WindowsServer2016 => "WindowsServer2016",
            Os::WindowsServer2019 => "WindowsServer2019",
            Os::WindowsServer2022 => "WindowsServer2022",
            Os::Linux => "Linux",
            Os::MacOs => "macOS",
            Os::Ios => "iOS",
            Os::Android => "Android",
        }
    }

    pub fn parse(s: &str) -> Option<Os> {
        Os::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub id: [u8; 20],
    pub dns: Box<str>,
    pub aad_device_id: Option<Uuid>,
    pub os: Os,
    /// Interned tag ids (see [`Mde::tag_names`]).
    pub tags: Vec<u32>,
    /// Minutes before the tenant's creation the machine was first seen.
    pub first_seen_min: u32,
    /// The group id reported until a pending change takes effect.
    pub reported_group: i64,
    /// When the last tag or group-rule change touching this machine happened (ms).
    pub pending_since: Option<i64>,
}

impl Machine {
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub fn parse_machine_id(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A device group rule: each listed property must match one of its values (values OR-ed,
/// properties AND-ed, as in the portal). A rule with no property matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupRule {
    pub tags: Vec<String>,
    pub name_prefixes: Vec<String>,
    pub os_platforms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroup {
    pub id: i64,
    pub name: String,
    /// 1 is the highest.
    pub rank: u32,
    pub rule: GroupRule,
}

#[derive(Debug, Default)]
pub struct Mde {
    pub machines: Vec<Machine>,
    pub by_id: HashMap<[u8; 20], u32>,
    /// Lower-cased DNS name → machines (names repeat).
    pub by_dns: HashMap<Box<str>, Vec<u32>>,
    pub by_aad: HashMap<Uuid, Vec<u32>>,
    /// Interned tag → machines carrying it.
    pub by_tag: HashMap<u32, BTreeSet<u32>>,
    pub tag_names: Vec<Box<str>>,
    /// Lower-cased tag → interned id: tags compare case-insensitively.
    pub tag_ids: HashMap<Box<str>, u32>,
    /// Device groups ordered by rank (index 0 has rank 1).
    pub groups: Vec<DeviceGroup>,
    /// Names of every group id ever used, so a machine still reporting a removed group names it.
    pub group_names: HashMap<i64, String>,
    pub next_group_id: i64,
    /// `healthStatus` and `onboardingStatus` of machines that are not `Active` / `Onboarded`,
    /// by machine index.
    pub status: HashMap<u32, MachineStatus>,
}

/// A machine's `healthStatus` and `onboardingStatus`, spelled as `/api/machines` returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineStatus {
    pub health: &'static str,
    pub onboarding: &'static str,
}

impl Default for MachineStatus {
    fn default() -> Self {
        MachineStatus {
            health: "Active",
            onboarding: "Onboarded",
        }
    }
}

/// The `healthStatus` values `/api/machines` documents.
pub const HEALTH_STATUSES: &[&str] = &[
    "Active",
    "Inactive",
    "ImpairedCommunication",
    "NoSensorData",
    "NoSensorDataImpairedCommunication",
    "Unknown",
];

/// The `onboardingStatus` values `/api/machines` documents.
pub const ONBOARDING_STATUSES: &[&str] = &[
    "Onboarded",
    "CanBeOnboarded",
    "Unsupported",
    "InsufficientInfo",
];

impl Mde {
    /// The health and onboarding status of the machine at `index`.
    pub fn status_of(&self, index: u32) -> MachineStatus {
        self.status.get(&index).copied().unwrap_or_default()
    }

    pub fn intern_tag(&mut self, tag: &str) -> u32 {
        let key: Box<str> = tag.to_lowercase().into();
        if let Some(&id) = self.tag_ids.get(&key) {
            return id;
        }
        let id = self.tag_names.len() as u32;
        self.tag_names.push(tag.into());
        self.tag_ids.insert(key, id);
        id
    }

    pub fn tag_id(&self, tag: &str) -> Option<u32> {
        self.tag_ids.get(tag.to_lowercase().as_str()).copied()
    }

    pub fn add_machine(&mut self, m: Machine) -> u32 {
        let i = self.machines.len() as u32;
        self.by_id.insert(m.id, i);
        self.by_dns
            .entry(m.dns.to_lowercase().into())
            .or_default()
            .push(i);
        if let Some(a) = m.aad_device_id {
            self.by_aad.entry(a).or_default().push(i);
        }
        for t in &m.tags {
            self.by_tag.entry(*t).or_default().insert(i);
        }
        self.machines.push(m);
        i
    }

    pub fn machine_index(&self, id: &str) -> Option<u32> {
        parse_machine_id(&id.to_ascii_lowercase()).and_then(|k| self.by_id.get(&k).copied())
    }

    fn rule_matches(&self, rule: &GroupRule, m: &Machine) -> bool {
        if rule.tags.is_empty() && rule.name_prefixes.is_empty() && rule.os_platforms.is_empty() {
            return false;
        }
        let tags_ok = rule.tags.is_empty()
            || rule
                .tags
                .iter()
                .any(|t| self.tag_id(t).is_some_and(|id| m.tags.contains(&id)));
        let dns = m.dns.to_lowercase();
        let name_ok = rule.name_prefixes.is_empty()
            || rule
                .name_prefixes
                .iter()
                .any(|p| dns.starts_with(&p.to_lowercase()));
        let os_ok = rule.os_platforms.is_empty()
            || rule.os_platforms.iter().any(|o| {
                let o = o.to_lowercase();
                let os = m.os.as_str().to_lowercase();
                // "WindowsServer*" style wildcards are how the portal lists OS families.
                match o.strip_suffix('*') {
                    Some(prefix) => os.starts_with(prefix),
                    None => os == o,
                }
            });
        tags_ok && name_ok && os_ok
    }

    /// The group the current rules put the machine in (`UNASSIGNED_GROUP_ID` when none).
    pub fn rule_placement(&self, m: &Machine) -> i64 {
        self.groups
            .iter()
            .find(|g| self.rule_matches(&g.rule, m))
            .map_or(UNASSIGNED_GROUP_ID, |g| g.id)
    }

    /// The group a machine reports at `now`: the rule placement once the placement delay
    /// after its last change has passed, the earlier placement before that.
    pub fn placement(&self, m: &Machine, now: i64, delay: i64) -> i64 {
        match m.pending_since {
            Some(t) if now >= t + delay => self.rule_placement(m),
            Some(_) => m.reported_group,
            None => m.reported_group,
        }
    }

    pub fn group_name(&self, id: i64) -> &str {
        if id == UNASSIGNED_GROUP_ID {
            return UNASSIGNED_GROUP;
        }
        self.group_names.get(&id).map_or(UNASSIGNED_GROUP, |s| s)
    }

    /// Freezes what each machine reports now, then marks all as pending: called before a
    /// change to the group rules or ranks.
    fn settle_all(&mut self, now: i64, delay: i64) {
        for i in 0..self.machines.len() {
            let p = self.placement(&self.machines[i], now, delay);
            let m = &mut self.machines[i];
            m.reported_group = p;
            m.pending_since = Some(now);
        }
    }

    /// Freezes what one machine reports now and starts its delay (before a tag change).
    pub fn touch_machine(&mut self, i: u32, now: i64, delay: i64) {
        let p = self.placement(&self.machines[i as usize], now, delay);
        let m = &mut self.machines[i as usize];
        m.reported_group = p;
        m.pending_since = Some(now);
    }

    /// Adds or removes a tag; returns true when the machine changed.
    pub fn set_tag(&mut self, i: u32, tag: &str, add: bool, now: i64, delay: i64) -> bool {
        let t = self.intern_tag(tag);
        let has = self.machines[i as usize].tags.contains(&t);
        if has == add {
            return false;
        }
        self.touch_machine(i, now, delay);
        let m = &mut self.machines[i as usize];
        if add {
            m.tags.push(t);
            self.by_tag.entry(t).or_default().insert(i);
        } else {
            m.tags.retain(|x| *x != t);
            if let Some(set) = self.by_tag.get_mut(&t) {
                set.remove(&i);
            }
        }
        true
    }

    /// Adds a device group at `rank` (clamped; later groups move down one rank).
    pub fn add_group(
        &mut self,
        name: &str,
        rank: u32,
        rule: GroupRule,
        now: i64,
        delay: i64,
    ) -> i64 {
        self.settle_all(now, delay);
        let id = self.next_group_id.max(100);
        self.next_group_id = id + 1;
        self.group_names.insert(id, name.to_string());
        let pos = (rank.max(1) as usize - 1).min(self.groups.len());
        self.groups.insert(
            pos,
            DeviceGroup {
                id,
                name: name.to_string(),
                rank: 0,
                rule,
            },
        );
        self.renumber();
        id
    }

    pub fn remove_group(&mut self, id: i64, now: i64, delay: i64) -> bool {
        let Some(pos) = self.groups.iter().position(|g| g.id == id) else {
            return false;
        };
        self.settle_all(now, delay);
        self.groups.remove(pos);
        self.renumber();
        true
    }

    pub fn set_rank(&mut self, id: i64, rank: u32, now: i64, delay: i64) -> bool {
        let Some(pos) = self.groups.iter().position(|g| g.id == id) else {
            return false;
        };
        self.settle_all(now, delay);
        let g = self.groups.remove(pos);
        let pos = (rank.max(1) as usize - 1).min(self.groups.len());
        self.groups.insert(pos, g);
        self.renumber();
        true
    }

    fn renumber(&mut self) {
        for (i, g) in self.groups.iter_mut().enumerate() {
            g.rank = i as u32 + 1;
        }
    }

    /// Places every machine by the current rules at once (used after seeding).
    pub fn place_all_now(&mut self) {
        for i in 0..self.machines.len() {
            let p = self.rule_placement(&self.machines[i]);
            let m = &mut self.machines[i];
            m.reported_group = p;
            m.pending_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::DEVICE_GROUP_NAME;

    fn machine(mde: &mut Mde, n: u8, dns: &str, os: Os, tags: &[&str]) -> u32 {
        let tags = tags.iter().map(|t| mde.intern_tag(t)).collect();
        mde.add_machine(Machine {
            id: [n; 20],
            dns: dns.into(),
            aad_device_id: None,
            os,
            tags,
            first_seen_min: 0,
            reported_group: UNASSIGNED_GROUP_ID,
            pending_since: None,
        })
    }

    fn rule(tags: &[&str], prefixes: &[&str], os: &[&str]) -> GroupRule {
        GroupRule {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            name_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            os_platforms: os.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn highest_ranked_matching_group_wins_after_the_delay() {
        let mut mde = Mde::default();
        let srv = machine(
            &mut mde,
            1,
            "srv-01",
            Os::WindowsServer2022,
            &["DEX-Scoped"],
        );
        let ws = machine(&mut mde, 2, "ws-01", Os::Windows11, &[]);
        let scoped = mde.add_group(DEVICE_GROUP_NAME, 1, rule(&["dex-scoped"], &[], &[]), 0, 0);
        mde.place_all_now();
        assert_eq!(mde.placement(&mde.machines[srv as usize], 0, 0), scoped);
        assert_eq!(
            mde.placement(&mde.machines[ws as usize], 0, 0),
            UNASSIGNED_GROUP_ID
        );

        let servers = mde.add_group(
            "Servers",
            1,
            rule(&[], &[], &["WindowsServer*"]),
            1_000,
            500,
        );
        let m = &mde.machines[srv as usize];
        assert_eq!(mde.placement(m, 1_499, 500), scoped, "before the delay");
        assert_eq!(mde.placement(m, 1_500, 500), servers, "after the delay");

        assert!(mde.remove_group(servers, 2_000, 500));
        let m = &mde.machines[srv as usize];
        assert_eq!(mde.placement(m, 2_100, 500), servers);
        assert_eq!(mde.placement(m, 2_500, 500), scoped);
    }

    #[test]
    fn tag_change_moves_one_machine_after_the_delay() {
        let mut mde = Mde::default();
        let ws = machine(&mut mde, 2, "ws-01", Os::Windows11, &[]);
        let scoped = mde.add_group(DEVICE_GROUP_NAME, 1, rule(&["DEX-Scoped"], &[], &[]), 0, 0);
        mde.place_all_now();
        assert!(mde.set_tag(ws, "DEX-Scoped", true, 10, 100));
        assert!(
            !mde.set_tag(ws, "dex-scoped", true, 10, 100),
            "tags are a set"
        );
        let m = &mde.machines[ws as usize];
        assert_eq!(mde.placement(m, 109, 100), UNASSIGNED_GROUP_ID);
        assert_eq!(mde.placement(m, 110, 100), scoped);
    }

    #[test]
    fn rule_properties_are_and_ed_and_values_or_ed() {
        let mut mde = Mde::default();
        let a = machine(&mut mde, 1, "SRV-dc01", Os::WindowsServer2019, &["x"]);
        let b = machine(&mut mde, 2, "srv-dc02", Os::Linux, &["x"]);
        let g = mde.add_group(
            "dc",
            1,
            rule(&[], &["srv-dc"], &["WindowsServer2019", "macOS"]),
            0,
            0,
        );
        mde.add_group("empty", 2, GroupRule::default(), 0, 0);
        mde.place_all_now();
        assert_eq!(mde.machines[a as usize].reported_group, g);
        assert_eq!(mde.machines[b as usize].reported_group, UNASSIGNED_GROUP_ID);
    }
}
