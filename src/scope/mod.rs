//! Reading the scope from the tenant: the scoped user group's members (snapshot + delta), the
//! one desired-device resolver, and the words for the scope shared by the layers above.
//!
//! Below `reconcile`, `priority` and `incidents`, and importing none of them: each of the three
//! reads the scope through here, so a change to how the scope is read lands in one place.

pub mod devices;
pub mod members;
pub mod snapshot;
pub mod vocab;

pub use devices::{resolve_device_keys, resolve_devices, tagged_in};
pub use members::{MemberSource, Members, MembersRead, read_members};
pub use vocab::{DesiredDeviceRef, DesiredUserRef, GroupKind, Unresolved, UnresolvedKind};

use crate::{defender, graph};

/// A read of the tenant that failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the scoped user group failed: {0}")]
    Members(#[source] graph::Error),
    #[error("resolving desired users failed: {0}")]
    Users(#[source] graph::Error),
    #[error("reading the machine list failed: {0}")]
    Machines(#[source] defender::Error),
}

impl ResolveError {
    /// True when the next pass may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        match self {
            ResolveError::Members(e) | ResolveError::Users(e) => e.is_transient(),
            ResolveError::Machines(e) => e.is_transient(),
        }
    }
}
