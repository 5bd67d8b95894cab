//! Simulated security incidents: alerts with their evidence (devices, users, mailboxes,
//! processes and kinds clients do not know), the comments posted on them, and the changes
//! analysts make to them (assignment, status), planned by poll rather than by wall time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A user account inside evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub account_name: Option<String>,
    pub azure_ad_user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub domain_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceKind {
    Device {
        mde_device_id: String,
        azure_ad_device_id: Option<String>,
        dns_name: String,
        os_platform: String,
        rbac_group_id: i64,
        rbac_group_name: String,
    },
    User(Account),
    Mailbox {
        primary_address: String,
        upn: Option<String>,
        display_name: String,
        account: Option<Account>,
    },
    Process {
        account: Option<Account>,
        mde_device_id: String,
        image: String,
    },
    File {
        name: String,
    },
    Ip {
        address: String,
    },
    /// An evidence type clients do not know.
    Unknown {
        odata_type: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub service_source: String,
    pub detection_source: String,
    pub category: String,
    pub evidence: Vec<Evidence>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub comment: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: u64,
    pub display_name: String,
    pub severity: String,
    pub status: String,
    pub classification: String,
    pub determination: String,
    pub created: DateTime<Utc>,
    pub last_update: DateTime<Utc>,
    pub redirect_to: Option<u64>,
    /// `assignedTo`: Defender Experts write their name here when they take the incident.
    pub assigned_to: Option<String>,
    /// Emit enum values capitalised (`"Medium"`), as live samples sometimes do.
    pub mixed_case: bool,
    pub system_tags: Vec<String>,
    pub alerts: Vec<Alert>,
    pub comments: Vec<Comment>,
}

#[derive(Debug, Default)]
pub struct Incidents {
    pub list: Vec<Incident>,
    pub by_id: HashMap<u64, u32>,
    pub next_id: u64,
    /// When the next self-arriving incident is due (ms), if arrivals are on.
    pub next_arrival: Option<i64>,
    /// Incident polls served: list requests that start a listing (no `$skiptoken`).
    pub polls: u64,
    /// Changes analysts will make, each before the poll it is planned for is served.
    pub planned: Vec<PlannedChange>,
}

/// A change an analyst makes to an incident, as Defender Experts do when they take one on:
/// assign it to themselves, then move its status (`inProgress`, `awaitingAction`, `resolved`).
/// `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentChange {
    pub assigned_to: Option<String>,
    pub status: Option<String>,
}

/// A change planned for the incident poll numbered `at_poll` (see [`Incidents::polls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub incident: u64,
    pub at_poll: u64,
    pub change: IncidentChange,
}

impl Incidents {
    pub fn add(&mut self, mut inc: Incident) -> u64 {
        if inc.id == 0 {
            inc.id = self.next_id.max(1000);
        }
        self.next_id = self.next_id.max(inc.id + 1);
        self.by_id.insert(inc.id, self.list.len() as u32);
        let id = inc.id;
        self.list.push(inc);
        id
    }

    pub fn get(&self, id: u64) -> Option<&Incident> {
        self.by_id.get(&id).map(|&i| &self.list[i as usize])
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Incident> {
        self.by_id.get(&id).map(|&i| &mut self.list[i as usize])
    }

    /// Applies a change at `now`; like any update in Defender XDR it moves
    /// `lastUpdateDateTime`. False when the incident does not exist.
    pub fn change(&mut self, id: u64, change: &IncidentChange, now: DateTime<Utc>) -> bool {
        let Some(inc) = self.get_mut(id) else {
            return false;
        };
        if let Some(a) = &change.assigned_to {
            inc.assigned_to = Some(a.clone());
        }
        if let Some(s) = &change.status {
            inc.status = s.clone();
        }
        inc.last_update = now;
        true
    }

    /// Makes `change` before the `after_polls`-th incident poll from now is served (1: the
    /// next poll sees it), or at once with 0. False when there is no such incident.
    pub fn plan(
        &mut self,
        id: u64,
        after_polls: u64,
        change: IncidentChange,
        now: DateTime<Utc>,
    ) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        if after_polls == 0 {
            return self.change(id, &change, now);
        }
        self.planned.push(PlannedChange {
            incident: id,
            at_poll: self.polls + after_polls,
            change,
        });
        true
    }

    /// Counts one incident poll and applies the changes planned up to it, so the poll sees
    /// them.
    pub fn poll(&mut self, now: DateTime<Utc>) {
        self.polls += 1;
        let polls = self.polls;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.planned)
            .into_iter()
            .partition(|p| p.at_poll <= polls);
        self.planned = later;
        for p in due {
            self.change(p.incident, &p.change, now);
        }
    }
}
