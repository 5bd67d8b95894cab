//! Defender for Endpoint client: machines and tags.
//!
//! Speaks the MDE API through [`crate::http::Client`] (which limits at 100/min and 1,500/h,
//! retries and pages) and hands [`crate::model::Machine`] values upward.

mod wire;

use std::sync::Arc;

use crate::http::{self, Request, Surface, encode_query_value};
use crate::model::{AadDeviceId, DnsName, Machine, MachineId};

/// The largest `$top` the machines list accepts.
pub const MAX_MACHINES_TOP: u32 = 10_000;
/// Machine ids per `AddOrRemoveTagForMultipleMachines` call.
pub const MAX_IDS_PER_TAG_CALL: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagAction {
    Add,
    Remove,
}

impl TagAction {
    pub fn as_wire(self) -> &'static str {
        match self {
            TagAction::Add => "Add",
            TagAction::Remove => "Remove",
        }
    }
}

/// The Defender client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DefenderClient {
    http: http::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing machines failed: {source}")]
    ListMachines {
        #[source]
        source: http::Error,
    },
    #[error("reading machine {id} failed: {source}")]
    GetMachine {
        id: MachineId,
        #[source]
        source: http::Error,
    },
    /// `done` ids were already tagged by earlier calls of the same request.
    #[error("{action} tag {tag:?} on {count} machines failed after {done} were done: {source}", action = action.as_wire().to_lowercase())]
    Tag {
        action: TagAction,
        tag: String,
        count: usize,
        done: usize,
        #[source]
        source: http::Error,
    },
    #[error(transparent)]
    Http(#[from] http::Error),
}

impl Error {
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ListMachines { source }
            | Error::GetMachine { source, .. }
            | Error::Tag { source, .. }
            | Error::Http(source) => source.is_transient(),
        }
    }
}

impl DefenderClient {
    pub fn new(http: http::Client) -> Self {
        Self { http }
    }

    /// Machines matching an OData `$filter` (or all), every page; 404 (no recent machines)
    /// is an empty list.
    pub async fn machines(&self, filter: Option<&str>) -> Result<Vec<Machine>, Error> {
        self.collect_machines(filter, |m| m).await
    }

    /// Every machine matching `filter` (or all), each passed through `keep` as its page is
    /// read. Each item becomes a compact `Machine` as it is parsed (`wire::Item`), and it is
    /// parsed as its bytes arrive, so a page is held neither as wire values nor as its body
    /// (about 6 MB of JSON for 10,000 machines).
    ///
    /// The list grows by each page's count, not by doubling: the last page arrives when a
    /// doubled list has up to half its room unused, 3 MB at 50k machines, at the pass's peak.
    /// A list of pages is one mapped block, so each growth moves no bytes.
    async fn collect_machines(
        &self,
        filter: Option<&str>,
        keep: impl Fn(Machine) -> Machine,
    ) -> Result<Vec<Machine>, Error> {
        let mut pq = String::from("/api/machines?");
        if let Some(f) = filter {
            pq.push_str(&format!("$filter={}&", encode_query_value(f)));
        }
        pq.push_str(&format!("$top={MAX_MACHINES_TOP}"));
        let req = Request::get(Surface::Defender, self.http.defender_url(&pq)?);
        let mut machines = Vec::new();
        self.http
            .for_each_page_or_empty(req, |page: Vec<wire::Item>| {
                machines.reserve_exact(page.len());
                machines.extend(page.into_iter().filter_map(|item| item.0).map(&keep));
            })
            .await
            .map_err(|source| Error::ListMachines { source })?;
        // Items with an invalid id were skipped after their room was taken.
        machines.shrink_to_fit();
        Ok(machines)
    }

    /// Every machine, each reduced as its page is read to what resolving desired devices and
    /// planning the tag use: its id, DNS name and Entra device id, and `tags` holding `tag`
    /// alone when the machine carries it (exact match, as the `machineTags/any` filter) and
    /// nothing otherwise. Its OS, device group and other tags are dropped: about 150 bytes of
    /// strings per machine, held through the pass for nothing by a reconcile pass, which reads
    /// none of them.
    pub async fn machines_for_scope(&self, tag: &str) -> Result<Vec<Machine>, Error> {
        self.collect_machines(None, |m| for_scope(m, tag)).await
    }

    /// Every machine, the ones carrying `tag` with their tags and device group name (no OS,
    /// no group number) and the others in the form of [`DefenderClient::machines_for_scope`]:
    /// what a pass needs that resolves desired devices against every machine and checks the
    /// tagged ones' device groups, in one read.
    pub async fn machines_for_check(&self, tag: &str) -> Result<Vec<Machine>, Error> {
        self.collect_machines(None, |m| {
            if m.tags.iter().any(|t| &**t == tag) {
                // The check reads the device group's name, not its number nor the OS.
                Machine {
                    os_platform: None,
                    rbac_group_id: None,
                    ..m
                }
            } else {
                for_scope(m, tag)
            }
        })
        .await
    }

    /// Every machine carrying `tag` (exact match).
    pub async fn machines_by_tag(&self, tag: &str) -> Result<Vec<Machine>, Error> {
        self.machines(Some(&tag_filter(tag))).await
    }

    pub async fn all_machines(&self) -> Result<Vec<Machine>, Error> {
        self.machines(None).await
    }

    /// One machine; `None` when MDE does not know it.
    pub async fn get_machine(&self, id: &MachineId) -> Result<Option<Machine>, Error> {
        let req = Request::get(
            Surface::Defender,
            self.http.defender_url(&format!("/api/machines/{id}"))?,
        );
        match self.http.send(req).await {
            Ok(resp) => Ok(resp.json::<wire::Item>()?.0),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(source) => Err(Error::GetMachine {
                id: id.clone(),
                source,
            }),
        }
    }

    /// Adds or removes `tag` on `ids` with `AddOrRemoveTagForMultipleMachines`, 500 ids per
    /// call; returns the number of calls made. Tags are a set, so the call is idempotent and
    /// may run again after a crash. Callers pass only ids known to exist: one stale id fails
    /// the whole call.
    pub async fn tag_machines(
        &self,
        tag: &str,
        action: TagAction,
        ids: &[MachineId],
    ) -> Result<usize, Error> {
        let url = self
            .http
            .defender_url("/api/machines/AddOrRemoveTagForMultipleMachines")?;
        let mut calls = 0;
        for (n, chunk) in ids.chunks(MAX_IDS_PER_TAG_CALL).enumerate() {
            let body = wire::BulkTag {
                value: tag,
                action: action.as_wire(),
                machine_ids: chunk.iter().map(MachineId::as_str).collect(),
            };
            let body = serde_json::to_value(&body).expect("a struct of strings serialises");
            self.http
                .send(Request::post(Surface::Defender, url.clone(), body))
                .await
                .map_err(|source| Error::Tag {
                    action,
                    tag: tag.to_string(),
                    count: ids.len(),
                    done: n * MAX_IDS_PER_TAG_CALL,
                    source,
                })?;
            calls += 1;
        }
        Ok(calls)
    }

    /// One `AddOrRemoveTagForMultipleMachines` call for at most 500 ids; returns the request
    /// id (for the audit log). Idempotent like [`DefenderClient::tag_machines`].
    pub async fn tag_call(
        &self,
        tag: &str,
        action: TagAction,
        ids: &[MachineId],
    ) -> Result<Option<String>, Error> {
        let tag_err = |source| Error::Tag {
            action,
            tag: tag.to_string(),
            count: ids.len(),
            done: 0,
            source,
        };
        if ids.len() > MAX_IDS_PER_TAG_CALL {
            return Err(tag_err(http::Error::Build(format!(
                "{} machine ids in one tag call; at most {MAX_IDS_PER_TAG_CALL} are allowed",
                ids.len()
            ))));
        }
        let url = self
            .http
            .defender_url("/api/machines/AddOrRemoveTagForMultipleMachines")?;
        let body = wire::BulkTag {
            value: tag,
            action: action.as_wire(),
            machine_ids: ids.iter().map(MachineId::as_str).collect(),
        };
        let body = serde_json::to_value(&body).expect("a struct of strings serialises");
        let resp = self
            .http
            .send(Request::post(Surface::Defender, url, body))
            .await
            .map_err(tag_err)?;
        Ok(resp.request_id)
    }
}

/// `machineTags/any(tag: tag eq 'X')` with `'` doubled.
pub fn tag_filter(tag: &str) -> String {
    format!("machineTags/any(tag: tag eq '{}')", tag.replace('\'', "''"))
}

/// `m` with only what [`DefenderClient::machines_for_scope`] keeps.
fn for_scope(m: Machine, tag: &str) -> Machine {
    // The machine's own list and string are kept (no new allocation per machine).
    let mut tags = m.tags;
    tags.retain(|t| &**t == tag);
    tags.truncate(1);
    tags.shrink_to_fit();
    Machine {
        id: m.id,
        dns_name: m.dns_name,
        aad_device_id: m.aad_device_id,
        os_platform: None,
        tags,
        rbac_group_id: None,
        rbac_group_name: None,
    }
}

fn machine(m: wire::Machine<'_>) -> Option<Machine> {
    let id = match MachineId::parse(&m.id) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "machine with an invalid id is ignored");
            return None;
        }
    };
    Some(Machine {
        id,
        dns_name: m
            .computer_dns_name
            .as_deref()
            .and_then(|d| DnsName::parse(d).ok()),
        aad_device_id: m
            .aad_device_id
            .as_deref()
            .and_then(|d| AadDeviceId::parse(d).ok()),
        os_platform: m.os_platform.as_deref().map(shared),
        // Sized to their number, each name shared: a machine has one or two tags, and most
        // machines carry the same few.
        tags: m
            .machine_tags
            .map(|tags| {
                let mut names = Vec::with_capacity(tags.len());
                names.extend(tags.iter().map(|t| shared(t)));
                names
            })
            .unwrap_or_default(),
        rbac_group_id: m.rbac_group_id,
        rbac_group_name: m.rbac_group_name.as_deref().map(shared),
    })
}

/// How many distinct names [`shared`] remembers per thread.
const SHARED_NAMES: usize = 256;

/// One copy of each distinct platform, tag or device-group name per thread: a tenant has a handful
/// of each, and a copy per machine costs about 64 bytes (3 MB at 50k machines). Bounded, so a
/// tenant with unusual variety gets a copy per machine beyond the first names, as before.
fn shared(name: &str) -> Arc<str> {
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashSet<Arc<str>>> = Default::default();
    }
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if let Some(kept) = seen.get(name) {
            return kept.clone();
        }
        let fresh: Arc<str> = Arc::from(name);
        if seen.len() < SHARED_NAMES {
            seen.insert(fresh.clone());
        }
        fresh
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_form_keeps_the_tag_alone_and_drops_the_rest() {
        let machine = |tags: &[&str]| Machine {
            id: MachineId::parse(&format!("{:040x}", 7)).unwrap(),
            dns_name: Some(DnsName::parse("ws-7.contoso.local").unwrap()),
            aad_device_id: None,
            os_platform: Some("Windows11".into()),
            tags: tags.iter().map(|t| (*t).into()).collect(),
            rbac_group_id: Some(3),
            rbac_group_name: Some("Workstations".into()),
        };
        let lean = for_scope(
            machine(&["Finance", "DEX-Scoped", "DEX-Scoped"]),
            "DEX-Scoped",
        );
        assert_eq!(lean.tags, [Arc::from("DEX-Scoped")]);
        assert_eq!(lean.dns_name, machine(&[]).dns_name);
        assert_eq!(
            (lean.os_platform, lean.rbac_group_id, lean.rbac_group_name),
            (None, None, None)
        );
        // Exact match, as the `machineTags/any` filter.
        assert!(
            for_scope(machine(&["dex-scoped", "Finance"]), "DEX-Scoped")
                .tags
                .is_empty()
        );
    }

    #[test]
    fn tag_filter_escapes_quotes() {
        for (tag, want) in [
            ("DEX-Scoped", "machineTags/any(tag: tag eq 'DEX-Scoped')"),
            ("O'Brien", "machineTags/any(tag: tag eq 'O''Brien')"),
        ] {
            assert_eq!(tag_filter(tag), want);
        }
    }
}
