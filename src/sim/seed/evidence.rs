//! The building blocks of seeded incidents: device and user evidence drawn from the tenant,
//! and alerts.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::sim::model::{Account, Alert, Evidence, EvidenceKind, Machine, Tenant};

pub(super) fn device_evidence(t: &Tenant, i: u32) -> Evidence {
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

pub(super) fn account_of(t: &Tenant, i: usize) -> Option<Account> {
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

pub(super) fn machine_with(
    t: &Tenant,
    rng: &mut ChaCha8Rng,
    pred: impl Fn(&Machine) -> bool,
) -> Option<u32> {
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

pub(super) fn alert(
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

/// Microsoft Defender for Endpoint as both the service and the detection source.
pub(super) const EDR: (&str, &str) = (
    "microsoftDefenderForEndpoint",
    "microsoftDefenderForEndpoint",
);

pub(super) fn is_windows(m: &Machine) -> bool {
    m.os.as_str().starts_with("Windows")
}
