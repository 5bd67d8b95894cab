//! Serde mirrors of the MDE machine JSON dexscope reads and the bulk-tag request it sends.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The fields of a machine dexscope uses; every other field of the documented machine entity
/// (about twenty: IPs, versions, health, risk, …) is skipped by the parser without being
/// stored. Strings are borrowed from the page body where the JSON has no escapes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Machine<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub computer_dns_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub aad_device_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub os_platform: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub machine_tags: Option<Vec<Cow<'a, str>>>,
    pub rbac_group_id: Option<i64>,
    #[serde(borrow)]
    pub rbac_group_name: Option<Cow<'a, str>>,
}

/// One machine of a list page (or a single-machine answer), converted to the compact
/// [`crate::model::Machine`] the moment it is parsed: a page of 10,000 machines is never held
/// as wire values beside its converted form. `None` is a machine with an invalid id (logged
/// and skipped, as before). A malformed item still fails the page, as the plain mirror did.
pub(crate) struct Item(pub Option<crate::model::Machine>);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Machine::deserialize(d).map(|m| Item(super::machine(m)))
    }
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
