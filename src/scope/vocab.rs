//! The scope's vocabulary: the two scoped groups and a desired entry as resolved (or not)
//! against the tenant. Shared by the planner, the priority check, the probe and the state
//! database, so none of them reads another's module for its words.

use serde::Serialize;

use crate::model::{MachineId, UserId};

pub use crate::model::GroupKind;

/// A desired user, resolved to its object id. `label` is how the entry was written (UPN or id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredUserRef {
    pub id: UserId,
    pub label: String,
}

/// A desired device, resolved to its MDE machine id. `label` is how the entry was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredDeviceRef {
    pub id: MachineId,
    pub label: String,
}

/// Why a desired entry could not be resolved against the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnresolvedKind {
    UnknownUser,
    UnknownDevice,
    /// Several machines report this DNS name; acting on any one of them would be a guess.
    AmbiguousName {
        candidates: Vec<MachineId>,
    },
}

/// A desired entry that did not resolve. It is skipped, and it never causes a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unresolved {
    /// The entry as written (UPN, object id, DNS name, machine id or Entra device id).
    pub entry: String,
    pub problem: UnresolvedKind,
}
