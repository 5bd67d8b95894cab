//! Serde mirrors of the Graph JSON dexscope reads. Every optional field tolerates absence and
//! `null`; enums stay strings here and are parsed (case-insensitively) at conversion.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A `value` list (one page, or a `$batch` item body).
#[derive(Debug, Deserialize)]
pub(crate) struct List<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
}

/// A directory object from `/groups/{id}/members`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Member {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub id: String,
    pub user_principal_name: Option<String>,
}

/// An object of `/groups/{id}/members` read for a selector tree, or a user read by attribute.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TreeObject {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub account_enabled: Option<bool>,
    pub device_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Incident {
    pub id: String,
    pub display_name: Option<String>,
    pub severity: Option<String>,
    pub status: Option<String>,
    pub redirect_incident_id: Option<String>,
    pub assigned_to: Option<String>,
    pub created_date_time: DateTime<Utc>,
    pub last_update_date_time: Option<DateTime<Utc>>,
    pub alerts: Option<Vec<Alert>>,
    pub comments: Option<Vec<Comment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Alert {
    pub id: String,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub service_source: Option<String>,
    pub detection_source: Option<String>,
    /// Polymorphic through `@odata.type`; converted one by one so an unknown type is kept.
    pub evidence: Option<Vec<serde_json::Value>>,
}

/// `alertComment`; older samples use `createdBy` / `createdTime`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Comment {
    pub comment: Option<String>,
    pub created_by_display_name: Option<String>,
    pub created_by: Option<String>,
    pub created_date_time: Option<DateTime<Utc>>,
    pub created_time: Option<DateTime<Utc>>,
}

/// The fields of the `alertEvidence` base type dexscope reads.
#[derive(Debug, Deserialize)]
pub(crate) struct EvidenceBase {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserAccount {
    pub account_name: Option<String>,
    pub azure_ad_user_id: Option<String>,
    pub display_name: Option<String>,
    pub domain_name: Option<String>,
    pub user_principal_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceEvidence {
    pub mde_device_id: Option<String>,
    pub azure_ad_device_id: Option<String>,
    pub device_dns_name: Option<String>,
    pub host_name: Option<String>,
    pub dns_domain: Option<String>,
    pub os_platform: Option<String>,
    pub rbac_group_id: Option<i64>,
    pub rbac_group_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserEvidence {
    pub user_account: Option<UserAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MailboxEvidence {
    pub display_name: Option<String>,
    pub primary_address: Option<String>,
    pub upn: Option<String>,
    pub user_account: Option<UserAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessEvidence {
    pub user_account: Option<UserAccount>,
    pub mde_device_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileEvidence {
    pub mde_device_id: Option<String>,
}

/// One page of `GET /groups/delta`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaPage {
    #[serde(default = "Vec::new")]
    pub value: Vec<DeltaGroup>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

/// A group in a delta page: part of its member changes (a large group spans several pages).
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaGroup {
    pub id: String,
    #[serde(rename = "members@delta")]
    pub members: Option<Vec<DeltaMember>>,
    #[serde(rename = "@removed")]
    pub removed: Option<serde_json::Value>,
}

/// A member change: only `id` and `@odata.type`, plus `@removed` when it left.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaMember {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: String,
    #[serde(rename = "@removed")]
    pub removed: Option<serde_json::Value>,
}

/// One page of `GET /security/incidents`. The incidents stay JSON until each is converted on
/// its own, so one malformed incident does not fail its page.
#[derive(Debug, Deserialize)]
pub(crate) struct IncidentPage {
    #[serde(default = "Vec::new")]
    pub value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}
