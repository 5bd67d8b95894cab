//! Simulated security incidents: alerts with their evidence (devices, users, mailboxes,
//! processes and kinds clients do not know) and the comments posted on them.

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
}
