//! Incidents made after seeding: described by hand (scenario file, `/_sim/incidents`, tests)
//! or arriving on their own at the configured rate as the simulated clock moves.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::evidence::{EDR, alert, device_evidence};
use super::kinds::{KINDS, build_kind};
use crate::sim::model::{Account, Evidence, EvidenceKind, Incident, Tenant};

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
    /// `assignedTo` (e.g. "Defender Experts" for an incident they already took).
    pub assigned_to: Option<String>,
    /// Created this many minutes before now (0 = now).
    pub minutes_ago: u32,
    /// `lastUpdateDateTime` this many seconds before now (0 = now), as an incident shows up
    /// when the service's list makes it visible only after it was updated. Never before its
    /// creation: an earlier update time moves the creation back with it.
    pub updated_secs_ago: u32,
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
            assigned_to: None,
            minutes_ago: 0,
            updated_secs_ago: 0,
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
    let updated = now - Duration::seconds(i64::from(spec.updated_secs_ago));
    let created = (now - Duration::minutes(i64::from(spec.minutes_ago))).min(updated);
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
        last_update: updated,
        redirect_to: spec.redirect_to,
        assigned_to: spec.assigned_to.clone(),
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
