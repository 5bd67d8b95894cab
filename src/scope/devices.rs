//! Desired devices resolved against the machine list, in memory, and the machines carrying the
//! scoped tag. Pure: the one device resolver used by the reconcile pass, the priority pass and
//! the `check` probe.

use std::collections::{HashMap, HashSet};

use crate::desired::{DesiredDevice, DeviceKey};
use crate::model::{Machine, MachineId};

use super::vocab::{DesiredDeviceRef, Unresolved, UnresolvedKind};

/// Pure: resolves desired devices against the machine list. A DNS name or Entra device id that
/// several machines report is ambiguous (acting on one would be a guess); an id or name no
/// machine reports is unknown.
pub fn resolve_devices(
    entries: &[DesiredDevice],
    machines: &[Machine],
) -> (Vec<DesiredDeviceRef>, Vec<Unresolved>) {
    resolve_by(entries, |e| &e.key, machines)
}

/// [`resolve_devices`] for the entries' keys alone: a caller that is done with the rest of
/// each entry keeps half the room (a key is 48 bytes of a 96-byte entry).
pub fn resolve_device_keys(
    keys: &[DeviceKey],
    machines: &[Machine],
) -> (Vec<DesiredDeviceRef>, Vec<Unresolved>) {
    resolve_by(keys, |k| k, machines)
}

fn resolve_by<T>(
    entries: &[T],
    key: fn(&T) -> &DeviceKey,
    machines: &[Machine],
) -> (Vec<DesiredDeviceRef>, Vec<Unresolved>) {
    // Only the indexes some entry asks for: each is a map over every machine (megabytes at
    // 50k machines), and a desired state usually lists its devices one way.
    let wants = |kind: fn(&DeviceKey) -> bool| entries.iter().any(|e| kind(key(e)));
    let want_id = wants(|k| matches!(k, DeviceKey::Machine(_)));
    let want_name = wants(|k| matches!(k, DeviceKey::Name(_)));
    let want_aad = wants(|k| matches!(k, DeviceKey::AadDevice(_)));
    let size = |wanted: bool| if wanted { machines.len() } else { 0 };
    let mut by_id: HashSet<&str> = HashSet::with_capacity(size(want_id));
    let mut by_name: HashMap<&str, Found<'_>> = HashMap::with_capacity(size(want_name));
    let mut by_aad: HashMap<&str, Found<'_>> = HashMap::new();
    for m in machines {
        if want_id {
            by_id.insert(m.id.as_str());
        }
        if let Some(n) = m.dns_name.as_ref().filter(|_| want_name) {
            Found::add(&mut by_name, n.as_str(), &m.id);
        }
        if let Some(a) = m.aad_device_id.as_ref().filter(|_| want_aad) {
            Found::add(&mut by_aad, a.as_str(), &m.id);
        }
    }
    // Sized once: most entries resolve, and doubling would leave up to half the list's room
    // unused (1 MB at 50k devices) through the pass.
    let mut devices = Vec::with_capacity(entries.len());
    let mut unresolved = Vec::new();
    for entry in entries {
        let found: Vec<&MachineId> = match key(entry) {
            DeviceKey::Machine(id) if by_id.contains(id.as_str()) => vec![id],
            DeviceKey::Machine(_) => Vec::new(),
            DeviceKey::Name(n) => by_name.get(n.as_str()).map(Found::ids).unwrap_or_default(),
            DeviceKey::AadDevice(a) => by_aad.get(a.as_str()).map(Found::ids).unwrap_or_default(),
        };
        let label = key(entry).to_string();
        let mut found: Vec<MachineId> = found.into_iter().cloned().collect();
        found.sort();
        found.dedup();
        match found.len() {
            0 => unresolved.push(Unresolved {
                entry: label,
                problem: UnresolvedKind::UnknownDevice,
            }),
            1 => devices.push(DesiredDeviceRef {
                id: found.remove(0),
                label,
            }),
            _ => unresolved.push(Unresolved {
                entry: label,
                problem: UnresolvedKind::AmbiguousName { candidates: found },
            }),
        }
    }
    (devices, unresolved)
}

/// The machines reporting one name or Entra device id. Almost always one, so one is kept
/// without a list of its own (50k names do not each own a `Vec`).
enum Found<'a> {
    One(&'a MachineId),
    Many(Vec<&'a MachineId>),
}

impl<'a> Found<'a> {
    fn add(map: &mut HashMap<&'a str, Found<'a>>, key: &'a str, id: &'a MachineId) {
        match map.get_mut(key) {
            None => {
                map.insert(key, Found::One(id));
            }
            Some(Found::Many(ids)) => ids.push(id),
            Some(found) => {
                if let Found::One(first) = *found {
                    *found = Found::Many(vec![first, id]);
                }
            }
        }
    }

    fn ids(&self) -> Vec<&'a MachineId> {
        match self {
            Found::One(id) => vec![*id],
            Found::Many(ids) => ids.clone(),
        }
    }
}

/// The machines of `all` carrying `tag` (exact match, as the `machineTags/any` filter).
pub fn tagged_in(mut all: Vec<Machine>, tag: &str) -> Vec<Machine> {
    all.retain(|m| m.tags.iter().any(|t| &**t == tag));
    // The room of the untagged machines is given back: the list is held through the pass.
    all.shrink_to_fit();
    all
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;

    use super::*;
    use crate::desired::{self, DesiredState, Mode};
    use crate::model::{AadDeviceId, DnsName};

    fn desired(text: &str) -> DesiredState {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        desired::parse_str(Path::new("d.toml"), text, today, Mode::Runtime)
            .unwrap()
            .state
    }

    fn mid(n: u32) -> MachineId {
        MachineId::parse(&format!("{n:040x}")).unwrap()
    }

    fn machine(n: u32, name: &str, aad: Option<&str>) -> Machine {
        Machine {
            id: mid(n),
            dns_name: Some(DnsName::parse(name).unwrap()),
            aad_device_id: aad.map(|a| AadDeviceId::parse(a).unwrap()),
            os_platform: Some("Windows11".into()),
            tags: if n.is_multiple_of(2) {
                vec!["T".into()]
            } else {
                vec![]
            },
            rbac_group_id: None,
            rbac_group_name: None,
        }
    }

    #[test]
    fn devices_resolve_by_name_id_and_entra_id_in_memory() {
        let aad = "1a2b3c4d-1111-2222-3333-444455556666";
        let machines = vec![
            machine(1, "ws-1.contoso.local", None),
            machine(2, "ws-2.contoso.local", Some(aad)),
            machine(3, "dup.contoso.local", None),
            machine(4, "DUP.contoso.local", None),
            machine(5, "ws-5.contoso.local", None),
        ];
        let d = desired(&format!(
            "devices = ['WS-1.contoso.local', {{ aad_device_id = '{aad}' }}, '{}', \
             'dup.contoso.local', '{}', 'gone.contoso.local']",
            mid(5),
            mid(99)
        ));
        let (devices, unresolved) = resolve_devices(&d.devices, &machines);
        let got: Vec<(&str, &str)> = devices
            .iter()
            .map(|d| (d.label.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ws-1.contoso.local", mid(1).as_str()),
                (aad, mid(2).as_str()),
                (mid(5).as_str(), mid(5).as_str()),
            ]
        );
        assert_eq!(
            unresolved,
            vec![
                Unresolved {
                    entry: "dup.contoso.local".into(),
                    problem: UnresolvedKind::AmbiguousName {
                        candidates: vec![mid(3), mid(4)]
                    },
                },
                Unresolved {
                    entry: mid(99).to_string(),
                    problem: UnresolvedKind::UnknownDevice,
                },
                Unresolved {
                    entry: "gone.contoso.local".into(),
                    problem: UnresolvedKind::UnknownDevice,
                },
            ]
        );
        let tagged: Vec<MachineId> = tagged_in(machines, "T").into_iter().map(|m| m.id).collect();
        assert_eq!(tagged, vec![mid(2), mid(4)]);
    }

    #[test]
    fn a_machine_listed_twice_is_one_machine_and_candidates_come_sorted() {
        // One machine id twice in the list is one machine: the name it reports is not
        // ambiguous. Candidates of a truly ambiguous name are listed in id order.
        let machines = vec![
            machine(7, "dup.contoso.local", None),
            machine(1, "ws-1.contoso.local", None),
            machine(3, "dup.contoso.local", None),
            machine(1, "ws-1.contoso.local", None),
        ];
        let d = desired("devices = ['ws-1.contoso.local', 'dup.contoso.local']");
        let (devices, unresolved) = resolve_devices(&d.devices, &machines);
        assert_eq!(
            devices,
            vec![DesiredDeviceRef {
                id: mid(1),
                label: "ws-1.contoso.local".into(),
            }]
        );
        assert_eq!(
            unresolved,
            vec![Unresolved {
                entry: "dup.contoso.local".into(),
                problem: UnresolvedKind::AmbiguousName {
                    candidates: vec![mid(3), mid(7)]
                },
            }]
        );
    }
}
