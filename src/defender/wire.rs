//! Serde mirrors of the MDE machine JSON dexscope reads and the bulk-tag request it sends.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Machine {
    pub id: String,
    pub computer_dns_name: Option<String>,
    pub aad_device_id: Option<String>,
    pub os_platform: Option<String>,
    pub machine_tags: Option<Vec<String>>,
    pub rbac_group_id: Option<i64>,
    pub rbac_group_name: Option<String>,
}

/// `AddOrRemoveTagForMultipleMachines` body. MDE body keys are case-sensitive.
#[derive(Debug, Serialize)]
pub(crate) struct BulkTag<'a> {
    #[serde(rename = "Value")]
    pub value: &'a str,
    #[serde(rename = "Action")]
    pub action: &'static str,
    #[serde(rename = "MachineIds")]
    pub machine_ids: Vec<&'a str>,
}
