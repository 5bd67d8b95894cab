//! The verdict and its parts (outcome, assets, reasons, priority findings), its digest and its
//! JSON form.

use std::fmt::{self, Write as _};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::Incident;

use super::{DIGEST_HEX_LEN, ExcludedKind};

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
    pub(super) fn code(self) -> &'static str {
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
    /// Covered, offline: listed in the desired state (nothing about the tenant was observed).
    Listed,
    /// Not covered, offline: listed, but the alert evidence placed the device in another
    /// group. Offline neither the tag nor the group ranks were read, so no cause is claimed.
    ElsewhereAtAlert { group: String },
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
            AssetReason::Listed => "listed".into(),
            AssetReason::ElsewhereAtAlert { group } => {
                format!("elsewhere_at_alert\t{}", group.to_lowercase())
            }
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
            AssetReason::Listed => "listed",
            AssetReason::ElsewhereAtAlert { .. } => "elsewhere_at_alert",
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
            AssetReason::Listed => f.write_str("listed in the desired state"),
            AssetReason::ElsewhereAtAlert { group } => write!(
                f,
                "at the time of the alert the device was in group {group}, \
                 not the scoped device group"
            ),
            AssetReason::NotInScope => f.write_str("not in scope"),
            AssetReason::PlatformNotCovered {
                platform: Some(platform),
            } => write!(f, "platform {platform} not covered"),
            AssetReason::PlatformNotCovered { platform: None } => {
                f.write_str("platform not reported, so coverage is not established")
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
/// the priority alert for these.
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
    /// Evidence items of an alert without `@odata.type`: nothing in them could be read.
    UntypedEvidence {
        alert: String,
        count: usize,
    },
    /// Local or system accounts in the evidence: impacted, but no user group can hold them.
    LocalAccounts {
        count: usize,
    },
}

impl Reason {
    /// A note on how the evidence or the policy was read, not a cause of the outcome: the
    /// comment lists notes apart from the reasons of an OUT OF SCOPE verdict.
    pub fn is_note(&self) -> bool {
        matches!(
            self,
            Reason::MixedIncidentEligible { .. }
                | Reason::UntypedEvidence { .. }
                | Reason::LocalAccounts { .. }
        )
    }

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
            Reason::UntypedEvidence { alert, count } => {
                format!("untyped_evidence\t{alert}\t{count}")
            }
            Reason::LocalAccounts { count } => format!("local_accounts\t{count}"),
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
            Reason::UntypedEvidence { alert, count: 1 } => write!(
                f,
                "alert {alert}: 1 evidence item has no @odata.type and was not read"
            ),
            Reason::UntypedEvidence { alert, count } => write!(
                f,
                "alert {alert}: {count} evidence items have no @odata.type and were not read"
            ),
            Reason::LocalAccounts { count: 1 } => f.write_str(
                "1 local or system account in the evidence, which no user group can hold",
            ),
            Reason::LocalAccounts { count } => write!(
                f,
                "{count} local or system accounts in the evidence, which no user group can hold"
            ),
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
    /// Defender Experts have taken the incident on (`assignedTo` is the policy's pickup
    /// assignee): the comment acknowledges it, and an OUT OF SCOPE verdict says its picture
    /// of the scope disagrees with theirs.
    pub taken_by_experts: bool,
    /// Lower-case hex, [`DIGEST_HEX_LEN`] characters: changes when the outcome, the assets,
    /// their coverage or the reasons change, or when Defender Experts take an incident judged
    /// OUT OF SCOPE; not with alert order, enum casing or elapsed time.
    pub digest: String,
}

impl Verdict {
    /// Defender Experts took on an incident this verdict judges OUT OF SCOPE: dexscope's picture
    /// of the scope, or the service's, is wrong.
    pub fn scope_mismatch(&self) -> bool {
        self.taken_by_experts && self.outcome == Outcome::OutOfScope
    }

    pub fn covered(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter().filter(|asset| asset.covered)
    }

    pub fn uncovered(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter().filter(|asset| !asset.covered)
    }
}

pub(super) fn finish(
    incident: &Incident,
    outcome: Outcome,
    assets: Vec<Asset>,
    reasons: Vec<Reason>,
    priority_findings: Vec<PriorityFinding>,
    taken_by_experts: bool,
) -> Verdict {
    // Only a disagreement changes the digest: it is the one pickup the comment must answer.
    let mismatch = taken_by_experts && outcome == Outcome::OutOfScope;
    let digest = digest(&outcome, &assets, &reasons, mismatch);
    Verdict {
        incident_id: incident.id.clone(),
        outcome,
        assets,
        reasons,
        priority_findings,
        taken_by_experts,
        digest,
    }
}

fn digest(outcome: &Outcome, assets: &[Asset], reasons: &[Reason], mismatch: bool) -> String {
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
    if mismatch {
        lines.push("taken_by_experts".into());
    }
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
// JSON (the form `verdict --format json` prints)

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
    /// Present only when true, so the JSON of an incident nobody took is as before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    taken_by_experts: bool,
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
            taken_by_experts: self.taken_by_experts,
            digest: &self.digest,
        }
        .serialize(serializer)
    }
}
