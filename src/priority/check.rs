//! The pure priority check: prove from where tagged machines actually landed that the scoped
//! device group is not outranked.
//!
//! No supported API returns a device group's rank (the list of supported MDE APIs has no
//! device-group endpoint, and the retired preview `machinegroups` listing carried no rank), so
//! the check tests the rank's *effect*: every machine carrying the scoped tag must report
//! `rbacGroupName` (read from `/api/machines`) equal to the scoped group. A tagged machine
//! elsewhere after the propagation grace means a higher-ranked group captured it; one in
//! `UnassignedGroup` means the group's rule does not match the tag.
//! No I/O and no clock: `now` is a parameter.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::alerts::{AlertKind, AlertSeverity, Observation};
use crate::model::{Machine, MachineId, UNASSIGNED_GROUP};

/// At most this many device names are named in one finding.
pub const SAMPLE_SIZE: usize = 5;

/// Everything the check looks at, read afresh each pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The scoped MDE device group (`scope.device_group_name`).
    pub device_group_name: String,
    /// How long a fresh tag may take to move a machine into the group.
    pub propagation_grace: TimeDelta,
    /// Every machine carrying the scoped tag.
    pub tagged: Vec<TaggedMachine>,
    /// Desired machines that do not carry the tag (yet).
    pub missing_tag: Vec<MissingTag>,
    /// Incident evidence that placed an in-scope machine somewhere.
    pub sightings: Vec<Sighting>,
}

/// A tagged machine, where MDE placed it, and since when it carries the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedMachine {
    pub id: MachineId,
    /// The DNS name, or the id when the machine has none.
    pub label: String,
    pub rbac_group_name: Option<std::sync::Arc<str>>,
    /// When dexscope tagged it or first saw it tagged (the state database); `None` means it was
    /// first seen just now, so its grace starts now.
    pub tagged_since: Option<DateTime<Utc>>,
}

impl TaggedMachine {
    pub fn from_machine(m: &Machine, tagged_since: Option<DateTime<Utc>>) -> Self {
        TaggedMachine {
            id: m.id.clone(),
            label: m
                .dns_name
                .as_ref()
                .map_or_else(|| m.id.to_string(), |d| d.to_string()),
            rbac_group_name: m.rbac_group_name.clone(),
            tagged_since,
        }
    }
}

/// A desired machine without the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTag {
    pub id: MachineId,
    pub label: String,
}

/// Device evidence of an incident: an in-scope machine and the group the evidence names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub machine: MachineId,
    pub label: String,
    pub rbac_group_name: String,
    pub incident_id: String,
}

/// How bad a finding is; ordered, so the worst of several is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Warning,
    Critical,
}

/// What a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FindingKind {
    /// Tagged machines placed in a higher-ranked group after the grace period.
    Outranked { by_group: String },
    /// Tagged machines in `UnassignedGroup`: the scoped group's rule does not match the tag.
    TagNotMatched,
    /// Tagged machines past the grace period that report no group at all.
    PlacementUnknown,
    /// Desired machines without the tag.
    MissingTag,
    /// Tagged machines not yet in the group, still within the grace period: not an alarm.
    Pending,
    /// Tagged machines in the scoped group.
    Ok,
}

/// One conclusion of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub kind: FindingKind,
    pub severity: Severity,
    /// Machines concerned.
    pub count: usize,
    /// Up to [`SAMPLE_SIZE`] of their names, sorted.
    pub sample: Vec<String>,
    /// Incidents whose evidence contributed, sorted (empty when only placement did).
    pub incidents: Vec<String>,
    /// One line for logs, `check` and alerts.
    pub summary: String,
}

/// Checks placement. Findings come worst first: outranked (per winning group, by name), tag not
/// matched, placement unknown, missing tag, pending, ok. Kinds with no machine are left out.
pub fn check_priority(placement: &Placement, now: DateTime<Utc>) -> Vec<Finding> {
    let group = placement.device_group_name.as_str();
    let since: HashMap<&str, Option<DateTime<Utc>>> = placement
        .tagged
        .iter()
        .map(|m| (m.id.as_str(), m.tagged_since))
        .collect();
    let within_grace = |tagged_since: Option<DateTime<Utc>>| match tagged_since {
        None => true,
        Some(t) => now - t < placement.propagation_grace,
    };

    let mut acc = Accumulator::default();
    for m in &placement.tagged {
        let kind = match m.rbac_group_name.as_deref() {
            Some(g) if g.eq_ignore_ascii_case(group) => FindingKind::Ok,
            _ if within_grace(m.tagged_since) => FindingKind::Pending,
            None => FindingKind::PlacementUnknown,
            Some(g) => misplaced(g),
        };
        acc.add(kind, &m.id, &m.label, None);
    }
    for s in &placement.sightings {
        if s.rbac_group_name.eq_ignore_ascii_case(group) {
            continue;
        }
        // A machine tagged moments ago may show its old group in fresh evidence too; a machine
        // dexscope does not see tagged has no grace to give.
        if since
            .get(s.machine.as_str())
            .is_some_and(|t| within_grace(*t))
        {
            continue;
        }
        acc.add(
            misplaced(&s.rbac_group_name),
            &s.machine,
            &s.label,
            Some(&s.incident_id),
        );
    }
    for m in &placement.missing_tag {
        acc.add(FindingKind::MissingTag, &m.id, &m.label, None);
    }
    acc.findings(group, placement.propagation_grace)
}

/// The worst severity among findings (`Ok` when there are none).
pub fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

/// The priority alert's observation for this pass: bad while any finding is critical.
pub fn observation(findings: &[Finding]) -> Observation {
    let critical: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .collect();
    if critical.is_empty() {
        return Observation::good(AlertKind::PriorityMisconfigured, "");
    }
    let summary = critical
        .iter()
        .map(|f| f.summary.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let details = serde_json::json!({ "findings": critical });
    Observation::bad(
        AlertKind::PriorityMisconfigured,
        "",
        AlertSeverity::Critical,
        summary,
        details,
    )
}

fn misplaced(group: &str) -> FindingKind {
    if group.eq_ignore_ascii_case(UNASSIGNED_GROUP) {
        FindingKind::TagNotMatched
    } else {
        FindingKind::Outranked {
            by_group: group.to_string(),
        }
    }
}

/// Machines per finding kind, de-duplicated by machine id (placement and evidence may both name
/// the same machine), with the incidents that contributed.
#[derive(Default)]
struct Accumulator {
    machines: BTreeMap<FindingKind, BTreeMap<MachineId, String>>,
    incidents: BTreeMap<FindingKind, std::collections::BTreeSet<String>>,
}

impl Accumulator {
    fn add(&mut self, kind: FindingKind, id: &MachineId, label: &str, incident: Option<&str>) {
        if let Some(i) = incident {
            self.incidents
                .entry(kind.clone())
                .or_default()
                .insert(i.to_string());
        }
        self.machines
            .entry(kind)
            .or_default()
            .entry(id.clone())
            .or_insert_with(|| label.to_string());
    }

    fn findings(mut self, group: &str, grace: TimeDelta) -> Vec<Finding> {
        // BTreeMap order over `FindingKind` is its declaration order: worst first.
        self.machines
            .into_iter()
            .map(|(kind, machines)| {
                let mut names: Vec<String> = machines.into_values().collect();
                names.sort();
                let count = names.len();
                names.truncate(SAMPLE_SIZE);
                let incidents: Vec<String> = self
                    .incidents
                    .remove(&kind)
                    .map(|s| s.into_iter().collect())
                    .unwrap_or_default();
                let severity = severity_of(&kind);
                let summary = summary_of(&kind, group, grace, count, &names, &incidents);
                Finding {
                    kind,
                    severity,
                    count,
                    sample: names,
                    incidents,
                    summary,
                }
            })
            .collect()
    }
}

fn severity_of(kind: &FindingKind) -> Severity {
    match kind {
        FindingKind::Outranked { .. } | FindingKind::TagNotMatched => Severity::Critical,
        FindingKind::PlacementUnknown | FindingKind::MissingTag => Severity::Warning,
        FindingKind::Pending | FindingKind::Ok => Severity::Ok,
    }
}

fn summary_of(
    kind: &FindingKind,
    group: &str,
    grace: TimeDelta,
    count: usize,
    sample: &[String],
    incidents: &[String],
) -> String {
    let mut names = sample.join(", ");
    if count > sample.len() {
        names.push_str(&format!(", +{} more", count - sample.len()));
    }
    let devices = if count == 1 { "device" } else { "devices" };
    let mut line = match kind {
        FindingKind::Outranked { by_group } => format!(
            "device group {group} is outranked by {by_group}: {count} tagged {devices} placed there ({names}); give {group} rank 1"
        ),
        FindingKind::TagNotMatched => format!(
            "{count} tagged {devices} in {UNASSIGNED_GROUP} ({names}): the rule of {group} does not match the tag; fix the group's rule"
        ),
        FindingKind::PlacementUnknown => {
            format!("{count} tagged {devices} report no device group ({names})")
        }
        FindingKind::MissingTag => format!(
            "{count} desired {devices} without the tag ({names}); the next reconcile pass tags them"
        ),
        FindingKind::Pending => format!(
            "{count} tagged {devices} not yet in {group}, within the {} propagation grace ({names})",
            crate::text::duration(grace.to_std().unwrap_or_default())
        ),
        FindingKind::Ok => format!("{count} tagged {devices} in {group}"),
    };
    if !incidents.is_empty() {
        line.push_str(&format!(
            "; seen in incident evidence: {}",
            incidents.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "Defender_Experts_Scoped_Coverage_Devices";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn mid(n: u32) -> MachineId {
        MachineId::parse(&format!("{n:040x}")).unwrap()
    }

    /// A tagged machine `ws-<n>` in `group`, tagged `minutes_ago` (None: first seen now).
    fn tagged(n: u32, group: Option<&str>, minutes_ago: Option<i64>) -> TaggedMachine {
        TaggedMachine {
            id: mid(n),
            label: format!("ws-{n:02}"),
            rbac_group_name: group.map(Into::into),
            tagged_since: minutes_ago.map(|m| now() - TimeDelta::minutes(m)),
        }
    }

    fn sighting(n: u32, group: &str, incident: &str) -> Sighting {
        Sighting {
            machine: mid(n),
            label: format!("ws-{n:02}"),
            rbac_group_name: group.into(),
            incident_id: incident.into(),
        }
    }

    fn placement(tagged: Vec<TaggedMachine>) -> Placement {
        Placement {
            device_group_name: GROUP.into(),
            propagation_grace: TimeDelta::hours(2),
            tagged,
            missing_tag: Vec::new(),
            sightings: Vec::new(),
        }
    }

    /// Findings as `severity kind count [sample] [incidents]`, one per line.
    fn check(p: Placement, expect: &str) {
        let got: Vec<String> = check_priority(&p, now())
            .iter()
            .map(|f| {
                let kind = match &f.kind {
                    FindingKind::Outranked { by_group } => format!("outranked:{by_group}"),
                    k => serde_json::to_value(k).unwrap()["kind"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                };
                let sev = serde_json::to_value(f.severity).unwrap();
                format!(
                    "{} {kind} {} [{}] [{}]",
                    sev.as_str().unwrap(),
                    f.count,
                    f.sample.join(","),
                    f.incidents.join(",")
                )
            })
            .collect();
        assert_eq!(got.join("\n"), expect);
    }

    #[test]
    fn findings() {
        let servers = Some("Servers_T0");
        let cases: Vec<(&str, Placement, &str)> = vec![
            (
                "all placed",
                placement(vec![
                    tagged(1, Some(GROUP), Some(600)),
                    tagged(2, Some(GROUP), None),
                ]),
                "ok ok 2 [ws-01,ws-02] []",
            ),
            (
                "group name compares case-insensitively",
                placement(vec![tagged(
                    1,
                    Some("defender_experts_scoped_coverage_devices"),
                    Some(600),
                )]),
                "ok ok 1 [ws-01] []",
            ),
            (
                "outranked after grace, per winning group, sample of five",
                placement(
                    (1..=7)
                        .map(|n| tagged(n, servers, Some(180)))
                        .chain([
                            tagged(8, Some("Kiosks"), Some(121)),
                            tagged(9, Some(GROUP), Some(180)),
                        ])
                        .collect(),
                ),
                "critical outranked:Kiosks 1 [ws-08] []\n\
                 critical outranked:Servers_T0 7 [ws-01,ws-02,ws-03,ws-04,ws-05] []\n\
                 ok ok 1 [ws-09] []",
            ),
            (
                "within grace is pending, not an alarm; unknown tag time starts the grace now",
                placement(vec![
                    tagged(1, servers, Some(119)),
                    tagged(2, Some(UNASSIGNED_GROUP), None),
                    tagged(3, None, Some(10)),
                ]),
                "ok pending 3 [ws-01,ws-02,ws-03] []",
            ),
            (
                "grace boundary: exactly the grace period is past it",
                placement(vec![tagged(1, servers, Some(120))]),
                "critical outranked:Servers_T0 1 [ws-01] []",
            ),
            (
                "unassigned after grace: the rule does not match the tag",
                placement(vec![tagged(1, Some("unassignedgroup"), Some(300))]),
                "critical tag_not_matched 1 [ws-01] []",
            ),
            (
                "no group reported after grace",
                placement(vec![tagged(1, None, Some(300))]),
                "warning placement_unknown 1 [ws-01] []",
            ),
            ("nothing tagged, nothing desired", placement(vec![]), ""),
        ];
        for (name, p, expect) in cases {
            eprintln!("case {name}");
            check(p, expect);
        }
    }

    #[test]
    fn missing_tags_and_evidence() {
        let mut p = placement(vec![
            tagged(1, Some(GROUP), Some(600)),
            tagged(2, Some(GROUP), Some(10)),
            tagged(3, Some("Servers_T0"), Some(600)),
        ]);
        p.missing_tag = vec![MissingTag {
            id: mid(9),
            label: "ws-09".into(),
        }];
        p.sightings = vec![
            // Evidence of an outranked machine already known from placement: counted once.
            sighting(3, "Servers_T0", "41"),
            // A machine placed correctly now, but evidence shows another group.
            sighting(1, "Servers_T0", "42"),
            // Freshly tagged: evidence of its old group is still within grace.
            sighting(2, "Servers_T0", "43"),
            // Evidence naming the right group is no finding.
            sighting(1, GROUP, "44"),
            // An in-scope machine dexscope does not see tagged, in the unassigned group.
            sighting(5, UNASSIGNED_GROUP, "45"),
        ];
        check(
            p,
            "critical outranked:Servers_T0 2 [ws-01,ws-03] [41,42]\n\
             critical tag_not_matched 1 [ws-05] [45]\n\
             warning missing_tag 1 [ws-09] []\n\
             ok ok 2 [ws-01,ws-02] []",
        );
    }

    #[test]
    fn summaries_worst_and_observation() {
        let p = placement(
            (1..=7)
                .map(|n| tagged(n, Some("Servers_T0"), Some(600)))
                .collect(),
        );
        let f = check_priority(&p, now());
        assert_eq!(
            f[0].summary,
            "device group Defender_Experts_Scoped_Coverage_Devices is outranked by Servers_T0: \
             7 tagged devices placed there (ws-01, ws-02, ws-03, ws-04, ws-05, +2 more); \
             give Defender_Experts_Scoped_Coverage_Devices rank 1"
        );
        assert_eq!(worst(&f), Severity::Critical);
        assert_eq!(worst(&[]), Severity::Ok);
        let obs = observation(&f);
        assert_eq!(obs.kind, AlertKind::PriorityMisconfigured);
        assert!(obs.is_bad());
        assert_eq!(obs.details()["findings"][0]["by_group"], "Servers_T0");

        let ok = check_priority(
            &placement(vec![tagged(1, Some("Servers_T0"), Some(5))]),
            now(),
        );
        assert_eq!(worst(&ok), Severity::Ok);
        assert!(!observation(&ok).is_bad());
    }

    #[test]
    fn pending_summary_shows_the_grace_as_read() {
        for (grace, shown) in [
            (TimeDelta::seconds(30), "30s"),
            (TimeDelta::seconds(90), "1m 30s"),
            (TimeDelta::minutes(4), "4m"),
            (TimeDelta::minutes(90), "1h 30m"),
            (TimeDelta::hours(2), "2h"),
        ] {
            let mut p = placement(vec![tagged(1, Some("Servers_T0"), None)]);
            p.propagation_grace = grace;
            let f = check_priority(&p, now());
            assert_eq!(
                f[0].summary,
                format!(
                    "1 tagged device not yet in {GROUP}, within the {shown} propagation grace (ws-01)"
                )
            );
        }
    }
}
