//! `dexscope export`: writes down the tenant's scoped coverage as it is today, as a desired-state
//! file (the first step of adopting an existing setup: export, commit, then `plan` shows no
//! changes).
//!
//! Two reads (the user group's direct members, the whole machine list) feed the pure [`build`],
//! which decides every entry; [`render`] turns the result into TOML the desired-state parser
//! reads back to the same entries. Users are written by UPN (object id when there is none);
//! devices by DNS name when no other machine shares it, else by machine id. Members Defender
//! Experts ignores (nested groups, devices, anything that is not a user) become comments with
//! the reason, not entries, so `plan` with `prune = true` lists exactly them as removals.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::config::Config;
use crate::model::{GroupMember, Machine};
use crate::tenant::Tenant;

/// Everything the export decided, in output order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Export {
    pub users: Vec<ExportedUser>,
    pub devices: Vec<ExportedDevice>,
    /// Members of the user group left out on purpose, with the reason.
    pub ignored: Vec<Ignored>,
}

/// A user entry: `upn = …`, or `id = …` for a member without a UPN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExportedUser {
    Upn(String),
    Id(String),
}

/// A device entry: `name = …` when the DNS name is unique among all machines, else `id = …`
/// with why (`shared_name`: the DNS name other machines carry too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExportedDevice {
    Name(String),
    Id {
        id: String,
        shared_name: Option<(String, usize)>,
    },
}

/// A member of the user group that is not written as an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub id: String,
    /// `group`, `device`, `servicePrincipal`, … (the Graph type without its namespace).
    pub kind: String,
    pub display_name: Option<String>,
    pub reason: String,
}

/// What the file header says about where the export came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tenant_id: String,
    pub user_group_id: String,
    pub device_tag: String,
    pub date: NaiveDate,
}

/// Decides the entries from the group's direct members and the whole machine list. Pure.
/// `tag` selects the machines to export; `machines` must be all machines, since a DNS name is
/// only usable when no other machine (tagged or not) carries it.
pub fn build(members: &[GroupMember], machines: &[Machine], tag: &str) -> Export {
    let mut out = Export::default();
    for m in members {
        match m {
            GroupMember::User { upn: Some(upn), .. } => {
                out.users.push(ExportedUser::Upn(upn.to_string()))
            }
            GroupMember::User { id, upn: None } => out.users.push(ExportedUser::Id(id.to_string())),
            GroupMember::Other {
                id,
                odata_type,
                display_name,
            } => out
                .ignored
                .push(ignored(id.as_str(), odata_type, display_name)),
        }
    }
    let mut name_count: HashMap<&str, usize> = HashMap::new();
    for m in machines {
        if let Some(n) = &m.dns_name {
            *name_count.entry(n.as_str()).or_default() += 1;
        }
    }
    for m in machines
        .iter()
        .filter(|m| m.tags.iter().any(|t| &**t == tag))
    {
        let shared = m
            .dns_name
            .as_ref()
            .map(|n| (n.as_str(), name_count.get(n.as_str()).copied().unwrap_or(0)));
        out.devices.push(match shared {
            Some((name, 1)) => ExportedDevice::Name(name.to_string()),
            Some((name, n)) => ExportedDevice::Id {
                id: m.id.to_string(),
                shared_name: Some((name.to_string(), n)),
            },
            None => ExportedDevice::Id {
                id: m.id.to_string(),
                shared_name: None,
            },
        });
    }
    out.users.sort();
    out.users.dedup();
    out.devices.sort();
    out.devices.dedup();
    out.ignored
        .sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
    out
}

fn ignored(id: &str, odata_type: &str, display_name: &Option<Box<str>>) -> Ignored {
    let kind = odata_type
        .rsplit('.')
        .next()
        .filter(|k| !k.is_empty())
        .unwrap_or("unknown")
        .to_string();
    let reason = match kind.as_str() {
        "group" => "a nested group; Defender Experts covers direct user members only".to_string(),
        "device" => {
            "a device in the user group; devices are scoped by the machine tag instead".to_string()
        }
        other => format!("not a user ({other}); the user group may hold users only"),
    };
    Ignored {
        id: id.to_string(),
        kind,
        display_name: display_name.as_deref().map(str::to_owned),
        reason,
    }
}

/// The desired-state file for `export`. Every entry carries `note = "exported <date>"`; an
/// export with no entry says `allow_empty = true`, since the tenant really scopes nobody.
pub fn render(export: &Export, origin: &Origin) -> String {
    let date = origin.date;
    let note = format!("exported {date}");
    let mut s = String::new();
    s.push_str(&format!(
        "# Scoped coverage of tenant {} as dexscope export found it on {date}.\n\
         # users: direct members of group {}; devices: machines tagged {}.\n\
         # Review and commit this file, then run `dexscope plan`: it should report no changes.\n\n",
        comment_text(&origin.tenant_id),
        comment_text(&origin.user_group_id),
        quote(&origin.device_tag),
    ));
    if export.users.is_empty() && export.devices.is_empty() {
        s.push_str("# The tenant scopes nobody today; without this line an empty file is refused.\nallow_empty = true\n\n");
    }
    s.push_str("users = [\n");
    for u in &export.users {
        let (key, value) = match u {
            ExportedUser::Upn(upn) => ("upn", upn),
            ExportedUser::Id(id) => ("id", id),
        };
        s.push_str(&format!(
            "  {{ {key} = {}, note = {} }},\n",
            quote(value),
            quote(&note)
        ));
    }
    s.push_str("]\n\ndevices = [\n");
    for d in &export.devices {
        let line = match d {
            ExportedDevice::Name(name) => {
                format!("name = {}, note = {}", quote(name), quote(&note))
            }
            ExportedDevice::Id { id, shared_name } => {
                let why = match shared_name {
                    Some((name, n)) => format!("{note}; {name} is shared by {n} machines"),
                    None => format!("{note}; no DNS name"),
                };
                format!("id = {}, note = {}", quote(id), quote(&why))
            }
        };
        s.push_str(&format!("  {{ {line} }},\n"));
    }
    s.push_str("]\n");
    if !export.ignored.is_empty() {
        s.push_str(
            "\n# Members of the user group left out on purpose (Defender Experts ignores them);\n\
             # with prune = true, `dexscope plan` lists exactly these as removals:\n",
        );
        for i in &export.ignored {
            let name = i
                .display_name
                .as_deref()
                .map(|n| format!(" {}", quote(&comment_text(n))))
                .unwrap_or_default();
            s.push_str(&format!(
                "# - {}{name} ({}): {}\n",
                comment_text(&i.kind),
                comment_text(&i.id),
                i.reason
            ));
        }
    }
    s
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text from the tenant made safe for a comment line: no line breaks or other control or
/// bidi characters (a display name must never end the comment and start an entry).
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .take(200)
        .collect()
}

/// Why `export` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the members of user group {group} failed: {source}")]
    Members {
        group: String,
        #[source]
        source: Box<crate::graph::Error>,
    },
    #[error("reading the machine list failed: {0}")]
    Machines(#[source] Box<crate::defender::Error>),
    #[error("{path} exists; pass --force to overwrite it, or choose another --output")]
    Exists { path: String },
    #[error("cannot write {path}: {source}; check the directory exists and is writable")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the tenant and decides the export. Read-only.
pub async fn export_once(tenant: &Tenant, config: &Config) -> Result<Export, ExportError> {
    let group = &config.scope.user_group_id;
    let members = tenant
        .graph
        .list_group_members(group)
        .await
        .map_err(|source| ExportError::Members {
            group: group.to_string(),
            source: Box::new(source),
        })?;
    let machines = tenant
        .defender
        .all_machines()
        .await
        .map_err(|e| ExportError::Machines(Box::new(e)))?;
    Ok(build(&members, &machines, &config.scope.device_tag))
}

/// `dexscope export [--output PATH] [--force]`: the file goes to `output`, or to stdout when
/// there is none. An existing file is kept unless `force`. Exit 0, or 1 on any error.
pub async fn export_command(
    config: &Config,
    output: Option<&Path>,
    force: bool,
    today: NaiveDate,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // Refuse before any request: an operator who forgot --force should not wait for the reads.
    if let Some(path) = output
        && !force
        && path.exists()
    {
        let e = ExportError::Exists {
            path: path.display().to_string(),
        };
        let _ = writeln!(err, "dexscope: {e}");
        return 1;
    }
    let tenant = match Tenant::from_config(config) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "dexscope: {e}");
            return 1;
        }
    };
    let export = match export_once(&tenant, config).await {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "dexscope: export failed: {e}");
            return 1;
        }
    };
    let origin = Origin {
        tenant_id: config.tenant.tenant_id.as_str().to_string(),
        user_group_id: config.scope.user_group_id.to_string(),
        device_tag: config.scope.device_tag.clone(),
        date: today,
    };
    let text = render(&export, &origin);
    let written = match output {
        None => out
            .write_all(text.as_bytes())
            .map_err(|source| ExportError::Write {
                path: "stdout".into(),
                source,
            }),
        Some(path) => write_file(path, &text, force),
    };
    if let Err(e) = written {
        let _ = writeln!(err, "dexscope: {e}");
        return 1;
    }
    let _ = writeln!(
        err,
        "exported {} users and {} devices{}; {} members left out (see the comments){}",
        export.users.len(),
        export.devices.len(),
        output
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default(),
        export.ignored.len(),
        if output.is_some() {
            "; next: dexscope validate, commit, dexscope plan"
        } else {
            ""
        }
    );
    0
}

/// Writes the whole file or nothing: a fresh temporary file next to it, flushed to disk, then
/// renamed into place and the directory flushed, so a crash leaves the old file or the new one.
/// Without `force` the final step refuses an existing file (also one created since the first
/// check). Nothing planted in the directory is written through: the temporary file is created
/// with `O_CREAT | O_EXCL` under an unpredictable name, which fails on any existing name,
/// symlinks included; a symlink at the target is replaced by the rename, never followed.
fn write_file(path: &Path, text: &str, force: bool) -> Result<(), ExportError> {
    let failed = |source| ExportError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let (tmp, mut file) =
        create_temporary(dir, name.as_deref().unwrap_or("desired")).map_err(failed)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    let placed = written.and_then(|()| {
        if force {
            std::fs::rename(&tmp, path)
        } else {
            // A hard link fails when the target exists (a symlink too): no window in which a
            // file is overwritten.
            std::fs::hard_link(&tmp, path)
        }
    });
    // After a rename the name is gone (or someone else's); otherwise it is ours to remove.
    if !(force && placed.is_ok()) {
        let _ = std::fs::remove_file(&tmp);
    }
    match placed {
        // The rename is durable only once the directory entry is on disk.
        Ok(()) => std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(ExportError::Exists {
            path: path.display().to_string(),
        }),
        Err(e) => Err(failed(e)),
    }
}

/// A new file in `dir` that did not exist before (no symlink followed), readable like a file
/// written by `cp`. A name taken by someone else is skipped for another random one.
fn create_temporary(dir: &Path, name: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(".{name}.export-{:016x}", rand::random::<u64>()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::desired::{self, DeviceKey, Mode, UserKey};
    use crate::model::{DnsName, MachineId, ObjectId, Upn, UserId};

    fn machine(id: char, name: Option<&str>, tagged: bool) -> Machine {
        Machine {
            id: MachineId::parse(&id.to_string().repeat(40)).unwrap(),
            dns_name: name.map(|n| DnsName::parse(n).unwrap()),
            aad_device_id: None,
            os_platform: Some("Windows11".into()),
            tags: if tagged {
                vec!["DEX-Scoped".into()]
            } else {
                vec![]
            },
            rbac_group_id: None,
            rbac_group_name: None,
        }
    }

    fn user(id: &str, upn: Option<&str>) -> GroupMember {
        GroupMember::User {
            id: UserId::parse(id).unwrap(),
            upn: upn.map(|u| Upn::parse(u).unwrap()),
        }
    }

    fn other(id: &str, t: &str, name: &str) -> GroupMember {
        GroupMember::Other {
            id: ObjectId::parse(id).unwrap(),
            odata_type: t.into(),
            display_name: Some(name.into()),
        }
    }

    const G1: &str = "11111111-1111-1111-1111-111111111111";
    const G2: &str = "22222222-2222-2222-2222-222222222222";
    const G3: &str = "33333333-3333-3333-3333-333333333333";
    const G4: &str = "44444444-4444-4444-4444-444444444444";

    fn origin() -> Origin {
        Origin {
            tenant_id: "00000000-0000-0000-0000-00000000000a".into(),
            user_group_id: "00000000-0000-0000-0000-00000000000b".into(),
            device_tag: "DEX-Scoped".into(),
            date: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
        }
    }

    fn sample() -> Export {
        let members = vec![
            user(G1, Some("Bob@Contoso.com")),
            user(G2, None),
            other(
                G3,
                "#microsoft.graph.group",
                "Nested\nusers = [\"evil@x.com\"]",
            ),
            other(G4, "#microsoft.graph.device", "kiosk-ber-0001"),
        ];
        let machines = vec![
            machine('a', Some("ws-ber-0012.contoso.local"), true),
            machine('b', Some("dup.contoso.local"), true),
            machine('c', Some("dup.contoso.local"), false),
            machine('d', None, true),
            machine('e', Some("untagged.contoso.local"), false),
        ];
        build(&members, &machines, "DEX-Scoped")
    }

    #[test]
    fn file_snapshot() {
        expect_test::expect![[r#"
            # Scoped coverage of tenant 00000000-0000-0000-0000-00000000000a as dexscope export found it on 2026-11-22.
            # users: direct members of group 00000000-0000-0000-0000-00000000000b; devices: machines tagged "DEX-Scoped".
            # Review and commit this file, then run `dexscope plan`: it should report no changes.

            users = [
              { upn = "bob@contoso.com", note = "exported 2026-11-22" },
              { id = "22222222-2222-2222-2222-222222222222", note = "exported 2026-11-22" },
            ]

            devices = [
              { name = "ws-ber-0012.contoso.local", note = "exported 2026-11-22" },
              { id = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", note = "exported 2026-11-22; dup.contoso.local is shared by 2 machines" },
              { id = "dddddddddddddddddddddddddddddddddddddddd", note = "exported 2026-11-22; no DNS name" },
            ]

            # Members of the user group left out on purpose (Defender Experts ignores them);
            # with prune = true, `dexscope plan` lists exactly these as removals:
            # - device "kiosk-ber-0001" (44444444-4444-4444-4444-444444444444): a device in the user group; devices are scoped by the machine tag instead
            # - group "Nested users = [\"evil@x.com\"]" (33333333-3333-3333-3333-333333333333): a nested group; Defender Experts covers direct user members only
        "#]]
        .assert_eq(&render(&sample(), &origin()));
    }

    /// Export → parse gives back exactly the exported entries, each with its note; the
    /// comments (even a display name trying to inject an entry) add nothing.
    #[test]
    fn round_trips_through_the_parser() {
        let export = sample();
        let text = render(&export, &origin());
        let loaded = desired::parse_str(
            &PathBuf::from("export.toml"),
            &text,
            origin().date,
            Mode::Strict,
        )
        .unwrap_or_else(|d| panic!("{d}\n{text}"));
        let users: Vec<String> = loaded
            .state
            .users
            .iter()
            .map(|e| e.key.to_string())
            .collect();
        let want: Vec<String> = export
            .users
            .iter()
            .map(|u| match u {
                ExportedUser::Upn(s) | ExportedUser::Id(s) => s.clone(),
            })
            .collect();
        assert_eq!(users, want);
        assert!(matches!(loaded.state.users[0].key, UserKey::Upn(_)));
        assert!(matches!(loaded.state.users[1].key, UserKey::Id(_)));
        let devices: Vec<&DeviceKey> = loaded.state.devices.iter().map(|e| &e.key).collect();
        assert!(matches!(devices[0], DeviceKey::Name(_)));
        assert!(matches!(devices[1], DeviceKey::Machine(_)));
        assert_eq!(devices.len(), 3);
        assert!(
            loaded
                .state
                .users
                .iter()
                .all(|e| e.note.as_deref() == Some("exported 2026-11-22"))
        );
        assert!(!loaded.state.allow_empty);
    }

    #[test]
    fn an_empty_tenant_exports_a_file_that_validates() {
        let text = render(&Export::default(), &origin());
        let loaded =
            desired::parse_str(&PathBuf::from("e.toml"), &text, origin().date, Mode::Strict)
                .unwrap_or_else(|d| panic!("{d}\n{text}"));
        assert!(loaded.state.allow_empty && loaded.state.is_empty());
    }

    proptest::proptest! {
        /// Any UPN the model accepts survives quoting and parsing unchanged.
        #[test]
        fn any_upn_round_trips(local in "[a-zA-Z0-9._'#$%&*+/=?^`{|}~\"\\\\-]{1,40}", domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}") {
            let raw = format!("{local}@{domain}");
            let Ok(upn) = Upn::parse(&raw) else { return Ok(()); };
            let members = vec![GroupMember::User { id: UserId::parse(G1).unwrap(), upn: Some(upn.clone()) }];
            let text = render(&build(&members, &[], "t"), &origin());
            let loaded = desired::parse_str(&PathBuf::from("p.toml"), &text, origin().date, Mode::Strict)
                .map_err(|d| proptest::test_runner::TestCaseError::fail(format!("{d}\n{text}")))?;
            proptest::prop_assert_eq!(&loaded.state.users[0].key, &UserKey::Upn(upn));
        }
    }
}
