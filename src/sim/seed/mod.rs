//! Deterministic tenant generation: users, the scoped groups, machines across platforms,
//! device groups and incidents of every kind the verdict rules distinguish, all from one seed.
//! This file generates the directory and the machines; the incident catalogue and the
//! incidents made later (by hand or arriving on their own) have files of their own.

mod evidence;
mod incidents;
mod kinds;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use incidents::{IncidentSpec, arrive, create_incident};
pub use kinds::{HOSTILE_NAME, KINDS, Kind, catalogue_incident};

use super::model::{
    DEVICE_GROUP_NAME, DEVICE_TAG, EntraDevice, GroupRule, Machine, Os, Tenant,
    UNASSIGNED_GROUP_ID, USER_GROUP_NAME, User,
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
