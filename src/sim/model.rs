//! The in-memory tenant: directory (users, groups, Entra devices), MDE machines and device
//! groups with placement, security incidents, and the runtime figures (requests, throttling,
//! violations) the inspection endpoints report. Compact on purpose: 100,000 users and 50,000
//! machines must fit in a few tens of MiB.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::faults::{FaultConfig, Faults};
use super::quota::{QuotaConfig, Quotas, Surface};

/// The name of the scoped user group.
pub const USER_GROUP_NAME: &str = "Defender_Experts_Scoped_Coverage_Users";
/// The name of the scoped device group.
pub const DEVICE_GROUP_NAME: &str = "Defender_Experts_Scoped_Coverage_Devices";
/// The tag the scoped device group's rule matches by default.
pub const DEVICE_TAG: &str = "DEX-Scoped";
/// `rbacGroupName` of devices that match no group.
pub const UNASSIGNED_GROUP: &str = "UnassignedGroup";
/// `rbacGroupId` reported for unassigned devices.
pub const UNASSIGNED_GROUP_ID: i64 = 75;

/// Identity of the tenant and the one application it knows.
#[derive(Debug, Clone)]
pub struct TenantIds {
    pub tenant_id: Uuid,
    pub tenant_domain: String,
    pub client_id: Uuid,
    pub client_secret: SecretString,
    pub user_group_id: Uuid,
}

/// Settings that change how the tenant answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub token_lifetime_secs: i64,
    pub graph_roles: Vec<String>,
    pub mde_roles: Vec<String>,
    pub placement_delay_ms: i64,
    /// New incidents per minute arriving on their own (0 = none).
    pub incident_rate_per_min: f64,
}

// ---------------------------------------------------------------------------------------------
// Directory

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub upn: Box<str>,
    pub display_name: Box<str>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: Uuid,
    pub display_name: String,
    /// Direct members, ordered by id so `$skiptoken` paging is stable under changes.
    pub members: BTreeSet<Uuid>,
    /// Membership changes `(sequence, member, added)` for delta queries.
    pub log: Vec<(u64, Uuid, bool)>,
}

#[derive(Debug, Clone)]
pub struct EntraDevice {
    pub id: Uuid,
    pub device_id: Uuid,
    pub display_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    User,
    Group,
    Device,
}

impl ObjKind {
    pub fn odata_type(self) -> &'static str {
        match self {
            ObjKind::User => "#microsoft.graph.user",
            ObjKind::Group => "#microsoft.graph.group",
            ObjKind::Device => "#microsoft.graph.device",
        }
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    pub users: Vec<Option<User>>,
    pub user_by_id: HashMap<Uuid, u32>,
    /// Lower-cased UPN → index.
    pub user_by_upn: HashMap<Box<str>, u32>,
    pub groups: Vec<Group>,
    pub group_by_id: HashMap<Uuid, u32>,
    pub devices: Vec<EntraDevice>,
    pub device_by_id: HashMap<Uuid, u32>,
    pub delta_seq: u64,
    /// Delta links issued at or before this sequence are refused with `delta_refusal`.
    pub delta_refused_upto: Option<(u64, DeltaRefusal)>,
}

/// How the simulator refuses an expired delta link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaRefusal {
    /// `410 Gone` with a `Location` header to start over from.
    Gone,
    /// `400 syncStateNotFound`.
    SyncStateNotFound,
}

impl Directory {
    pub fn add_user(&mut self, user: User) -> u32 {
        let i = self.users.len() as u32;
        self.user_by_id.insert(user.id, i);
        self.user_by_upn.insert(user.upn.to_lowercase().into(), i);
        self.users.push(Some(user));
        i
    }

    pub fn user(&self, id: &Uuid) -> Option<&User> {
        self.user_by_id
            .get(id)
            .and_then(|&i| self.users[i as usize].as_ref())
    }

    pub fn user_by_upn(&self, upn: &str) -> Option<&User> {
        self.user_by_upn
            .get(upn.to_lowercase().as_str())
            .and_then(|&i| self.users[i as usize].as_ref())
    }

    /// Deletes a user object and drops it from every group (what a member `DELETE` without
    /// `/$ref` does).
    pub fn delete_user(&mut self, id: &Uuid) -> bool {
        let Some(i) = self.user_by_id.remove(id) else {
            return false;
        };
        if let Some(u) = self.users[i as usize].take() {
            self.user_by_upn.remove(u.upn.to_lowercase().as_str());
        }
        let gids: Vec<Uuid> = self.groups.iter().map(|g| g.id).collect();
        for g in gids {
            self.remove_member(&g, id);
        }
        true
    }

    pub fn add_group(&mut self, id: Uuid, display_name: &str) {
        self.group_by_id.insert(id, self.groups.len() as u32);
        self.groups.push(Group {
            id,
            display_name: display_name.to_string(),
            members: BTreeSet::new(),
            log: Vec::new(),
        });
    }

    pub fn group(&self, id: &Uuid) -> Option<&Group> {
        self.group_by_id.get(id).map(|&i| &self.groups[i as usize])
    }

    fn group_mut(&mut self, id: &Uuid) -> Option<&mut Group> {
        self.group_by_id
            .get(id)
            .map(|&i| &mut self.groups[i as usize])
    }

    pub fn add_device(&mut self, device: EntraDevice) {
        self.device_by_id
            .insert(device.id, self.devices.len() as u32);
        self.devices.push(device);
    }

    pub fn kind_of(&self, id: &Uuid) -> Option<ObjKind> {
        if self.user(id).is_some() {
            Some(ObjKind::User)
        } else if self.group_by_id.contains_key(id) {
            Some(ObjKind::Group)
        } else if self.device_by_id.contains_key(id) {
            Some(ObjKind::Device)
        } else {
            None
        }
    }

    /// Adds a member; false when it already was one.
    pub fn add_member(&mut self, group: &Uuid, member: Uuid) -> bool {
        self.delta_seq += 1;
        let seq = self.delta_seq;
        let Some(g) = self.group_mut(group) else {
            return false;
        };
        let added = g.members.insert(member);
        if added {
            g.log.push((seq, member, true));
        }
        added
    }

    /// Removes a member; false when it was not one.
    pub fn remove_member(&mut self, group: &Uuid, member: &Uuid) -> bool {
        self.delta_seq += 1;
        let seq = self.delta_seq;
        let Some(g) = self.group_mut(group) else {
            return false;
        };
        let removed = g.members.remove(member);
        if removed {
            g.log.push((seq, *member, false));
        }
        removed
    }
}

// ---------------------------------------------------------------------------------------------
// Defender for Endpoint

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
}

impl Mde {
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

// ---------------------------------------------------------------------------------------------
// Incidents

/// A user account inside evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub account_name: Option<String>,
    pub azure_ad_user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub domain_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceKind {
    Device {
        mde_device_id: String,
        azure_ad_device_id: Option<String>,
        dns_name: String,
        os_platform: String,
        rbac_group_id: i64,
        rbac_group_name: String,
    },
    User(Account),
    Mailbox {
        primary_address: String,
        upn: Option<String>,
        display_name: String,
        account: Option<Account>,
    },
    Process {
        account: Option<Account>,
        mde_device_id: String,
        image: String,
    },
    File {
        name: String,
    },
    Ip {
        address: String,
    },
    /// An evidence type clients do not know.
    Unknown {
        odata_type: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub service_source: String,
    pub detection_source: String,
    pub category: String,
    pub evidence: Vec<Evidence>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub comment: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: u64,
    pub display_name: String,
    pub severity: String,
    pub status: String,
    pub classification: String,
    pub determination: String,
    pub created: DateTime<Utc>,
    pub last_update: DateTime<Utc>,
    pub redirect_to: Option<u64>,
    /// Emit enum values capitalised (`"Medium"`), as live samples sometimes do.
    pub mixed_case: bool,
    pub system_tags: Vec<String>,
    pub alerts: Vec<Alert>,
    pub comments: Vec<Comment>,
}

#[derive(Debug, Default)]
pub struct Incidents {
    pub list: Vec<Incident>,
    pub by_id: HashMap<u64, u32>,
    pub next_id: u64,
    /// When the next self-arriving incident is due (ms), if arrivals are on.
    pub next_arrival: Option<i64>,
}

impl Incidents {
    pub fn add(&mut self, mut inc: Incident) -> u64 {
        if inc.id == 0 {
            inc.id = self.next_id.max(1000);
        }
        self.next_id = self.next_id.max(inc.id + 1);
        self.by_id.insert(inc.id, self.list.len() as u32);
        let id = inc.id;
        self.list.push(inc);
        id
    }

    pub fn get(&self, id: u64) -> Option<&Incident> {
        self.by_id.get(&id).map(|&i| &self.list[i as usize])
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Incident> {
        self.by_id.get(&id).map(|&i| &mut self.list[i as usize])
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime figures

/// A call the real service would have made dangerous (e.g. a member `DELETE` without `/$ref`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: String,
}

/// One change the tenant applied through its API (seeding and `/_sim/` controls are not
/// logged): what `/_sim/writes` lists, so tests can prove every change was audited and no
/// desired member was ever removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteRecord {
    pub at: DateTime<Utc>,
    /// `add` | `remove` (group members) or `tag` | `untag` (machines).
    pub op: &'static str,
    /// The group id, or the tag.
    pub target: String,
    /// The member's object id, or the machine id.
    pub object: String,
}

/// At most this many writes are logged; later ones are only counted.
pub const WRITE_LOG_CAP: usize = 1_000_000;

/// Counters reported under `/_sim/stats` and by [`crate::sim::SimHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// HTTP requests received (a `$batch` is one).
    pub http_requests: u64,
    /// HTTP requests per route template, e.g. `GET /v1.0/groups/{id}/members`.
    pub http_by_route: BTreeMap<String, u64>,
    /// API calls per route template: each `$batch` item counts under its own route.
    pub calls_by_route: BTreeMap<String, u64>,
    /// API calls per surface (each `$batch` item individually).
    pub calls_by_surface: BTreeMap<String, u64>,
    /// Calls answered 429 because a quota was exhausted, per surface.
    pub throttled: BTreeMap<String, u64>,
    /// Calls that came before a `Retry-After` given to the same client and surface elapsed.
    pub early_retries: BTreeMap<String, u64>,
    /// Injected faults by kind (`status_503`, `drop`, `slow`, `comment_timeout`,
    /// `token_expiry`).
    pub faults: BTreeMap<String, u64>,
    /// Responses per status code (batch items included).
    pub statuses: BTreeMap<u16, u64>,
    pub tokens_issued: u64,
    pub unauthorized: u64,
    pub violations: Vec<Violation>,
}

impl Stats {
    pub fn early_retries_total(&self) -> u64 {
        self.early_retries.values().sum()
    }

    pub fn throttled_total(&self) -> u64 {
        self.throttled.values().sum()
    }

    pub fn calls(&self, route: &str) -> u64 {
        self.calls_by_route.get(route).copied().unwrap_or(0)
    }
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub audience: Surface,
    pub client: String,
    pub roles: Vec<String>,
    pub expires_ms: i64,
    /// Authenticated requests served with it.
    pub uses: u64,
}

// ---------------------------------------------------------------------------------------------
// The tenant

/// Everything the simulated services hold, behind one lock.
#[derive(Debug)]
pub struct Tenant {
    pub ids: TenantIds,
    pub behaviour: Behaviour,
    /// Added to the wall clock: tests move time forward instead of sleeping.
    pub clock_offset_ms: i64,
    pub directory: Directory,
    pub mde: Mde,
    pub incidents: Incidents,
    pub stats: Stats,
    pub quotas: Quotas,
    pub faults: Faults,
    /// Issued tokens by `jti`; clearing it invalidates every token.
    pub tokens: HashMap<String, IssuedToken>,
    /// Shuffles `$batch` responses and draws arriving incidents.
    pub rng: ChaCha8Rng,
    pub seed: u64,
    /// Changes applied through the API, oldest first (see [`WriteRecord`]).
    pub writes: Vec<WriteRecord>,
    /// Writes beyond [`WRITE_LOG_CAP`], counted but not logged.
    pub writes_dropped: u64,
}

impl Tenant {
    pub fn new(
        ids: TenantIds,
        behaviour: Behaviour,
        quotas: QuotaConfig,
        faults: FaultConfig,
        seed: u64,
    ) -> Self {
        Self {
            ids,
            behaviour,
            clock_offset_ms: 0,
            directory: Directory::default(),
            mde: Mde::default(),
            incidents: Incidents::default(),
            stats: Stats::default(),
            quotas: Quotas::new(quotas),
            faults: Faults::new(faults, seed),
            tokens: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0001),
            seed,
            writes: Vec::new(),
            writes_dropped: 0,
        }
    }

    /// Logs a change applied through the API.
    pub fn log_write(&mut self, op: &'static str, target: String, object: String) {
        if self.writes.len() >= WRITE_LOG_CAP {
            self.writes_dropped += 1;
            return;
        }
        let at = self.now();
        self.writes.push(WriteRecord {
            at,
            op,
            target,
            object,
        });
    }

    /// The simulated now in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.clock_offset_ms
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_else(Utc::now)
    }

    pub fn placement_delay_ms(&self) -> i64 {
        self.behaviour.placement_delay_ms
    }

    /// Current members of a group as `(id, kind)`.
    pub fn group_members(&self, group: &Uuid) -> Vec<(Uuid, Option<ObjKind>)> {
        self.directory
            .group(group)
            .map(|g| {
                g.members
                    .iter()
                    .map(|m| (*m, self.directory.kind_of(m)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tags and reported placement of a machine, by id.
    pub fn machine_view(&self, id: &str) -> Option<MachineView> {
        let i = self.mde.machine_index(id)?;
        Some(self.view_of(i))
    }

    pub fn view_of(&self, i: u32) -> MachineView {
        let m = &self.mde.machines[i as usize];
        let g = self
            .mde
            .placement(m, self.now_ms(), self.placement_delay_ms());
        MachineView {
            id: m.id_hex(),
            dns_name: m.dns.to_string(),
            os_platform: m.os.as_str().to_string(),
            aad_device_id: m.aad_device_id.map(|a| a.to_string()),
            tags: m
                .tags
                .iter()
                .map(|t| self.mde.tag_names[*t as usize].to_string())
                .collect(),
            rbac_group_id: g,
            rbac_group_name: self.mde.group_name(g).to_string(),
        }
    }

    /// Every machine carrying `tag`, as views.
    pub fn machines_with_tag(&self, tag: &str) -> Vec<MachineView> {
        self.mde
            .tag_id(tag)
            .and_then(|t| self.mde.by_tag.get(&t))
            .map(|set| set.iter().map(|i| self.view_of(*i)).collect())
            .unwrap_or_default()
    }

    pub fn add_device_group(&mut self, name: &str, rank: u32, rule: GroupRule) -> i64 {
        let (now, d) = (self.now_ms(), self.placement_delay_ms());
        self.mde.add_group(name, rank, rule, now, d)
    }

    pub fn remove_device_group(&mut self, id: i64) -> bool {
        let (now, d) = (self.now_ms(), self.placement_delay_ms());
        self.mde.remove_group(id, now, d)
    }

    pub fn set_device_group_rank(&mut self, id: i64, rank: u32) -> bool {
        let (now, d) = (self.now_ms(), self.placement_delay_ms());
        self.mde.set_rank(id, rank, now, d)
    }

    pub fn record_violation(&mut self, kind: &str, detail: String) {
        let at = self.now();
        self.stats.violations.push(Violation {
            at,
            kind: kind.to_string(),
            detail,
        });
    }
}

/// A machine as the inspection API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineView {
    pub id: String,
    pub dns_name: String,
    pub os_platform: String,
    pub aad_device_id: Option<String>,
    pub tags: Vec<String>,
    pub rbac_group_id: i64,
    pub rbac_group_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn delete_user_drops_memberships() {
        let mut d = Directory::default();
        let gid = Uuid::from_u128(1);
        let uid = Uuid::from_u128(2);
        d.add_group(gid, "g");
        d.add_user(User {
            id: uid,
            upn: "Ann@contoso.com".into(),
            display_name: "Ann".into(),
        });
        assert!(d.add_member(&gid, uid));
        assert!(!d.add_member(&gid, uid));
        assert!(d.user_by_upn("ann@CONTOSO.com").is_some());
        assert!(d.delete_user(&uid));
        assert!(d.user(&uid).is_none());
        assert!(d.user_by_upn("ann@contoso.com").is_none());
        assert!(d.group(&gid).unwrap().members.is_empty());
    }
}
