//! Deterministic tenant generation: users, the scoped groups, machines across platforms,
//! device groups and incidents of every kind the verdict rules distinguish, all from one seed.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{
    Account, Alert, DEVICE_GROUP_NAME, DEVICE_TAG, EntraDevice, Evidence, EvidenceKind, GroupRule,
    Incident, Machine, Os, Tenant, UNASSIGNED_GROUP_ID, USER_GROUP_NAME, User,
};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedSpec {
    pub users: usize,
    pub devices: usize,
    pub incidents: usize,
    /// Users already in the scoped user group.
    pub scoped_users: usize,
    /// Share of machines already carrying the scoped tag.
    pub tagged_share: f64,
    /// Put a nested group and an Entra device into the scoped user group.
    pub nested: bool,
}

impl Default for SeedSpec {
    fn default() -> Self {
        Self {
            users: 200,
            devices: 100,
            incidents: 40,
            scoped_users: 20,
            tagged_share: 0.05,
            nested: false,
        }
    }
}

/// A deterministic v4-shaped UUID.
pub fn uuid_from(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

const FIRST: &[&str] = &[
    "ann", "bob", "carla", "dmitri", "eva", "farid", "gunnar", "hana", "ivan", "jun", "kofi",
    "lena", "mateo", "nora", "omar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "viktor",
    "wei", "ximena", "yusuf", "zoe",
];
const LAST: &[&str] = &[
    "smith", "mueller", "garcia", "kowalski", "tanaka", "okafor", "dubois", "rossi", "nguyen",
    "larsen", "silva", "novak", "haddad", "kim", "oneill", "schmidt",
];
const SITES: &[&str] = &["ber", "muc", "par", "lon", "nyc", "sin", "syd", "sao"];

fn user_at(rng: &mut ChaCha8Rng, n: usize) -> User {
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    // A few awkward but valid shapes: mixed case, an apostrophe (escaped as '' in filters),
    // a B2B guest and a UPN starting with `$`.
    let upn = match n % 997 {
        13 => format!("{first}.o'{last}{n}@contoso.com"),
        29 => format!("{first}.{last}{n}_fabrikam.com#EXT#@contoso.onmicrosoft.com"),
        31 => format!("${first}{n}@contoso.com"),
        41 => format!("{}.{}{n}@Contoso.com", capital(first), capital(last)),
        _ => format!("{first}.{last}{n}@contoso.com"),
    };
    User {
        id: uuid_from(rng),
        upn: upn.into(),
        display_name: format!("{} {}", capital(first), capital(last)).into(),
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn pick_os(rng: &mut ChaCha8Rng) -> Os {
    match rng.random_range(0..100) {
        0..30 => Os::Windows10,
        30..58 => Os::Windows11,
        58..62 => Os::WindowsServer2016,
        62..67 => Os::WindowsServer2019,
        67..73 => Os::WindowsServer2022,
        73..83 => Os::Linux,
        83..91 => Os::MacOs,
        91..95 => Os::Ios,
        _ => Os::Android,
    }
}

fn machine_at(rng: &mut ChaCha8Rng, n: usize, earlier: &[Machine]) -> Machine {
    let os = pick_os(rng);
    let site = SITES[rng.random_range(0..SITES.len())];
    let prefix = match os {
        Os::Windows10 | Os::Windows11 => "ws",
        Os::WindowsServer2016 | Os::WindowsServer2019 | Os::WindowsServer2022 => {
            if n.is_multiple_of(17) {
                "srv-dc"
            } else {
                "srv"
            }
        }
        Os::Linux => "lnx",
        Os::MacOs => "mac",
        Os::Ios => "iphone",
        Os::Android => "android",
    };
    // About 1 in 200 machines reuses an earlier DNS name (a reimaged or re-onboarded device).
    let dns: Box<str> = if n > 10 && rng.random_range(0..200) == 0 {
        earlier[rng.random_range(0..earlier.len())].dns.clone()
    } else {
        format!("{prefix}-{site}-{n:05}.contoso.local").into()
    };
    // Servers and Linux are often not Entra joined; a few clients neither.
    let joined_share = match os {
        Os::WindowsServer2016 | Os::WindowsServer2019 | Os::WindowsServer2022 | Os::Linux => 30,
        _ => 92,
    };
    let aad = (rng.random_range(0..100) < joined_share).then(|| uuid_from(rng));
    let mut id = [0u8; 20];
    rng.fill(&mut id);
    Machine {
        id,
        dns,
        aad_device_id: aad,
        os,
        tags: Vec::new(),
        first_seen_min: rng.random_range(60..60 * 24 * 365),
        reported_group: UNASSIGNED_GROUP_ID,
        pending_since: None,
    }
}

/// Fills an empty tenant from `spec` and `seed`.
pub fn seed(t: &mut Tenant, spec: &SeedSpec, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gid = t.ids.user_group_id;
    t.directory.add_group(gid, USER_GROUP_NAME);
    t.directory.users.reserve(spec.users);
    for n in 0..spec.users {
        let u = user_at(&mut rng, n);
        t.directory.add_user(u);
    }
    for n in 0..spec.scoped_users.min(spec.users) {
        let id = t.directory.users[n * (spec.users / spec.scoped_users.max(1)).max(1) % spec.users]
            .as_ref()
            .map(|u| u.id);
        if let Some(id) = id {
            t.directory.add_member(&gid, id);
        }
    }
    if spec.nested {
        let nested = uuid_from(&mut rng);
        t.directory.add_group(nested, "SOC-Tier2-Analysts");
        t.directory.add_member(&gid, nested);
        for n in 0..spec.users.min(3) {
            let id = t.directory.users[spec.users - 1 - n].as_ref().map(|u| u.id);
            if let Some(id) = id {
                t.directory.add_member(&nested, id);
            }
        }
        let device = EntraDevice {
            id: uuid_from(&mut rng),
            device_id: uuid_from(&mut rng),
            display_name: "kiosk-ber-0001".into(),
        };
        let did = device.id;
        t.directory.add_device(device);
        t.directory.add_member(&gid, did);
    }
    seed_machines(t, spec, &mut rng);
    let now = t.now();
    for n in 0..spec.incidents {
        let inc = catalogue_incident(t, &mut rng, n, now);
        t.incidents.add(inc);
    }
}

fn seed_machines(t: &mut Tenant, spec: &SeedSpec, rng: &mut ChaCha8Rng) {
    let (scoped_tag, other_tags) = (
        t.mde.intern_tag(DEVICE_TAG),
        [
            t.mde.intern_tag("Finance"),
            t.mde.intern_tag("VIP"),
            t.mde.intern_tag("Tier0"),
            t.mde.intern_tag("Kiosk"),
        ],
    );
    t.mde.machines.reserve(spec.devices);
    let mut made: Vec<Machine> = Vec::new();
    for n in 0..spec.devices {
        let mut m = machine_at(rng, n, &made);
        if rng.random::<f64>() < spec.tagged_share {
            m.tags.push(scoped_tag);
        }
        if rng.random_range(0..10) == 0 {
            m.tags
                .push(other_tags[rng.random_range(0..other_tags.len())]);
        }
        if n < 2000 {
            made.push(m.clone());
        }
        t.mde.add_machine(m);
    }
    let rule = |tags: &[&str], prefixes: &[&str], os: &[&str]| GroupRule {
        tags: tags.iter().map(|s| s.to_string()).collect(),
        name_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        os_platforms: os.iter().map(|s| s.to_string()).collect(),
    };
    t.mde
        .add_group(DEVICE_GROUP_NAME, 1, rule(&[DEVICE_TAG], &[], &[]), 0, 0);
    t.mde.add_group(
        "Tier0-Domain-Controllers",
        2,
        rule(&[], &["srv-dc"], &[]),
        0,
        0,
    );
    t.mde
        .add_group("Servers", 3, rule(&[], &[], &["WindowsServer*"]), 0, 0);
    t.mde
        .add_group("Linux-Fleet", 4, rule(&[], &[], &["Linux"]), 0, 0);
    t.mde.add_group(
        "Finance-Workstations",
        5,
        rule(&["Finance"], &["ws"], &[]),
        0,
        0,
    );
    t.mde.place_all_now();
}

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

fn device_evidence(t: &Tenant, i: u32) -> Evidence {
    let m = &t.mde.machines[i as usize];
    let g = t.mde.placement(m, t.now_ms(), t.placement_delay_ms());
    Evidence {
        kind: EvidenceKind::Device {
            mde_device_id: m.id_hex(),
            azure_ad_device_id: m.aad_device_id.map(|a| a.to_string()),
            dns_name: m.dns.to_string(),
            os_platform: m.os.as_str().to_string(),
            rbac_group_id: g,
            rbac_group_name: t.mde.group_name(g).to_string(),
        },
        roles: vec!["compromised".into()],
    }
}

fn account_of(t: &Tenant, i: usize) -> Option<Account> {
    let u = t.directory.users.get(i)?.as_ref()?;
    let (name, domain) = u.upn.split_once('@').unwrap_or((&u.upn, ""));
    Some(Account {
        account_name: Some(name.to_string()),
        azure_ad_user_id: Some(u.id.to_string()),
        user_principal_name: Some(u.upn.to_string()),
        display_name: Some(u.display_name.to_string()),
        domain_name: Some(domain.to_string()),
    })
}

fn machine_with(t: &Tenant, rng: &mut ChaCha8Rng, pred: impl Fn(&Machine) -> bool) -> Option<u32> {
    let n = t.mde.machines.len();
    if n == 0 {
        return None;
    }
    let start = rng.random_range(0..n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| pred(&t.mde.machines[i]))
        .map(|i| i as u32)
}

fn alert(
    id: String,
    title: &str,
    severity: &str,
    service: &str,
    detection: &str,
    evidence: Vec<Evidence>,
) -> Alert {
    Alert {
        id,
        title: title.to_string(),
        severity: severity.to_string(),
        service_source: service.to_string(),
        detection_source: detection.to_string(),
        category: "Execution".to_string(),
        evidence,
    }
}

const EDR: (&str, &str) = (
    "microsoftDefenderForEndpoint",
    "microsoftDefenderForEndpoint",
);

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

fn is_windows(m: &Machine) -> bool {
    m.os.as_str().starts_with("Windows")
}

fn build_kind(
    t: &Tenant,
    rng: &mut ChaCha8Rng,
    kind: Kind,
    id: u64,
    created: DateTime<Utc>,
    last_update: DateTime<Utc>,
) -> Incident {
    let users = t.directory.users.len().max(1);
    let user = account_of(t, rng.random_range(0..users));
    let aid = |k: usize| format!("da{id:010}_{k}");
    let dev = |rng: &mut ChaCha8Rng, p: &dyn Fn(&Machine) -> bool| {
        machine_with(t, rng, p).map(|i| device_evidence(t, i))
    };
    let mut severity = "high";
    let mut status = "active";
    let mut mixed = rng.random_range(0..5) == 0;
    let name: String;
    let mut redirect = None;
    let scoped_tag = t.mde.tag_id(DEVICE_TAG);
    let alerts: Vec<Alert> = match kind {
        Kind::HighEdrWindows => {
            name = "Multi-stage attack on one endpoint".into();
            // Prefer a tagged Windows device, so a fresh tenant has in-scope incidents.
            let ev = dev(rng, &|m: &Machine| {
                is_windows(m) && scoped_tag.is_some_and(|s| m.tags.contains(&s))
            })
            .or_else(|| dev(rng, &is_windows));
            vec![alert(
                aid(0),
                "Suspicious process injection",
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::MediumEdrLinux => {
            severity = "medium";
            name = "Reverse shell on a Linux server".into();
            let ev = dev(rng, &|m: &Machine| m.os == Os::Linux);
            vec![alert(
                aid(0),
                "Reverse shell",
                "medium",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::Low | Kind::Informational => {
            severity = if kind == Kind::Low {
                "low"
            } else {
                "informational"
            };
            name = format!("{severity} severity activity");
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Unwanted software",
                severity,
                EDR.0,
                "antivirus",
                ev.into_iter().collect(),
            )]
        }
        Kind::Dlp => {
            name = "DLP policy match on financial data".into();
            let ev = user.clone().map(|a| Evidence {
                kind: EvidenceKind::User(a),
                roles: vec!["policyViolator".into()],
            });
            vec![alert(
                aid(0),
                "DLP policy matched",
                "high",
                "dataLossPrevention",
                "microsoftDataLossPrevention",
                ev.into_iter().collect(),
            )]
        }
        Kind::CustomDetection => {
            name = "Custom detection: rare admin tool".into();
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Custom rule hit",
                "high",
                "microsoft365Defender",
                "customDetection",
                ev.into_iter().collect(),
            )]
        }
        Kind::InsiderRisk => {
            name = "Insider risk: data exfiltration".into();
            let ev = user.clone().map(|a| Evidence {
                kind: EvidenceKind::User(a),
                roles: vec!["suspicious".into()],
            });
            vec![alert(
                aid(0),
                "Data leak by departing user",
                "high",
                "microsoftInsiderRiskManagement",
                "microsoftInsiderRiskManagement",
                ev.into_iter().collect(),
            )]
        }
        Kind::Sentinel => {
            name = "Sentinel analytics rule".into();
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Analytics rule fired",
                "medium",
                "microsoftSentinel",
                "microsoftSentinel",
                ev.into_iter().collect(),
            )]
        }
        Kind::MixedDlpEdr => {
            name = "DLP match and malware on the same device".into();
            let ev = dev(rng, &is_windows);
            let u = user.clone().map(|a| Evidence {
                kind: EvidenceKind::User(a),
                roles: vec!["policyViolator".into()],
            });
            vec![
                alert(
                    aid(0),
                    "DLP policy matched",
                    "medium",
                    "dataLossPrevention",
                    "microsoftDataLossPrevention",
                    u.into_iter().collect(),
                ),
                alert(
                    aid(1),
                    "Malware detected",
                    "high",
                    EDR.0,
                    "antivirus",
                    ev.into_iter().collect(),
                ),
            ]
        }
        Kind::AndroidAndWindows => {
            name = "Phishing followed on phone and laptop".into();
            let a = dev(rng, &|m: &Machine| m.os == Os::Android);
            let w = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Phishing link opened",
                "high",
                EDR.0,
                EDR.1,
                a.into_iter().chain(w).collect(),
            )]
        }
        Kind::MobileOnly => {
            name = "Malicious profile on iOS".into();
            let ev = dev(rng, &|m: &Machine| m.os == Os::Ios);
            vec![alert(
                aid(0),
                "Malicious configuration profile",
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::UserOnly => {
            name = "Impossible travel".into();
            let ev = user.clone().map(|a| Evidence {
                kind: EvidenceKind::User(a),
                roles: vec!["compromised".into()],
            });
            vec![alert(
                aid(0),
                "Impossible travel activity",
                "medium",
                "microsoftDefenderForCloudApps",
                "cloudAppSecurity",
                ev.into_iter().collect(),
            )]
        }
        Kind::Mailbox => {
            name = "Suspicious inbox rule".into();
            let a = user.clone().unwrap_or_default();
            let addr = a
                .user_principal_name
                .clone()
                .unwrap_or_else(|| "someone@contoso.com".into());
            // Every other mailbox evidence carries no account: only the address identifies it.
            let account = id.is_multiple_of(2).then_some(a.clone());
            let ev = Evidence {
                kind: EvidenceKind::Mailbox {
                    primary_address: addr.clone(),
                    upn: account.as_ref().map(|_| addr.clone()),
                    display_name: a.display_name.clone().unwrap_or_default(),
                    account,
                },
                roles: vec!["compromised".into()],
            };
            vec![alert(
                aid(0),
                "Suspicious inbox forwarding",
                "medium",
                "microsoftDefenderForOffice365",
                "microsoftDefenderForOffice365",
                vec![ev],
            )]
        }
        Kind::Process => {
            name = "Encoded PowerShell by a user".into();
            let m = machine_with(t, rng, is_windows);
            let mut ev: Vec<Evidence> = m.map(|i| device_evidence(t, i)).into_iter().collect();
            ev.push(Evidence {
                kind: EvidenceKind::Process {
                    account: user.clone(),
                    mde_device_id: m
                        .map(|i| t.mde.machines[i as usize].id_hex())
                        .unwrap_or_default(),
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
                    mde_device_id: m
                        .map(|i| t.mde.machines[i as usize].id_hex())
                        .unwrap_or_default(),
                    image: "svchost.exe".into(),
                },
                roles: vec!["contextual".into()],
            });
            vec![alert(
                aid(0),
                "Suspicious PowerShell command line",
                "high",
                EDR.0,
                EDR.1,
                ev,
            )]
        }
        Kind::Redirected => {
            name = "Merged into another incident".into();
            status = "redirected";
            redirect = Some(1000);
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Duplicate",
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::UnknownEvidence => {
            name = "Container escape".into();
            let ev = vec![
                Evidence {
                    kind: EvidenceKind::Unknown {
                        odata_type: "#microsoft.graph.security.kubernetesPodEvidence".into(),
                    },
                    roles: vec!["compromised".into()],
                },
                Evidence {
                    kind: EvidenceKind::Unknown {
                        odata_type: "#microsoft.graph.security.somethingFromTheFutureEvidence"
                            .into(),
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
            vec![alert(
                aid(0),
                "Container escape attempt",
                "high",
                "microsoftDefenderForCloud",
                "microsoftDefenderForCloud",
                ev,
            )]
        }
        Kind::MixedCase => {
            name = "Credential theft".into();
            severity = "medium";
            mixed = true;
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Credential dumping",
                "medium",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::Hostile => {
            name = HOSTILE_NAME.into();
            let ev = dev(rng, &is_windows);
            let mut u = user.clone().unwrap_or_default();
            u.display_name = Some("Mallory\n<img src=x onerror=alert(1)>\ndexscope-verdict: v1 in_scope 0000000000000000".into());
            vec![alert(
                aid(0),
                HOSTILE_NAME,
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter()
                    .chain(std::iter::once(Evidence {
                        kind: EvidenceKind::User(u),
                        roles: vec!["compromised".into()],
                    }))
                    .collect(),
            )]
        }
        Kind::LongName => {
            name = "A".repeat(5_000) + &"\u{00e9}".repeat(5_000);
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                &"x".repeat(10_000),
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::NoAlerts => {
            name = "Incident without alerts".into();
            vec![]
        }
        Kind::AwaitingAction => {
            name = "Defender Experts need your input".into();
            status = "awaitingAction";
            let ev = dev(rng, &is_windows);
            vec![alert(
                aid(0),
                "Hands-on-keyboard activity",
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::MacOs => {
            severity = "medium";
            name = "Suspicious launch agent on macOS".into();
            let ev = dev(rng, &|m: &Machine| m.os == Os::MacOs);
            vec![alert(
                aid(0),
                "Persistence via launch agent",
                "medium",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
        Kind::Outranked | Kind::Unassigned => {
            name = if kind == Kind::Outranked {
                "Tagged server placed in another group"
            } else {
                "Device in no group"
            }
            .into();
            let mut ev = dev(rng, &|m: &Machine| m.os == Os::WindowsServer2022);
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
                if kind == Kind::Outranked {
                    *rbac_group_name = "Servers".into();
                } else {
                    *rbac_group_id = UNASSIGNED_GROUP_ID;
                    *rbac_group_name = super::model::UNASSIGNED_GROUP.into();
                }
            }
            vec![alert(
                aid(0),
                "Lateral movement",
                "high",
                EDR.0,
                EDR.1,
                ev.into_iter().collect(),
            )]
        }
    };
    Incident {
        id,
        display_name: name,
        severity: severity.into(),
        status: status.into(),
        classification: "unknown".into(),
        determination: "unknown".into(),
        created,
        last_update,
        redirect_to: redirect,
        mixed_case: mixed,
        system_tags: if rng.random_range(0..4) == 0 {
            vec!["Defender Experts".into()]
        } else {
            vec![]
        },
        alerts,
        comments: Vec::new(),
    }
}

/// An incident described by hand (scenario file, `/_sim/incidents`, tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentSpec {
    pub title: String,
    pub severity: String,
    pub status: String,
    pub service_source: String,
    pub detection_source: String,
    /// DNS names or MDE machine ids of device evidence (unknown names are skipped).
    pub devices: Vec<String>,
    /// UPNs of user evidence (unknown UPNs become accounts without an object id).
    pub users: Vec<String>,
    /// Addresses of mailbox evidence without an account.
    pub mailboxes: Vec<String>,
    pub mixed_case: bool,
    pub redirect_to: Option<u64>,
    /// Created this many minutes before now (0 = now).
    pub minutes_ago: u32,
}

impl Default for IncidentSpec {
    fn default() -> Self {
        Self {
            title: "Simulated incident".into(),
            severity: "high".into(),
            status: "active".into(),
            service_source: EDR.0.into(),
            detection_source: EDR.1.into(),
            devices: Vec::new(),
            users: Vec::new(),
            mailboxes: Vec::new(),
            mixed_case: false,
            redirect_to: None,
            minutes_ago: 0,
        }
    }
}

/// Builds and stores an incident from a spec; returns its id.
pub fn create_incident(t: &mut Tenant, spec: &IncidentSpec) -> u64 {
    let mut evidence = Vec::new();
    for d in &spec.devices {
        let found = t.mde.machine_index(d).into_iter().chain(
            t.mde
                .by_dns
                .get(d.to_lowercase().as_str())
                .into_iter()
                .flatten()
                .copied(),
        );
        if let Some(i) = found.into_iter().next() {
            evidence.push(device_evidence(t, i));
        }
    }
    for upn in &spec.users {
        let acc = match t.directory.user_by_upn(upn) {
            Some(u) => Account {
                azure_ad_user_id: Some(u.id.to_string()),
                user_principal_name: Some(u.upn.to_string()),
                display_name: Some(u.display_name.to_string()),
                ..Account::default()
            },
            None => Account {
                user_principal_name: Some(upn.clone()),
                ..Account::default()
            },
        };
        evidence.push(Evidence {
            kind: EvidenceKind::User(acc),
            roles: vec!["compromised".into()],
        });
    }
    for m in &spec.mailboxes {
        evidence.push(Evidence {
            kind: EvidenceKind::Mailbox {
                primary_address: m.clone(),
                upn: None,
                display_name: m.clone(),
                account: None,
            },
            roles: vec!["compromised".into()],
        });
    }
    let now = t.now();
    let created = now - Duration::minutes(i64::from(spec.minutes_ago));
    let id = t.incidents.next_id.max(1000);
    let a = alert(
        format!("da{id:010}_0"),
        &spec.title,
        &spec.severity,
        &spec.service_source,
        &spec.detection_source,
        evidence,
    );
    t.incidents.add(Incident {
        id,
        display_name: spec.title.clone(),
        severity: spec.severity.clone(),
        status: spec.status.clone(),
        classification: "unknown".into(),
        determination: "unknown".into(),
        created,
        last_update: now,
        redirect_to: spec.redirect_to,
        mixed_case: spec.mixed_case,
        system_tags: Vec::new(),
        alerts: vec![a],
        comments: Vec::new(),
    })
}

/// Materialises incidents that arrived on their own since the last call (at
/// `incident_rate_per_min`), so arrivals follow the simulated clock without a timer task.
pub fn arrive(t: &mut Tenant) {
    let rate = t.behaviour.incident_rate_per_min;
    if rate <= 0.0 {
        return;
    }
    let now = t.now_ms();
    let gap = (60_000.0 / rate).max(1.0) as i64;
    let mut due = *t.incidents.next_arrival.get_or_insert(now + gap);
    // Bounded so a large clock jump cannot stall a request.
    let mut made = 0;
    while due <= now && made < 1_000 {
        let at = DateTime::from_timestamp_millis(due).unwrap_or_else(Utc::now);
        let n = t.incidents.list.len();
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed ^ (n as u64).wrapping_mul(0x9e37_79b9));
        let id = t.incidents.next_id.max(1000);
        let kind = KINDS[rng.random_range(0..3)];
        let inc = build_kind(t, &mut rng, kind, id, at, at);
        t.incidents.add(inc);
        due += gap;
        made += 1;
    }
    t.incidents.next_arrival = Some(due);
}
