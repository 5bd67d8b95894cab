//! The coverage verdict for one incident: a pure function of the incident, the effective scope and
//! the policy. No I/O, no clock (`now` is a parameter), no async.
//!
//! The rules are DESIGN section 7. Where the service documentation is silent (mixed incidents,
//! which evidence roles count, the list of `osPlatform` values) the behaviour is a [`Policy`]
//! knob with a documented default, and the verdict records the choice it made in its reasons.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{
    AadDeviceId, Alert, DetectionSource, DnsName, EvidenceKind, EvidenceRole, GroupMember,
    Incident, IncidentStatus, Machine, MachineId, ServiceSource, Severity, UNASSIGNED_GROUP, Upn,
    UserAccount, UserId,
};

/// Hex characters of SHA-256 kept in a verdict digest (128 bits: collisions are not a concern
/// for telling one verdict of one incident from the next).
pub const DIGEST_HEX_LEN: usize = 32;

// ---------------------------------------------------------------------------------------------
// Scope

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
    device_group: String,
    propagation_grace: TimeDelta,
    user_ids: HashSet<UserId>,
    /// Lower-case UPN → the member's object id where known (`None` offline, or when the
    /// member read did not return it).
    user_upns: HashMap<String, Option<UserId>>,
    devices: Vec<ScopedDevice>,
    by_machine: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    by_aad: HashMap<String, usize>,
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

    fn find_device(&self, asset: &DeviceFacts) -> Option<&ScopedDevice> {
        let by = |map: &HashMap<String, usize>, key: &Option<String>| {
            key.as_ref().and_then(|k| map.get(k)).copied()
        };
        by(&self.by_machine, &asset.mde_id)
            .or_else(|| by(&self.by_aad, &asset.aad_id))
            .or_else(|| by(&self.by_dns, &asset.dns_name))
            .map(|index| &self.devices[index])
    }

    /// A member matches by object id; failing that, by UPN (case-insensitively) unless both
    /// sides know an object id and the ids differ: a UPN reused by a different account must not
    /// inherit the old account's coverage.
    fn has_user(&self, id: Option<&UserId>, upn: Option<&str>) -> bool {
        if id.is_some_and(|id| self.user_ids.contains(id)) {
            return true;
        }
        match upn.and_then(|upn| self.user_upns.get(upn)) {
            Some(Some(member_id)) => id.is_none_or(|id| id == member_id),
            Some(None) => true,
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy

/// Alert kinds Defender Experts does not cover (api-facts F.2, mapped to alert fields in
/// "Design implications › Scope decision").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcludedKind {
    /// `serviceSource == dataLossPrevention` or `detectionSource == microsoftDataLossPrevention`.
    DataLossPrevention,
    /// Compliance: `microsoftInsiderRiskManagement` as service or detection source.
    InsiderRisk,
    /// `detectionSource == customDetection`.
    CustomDetection,
    /// Sources outside Defender XDR: `microsoftSentinel` as service or detection source.
    Sentinel,
}

impl ExcludedKind {
    pub const ALL: [ExcludedKind; 4] = [
        ExcludedKind::DataLossPrevention,
        ExcludedKind::InsiderRisk,
        ExcludedKind::CustomDetection,
        ExcludedKind::Sentinel,
    ];

    fn code(self) -> &'static str {
        match self {
            ExcludedKind::DataLossPrevention => "dlp",
            ExcludedKind::InsiderRisk => "insider_risk",
            ExcludedKind::CustomDetection => "custom_detection",
            ExcludedKind::Sentinel => "sentinel",
        }
    }

    /// Which excluded kind an alert is, if any (the first that applies, in `ALL` order).
    pub fn of(alert: &Alert) -> Option<ExcludedKind> {
        // Re-parse so a value built as `Other("DATALOSSPREVENTION")` still classifies: the wire
        // layer parses case-insensitively, but the rule must not depend on that.
        let service = ServiceSource::parse(alert.service_source.as_wire());
        let detection = DetectionSource::parse(alert.detection_source.as_wire());
        if service == ServiceSource::DataLossPrevention
            || detection == DetectionSource::MicrosoftDataLossPrevention
        {
            Some(ExcludedKind::DataLossPrevention)
        } else if service == ServiceSource::MicrosoftInsiderRiskManagement
            || detection == DetectionSource::MicrosoftInsiderRiskManagement
        {
            Some(ExcludedKind::InsiderRisk)
        } else if detection == DetectionSource::CustomDetection {
            Some(ExcludedKind::CustomDetection)
        } else if service == ServiceSource::MicrosoftSentinel
            || detection == DetectionSource::MicrosoftSentinel
        {
            Some(ExcludedKind::Sentinel)
        } else {
            None
        }
    }
}

impl fmt::Display for ExcludedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExcludedKind::DataLossPrevention => "data loss prevention",
            ExcludedKind::InsiderRisk => "insider risk management (compliance)",
            ExcludedKind::CustomDetection => "custom detection",
            ExcludedKind::Sentinel => "Microsoft Sentinel",
        })
    }
}

/// How an incident with some excluded and some other alerts is treated. The service does not
/// say ([NC] 11 in api-facts), so this is a policy choice, recorded in the verdict reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MixedIncidents {
    /// Excluded only when every alert is an excluded kind (the default).
    #[default]
    ExcludedWhenAll,
    /// Excluded as soon as one alert is an excluded kind.
    ExcludedWhenAny,
}

/// A device platform as coverage sees it, classified from the free-text `osPlatform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformClass {
    Windows,
    Linux,
    MacOs,
    Ios,
    Android,
    /// A value this version does not recognise (IoT devices, printers, …).
    Other,
    /// No platform reported.
    Missing,
}

impl PlatformClass {
    /// Classifies an `osPlatform` string case-insensitively. The authoritative list of values
    /// is not published ([NC] 9 in api-facts), so Windows is any `windows…` prefix (desktop
    /// and server editions), Linux is `linux` or a known distribution name (MDE reports some
    /// machines by distribution), macOS is `macos`, `mac os` or `osx`.
    pub fn classify(os_platform: Option<&str>) -> PlatformClass {
        let Some(raw) = os_platform.map(str::trim).filter(|s| !s.is_empty()) else {
            return PlatformClass::Missing;
        };
        let p = raw.to_lowercase();
        const LINUX: [&str; 12] = [
            "linux", "ubuntu", "debian", "redhat", "rhel", "centos", "suse", "sles", "fedora",
            "oracle", "amazon", "rocky",
        ];
        if p.starts_with("windows") {
            PlatformClass::Windows
        } else if p.contains("linux") || LINUX.iter().any(|d| p.starts_with(d)) {
            PlatformClass::Linux
        } else if p.starts_with("macos") || p.starts_with("mac os") || p.starts_with("osx") {
            PlatformClass::MacOs
        } else if p == "ios" || p.starts_with("ios ") || p.starts_with("ipados") {
            PlatformClass::Ios
        } else if p.starts_with("android") {
            PlatformClass::Android
        } else {
            PlatformClass::Other
        }
    }
}

/// The coverage rules that are policy rather than fact. `Default` is the DESIGN defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Incident severities that are covered (default high, medium).
    pub eligible_severities: Vec<Severity>,
    /// Alert kinds that are not covered (default all of [`ExcludedKind::ALL`]).
    pub excluded_kinds: Vec<ExcludedKind>,
    /// How mixed incidents are treated (default: excluded only when every alert is).
    pub mixed: MixedIncidents,
    /// Platforms whose devices can be covered (default Windows, Linux, macOS).
    pub covered_platforms: Vec<PlatformClass>,
    /// Evidence whose roles are all in this list is not an impacted asset. Default empty:
    /// "every evidence role counts as impacted" (DESIGN section 7). Evidence without roles
    /// always counts.
    pub ignored_roles: Vec<EvidenceRole>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            eligible_severities: vec![Severity::High, Severity::Medium],
            excluded_kinds: ExcludedKind::ALL.to_vec(),
            mixed: MixedIncidents::default(),
            covered_platforms: vec![
                PlatformClass::Windows,
                PlatformClass::Linux,
                PlatformClass::MacOs,
            ],
            ignored_roles: Vec::new(),
        }
    }
}

impl Policy {
    fn excluded_kind(&self, alert: &Alert) -> Option<ExcludedKind> {
        ExcludedKind::of(alert).filter(|kind| self.excluded_kinds.contains(kind))
    }

    fn counts_as_impacted(&self, roles: &[EvidenceRole]) -> bool {
        roles.is_empty()
            || roles.iter().any(|role| {
                let role = EvidenceRole::parse(role.as_wire());
                !self.ignored_roles.contains(&role)
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Verdict

/// The outcome of a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    InScope,
    OutOfScope,
    /// The incident was merged into another (`status == redirected`): no comment is posted.
    Skipped {
        redirected_to: Option<String>,
    },
}

impl Outcome {
    /// `in_scope`, `out_of_scope` or `skipped`, as in the JSON and the comment marker.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::InScope => "in_scope",
            Outcome::OutOfScope => "out_of_scope",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Device,
    User,
}

impl AssetKind {
    fn code(self) -> &'static str {
        match self {
            AssetKind::Device => "device",
            AssetKind::User => "user",
        }
    }
}

/// Why an asset is or is not covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetReason {
    /// Covered: placed in the scoped device group (or tagged with no contrary placement).
    InDeviceGroup { group: String },
    /// Covered: a direct member of the scoped user group.
    DirectMember,
    /// Not covered: neither tagged nor a member (nor listed, offline).
    NotInScope,
    /// Not covered: in the device group, but the platform is not one the service covers.
    PlatformNotCovered { platform: Option<String> },
    /// Not covered: tagged, but a higher-ranked device group holds the machine.
    Outranked { group: String },
    /// Not covered: tagged, but in `UnassignedGroup`, so the group rule does not match the tag.
    TagNotMatched,
    /// Not covered yet: added less than the grace period ago.
    Propagating { minutes: i64 },
}

impl AssetReason {
    /// The stable form that enters the digest: no time-varying numbers, normalised case.
    fn stable(&self) -> String {
        match self {
            AssetReason::InDeviceGroup { group } => {
                format!("in_device_group\t{}", group.to_lowercase())
            }
            AssetReason::DirectMember => "direct_member".into(),
            AssetReason::NotInScope => "not_in_scope".into(),
            AssetReason::PlatformNotCovered { platform } => format!(
                "platform_not_covered\t{}",
                platform.as_deref().unwrap_or("").trim().to_lowercase()
            ),
            AssetReason::Outranked { group } => format!("outranked\t{}", group.to_lowercase()),
            AssetReason::TagNotMatched => "tag_not_matched".into(),
            AssetReason::Propagating { .. } => "propagating".into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AssetReason::InDeviceGroup { .. } => "in_device_group",
            AssetReason::DirectMember => "direct_member",
            AssetReason::NotInScope => "not_in_scope",
            AssetReason::PlatformNotCovered { .. } => "platform_not_covered",
            AssetReason::Outranked { .. } => "outranked",
            AssetReason::TagNotMatched => "tag_not_matched",
            AssetReason::Propagating { .. } => "propagating",
        }
    }
}

impl fmt::Display for AssetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssetReason::InDeviceGroup { group } => write!(f, "in device group {group}"),
            AssetReason::DirectMember => f.write_str("direct member of the scoped user group"),
            AssetReason::NotInScope => f.write_str("not in scope"),
            AssetReason::PlatformNotCovered {
                platform: Some(platform),
            } => write!(f, "platform {platform} not covered"),
            AssetReason::PlatformNotCovered { platform: None } => {
                f.write_str("platform unknown, not covered")
            }
            AssetReason::Outranked { group } => write!(f, "outranked by group {group}"),
            AssetReason::TagNotMatched => {
                f.write_str("tag not matched by group rule (device is in UnassignedGroup)")
            }
            AssetReason::Propagating { minutes: 1 } => {
                f.write_str("added 1 minute ago, possibly still propagating")
            }
            AssetReason::Propagating { minutes } => {
                write!(f, "added {minutes} minutes ago, possibly still propagating")
            }
        }
    }
}

/// An impacted asset of the incident, deduplicated across alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub kind: AssetKind,
    /// Devices: the MDE machine id (else the Entra device id, else the DNS name). Users: the
    /// Entra object id, else the UPN. Lower-case.
    pub id: String,
    /// Devices: the DNS name. Users: the UPN (else the display name).
    pub name: Option<String>,
    /// Devices: `osPlatform` as reported (by the evidence, else by MDE).
    pub platform: Option<String>,
    pub covered: bool,
    pub reason: AssetReason,
}

/// A device whose placement proves the scoped device group is misconfigured: the poller raises
/// the priority alert for these (DESIGN section 6, last bullet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityFinding {
    pub device_id: String,
    pub dns_name: Option<String>,
    pub problem: PriorityProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PriorityProblem {
    /// A higher-ranked group holds a tagged device.
    Outranked { group: String },
    /// The tagged device is in `UnassignedGroup`: the group rule does not match the tag.
    TagNotMatched,
}

/// An incident-level reason for the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Redirected {
        to: Option<String>,
    },
    SeverityNotCovered {
        severity: String,
    },
    /// Every alert is an excluded kind (at least one alert).
    EveryAlertExcluded {
        kinds: Vec<ExcludedKind>,
    },
    /// Policy `ExcludedWhenAny` and at least one alert is an excluded kind.
    SomeAlertExcluded {
        kinds: Vec<ExcludedKind>,
    },
    /// Policy `ExcludedWhenAll` kept a mixed incident eligible.
    MixedIncidentEligible {
        kinds: Vec<ExcludedKind>,
    },
    NoAlerts,
    NoImpactedAsset,
    NoCoveredAsset,
}

impl Reason {
    fn stable(&self) -> String {
        let kinds =
            |kinds: &[ExcludedKind]| kinds.iter().map(|k| k.code()).collect::<Vec<_>>().join(",");
        match self {
            Reason::Redirected { to } => format!("redirected\t{}", to.as_deref().unwrap_or("")),
            Reason::SeverityNotCovered { severity } => {
                format!("severity_not_covered\t{}", severity.to_lowercase())
            }
            Reason::EveryAlertExcluded { kinds: k } => {
                format!("every_alert_excluded\t{}", kinds(k))
            }
            Reason::SomeAlertExcluded { kinds: k } => format!("some_alert_excluded\t{}", kinds(k)),
            Reason::MixedIncidentEligible { kinds: k } => {
                format!("mixed_incident_eligible\t{}", kinds(k))
            }
            Reason::NoAlerts => "no_alerts".into(),
            Reason::NoImpactedAsset => "no_impacted_asset".into(),
            Reason::NoCoveredAsset => "no_covered_asset".into(),
        }
    }
}

fn join_kinds(kinds: &[ExcludedKind]) -> String {
    kinds
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Redirected { to: Some(to) } => write!(f, "redirected to {to}"),
            Reason::Redirected { to: None } => f.write_str("redirected to an unnamed incident"),
            Reason::SeverityNotCovered { severity } => {
                write!(f, "severity {severity} not covered")
            }
            Reason::EveryAlertExcluded { kinds } => {
                write!(f, "every alert is an excluded kind: {}", join_kinds(kinds))
            }
            Reason::SomeAlertExcluded { kinds } => write!(
                f,
                "an alert is an excluded kind ({}); policy: one excluded alert excludes the incident",
                join_kinds(kinds)
            ),
            Reason::MixedIncidentEligible { kinds } => write!(
                f,
                "policy: mixed incident kept eligible, some alerts are an excluded kind ({}) \
                 but an incident is excluded only when every alert is",
                join_kinds(kinds)
            ),
            Reason::NoAlerts => f.write_str("no alerts, so no impacted asset"),
            Reason::NoImpactedAsset => f.write_str("no impacted asset (device or user)"),
            Reason::NoCoveredAsset => f.write_str("no covered asset"),
        }
    }
}

/// The verdict for one incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub incident_id: String,
    pub outcome: Outcome,
    /// Every impacted asset, devices first, each sorted by id.
    pub assets: Vec<Asset>,
    pub reasons: Vec<Reason>,
    pub priority_findings: Vec<PriorityFinding>,
    /// Lower-case hex, [`DIGEST_HEX_LEN`] characters: changes when the outcome, the assets,
    /// their coverage or the reasons change; not with alert order, enum casing or elapsed time.
    pub digest: String,
}

impl Verdict {
    pub fn covered(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter().filter(|asset| asset.covered)
    }

    pub fn uncovered(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter().filter(|asset| !asset.covered)
    }
}

/// Decides whether Defender Experts covers `incident` under `scope` and `policy` at `now`.
pub fn verdict(incident: &Incident, scope: &Scope, policy: &Policy, now: DateTime<Utc>) -> Verdict {
    if IncidentStatus::parse(incident.status.as_wire()) == IncidentStatus::Redirected {
        let to = incident.redirect_incident_id.clone();
        return finish(
            incident,
            Outcome::Skipped {
                redirected_to: to.clone(),
            },
            Vec::new(),
            vec![Reason::Redirected { to }],
            Vec::new(),
        );
    }

    let mut reasons = Vec::new();
    let severity = Severity::parse(incident.severity.as_wire());
    let severity_ok = policy.eligible_severities.contains(&severity);
    if !severity_ok {
        reasons.push(Reason::SeverityNotCovered {
            severity: incident.severity.as_wire().to_owned(),
        });
    }
    let kinds_ok = judge_alert_kinds(&incident.alerts, policy, &mut reasons);

    let mut findings = Vec::new();
    let assets = judge_assets(incident, scope, policy, now, &mut findings);
    let any_covered = assets.iter().any(|asset| asset.covered);
    if incident.alerts.is_empty() {
        reasons.push(Reason::NoAlerts);
    } else if assets.is_empty() {
        reasons.push(Reason::NoImpactedAsset);
    } else if !any_covered {
        reasons.push(Reason::NoCoveredAsset);
    }

    let outcome = if severity_ok && kinds_ok && any_covered {
        Outcome::InScope
    } else {
        Outcome::OutOfScope
    };
    finish(incident, outcome, assets, reasons, findings)
}

/// Applies the excluded-kind rule; returns whether the incident stays eligible and records the
/// reason (also the policy choice for a mixed incident).
fn judge_alert_kinds(alerts: &[Alert], policy: &Policy, reasons: &mut Vec<Reason>) -> bool {
    let kinds: Vec<Option<ExcludedKind>> = alerts
        .iter()
        .map(|alert| policy.excluded_kind(alert))
        .collect();
    let present: Vec<ExcludedKind> = kinds
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if present.is_empty() {
        return true;
    }
    let every = kinds.iter().all(Option::is_some);
    match (every, policy.mixed) {
        (true, _) => {
            reasons.push(Reason::EveryAlertExcluded { kinds: present });
            false
        }
        (false, MixedIncidents::ExcludedWhenAny) => {
            reasons.push(Reason::SomeAlertExcluded { kinds: present });
            false
        }
        (false, MixedIncidents::ExcludedWhenAll) => {
            reasons.push(Reason::MixedIncidentEligible { kinds: present });
            true
        }
    }
}

fn finish(
    incident: &Incident,
    outcome: Outcome,
    assets: Vec<Asset>,
    reasons: Vec<Reason>,
    priority_findings: Vec<PriorityFinding>,
) -> Verdict {
    let digest = digest(&outcome, &assets, &reasons);
    Verdict {
        incident_id: incident.id.clone(),
        outcome,
        assets,
        reasons,
        priority_findings,
        digest,
    }
}

fn digest(outcome: &Outcome, assets: &[Asset], reasons: &[Reason]) -> String {
    let mut lines: Vec<String> = assets
        .iter()
        .map(|asset| {
            format!(
                "asset\t{}\t{}\t{}\t{}",
                asset.kind.code(),
                asset.id,
                asset.covered,
                asset.reason.stable()
            )
        })
        .collect();
    lines.extend(
        reasons
            .iter()
            .map(|reason| format!("reason\t{}", reason.stable())),
    );
    lines.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"dexscope-verdict v1\n");
    hasher.update(outcome.code().as_bytes());
    for line in lines {
        hasher.update(b"\n");
        hasher.update(line.as_bytes());
    }
    let hash = hasher.finalize();
    hash.iter().take(DIGEST_HEX_LEN / 2).fold(
        String::with_capacity(DIGEST_HEX_LEN),
        |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Impacted assets

/// What the evidence of one incident says about one device, merged across alerts.
#[derive(Debug, Default)]
struct DeviceFacts {
    mde_id: Option<String>,
    aad_id: Option<String>,
    dns_name: Option<String>,
    os_platform: Option<String>,
    rbac_group_name: Option<String>,
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
struct UserFacts {
    id: Option<UserId>,
    upn: Option<String>,
    display_name: Option<String>,
}

/// Trimmed, lower-cased, `None` when empty.
fn norm(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_lowercase)
}

fn present(value: Option<&str>) -> Option<String> {
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
fn collect(incident: &Incident, policy: &Policy) -> (Vec<DeviceFacts>, Vec<UserFacts>) {
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

fn judge_assets(
    incident: &Incident,
    scope: &Scope,
    policy: &Policy,
    now: DateTime<Utc>,
    findings: &mut Vec<PriorityFinding>,
) -> Vec<Asset> {
    let (devices, users) = collect(incident, policy);
    let mut assets: Vec<Asset> = devices
        .into_iter()
        .map(|device| judge_device(device, scope, policy, now, findings))
        .collect();
    let mut user_assets: Vec<Asset> = users
        .into_iter()
        .map(|user| {
            let covered = scope.has_user(user.id.as_ref(), user.upn.as_deref());
            // `user_facts` only keeps identities with an object id or a UPN.
            let id = user
                .id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .or_else(|| user.upn.clone())
                .unwrap_or_default();
            Asset {
                kind: AssetKind::User,
                id,
                name: user.upn.or(user.display_name),
                platform: None,
                covered,
                reason: if covered {
                    AssetReason::DirectMember
                } else {
                    AssetReason::NotInScope
                },
            }
        })
        .collect();
    user_assets.sort_by(|a, b| a.id.cmp(&b.id));
    assets.extend(user_assets);
    findings.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assets
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

    let reason = if in_group_by_placement || (scoped.is_some() && placement.is_none()) {
        if platform_ok {
            AssetReason::InDeviceGroup {
                group: scope.device_group.clone(),
            }
        } else {
            AssetReason::PlatformNotCovered {
                platform: platform.clone(),
            }
        }
    } else if let (Some(scoped), Some(group)) = (scoped, placement.as_deref()) {
        misplaced(scoped, group, &id, &device, scope, now, findings)
    } else {
        AssetReason::NotInScope
    };
    Asset {
        kind: AssetKind::Device,
        covered: matches!(reason, AssetReason::InDeviceGroup { .. }),
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

// ---------------------------------------------------------------------------------------------
// JSON (DESIGN section 2: `verdict --format json`)

#[derive(Serialize)]
struct AssetJson<'a> {
    kind: AssetKind,
    id: &'a str,
    name: Option<&'a str>,
    platform: Option<&'a str>,
    covered: bool,
    reason: String,
    reason_code: &'static str,
}

#[derive(Serialize)]
struct VerdictJson<'a> {
    verdict: &'static str,
    incident_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirected_to: Option<&'a str>,
    covered: Vec<&'a str>,
    assets: Vec<AssetJson<'a>>,
    reasons: Vec<String>,
    priority_findings: &'a [PriorityFinding],
    digest: &'a str,
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let redirected_to = match &self.outcome {
            Outcome::Skipped { redirected_to } => redirected_to.as_deref(),
            _ => None,
        };
        VerdictJson {
            verdict: self.outcome.code(),
            incident_id: &self.incident_id,
            redirected_to,
            covered: self.covered().map(|asset| asset.id.as_str()).collect(),
            assets: self
                .assets
                .iter()
                .map(|asset| AssetJson {
                    kind: asset.kind,
                    id: &asset.id,
                    name: asset.name.as_deref(),
                    platform: asset.platform.as_deref(),
                    covered: asset.covered,
                    reason: asset.reason.to_string(),
                    reason_code: asset.reason.code(),
                })
                .collect(),
            reasons: self.reasons.iter().map(ToString::to_string).collect(),
            priority_findings: &self.priority_findings,
            digest: &self.digest,
        }
        .serialize(serializer)
    }
}
