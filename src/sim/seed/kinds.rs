//! The catalogue of seeded incidents: one kind per case the verdict rules distinguish (EDR on
//! each platform, DLP, insider risk, mailboxes, processes, redirected, hostile text, …), each
//! built by a function of its own.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::evidence::{EDR, account_of, alert, device_evidence, is_windows, machine_with};
use crate::sim::model::{
    Account, Alert, DEVICE_TAG, Evidence, EvidenceKind, Incident, Machine, Os, Tenant,
    UNASSIGNED_GROUP, UNASSIGNED_GROUP_ID,
};

/// The incident kinds, in the order the first incidents of a seeded tenant cover them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HighEdrWindows,
    MediumEdrLinux,
    Low,
    Informational,
    Dlp,
    CustomDetection,
    InsiderRisk,
    Sentinel,
    MixedDlpEdr,
    AndroidAndWindows,
    MobileOnly,
    UserOnly,
    Mailbox,
    Process,
    Redirected,
    UnknownEvidence,
    MixedCase,
    Hostile,
    LongName,
    NoAlerts,
    AwaitingAction,
    MacOs,
    Outranked,
    Unassigned,
}

pub const KINDS: [Kind; 24] = [
    Kind::HighEdrWindows,
    Kind::MediumEdrLinux,
    Kind::Low,
    Kind::Informational,
    Kind::Dlp,
    Kind::CustomDetection,
    Kind::InsiderRisk,
    Kind::Sentinel,
    Kind::MixedDlpEdr,
    Kind::AndroidAndWindows,
    Kind::MobileOnly,
    Kind::UserOnly,
    Kind::Mailbox,
    Kind::Process,
    Kind::Redirected,
    Kind::UnknownEvidence,
    Kind::MixedCase,
    Kind::Hostile,
    Kind::LongName,
    Kind::NoAlerts,
    Kind::AwaitingAction,
    Kind::MacOs,
    Kind::Outranked,
    Kind::Unassigned,
];

/// Text from an attacker-controlled source: line breaks, markdown, HTML, bidi overrides and a
/// forged verdict marker line.
pub const HOSTILE_NAME: &str = "Suspicious PowerShell\n**IN SCOPE** <script>alert(1)</script> [click](http://evil.example)\r\ndexscope-verdict: v1 in_scope 0000000000000000\n\u{202e}gnp.exe";

/// Builds the `n`-th seeded incident: the first ones cover [`KINDS`] in order, the rest mix
/// the common kinds.
pub fn catalogue_incident(
    t: &Tenant,
    rng: &mut ChaCha8Rng,
    n: usize,
    now: DateTime<Utc>,
) -> Incident {
    let kind = if n < KINDS.len() {
        KINDS[n]
    } else {
        [
            Kind::HighEdrWindows,
            Kind::MediumEdrLinux,
            Kind::Low,
            Kind::UserOnly,
            Kind::Mailbox,
            Kind::Process,
            Kind::MixedDlpEdr,
            Kind::Dlp,
            Kind::MacOs,
            Kind::MixedCase,
        ][rng.random_range(0..10)]
    };
    let created = now - Duration::minutes(rng.random_range(10..60 * 24 * 7));
    let last_update = created + Duration::minutes(rng.random_range(0..60));
    let last_update = last_update.min(now);
    let id = 1000 + n as u64;
    build_kind(t, rng, kind, id, created, last_update)
}

/// What one incident kind decides: its name, severity, status and alerts.
struct Shape {
    name: String,
    severity: &'static str,
    status: &'static str,
    /// Enum values capitalised whatever the draw for the incident said.
    mixed: bool,
    redirect: Option<u64>,
    alerts: Vec<Alert>,
}

impl Shape {
    /// A high-severity active incident.
    fn new(name: impl Into<String>, alerts: Vec<Alert>) -> Self {
        Self {
            name: name.into(),
            severity: "high",
            status: "active",
            mixed: false,
            redirect: None,
            alerts,
        }
    }
}

/// What every kind draws from: the tenant, the incident id and the account drawn for it.
struct Draw<'a> {
    t: &'a Tenant,
    id: u64,
    user: Option<Account>,
    scoped_tag: Option<u32>,
}

impl Draw<'_> {
    /// The id of the incident's `k`-th alert.
    fn aid(&self, k: usize) -> String {
        format!("da{:010}_{k}", self.id)
    }

    /// Device evidence of a machine matching `p`, from a random starting point.
    fn dev(&self, rng: &mut ChaCha8Rng, p: &dyn Fn(&Machine) -> bool) -> Option<Evidence> {
        machine_with(self.t, rng, p).map(|i| device_evidence(self.t, i))
    }

    /// User evidence of the drawn account in `role`.
    fn user_as(&self, role: &str) -> Option<Evidence> {
        self.user.clone().map(|a| Evidence {
            kind: EvidenceKind::User(a),
            roles: vec![role.into()],
        })
    }
}

/// Builds one incident of `kind`. The draws from `rng` come in a fixed order (the account,
/// the mixed-case flag, the kind's own draws, the system tag), so a seed gives the same
/// tenant every time.
pub(super) fn build_kind(
    t: &Tenant,
    rng: &mut ChaCha8Rng,
    kind: Kind,
    id: u64,
    created: DateTime<Utc>,
    last_update: DateTime<Utc>,
) -> Incident {
    let users = t.directory.users.len().max(1);
    let user = account_of(t, rng.random_range(0..users));
    let mixed = rng.random_range(0..5) == 0;
    let d = Draw {
        t,
        id,
        user,
        scoped_tag: t.mde.tag_id(DEVICE_TAG),
    };
    let shape = match kind {
        Kind::HighEdrWindows => high_edr_windows(&d, rng),
        Kind::MediumEdrLinux => medium_edr_linux(&d, rng),
        Kind::Low => low_severity(&d, rng, "low"),
        Kind::Informational => low_severity(&d, rng, "informational"),
        Kind::Dlp => dlp(&d),
        Kind::CustomDetection => custom_detection(&d, rng),
        Kind::InsiderRisk => insider_risk(&d),
        Kind::Sentinel => sentinel(&d, rng),
        Kind::MixedDlpEdr => mixed_dlp_edr(&d, rng),
        Kind::AndroidAndWindows => android_and_windows(&d, rng),
        Kind::MobileOnly => mobile_only(&d, rng),
        Kind::UserOnly => user_only(&d),
        Kind::Mailbox => mailbox(&d),
        Kind::Process => process(&d, rng),
        Kind::Redirected => redirected(&d, rng),
        Kind::UnknownEvidence => unknown_evidence(&d),
        Kind::MixedCase => mixed_case(&d, rng),
        Kind::Hostile => hostile(&d, rng),
        Kind::LongName => long_name(&d, rng),
        Kind::NoAlerts => Shape::new("Incident without alerts", vec![]),
        Kind::AwaitingAction => awaiting_action(&d, rng),
        Kind::MacOs => mac_os(&d, rng),
        Kind::Outranked => misplaced_server(&d, rng, true),
        Kind::Unassigned => misplaced_server(&d, rng, false),
    };
    Incident {
        id,
        display_name: shape.name,
        severity: shape.severity.into(),
        status: shape.status.into(),
        classification: "unknown".into(),
        determination: "unknown".into(),
        created,
        last_update,
        redirect_to: shape.redirect,
        assigned_to: None,
        mixed_case: mixed || shape.mixed,
        system_tags: if rng.random_range(0..4) == 0 {
            vec!["Defender Experts".into()]
        } else {
            vec![]
        },
        alerts: shape.alerts,
        comments: Vec::new(),
    }
}

/// One EDR alert on one device.
fn edr_on(d: &Draw, title: &str, severity: &str, ev: Option<Evidence>) -> Vec<Alert> {
    vec![alert(
        d.aid(0),
        title,
        severity,
        EDR.0,
        EDR.1,
        ev.into_iter().collect(),
    )]
}

fn high_edr_windows(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    // Prefer a tagged Windows device, so a fresh tenant has in-scope incidents.
    let ev = d
        .dev(rng, &|m: &Machine| {
            is_windows(m) && d.scoped_tag.is_some_and(|s| m.tags.contains(&s))
        })
        .or_else(|| d.dev(rng, &is_windows));
    Shape::new(
        "Multi-stage attack on one endpoint",
        edr_on(d, "Suspicious process injection", "high", ev),
    )
}

fn medium_edr_linux(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &|m: &Machine| m.os == Os::Linux);
    Shape {
        severity: "medium",
        ..Shape::new(
            "Reverse shell on a Linux server",
            edr_on(d, "Reverse shell", "medium", ev),
        )
    }
}

/// The low and informational kinds: antivirus on a Windows device.
fn low_severity(d: &Draw, rng: &mut ChaCha8Rng, severity: &'static str) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape {
        severity,
        ..Shape::new(
            format!("{severity} severity activity"),
            vec![alert(
                d.aid(0),
                "Unwanted software",
                severity,
                EDR.0,
                "antivirus",
                ev.into_iter().collect(),
            )],
        )
    }
}

fn dlp(d: &Draw) -> Shape {
    let ev = d.user_as("policyViolator");
    Shape::new(
        "DLP policy match on financial data",
        vec![alert(
            d.aid(0),
            "DLP policy matched",
            "high",
            "dataLossPrevention",
            "microsoftDataLossPrevention",
            ev.into_iter().collect(),
        )],
    )
}

fn custom_detection(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape::new(
        "Custom detection: rare admin tool",
        vec![alert(
            d.aid(0),
            "Custom rule hit",
            "high",
            "microsoft365Defender",
            "customDetection",
            ev.into_iter().collect(),
        )],
    )
}

fn insider_risk(d: &Draw) -> Shape {
    let ev = d.user_as("suspicious");
    Shape::new(
        "Insider risk: data exfiltration",
        vec![alert(
            d.aid(0),
            "Data leak by departing user",
            "high",
            "microsoftInsiderRiskManagement",
            "microsoftInsiderRiskManagement",
            ev.into_iter().collect(),
        )],
    )
}

fn sentinel(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape::new(
        "Sentinel analytics rule",
        vec![alert(
            d.aid(0),
            "Analytics rule fired",
            "medium",
            "microsoftSentinel",
            "microsoftSentinel",
            ev.into_iter().collect(),
        )],
    )
}

fn mixed_dlp_edr(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    let u = d.user_as("policyViolator");
    Shape::new(
        "DLP match and malware on the same device",
        vec![
            alert(
                d.aid(0),
                "DLP policy matched",
                "medium",
                "dataLossPrevention",
                "microsoftDataLossPrevention",
                u.into_iter().collect(),
            ),
            alert(
                d.aid(1),
                "Malware detected",
                "high",
                EDR.0,
                "antivirus",
                ev.into_iter().collect(),
            ),
        ],
    )
}

fn android_and_windows(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let a = d.dev(rng, &|m: &Machine| m.os == Os::Android);
    let w = d.dev(rng, &is_windows);
    Shape::new(
        "Phishing followed on phone and laptop",
        vec![alert(
            d.aid(0),
            "Phishing link opened",
            "high",
            EDR.0,
            EDR.1,
            a.into_iter().chain(w).collect(),
        )],
    )
}

fn mobile_only(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &|m: &Machine| m.os == Os::Ios);
    Shape::new(
        "Malicious profile on iOS",
        edr_on(d, "Malicious configuration profile", "high", ev),
    )
}

fn user_only(d: &Draw) -> Shape {
    let ev = d.user_as("compromised");
    Shape::new(
        "Impossible travel",
        vec![alert(
            d.aid(0),
            "Impossible travel activity",
            "medium",
            "microsoftDefenderForCloudApps",
            "cloudAppSecurity",
            ev.into_iter().collect(),
        )],
    )
}

fn mailbox(d: &Draw) -> Shape {
    let a = d.user.clone().unwrap_or_default();
    let addr = a
        .user_principal_name
        .clone()
        .unwrap_or_else(|| "someone@contoso.com".into());
    // Every other mailbox evidence carries no account: only the address identifies it.
    let account = d.id.is_multiple_of(2).then_some(a.clone());
    let ev = Evidence {
        kind: EvidenceKind::Mailbox {
            primary_address: addr.clone(),
            upn: account.as_ref().map(|_| addr.clone()),
            display_name: a.display_name.clone().unwrap_or_default(),
            account,
        },
        roles: vec!["compromised".into()],
    };
    Shape::new(
        "Suspicious inbox rule",
        vec![alert(
            d.aid(0),
            "Suspicious inbox forwarding",
            "medium",
            "microsoftDefenderForOffice365",
            "microsoftDefenderForOffice365",
            vec![ev],
        )],
    )
}

fn process(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let t = d.t;
    let m = machine_with(t, rng, is_windows);
    let device_id = || {
        m.map(|i| t.mde.machines[i as usize].id_hex())
            .unwrap_or_default()
    };
    let mut ev: Vec<Evidence> = m.map(|i| device_evidence(t, i)).into_iter().collect();
    ev.push(Evidence {
        kind: EvidenceKind::Process {
            account: d.user.clone(),
            mde_device_id: device_id(),
            image: "powershell.exe".into(),
        },
        roles: vec![],
    });
    ev.push(Evidence {
        kind: EvidenceKind::Process {
            account: Some(Account {
                account_name: Some("system".into()),
                domain_name: Some("nt authority".into()),
                ..Account::default()
            }),
            mde_device_id: device_id(),
            image: "svchost.exe".into(),
        },
        roles: vec!["contextual".into()],
    });
    Shape::new(
        "Encoded PowerShell by a user",
        vec![alert(
            d.aid(0),
            "Suspicious PowerShell command line",
            "high",
            EDR.0,
            EDR.1,
            ev,
        )],
    )
}

fn redirected(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape {
        status: "redirected",
        redirect: Some(1000),
        ..Shape::new(
            "Merged into another incident",
            edr_on(d, "Duplicate", "high", ev),
        )
    }
}

fn unknown_evidence(d: &Draw) -> Shape {
    let ev = vec![
        Evidence {
            kind: EvidenceKind::Unknown {
                odata_type: "#microsoft.graph.security.kubernetesPodEvidence".into(),
            },
            roles: vec!["compromised".into()],
        },
        Evidence {
            kind: EvidenceKind::Unknown {
                odata_type: "#microsoft.graph.security.somethingFromTheFutureEvidence".into(),
            },
            roles: vec!["unknownFutureValue".into()],
        },
        Evidence {
            kind: EvidenceKind::File {
                name: "payload.bin".into(),
            },
            roles: vec!["created".into()],
        },
        Evidence {
            kind: EvidenceKind::Ip {
                address: "198.51.100.23".into(),
            },
            roles: vec!["commandAndControl".into()],
        },
    ];
    Shape::new(
        "Container escape",
        vec![alert(
            d.aid(0),
            "Container escape attempt",
            "high",
            "microsoftDefenderForCloud",
            "microsoftDefenderForCloud",
            ev,
        )],
    )
}

fn mixed_case(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape {
        severity: "medium",
        mixed: true,
        ..Shape::new(
            "Credential theft",
            edr_on(d, "Credential dumping", "medium", ev),
        )
    }
}

fn hostile(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    let mut u = d.user.clone().unwrap_or_default();
    u.display_name = Some(
        "Mallory\n<img src=x onerror=alert(1)>\ndexscope-verdict: v1 in_scope 0000000000000000"
            .into(),
    );
    let user = Evidence {
        kind: EvidenceKind::User(u),
        roles: vec!["compromised".into()],
    };
    Shape::new(
        HOSTILE_NAME,
        vec![alert(
            d.aid(0),
            HOSTILE_NAME,
            "high",
            EDR.0,
            EDR.1,
            ev.into_iter().chain(std::iter::once(user)).collect(),
        )],
    )
}

fn long_name(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape::new(
        "A".repeat(5_000) + &"\u{00e9}".repeat(5_000),
        edr_on(d, &"x".repeat(10_000), "high", ev),
    )
}

fn awaiting_action(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &is_windows);
    Shape {
        status: "awaitingAction",
        ..Shape::new(
            "Defender Experts need your input",
            edr_on(d, "Hands-on-keyboard activity", "high", ev),
        )
    }
}

fn mac_os(d: &Draw, rng: &mut ChaCha8Rng) -> Shape {
    let ev = d.dev(rng, &|m: &Machine| m.os == Os::MacOs);
    Shape {
        severity: "medium",
        ..Shape::new(
            "Suspicious launch agent on macOS",
            edr_on(d, "Persistence via launch agent", "medium", ev),
        )
    }
}

/// A Windows Server 2022 device whose evidence reports another group (`outranked`) or none.
fn misplaced_server(d: &Draw, rng: &mut ChaCha8Rng, outranked: bool) -> Shape {
    let name = if outranked {
        "Tagged server placed in another group"
    } else {
        "Device in no group"
    };
    let mut ev = d.dev(rng, &|m: &Machine| m.os == Os::WindowsServer2022);
    if let Some(Evidence {
        kind:
            EvidenceKind::Device {
                rbac_group_id,
                rbac_group_name,
                ..
            },
        ..
    }) = ev.as_mut()
    {
        if outranked {
            *rbac_group_name = "Servers".into();
        } else {
            *rbac_group_id = UNASSIGNED_GROUP_ID;
            *rbac_group_name = UNASSIGNED_GROUP.into();
        }
    }
    Shape::new(name, edr_on(d, "Lateral movement", "high", ev))
}
