//! Verdict engine and comment renderer: table-driven coverage rules, digest stability, JSON and
//! comment snapshots, hostile incident text, and a property test of the comment's structure.

use chrono::{DateTime, Duration, TimeZone, Utc};
use dexscope::incidents::comment::{
    MARKER_PREFIX, MAX_COMMENT_LEN, Marker, comment, has_marker, parse_marker, render,
};
use dexscope::incidents::verdict::{
    DesiredDevice, DesiredUser, MixedIncidents, Outcome, Policy, Scope, verdict,
};
use dexscope::model::{
    AadDeviceId, Alert, DetectionSource, DnsName, Evidence, EvidenceKind, EvidenceRole,
    GroupMember, Incident, IncidentComment, IncidentStatus, Machine, MachineId, ObjectId,
    ServiceSource, Severity, Upn, UserAccount, UserId,
};
use expect_test::expect;
use proptest::prelude::*;

const GROUP: &str = "Defender_Experts_Scoped_Coverage_Devices";

// Machines carrying the tag (see `live_scope`).
const WIN: &str = "a000000000000000000000000000000000000001";
const LNX: &str = "a000000000000000000000000000000000000002";
const DROID: &str = "a000000000000000000000000000000000000003";
const OUTR: &str = "a000000000000000000000000000000000000004";
const UNAS: &str = "a000000000000000000000000000000000000005";
const FRESH: &str = "a000000000000000000000000000000000000006";
const NEWU: &str = "a000000000000000000000000000000000000007";
const PLACED: &str = "a000000000000000000000000000000000000008";
// Machines without the tag.
const STRAY: &str = "b000000000000000000000000000000000000001";
const STRAY2: &str = "b000000000000000000000000000000000000002";

const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";
const CAROL: &str = "33333333-3333-3333-3333-333333333333";
const NESTED: &str = "44444444-4444-4444-4444-444444444444";
const AAD_DEV: &str = "55555555-5555-5555-5555-555555555555";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap()
}

fn machine(id: &str, dns: &str, platform: &str, group: Option<&str>) -> Machine {
    Machine {
        id: MachineId::parse(id).unwrap(),
        dns_name: Some(DnsName::parse(dns).unwrap()),
        aad_device_id: None,
        os_platform: Some(platform.into()),
        tags: vec!["DEX-Scoped".into()],
        rbac_group_id: None,
        rbac_group_name: group.map(Into::into),
    }
}

/// Alice (id and UPN) and Bob (id only) are direct members; a nested group is not a user.
/// Tagged: WIN and LNX placed in the group, DROID an Android phone, OUTR held by another group
/// for days, UNAS in UnassignedGroup, FRESH tagged 30 minutes ago and still elsewhere, NEWU
/// tagged 1 minute ago and still unassigned, PLACED with unknown placement. Grace: 2 hours.
fn live_scope() -> Scope {
    let members = [
        GroupMember::User {
            id: UserId::parse(ALICE).unwrap(),
            upn: Some(Upn::parse("Alice@Contoso.com").unwrap()),
        },
        GroupMember::User {
            id: UserId::parse(BOB).unwrap(),
            upn: None,
        },
        GroupMember::Other {
            id: ObjectId::parse(NESTED).unwrap(),
            odata_type: "#microsoft.graph.group".into(),
            display_name: Some("nested".into()),
        },
    ];
    let old = Some(now() - Duration::days(3));
    let tagged = [
        (
            machine(WIN, "ws-1.contoso.local", "Windows11", Some(GROUP)),
            old,
        ),
        (
            machine(LNX, "srv-2.contoso.local", "Linux", Some(GROUP)),
            old,
        ),
        (
            machine(DROID, "phone-3.contoso.local", "Android", Some(GROUP)),
            old,
        ),
        (
            machine(OUTR, "ws-4.contoso.local", "Windows10", Some("Tier0")),
            old,
        ),
        (
            machine(
                UNAS,
                "ws-5.contoso.local",
                "Windows10",
                Some("UnassignedGroup"),
            ),
            None,
        ),
        (
            machine(FRESH, "ws-6.contoso.local", "Windows10", Some("Tier0")),
            Some(now() - Duration::minutes(30)),
        ),
        (
            machine(NEWU, "ws-7.contoso.local", "macOS", Some("UnassignedGroup")),
            Some(now() - Duration::seconds(90)),
        ),
        (
            machine(PLACED, "ws-8.contoso.local", "Windows11", None),
            old,
        ),
    ];
    Scope::live(
        GROUP,
        std::time::Duration::from_secs(2 * 3600),
        members,
        tagged,
    )
}

/// The desired state of `verdict --desired`: one device by each kind of id, one user each way.
fn offline_scope() -> Scope {
    Scope::offline(
        GROUP,
        &[
            DesiredUser::Upn(Upn::parse("carol@contoso.com").unwrap()),
            DesiredUser::Id(UserId::parse(BOB).unwrap()),
        ],
        &[
            DesiredDevice::Machine(MachineId::parse(STRAY).unwrap()),
            DesiredDevice::Dns(DnsName::parse("kiosk-9.contoso.local").unwrap()),
            DesiredDevice::AadDevice(AadDeviceId::parse(AAD_DEV).unwrap()),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Incident builders

fn incident(severity: &str, alerts: Vec<Alert>) -> Incident {
    Incident {
        id: "2972395".into(),
        display_name: "Multi-stage incident".into(),
        severity: Severity::parse(severity),
        status: IncidentStatus::Active,
        redirect_incident_id: None,
        assigned_to: None,
        created_at: now() - Duration::hours(1),
        last_update_at: now(),
        alerts,
        comments: Vec::new(),
    }
}

fn alert(service: &str, detection: &str, evidence: Vec<Evidence>) -> Alert {
    Alert {
        id: format!("da{service}{detection}"),
        title: "Suspicious activity".into(),
        severity: Severity::High,
        service_source: ServiceSource::parse(service),
        detection_source: DetectionSource::parse(detection),
        evidence,
    }
}

/// An endpoint (EDR) alert.
fn edr(evidence: Vec<Evidence>) -> Alert {
    alert(
        "microsoftDefenderForEndpoint",
        "microsoftDefenderForEndpoint",
        evidence,
    )
}

fn ev(kind: EvidenceKind) -> Evidence {
    Evidence {
        kind,
        roles: vec![EvidenceRole::Compromised],
    }
}

fn device(id: &str, platform: Option<&str>, group: Option<&str>) -> Evidence {
    ev(EvidenceKind::Device {
        mde_device_id: Some(id.into()),
        azure_ad_device_id: None,
        dns_name: None,
        os_platform: platform.map(Into::into),
        rbac_group_id: None,
        rbac_group_name: group.map(Into::into),
    })
}

fn device_named(dns: Option<&str>, aad: Option<&str>, platform: &str) -> Evidence {
    ev(EvidenceKind::Device {
        mde_device_id: None,
        azure_ad_device_id: aad.map(Into::into),
        dns_name: dns.map(Into::into),
        os_platform: Some(platform.into()),
        rbac_group_id: None,
        rbac_group_name: None,
    })
}

fn account(id: Option<&str>, upn: Option<&str>) -> UserAccount {
    UserAccount {
        azure_ad_user_id: id.map(Into::into),
        user_principal_name: upn.map(Into::into),
        ..UserAccount::default()
    }
}

fn user(id: Option<&str>, upn: Option<&str>) -> Evidence {
    ev(EvidenceKind::User {
        account: account(id, upn),
    })
}

fn mailbox(address: Option<&str>, upn: Option<&str>, acct: Option<UserAccount>) -> Evidence {
    ev(EvidenceKind::Mailbox {
        primary_address: address.map(Into::into),
        upn: upn.map(Into::into),
        display_name: Some("Mailbox".into()),
        account: acct,
    })
}

fn process(acct: Option<UserAccount>, device: Option<&str>) -> Evidence {
    ev(EvidenceKind::Process {
        account: acct,
        mde_device_id: device.map(Into::into),
    })
}

fn other(odata_type: &str) -> Evidence {
    ev(EvidenceKind::Other {
        odata_type: odata_type.into(),
    })
}

// ---------------------------------------------------------------------------------------------
// The table

struct Case {
    name: &'static str,
    incident: Incident,
    scope: fn() -> Scope,
    policy: Policy,
    verdict: &'static str,
    /// Every asset: (id, reason), in verdict order.
    assets: Vec<(&'static str, &'static str)>,
    reasons: Vec<&'static str>,
    findings: Vec<&'static str>,
}

fn case(name: &'static str, verdict: &'static str, incident: Incident) -> Case {
    Case {
        name,
        incident,
        scope: live_scope,
        policy: Policy::default(),
        verdict,
        assets: Vec::new(),
        reasons: Vec::new(),
        findings: Vec::new(),
    }
}

impl Case {
    fn assets(mut self, assets: &[(&'static str, &'static str)]) -> Self {
        self.assets = assets.to_vec();
        self
    }
    fn reasons(mut self, reasons: &[&'static str]) -> Self {
        self.reasons = reasons.to_vec();
        self
    }
    fn findings(mut self, findings: &[&'static str]) -> Self {
        self.findings = findings.to_vec();
        self
    }
    fn offline(mut self) -> Self {
        self.scope = offline_scope;
        self
    }
    fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

const IN_GROUP: &str = "in device group Defender_Experts_Scoped_Coverage_Devices";
const MEMBER: &str = "direct member of the scoped user group";
const LISTED: &str = "listed in the desired state";
const NOT_IN_SCOPE: &str = "not in scope";
const NO_COVERED: &str = "no covered asset";
const NO_ASSET: &str = "no impacted asset (device or user)";

fn check(case: &Case) {
    let v = verdict(&case.incident, &(case.scope)(), &case.policy, now());
    let name = case.name;
    assert_eq!(v.outcome.code(), case.verdict, "{name}: outcome, {v:#?}");
    let assets: Vec<(String, String)> = v
        .assets
        .iter()
        .map(|a| (a.id.clone(), a.reason.to_string()))
        .collect();
    let want: Vec<(String, String)> = case
        .assets
        .iter()
        .map(|(id, reason)| (id.to_string(), reason.to_string()))
        .collect();
    assert_eq!(assets, want, "{name}: assets");
    for asset in &v.assets {
        let reason = asset.reason.to_string();
        let covering = reason == IN_GROUP || reason == MEMBER || reason == LISTED;
        assert_eq!(
            asset.covered, covering,
            "{name}: covered flag of {}",
            asset.id
        );
    }
    let reasons: Vec<String> = v.reasons.iter().map(ToString::to_string).collect();
    assert_eq!(reasons, case.reasons, "{name}: reasons");
    let findings: Vec<&str> = v
        .priority_findings
        .iter()
        .map(|f| f.device_id.as_str())
        .collect();
    assert_eq!(findings, case.findings, "{name}: priority findings");
    assert!(v.digest.len() >= 16 && v.digest.bytes().all(|b| b.is_ascii_hexdigit()));
}

fn cases() -> Vec<Case> {
    let dlp = |e| alert("dataLossPrevention", "unknown", e);
    vec![
        // --- devices: placement and platform
        case(
            "windows device placed in the group",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(WIN, Some("Windows11"), Some(GROUP))])],
            ),
        )
        .assets(&[(WIN, IN_GROUP)]),
        case(
            "tagged device, evidence without group",
            "in_scope",
            incident(
                "medium",
                vec![edr(vec![device(PLACED, Some("Windows11"), None)])],
            ),
        )
        .assets(&[(PLACED, IN_GROUP)]),
        case(
            "untagged device the evidence places in the group",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Windows10"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, IN_GROUP)]),
        case(
            "group name and device id in other casing",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(
                    &WIN.to_uppercase(),
                    Some("windows11"),
                    Some("DEFENDER_EXPERTS_SCOPED_COVERAGE_DEVICES"),
                )])],
            ),
        )
        .assets(&[(WIN, IN_GROUP)]),
        case(
            "windows server",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(
                    STRAY,
                    Some("WindowsServer2019"),
                    Some(GROUP),
                )])],
            ),
        )
        .assets(&[(STRAY, IN_GROUP)]),
        case(
            "linux",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(LNX, Some("Linux"), Some(GROUP))])],
            ),
        )
        .assets(&[(LNX, IN_GROUP)]),
        case(
            "linux by distribution name",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Ubuntu"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, IN_GROUP)]),
        case(
            "macos",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("macOS"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, IN_GROUP)]),
        case(
            "mac os x spelling",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Mac OS X"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, IN_GROUP)]),
        case(
            "android in the group is not covered",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(DROID, Some("Android"), Some(GROUP))])],
            ),
        )
        .assets(&[(DROID, "platform Android not covered")])
        .reasons(&[NO_COVERED]),
        case(
            "ios is not covered",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("iOS"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, "platform iOS not covered")])
        .reasons(&[NO_COVERED]),
        case(
            "iot platform is not covered",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("IoT camera"), Some(GROUP))])],
            ),
        )
        .assets(&[(STRAY, "platform IoT camera not covered")])
        .reasons(&[NO_COVERED]),
        case(
            "missing platform, none known for the machine",
            "out_of_scope",
            incident("high", vec![edr(vec![device(STRAY, None, Some(GROUP))])]),
        )
        .assets(&[(
            STRAY,
            "platform not reported, so coverage is not established",
        )])
        .reasons(&[NO_COVERED]),
        case(
            "missing platform taken from the tagged machine",
            "in_scope",
            incident("high", vec![edr(vec![device(WIN, None, None)])]),
        )
        .assets(&[(WIN, IN_GROUP)]),
        case(
            "android and windows together",
            "in_scope",
            incident(
                "high",
                vec![
                    edr(vec![device(DROID, Some("Android"), Some(GROUP))]),
                    edr(vec![device(WIN, Some("Windows11"), Some(GROUP))]),
                ],
            ),
        )
        .assets(&[(WIN, IN_GROUP), (DROID, "platform Android not covered")]),
        case(
            "untagged device elsewhere",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Windows11"), Some("Tier0"))])],
            ),
        )
        .assets(&[(STRAY, NOT_IN_SCOPE)])
        .reasons(&[NO_COVERED]),
        case(
            "outranked device",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(OUTR, Some("Windows10"), Some("Tier0"))])],
            ),
        )
        .assets(&[(OUTR, "outranked by group Tier0")])
        .reasons(&[NO_COVERED])
        .findings(&[OUTR]),
        case(
            "outranked as the machine list says, evidence silent",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(OUTR, Some("Windows10"), None)])],
            ),
        )
        .assets(&[(OUTR, "outranked by group Tier0")])
        .reasons(&[NO_COVERED])
        .findings(&[OUTR]),
        case(
            "tagged device in UnassignedGroup",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(
                    UNAS,
                    Some("Windows10"),
                    Some("unassignedgroup"),
                )])],
            ),
        )
        .assets(&[(
            UNAS,
            "tag not matched by group rule (device is in UnassignedGroup)",
        )])
        .reasons(&[NO_COVERED])
        .findings(&[UNAS]),
        case(
            "outranked within the grace period is propagating",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(FRESH, Some("Windows10"), Some("Tier0"))])],
            ),
        )
        .assets(&[(FRESH, "added 30 minutes ago, possibly still propagating")])
        .reasons(&[NO_COVERED]),
        case(
            "unassigned within the grace period is propagating",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(
                    NEWU,
                    Some("macOS"),
                    Some("UnassignedGroup"),
                )])],
            ),
        )
        .assets(&[(NEWU, "added 1 minute ago, possibly still propagating")])
        .reasons(&[NO_COVERED]),
        case(
            "covered device beside an outranked one",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![
                    device(OUTR, Some("Windows10"), Some("Tier0")),
                    device(WIN, Some("Windows11"), Some(GROUP)),
                ])],
            ),
        )
        .assets(&[(WIN, IN_GROUP), (OUTR, "outranked by group Tier0")])
        .findings(&[OUTR]),
        // --- users
        case(
            "user by object id",
            "in_scope",
            incident("high", vec![edr(vec![user(Some(ALICE), None)])]),
        )
        .assets(&[(ALICE, MEMBER)]),
        case(
            "member known only by id",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![user(
                    Some(&BOB.to_uppercase()),
                    Some("bob@contoso.com"),
                )])],
            ),
        )
        .assets(&[(BOB, MEMBER)]),
        case(
            "user by upn, other casing",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![user(None, Some("ALICE@contoso.COM"))])],
            ),
        )
        .assets(&[("alice@contoso.com", MEMBER)]),
        case(
            "upn reused by another account",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![user(Some(CAROL), Some("alice@contoso.com"))])],
            ),
        )
        .assets(&[(CAROL, NOT_IN_SCOPE)])
        .reasons(&[NO_COVERED]),
        case(
            "nested group id is not a member",
            "out_of_scope",
            incident("high", vec![edr(vec![user(Some(NESTED), None)])]),
        )
        .assets(&[(NESTED, NOT_IN_SCOPE)])
        .reasons(&[NO_COVERED]),
        case(
            "mailbox with account",
            "in_scope",
            incident(
                "medium",
                vec![alert(
                    "microsoftDefenderForOffice365",
                    "microsoftDefenderForOffice365",
                    vec![mailbox(
                        Some("x@contoso.com"),
                        None,
                        Some(account(Some(ALICE), None)),
                    )],
                )],
            ),
        )
        .assets(&[(ALICE, MEMBER)]),
        case(
            "mailbox without account, by primary address",
            "in_scope",
            incident(
                "medium",
                vec![edr(vec![mailbox(Some("Alice@Contoso.com"), None, None)])],
            ),
        )
        .assets(&[("alice@contoso.com", MEMBER)]),
        case(
            "mailbox without account, by upn",
            "in_scope",
            incident(
                "medium",
                vec![edr(vec![mailbox(
                    Some("shared@contoso.com"),
                    Some("alice@contoso.com"),
                    None,
                )])],
            ),
        )
        .assets(&[("alice@contoso.com", MEMBER)]),
        case(
            "mailbox of someone else",
            "out_of_scope",
            incident(
                "medium",
                vec![edr(vec![mailbox(Some("dave@contoso.com"), None, None)])],
            ),
        )
        .assets(&[("dave@contoso.com", NOT_IN_SCOPE)])
        .reasons(&[NO_COVERED]),
        case(
            "process account and its device",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![process(
                    Some(account(Some(ALICE), None)),
                    Some(STRAY),
                )])],
            ),
        )
        .assets(&[(STRAY, NOT_IN_SCOPE), (ALICE, MEMBER)]),
        case(
            "process on a tagged device, system account",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![process(
                    Some(UserAccount {
                        account_name: Some("SYSTEM".into()),
                        domain_name: Some("NT AUTHORITY".into()),
                        ..UserAccount::default()
                    }),
                    Some(WIN),
                )])],
            ),
        )
        .assets(&[(WIN, IN_GROUP)])
        .reasons(&["1 local or system account in the evidence, which no user group can hold"]),
        case(
            "same user and device across alerts is one asset each",
            "in_scope",
            incident(
                "high",
                vec![
                    edr(vec![
                        user(Some(ALICE), Some("alice@contoso.com")),
                        device(WIN, Some("Windows11"), None),
                    ]),
                    edr(vec![
                        user(None, Some("Alice@Contoso.com")),
                        process(None, Some(WIN)),
                    ]),
                    edr(vec![
                        mailbox(Some("alice@contoso.com"), None, None),
                        device(WIN, None, Some(GROUP)),
                    ]),
                ],
            ),
        )
        .assets(&[(WIN, IN_GROUP), (ALICE, MEMBER)]),
        // --- nothing impacted
        case(
            "unknown evidence types only",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![
                    other("#microsoft.graph.security.fileEvidence"),
                    other("#microsoft.graph.security.somethingNew"),
                ])],
            ),
        )
        .reasons(&[NO_ASSET]),
        case(
            "alert without evidence",
            "out_of_scope",
            incident("high", vec![edr(vec![])]),
        )
        .reasons(&[NO_ASSET]),
        case("no alerts", "out_of_scope", incident("high", vec![]))
            .reasons(&["no alerts, so no impacted asset"]),
        case(
            "local account without id or upn",
            "out_of_scope",
            incident("high", vec![edr(vec![user(None, None)])]),
        )
        .reasons(&[NO_ASSET]),
        // --- severity
        case(
            "low severity",
            "out_of_scope",
            incident("low", vec![edr(vec![user(Some(ALICE), None)])]),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["severity low not covered"]),
        case(
            "informational severity",
            "out_of_scope",
            incident("Informational", vec![edr(vec![user(Some(ALICE), None)])]),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["severity informational not covered"]),
        case(
            "severity in upper case",
            "in_scope",
            Incident {
                severity: Severity::Other("HIGH".into()),
                ..incident("high", vec![edr(vec![user(Some(ALICE), None)])])
            },
        )
        .assets(&[(ALICE, MEMBER)]),
        // --- excluded kinds
        case(
            "dlp by service source",
            "out_of_scope",
            incident("high", vec![dlp(vec![user(Some(ALICE), None)])]),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["every alert is an excluded kind: data loss prevention"]),
        case(
            "dlp by detection source",
            "out_of_scope",
            incident(
                "high",
                vec![alert(
                    "microsoft365Defender",
                    "MicrosoftDataLossPrevention",
                    vec![user(Some(ALICE), None)],
                )],
            ),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["every alert is an excluded kind: data loss prevention"]),
        case(
            "dlp in upper case built as an unknown value",
            "out_of_scope",
            incident(
                "high",
                vec![Alert {
                    service_source: ServiceSource::Other("DATALOSSPREVENTION".into()),
                    ..edr(vec![user(Some(ALICE), None)])
                }],
            ),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["every alert is an excluded kind: data loss prevention"]),
        case(
            "insider risk by service source",
            "out_of_scope",
            incident(
                "high",
                vec![alert(
                    "microsoftInsiderRiskManagement",
                    "unknown",
                    vec![user(Some(ALICE), None)],
                )],
            ),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["every alert is an excluded kind: insider risk management (compliance)"]),
        case(
            "insider risk by detection source",
            "out_of_scope",
            incident(
                "high",
                vec![alert(
                    "unknownFutureValue",
                    "microsoftInsiderRiskManagement",
                    vec![],
                )],
            ),
        )
        .reasons(&[
            "every alert is an excluded kind: insider risk management (compliance)",
            NO_ASSET,
        ]),
        case(
            "custom detection",
            "out_of_scope",
            incident(
                "high",
                vec![alert(
                    "microsoftDefenderForEndpoint",
                    "customDetection",
                    vec![device(WIN, Some("Windows11"), Some(GROUP))],
                )],
            ),
        )
        .assets(&[(WIN, IN_GROUP)])
        .reasons(&["every alert is an excluded kind: custom detection"]),
        case(
            "sentinel",
            "out_of_scope",
            incident(
                "high",
                vec![alert(
                    "microsoftSentinel",
                    "microsoftSentinel",
                    vec![device(WIN, Some("Windows11"), Some(GROUP))],
                )],
            ),
        )
        .assets(&[(WIN, IN_GROUP)])
        .reasons(&["every alert is an excluded kind: Microsoft Sentinel"]),
        case(
            "every alert excluded, two kinds",
            "out_of_scope",
            incident(
                "high",
                vec![
                    alert("microsoftDefenderForEndpoint", "customDetection", vec![]),
                    dlp(vec![user(Some(ALICE), None)]),
                ],
            ),
        )
        .assets(&[(ALICE, MEMBER)])
        .reasons(&["every alert is an excluded kind: data loss prevention, custom detection"]),
        case(
            "dlp and edr together stay eligible",
            "in_scope",
            incident(
                "high",
                vec![
                    dlp(vec![user(Some(CAROL), None)]),
                    edr(vec![device(WIN, Some("Windows11"), Some(GROUP))]),
                ],
            ),
        )
        .assets(&[(WIN, IN_GROUP), (CAROL, NOT_IN_SCOPE)])
        .reasons(&[
            "policy: mixed incident kept eligible, some alerts are an excluded kind \
                (data loss prevention) but an incident is excluded only when every alert is",
        ]),
        case(
            "dlp and edr together under the any-policy",
            "out_of_scope",
            incident(
                "high",
                vec![
                    dlp(vec![]),
                    edr(vec![device(WIN, Some("Windows11"), Some(GROUP))]),
                ],
            ),
        )
        .policy(Policy {
            mixed: MixedIncidents::ExcludedWhenAny,
            ..Policy::default()
        })
        .assets(&[(WIN, IN_GROUP)])
        .reasons(&["an alert is an excluded kind (data loss prevention); \
                policy: one excluded alert excludes the incident"]),
        case(
            "sentinel not excluded when the policy allows it",
            "in_scope",
            incident(
                "high",
                vec![alert(
                    "microsoftSentinel",
                    "microsoftSentinel",
                    vec![user(Some(ALICE), None)],
                )],
            ),
        )
        .policy(Policy {
            excluded_kinds: vec![],
            ..Policy::default()
        })
        .assets(&[(ALICE, MEMBER)]),
        // --- evidence roles
        case(
            "ignored role leaves no asset",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![Evidence {
                    roles: vec![EvidenceRole::Other("ATTACKER".into())],
                    ..user(Some(ALICE), None)
                }])],
            ),
        )
        .policy(Policy {
            ignored_roles: vec![EvidenceRole::Attacker],
            ..Policy::default()
        })
        .reasons(&[NO_ASSET]),
        case(
            "every role counts by default",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![Evidence {
                    roles: vec![EvidenceRole::Attacker],
                    ..user(Some(ALICE), None)
                }])],
            ),
        )
        .assets(&[(ALICE, MEMBER)]),
        // --- status
        case(
            "redirected is skipped",
            "skipped",
            Incident {
                status: IncidentStatus::Redirected,
                redirect_incident_id: Some("2972400".into()),
                assigned_to: None,
                ..incident("high", vec![edr(vec![user(Some(ALICE), None)])])
            },
        )
        .reasons(&["redirected to 2972400"]),
        case(
            "redirected in other casing is skipped",
            "skipped",
            Incident {
                status: IncidentStatus::Other("REDIRECTED".into()),
                redirect_incident_id: None,
                assigned_to: None,
                ..incident("high", vec![])
            },
        )
        .reasons(&["redirected to an unnamed incident"]),
        case(
            "awaiting action is judged",
            "in_scope",
            Incident {
                status: IncidentStatus::AwaitingAction,
                ..incident("high", vec![edr(vec![user(Some(ALICE), None)])])
            },
        )
        .assets(&[(ALICE, MEMBER)]),
        // --- offline scope from a desired state
        case(
            "offline: device listed by machine id",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Windows10"), None)])],
            ),
        )
        .offline()
        .assets(&[(STRAY, LISTED)]),
        case(
            "offline: device listed by dns name",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device_named(
                    Some("KIOSK-9.contoso.local"),
                    None,
                    "Windows10",
                )])],
            ),
        )
        .offline()
        .assets(&[("kiosk-9.contoso.local", LISTED)]),
        case(
            "offline: device listed by entra device id",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![device_named(
                    Some("pc-10.contoso.local"),
                    Some(AAD_DEV),
                    "Windows10",
                )])],
            ),
        )
        .offline()
        .assets(&[(AAD_DEV, LISTED)]),
        case(
            "offline: listed device that the evidence places elsewhere",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![device(STRAY, Some("Windows10"), Some("Tier0"))])],
            ),
        )
        .offline()
        .assets(&[(
            STRAY,
            "at the time of the alert the device was in group Tier0, not the scoped device group",
        )])
        .reasons(&[NO_COVERED]),
        case(
            "offline: unlisted device, a tagged one in the live scope",
            "out_of_scope",
            incident(
                "high",
                vec![edr(vec![
                    device(WIN, Some("Windows11"), None),
                    device(STRAY2, Some("Linux"), None),
                ])],
            ),
        )
        .offline()
        .assets(&[(WIN, NOT_IN_SCOPE), (STRAY2, NOT_IN_SCOPE)])
        .reasons(&[NO_COVERED]),
        case(
            "offline: users by upn and by id",
            "in_scope",
            incident(
                "high",
                vec![edr(vec![
                    user(Some(CAROL), Some("Carol@Contoso.com")),
                    user(Some(BOB), None),
                    user(Some(ALICE), None),
                ])],
            ),
        )
        .offline()
        .assets(&[(ALICE, NOT_IN_SCOPE), (BOB, LISTED), (CAROL, LISTED)]),
    ]
}

#[test]
fn verdict_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in &cases {
        check(case);
    }
}

// ---------------------------------------------------------------------------------------------
// Digest

fn mixed_incident() -> Incident {
    incident(
        "high",
        vec![
            edr(vec![
                device(WIN, Some("Windows11"), Some(GROUP)),
                user(Some(CAROL), None),
            ]),
            edr(vec![
                device(FRESH, Some("Windows10"), Some("Tier0")),
                device(DROID, Some("Android"), None),
            ]),
            alert(
                "dataLossPrevention",
                "microsoftDataLossPrevention",
                vec![mailbox(Some("alice@contoso.com"), None, None)],
            ),
        ],
    )
}

fn digest_of(incident: &Incident, at: DateTime<Utc>) -> String {
    verdict(incident, &live_scope(), &Policy::default(), at).digest
}

#[test]
fn digest_is_stable_across_alert_order_casing_and_time() {
    let base = mixed_incident();
    let digest = digest_of(&base, now());

    let mut reordered = base.clone();
    reordered.alerts.reverse();
    for alert in &mut reordered.alerts {
        alert.evidence.reverse();
    }
    assert_eq!(digest_of(&reordered, now()), digest, "alert order");

    let mut recased = base.clone();
    recased.severity = Severity::Other("HIGH".into());
    recased.alerts[2].service_source = ServiceSource::Other("DATALOSSPREVENTION".into());
    recased.alerts[2].detection_source =
        DetectionSource::Other("microsoftdatalossprevention".into());
    if let EvidenceKind::Device {
        mde_device_id,
        rbac_group_name,
        ..
    } = &mut recased.alerts[1].evidence[0].kind
    {
        *mde_device_id = Some(FRESH.to_uppercase());
        *rbac_group_name = Some("TIER0".into());
    }
    assert_eq!(digest_of(&recased, now()), digest, "enum and id casing");

    // FRESH is "added 30 minutes ago"; ten minutes later the text says 40, the digest does not.
    let later = now() + Duration::minutes(10);
    let v = verdict(&base, &live_scope(), &Policy::default(), later);
    assert!(
        v.assets
            .iter()
            .any(|a| a.reason.to_string().starts_with("added 40 minutes"))
    );
    assert_eq!(v.digest, digest, "elapsed time");
}

#[test]
fn digest_changes_with_outcome_and_covered_set() {
    let base = mixed_incident();
    let digest = digest_of(&base, now());

    let low = Incident {
        severity: Severity::Low,
        ..base.clone()
    };
    assert_ne!(digest_of(&low, now()), digest, "outcome changed");

    let mut more = base.clone();
    more.alerts.push(edr(vec![user(Some(ALICE), None)]));
    assert_ne!(digest_of(&more, now()), digest, "covered set grew");

    // After the grace period FRESH is outranked: a new fact, a new comment.
    let after = now() + Duration::hours(2);
    assert_ne!(
        digest_of(&base, after),
        digest,
        "propagating became outranked"
    );

    let mut fewer = base.clone();
    fewer.alerts[0].evidence.remove(0);
    assert_ne!(digest_of(&fewer, now()), digest, "covered device gone");
}

// ---------------------------------------------------------------------------------------------
// JSON and comment snapshots

#[test]
fn json_snapshot() {
    let v = verdict(&mixed_incident(), &live_scope(), &Policy::default(), now());
    let json = serde_json::to_string_pretty(&v).unwrap();
    expect![[r#"
        {
          "verdict": "in_scope",
          "incident_id": "2972395",
          "covered": [
            "a000000000000000000000000000000000000001",
            "alice@contoso.com"
          ],
          "assets": [
            {
              "kind": "device",
              "id": "a000000000000000000000000000000000000001",
              "name": "ws-1.contoso.local",
              "platform": "Windows11",
              "covered": true,
              "reason": "in device group Defender_Experts_Scoped_Coverage_Devices",
              "reason_code": "in_device_group"
            },
            {
              "kind": "device",
              "id": "a000000000000000000000000000000000000003",
              "name": "phone-3.contoso.local",
              "platform": "Android",
              "covered": false,
              "reason": "platform Android not covered",
              "reason_code": "platform_not_covered"
            },
            {
              "kind": "device",
              "id": "a000000000000000000000000000000000000006",
              "name": "ws-6.contoso.local",
              "platform": "Windows10",
              "covered": false,
              "reason": "added 30 minutes ago, possibly still propagating",
              "reason_code": "propagating"
            },
            {
              "kind": "user",
              "id": "33333333-3333-3333-3333-333333333333",
              "name": null,
              "platform": null,
              "covered": false,
              "reason": "not in scope",
              "reason_code": "not_in_scope"
            },
            {
              "kind": "user",
              "id": "alice@contoso.com",
              "name": "alice@contoso.com",
              "platform": null,
              "covered": true,
              "reason": "direct member of the scoped user group",
              "reason_code": "direct_member"
            }
          ],
          "reasons": [
            "policy: mixed incident kept eligible, some alerts are an excluded kind (data loss prevention) but an incident is excluded only when every alert is"
          ],
          "priority_findings": [],
          "digest": "a6a66e53a33047d6a9332d7bb2083405"
        }"#]].assert_eq(&json);
}

#[test]
fn json_of_skipped() {
    let redirected = Incident {
        status: IncidentStatus::Redirected,
        redirect_incident_id: Some("77".into()),
        assigned_to: None,
        ..mixed_incident()
    };
    let v = verdict(&redirected, &live_scope(), &Policy::default(), now());
    assert_eq!(
        v.outcome,
        Outcome::Skipped {
            redirected_to: Some("77".into())
        }
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["verdict"], "skipped");
    assert_eq!(json["redirected_to"], "77");
    assert_eq!(json["covered"], serde_json::json!([]));
    assert_eq!(render(&v, &redirected), "skipped: redirected to 77");
    assert_eq!(comment(&v, &redirected), None);
    assert_eq!(Marker::of(&v), None);
}

#[test]
fn comment_in_scope_snapshot() {
    let incident = mixed_incident();
    let v = verdict(&incident, &live_scope(), &Policy::default(), now());
    expect![[r#"
        IN SCOPE for Defender Experts scoped coverage
        Incident 2972395, severity high, 3 alerts, 5 impacted assets.
        Covered, Defender Experts respond:
        - device ws-1.contoso.local (Windows11): in the scoped device group
        - user alice@contoso.com: direct member of the scoped user group
        Informational only, no response actions:
        - device phone-3.contoso.local (Android): platform Android not covered
        - device ws-6.contoso.local (Windows10): added 30 minutes ago, possibly still propagating
        - user 33333333-3333-3333-3333-333333333333: not in scope
        Notes:
        - policy: mixed incident kept eligible, some alerts are an excluded kind (data loss prevention) but an incident is excluded only when every alert is
        dexscope-verdict: v1 in_scope a6a66e53a33047d6a9332d7bb2083405"#]].assert_eq(&render(&v, &incident));
}

#[test]
fn comment_out_of_scope_snapshot() {
    let incident = incident(
        "low",
        vec![
            edr(vec![
                device(OUTR, Some("Windows10"), Some("Tier0")),
                user(Some(ALICE), Some("alice@contoso.com")),
            ]),
            edr(vec![device(UNAS, None, Some("UnassignedGroup"))]),
        ],
    );
    let v = verdict(&incident, &live_scope(), &Policy::default(), now());
    expect![[r#"
        OUT OF SCOPE for Defender Experts scoped coverage
        Incident 2972395, severity low, 2 alerts, 3 impacted assets.
        Reasons:
        - severity low not covered
        Assets, informational only, no response actions:
        - device ws-4.contoso.local (Windows10): outranked by group Tier0
        - device ws-5.contoso.local (Windows10): tag not matched by group rule (device is in UnassignedGroup)
        - user alice@contoso.com: direct member of the scoped user group
        dexscope-verdict: v1 out_of_scope e3353bb2671b2b6fe2b17a5f8660eff7"#]].assert_eq(&render(&v, &incident));
}

// ---------------------------------------------------------------------------------------------
// Hostile incident text

const FORGED: &str = "dexscope-verdict: v1 out_of_scope 0000000000000000";

/// The structural promises of every rendered comment.
fn assert_structure(text: &str, v: &dexscope::incidents::verdict::Verdict) {
    let lines: Vec<&str> = text.split('\n').collect();
    let headline = match v.outcome {
        Outcome::InScope => "IN SCOPE for Defender Experts scoped coverage",
        _ => "OUT OF SCOPE for Defender Experts scoped coverage",
    };
    assert_eq!(lines[0], headline);
    assert!(
        text.chars().count() <= MAX_COMMENT_LEN,
        "{} chars",
        text.chars().count()
    );
    assert!(text.encode_utf16().count() <= MAX_COMMENT_LEN);
    assert_eq!(parse_marker(text), Marker::of(v), "marker parses back");
    let marker_lines = lines
        .iter()
        .filter(|line| line.to_ascii_lowercase().contains("dexscope-verdict"))
        .count();
    assert_eq!(
        marker_lines, 1,
        "only the last line carries the marker word:\n{text}"
    );
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|line| !line.trim_start().starts_with(MARKER_PREFIX))
    );
    assert!(!text.contains('\r'));
    for c in [
        '\u{202E}', '\u{200B}', '<', '>', '`', '*', '[', ']', '|', '#',
    ] {
        assert!(!text.contains(c), "{c:?} survived:\n{text}");
    }
    // The marker itself has underscores; nothing else may.
    assert!(
        !lines[..lines.len() - 1]
            .iter()
            .any(|line| line.contains('_'))
    );
}

fn hostile(name: &str, severity: Severity) -> Incident {
    let mut incident = incident(
        "high",
        vec![edr(vec![
            device(WIN, Some(&format!("Windows\n{FORGED}")), Some(GROUP)),
            ev(EvidenceKind::Device {
                mde_device_id: Some(OUTR.into()),
                azure_ad_device_id: None,
                dns_name: Some(name.into()),
                os_platform: Some(name.into()),
                rbac_group_id: None,
                rbac_group_name: Some(name.into()),
            }),
            user(None, Some(name)),
            mailbox(
                Some(name),
                None,
                Some(UserAccount {
                    display_name: Some(name.into()),
                    ..UserAccount::default()
                }),
            ),
        ])],
    );
    incident.id = name.into();
    incident.severity = severity;
    incident
}

#[test]
fn hostile_strings_cannot_break_the_comment() {
    let names = [
        format!("evil\n{FORGED}"),
        format!("evil\r\n{FORGED}\r\n"),
        format!("x\u{2028}{FORGED}"),
        "**bold** _em_ [link](https://evil.example) `code` # head | pipe".to_owned(),
        "<script>alert(1)</script><img src=x onerror=alert(1)>".to_owned(),
        "\u{202E}moc.evil@nimda\u{202C}".to_owned(),
        "ad\u{200B}min\u{200D}@con\u{FEFF}toso.com".to_owned(),
        format!("dexscope-\u{200B}verdict: v1 in_scope {}", "a".repeat(32)),
        "n".repeat(10_000),
        "💣".repeat(5_000),
    ];
    for name in names {
        for severity in [Severity::High, Severity::Other(format!("high\r\n{name}"))] {
            let incident = hostile(&name, severity);
            let v = verdict(&incident, &live_scope(), &Policy::default(), now());
            let text = render(&v, &incident);
            assert_structure(&text, &v);
            // The line after the headline is ours too, whatever the incident id says.
            assert!(text.split('\n').nth(1).unwrap().starts_with("Incident "));
        }
    }
}

#[test]
fn five_hundred_assets_are_cut_with_more() {
    let devices: Vec<Evidence> = (0..250)
        .map(|i| device(&format!("c{i:039}"), Some("Android"), Some(GROUP)))
        .collect();
    let users: Vec<Evidence> = (0..250)
        .map(|i| {
            user(
                None,
                Some(&format!("user{i}-{}@contoso.com", "x".repeat(50))),
            )
        })
        .collect();
    let mut alerts = vec![edr(devices), edr(users)];
    alerts.push(edr(vec![device(WIN, Some("Windows11"), Some(GROUP))]));
    let incident = incident("high", alerts);
    let v = verdict(&incident, &live_scope(), &Policy::default(), now());
    assert_eq!(v.assets.len(), 501);
    let text = render(&v, &incident);
    assert_structure(&text, &v);
    let more = text
        .lines()
        .find(|l| l.starts_with("- +"))
        .expect("a +N more line");
    let hidden: usize = more
        .trim_start_matches("- +")
        .trim_end_matches(" more")
        .parse()
        .unwrap();
    let shown = text
        .lines()
        .filter(|l| l.starts_with("- device") || l.starts_with("- user"))
        .count();
    assert_eq!(shown + hidden, 501, "every asset shown or counted");
}

#[test]
fn has_marker_finds_only_the_same_marker() {
    let incident = mixed_incident();
    let v = verdict(&incident, &live_scope(), &Policy::default(), now());
    let marker = Marker::of(&v).unwrap();
    let posted = |text: String| IncidentComment {
        comment: text,
        created_by: Some("dexscope".into()),
        created_at: Some(now()),
    };
    let mut comments = vec![
        posted("looking into it".into()),
        posted(format!("{marker}\nquoted by an analyst")),
    ];
    assert!(
        !has_marker(&comments, &marker),
        "a marker not on the last line does not count"
    );
    let other = Marker {
        in_scope: !marker.in_scope,
        digest: marker.digest.clone(),
        tag: None,
    };
    comments.push(posted(format!("old verdict\n{other}")));
    assert!(!has_marker(&comments, &marker));
    comments.push(posted(render(&v, &incident)));
    assert!(has_marker(&comments, &marker));
}

// ---------------------------------------------------------------------------------------------
// Property: any text in names, UPNs and platforms keeps the comment's structure.

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn render_keeps_its_structure(
        name in any::<String>(),
        upn in "\\PC{0,300}",
        platform in prop_oneof![Just("Windows11".to_owned()), any::<String>()],
        group in prop_oneof![Just(GROUP.to_owned()), Just(String::new()), any::<String>()],
        count in 1usize..60,
    ) {
        let devices: Vec<Evidence> = (0..count)
            .map(|i| ev(EvidenceKind::Device {
                mde_device_id: Some(format!("{i:040}")),
                azure_ad_device_id: None,
                dns_name: Some(format!("{name}{i}")),
                os_platform: Some(platform.clone()),
                rbac_group_id: None,
                rbac_group_name: Some(group.clone()),
            }))
            .chain([user(None, Some(&upn)), mailbox(Some(&name), Some(&upn), None)])
            .collect();
        let incident = incident("high", vec![edr(devices)]);
        let v = verdict(&incident, &live_scope(), &Policy::default(), now());
        let text = render(&v, &incident);
        prop_assert!(text.encode_utf16().count() <= MAX_COMMENT_LEN);
        prop_assert_eq!(parse_marker(&text), Marker::of(&v));
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!(lines[0].ends_with("SCOPE for Defender Experts scoped coverage"));
        prop_assert!(lines[..lines.len() - 1].iter().all(|l| !l.starts_with(MARKER_PREFIX)));
    }
}

// ---------------------------------------------------------------------------------------------
// Property: arbitrary incidents, alerts and evidence against either scope never panic, give
// the same verdict every time, and render with the marker intact within the comment limit.

/// Ids from the scopes above (so evidence hits members, tagged and desired machines) or any
/// text at all.
fn id_or_junk(pool: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(pool).prop_map(|s| Some(s.to_owned())),
        any::<String>().prop_map(Some),
    ]
}

fn text_or(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(pool).prop_map(str::to_owned),
        any::<String>()
    ]
}

fn arb_account() -> impl Strategy<Value = UserAccount> {
    (
        id_or_junk(&[ALICE, BOB, CAROL, NESTED]),
        id_or_junk(&["alice@contoso.com", "CAROL@contoso.com", "eve@contoso.com"]),
    )
        .prop_map(|(id, upn)| account(id.as_deref(), upn.as_deref()))
}

fn arb_evidence() -> impl Strategy<Value = Evidence> {
    const MACHINES: &[&str] = &[WIN, LNX, DROID, OUTR, UNAS, FRESH, NEWU, PLACED, STRAY];
    const PLATFORMS: &[&str] = &[
        "Windows11",
        "WindowsServer2022",
        "Linux",
        "macOS",
        "iOS",
        "Android",
    ];
    const GROUPS: &[&str] = &[GROUP, "UnassignedGroup", "Tier0"];
    let kind = prop_oneof![
        (
            id_or_junk(MACHINES),
            id_or_junk(&[AAD_DEV]),
            id_or_junk(&["ws-1.contoso.local", "kiosk-9.contoso.local"]),
            prop::option::of(text_or(PLATFORMS)),
            prop::option::of(any::<i64>()),
            prop::option::of(text_or(GROUPS)),
        )
            .prop_map(|(mde, aad, dns, os, gid, group)| EvidenceKind::Device {
                mde_device_id: mde,
                azure_ad_device_id: aad,
                dns_name: dns,
                os_platform: os,
                rbac_group_id: gid,
                rbac_group_name: group,
            }),
        arb_account().prop_map(|account| EvidenceKind::User { account }),
        (
            id_or_junk(&["carol@contoso.com"]),
            id_or_junk(&["alice@contoso.com"]),
            prop::option::of(any::<String>()),
            prop::option::of(arb_account()),
        )
            .prop_map(|(a, u, d, acct)| EvidenceKind::Mailbox {
                primary_address: a,
                upn: u,
                display_name: d,
                account: acct,
            }),
        (prop::option::of(arb_account()), id_or_junk(MACHINES)).prop_map(|(account, dev)| {
            EvidenceKind::Process {
                account,
                mde_device_id: dev,
            }
        }),
        any::<String>().prop_map(|t| EvidenceKind::Other { odata_type: t }),
    ];
    let role = prop_oneof![
        Just(EvidenceRole::Compromised),
        any::<String>().prop_map(|s| EvidenceRole::parse(&s)),
    ];
    (kind, prop::collection::vec(role, 0..3)).prop_map(|(kind, roles)| Evidence { kind, roles })
}

fn arb_alert() -> impl Strategy<Value = Alert> {
    const SOURCES: &[&str] = &[
        "microsoftDefenderForEndpoint",
        "microsoftDefenderForIdentity",
        "dataLossPrevention",
        "microsoftInsiderRiskManagement",
        "customDetection",
        "microsoftSentinel",
    ];
    (
        any::<String>(),
        text_or(SOURCES),
        text_or(SOURCES),
        text_or(&["high", "medium", "low", "informational"]),
        prop::collection::vec(arb_evidence(), 0..12),
    )
        .prop_map(|(title, service, detection, severity, evidence)| Alert {
            id: "da1".into(),
            title,
            severity: Severity::parse(&severity),
            service_source: ServiceSource::parse(&service),
            detection_source: DetectionSource::parse(&detection),
            evidence,
        })
}

fn arb_incident() -> impl Strategy<Value = Incident> {
    (
        any::<String>(),
        any::<String>(),
        text_or(&[
            "high",
            "medium",
            "low",
            "informational",
            "unknownFutureValue",
        ]),
        text_or(&["active", "resolved", "redirected", "inProgress"]),
        prop::option::of(any::<String>()),
        prop::collection::vec(arb_alert(), 0..6),
    )
        .prop_map(|(id, name, severity, status, redirect, alerts)| Incident {
            id,
            display_name: name,
            severity: Severity::parse(&severity),
            status: IncidentStatus::parse(&status),
            redirect_incident_id: redirect,
            assigned_to: None,
            created_at: now() - Duration::hours(1),
            last_update_at: now(),
            alerts,
            comments: Vec::new(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_incident_gets_a_deterministic_verdict_and_an_intact_comment(
        incident in arb_incident(),
        offline in any::<bool>(),
    ) {
        let scope = || if offline { offline_scope() } else { live_scope() };
        let v = verdict(&incident, &scope(), &Policy::default(), now());
        prop_assert_eq!(&v, &verdict(&incident, &scope(), &Policy::default(), now()));
        match comment(&v, &incident) {
            Some(text) => {
                prop_assert_eq!(Some(text.clone()), comment(&v, &incident));
                prop_assert!(text.encode_utf16().count() <= MAX_COMMENT_LEN);
                let marker = Marker::of(&v);
                prop_assert!(marker.is_some());
                prop_assert_eq!(parse_marker(&text), marker);
                let lines: Vec<&str> = text.split('\n').collect();
                prop_assert!(lines.last().unwrap().starts_with(MARKER_PREFIX));
                prop_assert!(lines[..lines.len() - 1].iter().all(|l| !l.contains(MARKER_PREFIX)));
            }
            None => prop_assert!(Marker::of(&v).is_none(), "only a marker-less verdict posts nothing"),
        }
    }
}
