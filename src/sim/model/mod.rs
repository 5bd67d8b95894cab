//! The in-memory tenant: directory (users, groups, Entra devices), MDE machines and device
//! groups with placement, security incidents, and the runtime figures (requests, throttling,
//! violations) the inspection endpoints report. Compact on purpose: 100,000 users and 50,000
//! machines must fit in a few tens of MiB. This file holds the tenant itself; each part of it
//! lives in its own file.

mod directory;
mod figures;
mod incidents;
mod mde;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secrecy::SecretString;
use serde::Serialize;
use uuid::Uuid;

pub use directory::{DeltaRefusal, Directory, EntraDevice, Group, ObjKind, User, UserAttrs};
pub use figures::{IssuedToken, Stats, Violation, WRITE_LOG_CAP, WriteRecord};
pub use incidents::{
    Account, Alert, Comment, Evidence, EvidenceKind, Incident, IncidentChange, Incidents,
    PlannedChange,
};
pub use mde::{
    DeviceGroup, GroupRule, HEALTH_STATUSES, Machine, MachineStatus, Mde, ONBOARDING_STATUSES, Os,
    UNASSIGNED_GROUP, UNASSIGNED_GROUP_ID, parse_machine_id,
};

use super::faults::{FaultConfig, Faults};
use super::quota::{QuotaConfig, Quotas};

/// The name of the scoped user group.
pub const USER_GROUP_NAME: &str = "Defender_Experts_Scoped_Coverage_Users";
/// The name of the scoped device group.
pub const DEVICE_GROUP_NAME: &str = "Defender_Experts_Scoped_Coverage_Devices";
/// The tag the scoped device group's rule matches by default.
pub const DEVICE_TAG: &str = "DEX-Scoped";

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
