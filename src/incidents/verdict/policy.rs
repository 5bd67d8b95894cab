//! The coverage policy: the knobs where the service documentation is silent, and the alert-kind
//! eligibility rule.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::model::{Alert, DetectionSource, EvidenceRole, ServiceSource, Severity};

use super::Reason;

/// Alert kinds Defender Experts does not cover: its documentation leaves out data loss
/// prevention, insider risk, custom detections and alerts from outside Defender XDR (Sentinel).
/// Each is recognised by the alert's `serviceSource` or `detectionSource`.
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

    pub(super) fn code(self) -> &'static str {
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
/// say, so this is a policy choice, recorded in the verdict reasons.
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
    /// is not published, so Windows is any `windows…` prefix (desktop
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

/// The coverage rules that are policy rather than fact. `Default` gives the defaults each field
/// names.
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
    /// every evidence role counts as impacted, since the service does not say which roles it
    /// treats as impacted. Evidence without roles
    /// always counts.
    pub ignored_roles: Vec<EvidenceRole>,
    /// The `assignedTo` value that shows Defender Experts took an incident on (compared
    /// case-insensitively). Default "Defender Experts", the name the service's MSSP guide
    /// documents for incidents its analysts own.
    pub pickup_assignee: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            eligible_severities: vec![Severity::High, Severity::Medium],
            pickup_assignee: DEFAULT_PICKUP_ASSIGNEE.to_owned(),
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

/// The `assignedTo` value of an incident Defender Experts took on, as the service documents it.
pub const DEFAULT_PICKUP_ASSIGNEE: &str = "Defender Experts";

impl Policy {
    /// True when the incident is assigned to Defender Experts: they are handling it.
    pub fn taken_by_experts(&self, assigned_to: Option<&str>) -> bool {
        assigned_to.is_some_and(|a| a.trim().eq_ignore_ascii_case(self.pickup_assignee.trim()))
    }

    fn excluded_kind(&self, alert: &Alert) -> Option<ExcludedKind> {
        ExcludedKind::of(alert).filter(|kind| self.excluded_kinds.contains(kind))
    }

    pub(super) fn counts_as_impacted(&self, roles: &[EvidenceRole]) -> bool {
        roles.is_empty()
            || roles.iter().any(|role| {
                let role = EvidenceRole::parse(role.as_wire());
                !self.ignored_roles.contains(&role)
            })
    }
}

/// Applies the excluded-kind rule; returns whether the incident stays eligible and records the
/// reason (also the policy choice for a mixed incident).
pub(super) fn judge_alert_kinds(
    alerts: &[Alert],
    policy: &Policy,
    reasons: &mut Vec<Reason>,
) -> bool {
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
