//! Domain types shared by every layer: identifiers with validating constructors, and the
//! incident shape the verdict engine reads. Pure: no I/O, no clock.
//!
//! Wire types (serde mirrors of Graph and MDE JSON) live in each client's `wire.rs` and are
//! converted into these at the boundary.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}: {expected}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn invalid(kind: &'static str, value: &str, expected: &'static str) -> InvalidId {
    // Cut very long input so an error message stays one readable line.
    let value: String = value.chars().take(80).collect();
    InvalidId {
        kind,
        value,
        expected,
    }
}

/// True for a canonical GUID `8-4-4-4-12` hex digits (either case).
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        // `Box<str>`, not `String`: hundreds of thousands of ids live through a pass, and
        // a capacity word per id adds up.
        pub struct $name(Box<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The text by move: the `Box<str>` becomes a `String` without a copy.
            pub fn into_string(self) -> String {
                self.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// An identifier of fixed length (a GUID, an MDE machine id) kept as its canonical lower-case
/// text inline: no heap block per id. A `Box<str>` id costs its 16-byte pointer plus a heap
/// block of 48 bytes (glibc rounds 36 or 40 bytes plus its 8-byte header up to 48), so 64
/// bytes, where the inline text is 36 or 40. Ordering and equality are those of the text, as
/// before; `as_str` still lends the text. Only the `parse` of each type builds one, so the bytes are
/// always the ASCII the parser accepted.
macro_rules! fixed_id {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            pub fn as_str(&self) -> &str {
                std::str::from_utf8(&self.0).expect("an id holds the ASCII its parser accepted")
            }

            /// The canonical (lower-case) text of an id already checked by the parser.
            fn from_checked(s: &str) -> Self {
                let mut b = [0u8; $len];
                b.copy_from_slice(s.as_bytes());
                b.make_ascii_lowercase();
                Self(b)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.as_str()).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

fixed_id!(
    /// An Entra ID object id of a user (a GUID, stored lower-case).
    UserId,
    36
);
string_id!(
    /// A user principal name, stored lower-case: UPNs compare case-insensitively.
    Upn
);
fixed_id!(
    /// An MDE machine id: 40 hex digits, stored lower-case.
    MachineId,
    40
);
fixed_id!(
    /// An Entra device id (`deviceId`, MDE `aadDeviceId`): a GUID, stored lower-case.
    AadDeviceId,
    36
);
string_id!(
    /// An MDE `computerDnsName`, stored lower-case (DNS names are case-insensitive).
    DnsName
);
fixed_id!(
    /// An Entra directory object id of any type (group member that is not a user, etc.).
    ObjectId,
    36
);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if is_guid(s) {
            Ok(Self::from_checked(s))
        } else {
            Err(invalid(
                "user object id",
                s,
                "a GUID like 6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14",
            ))
        }
    }
}

impl Upn {
    /// A UPN is `local@domain` with a dotted domain, no whitespace, at most 113 characters
    /// before the `@` and 1,024 in all (Entra limits); B2B forms with `#EXT#` are accepted.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let expected = "a user principal name like alice@contoso.com";
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(invalid("UPN", s, expected));
        };
        let ok = !local.is_empty()
            && local.len() <= 113
            && s.len() <= 1024
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && !local.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if ok {
            Ok(Self(s.to_lowercase().into()))
        } else {
            Err(invalid("UPN", s, expected))
        }
    }
}

impl MachineId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.len() == 40 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self::from_checked(s))
        } else {
            Err(invalid(
                "MDE machine id",
                s,
                "40 hex digits like 73e7e2de709dff64ef64b1d0c30e67fab63279db",
            ))
        }
    }
}

impl AadDeviceId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if is_guid(s) {
            Ok(Self::from_checked(s))
        } else {
            Err(invalid(
                "Entra device id",
                s,
                "a GUID like 1a2b3c4d-1111-2222-3333-444455556666",
            ))
        }
    }
}

impl DnsName {
    /// A host name or FQDN: labels of letters, digits and `-`, separated by dots, ≤ 253 chars.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if ok {
            Ok(Self(s.to_ascii_lowercase().into()))
        } else {
            Err(invalid(
                "device DNS name",
                s,
                "a host name like ws-ber-0012.contoso.local",
            ))
        }
    }
}

impl ObjectId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if is_guid(s) {
            Ok(Self::from_checked(s))
        } else {
            Err(invalid("directory object id", s, "a GUID"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant state as the reconciler sees it.

/// A direct member of the scoped user group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupMember {
    User {
        id: UserId,
        upn: Option<Upn>,
    },
    /// Anything that is not a user (nested group, device, service principal, contact): drift,
    /// since Defender Experts ignores it. `odata_type` is e.g. `#microsoft.graph.group`.
    Other {
        id: ObjectId,
        // Boxed text, not `String`: the variant sets the size of every member (a user is
        // 56 bytes), and a capacity word each would make all of them 88.
        odata_type: Box<str>,
        display_name: Option<Box<str>>,
    },
}

/// An MDE machine with the fields dexscope uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: MachineId,
    pub dns_name: Option<DnsName>,
    pub aad_device_id: Option<AadDeviceId>,
    /// Shared: a tenant has a handful of platforms and device groups, and 50k machines each
    /// with copies of their names hold megabytes through a pass.
    pub os_platform: Option<Arc<str>>,
    pub tags: Vec<Arc<str>>,
    pub rbac_group_id: Option<i64>,
    pub rbac_group_name: Option<Arc<str>>,
}

/// The name MDE reports for devices that match no device group.
pub const UNASSIGNED_GROUP: &str = "UnassignedGroup";

// ---------------------------------------------------------------------------------------------
// Incidents as the verdict engine sees them. Enums parse case-insensitively; unknown values are
// kept in `Other` so a new service value never breaks parsing.

macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $wire:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub enum $name {
            $($variant,)*
            /// A value this version does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// Parses case-insensitively; anything unknown becomes `Other`.
            pub fn parse(s: &str) -> Self {
                $(if s.eq_ignore_ascii_case($wire) { return Self::$variant; })*
                Self::Other(s.to_string())
            }

            /// The documented camelCase wire value (or the unknown value as sent).
            pub fn as_wire(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_wire())
            }
        }
    };
}

open_enum!(
    /// Incident and alert severity.
    Severity {
        Unknown = "unknown",
        Informational = "informational",
        Low = "low",
        Medium = "medium",
        High = "high",
        UnknownFutureValue = "unknownFutureValue",
    }
);

open_enum!(
    /// Incident status; `Redirected` incidents were merged into another and are skipped.
    IncidentStatus {
        Active = "active",
        Resolved = "resolved",
        InProgress = "inProgress",
        Redirected = "redirected",
        AwaitingAction = "awaitingAction",
        UnknownFutureValue = "unknownFutureValue",
    }
);

open_enum!(
    /// Alert `serviceSource` (the product that raised it).
    ServiceSource {
        Unknown = "unknown",
        MicrosoftDefenderForEndpoint = "microsoftDefenderForEndpoint",
        MicrosoftDefenderForIdentity = "microsoftDefenderForIdentity",
        MicrosoftDefenderForCloudApps = "microsoftDefenderForCloudApps",
        MicrosoftDefenderForOffice365 = "microsoftDefenderForOffice365",
        Microsoft365Defender = "microsoft365Defender",
        AzureAdIdentityProtection = "azureAdIdentityProtection",
        MicrosoftAppGovernance = "microsoftAppGovernance",
        DataLossPrevention = "dataLossPrevention",
        MicrosoftDefenderForCloud = "microsoftDefenderForCloud",
        MicrosoftSentinel = "microsoftSentinel",
        MicrosoftInsiderRiskManagement = "microsoftInsiderRiskManagement",
        MicrosoftThreatIntelligence = "microsoftThreatIntelligence",
        UnknownFutureValue = "unknownFutureValue",
    }
);

open_enum!(
    /// Alert `detectionSource` (the detector inside the product).
    DetectionSource {
        Unknown = "unknown",
        MicrosoftDefenderForEndpoint = "microsoftDefenderForEndpoint",
        Antivirus = "antivirus",
        SmartScreen = "smartScreen",
        CustomTi = "customTi",
        MicrosoftDefenderForOffice365 = "microsoftDefenderForOffice365",
        AutomatedInvestigation = "automatedInvestigation",
        MicrosoftThreatExperts = "microsoftThreatExperts",
        CustomDetection = "customDetection",
        MicrosoftDefenderForIdentity = "microsoftDefenderForIdentity",
        CloudAppSecurity = "cloudAppSecurity",
        Microsoft365Defender = "microsoft365Defender",
        AzureAdIdentityProtection = "azureAdIdentityProtection",
        Manual = "manual",
        MicrosoftDataLossPrevention = "microsoftDataLossPrevention",
        AppGovernancePolicy = "appGovernancePolicy",
        AppGovernanceDetection = "appGovernanceDetection",
        MicrosoftDefenderForCloud = "microsoftDefenderForCloud",
        MicrosoftDefenderForIoT = "microsoftDefenderForIoT",
        MicrosoftDefenderForServers = "microsoftDefenderForServers",
        MicrosoftInsiderRiskManagement = "microsoftInsiderRiskManagement",
        MicrosoftSentinel = "microsoftSentinel",
        UnknownFutureValue = "unknownFutureValue",
    }
);

open_enum!(
    /// Evidence role (`roles[]`).
    EvidenceRole {
        Unknown = "unknown",
        Contextual = "contextual",
        Scanned = "scanned",
        Source = "source",
        Destination = "destination",
        Created = "created",
        Added = "added",
        Compromised = "compromised",
        Edited = "edited",
        Attacked = "attacked",
        Attacker = "attacker",
        CommandAndControl = "commandAndControl",
        Loaded = "loaded",
        Suspicious = "suspicious",
        PolicyViolator = "policyViolator",
        UnknownFutureValue = "unknownFutureValue",
    }
);

/// A user account as evidence carries it (`userAccount`). Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccount {
    pub azure_ad_user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub account_name: Option<String>,
    pub domain_name: Option<String>,
    pub display_name: Option<String>,
}

/// One piece of alert evidence, reduced to what coverage depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvidenceKind {
    Device {
        mde_device_id: Option<String>,
        azure_ad_device_id: Option<String>,
        dns_name: Option<String>,
        os_platform: Option<String>,
        rbac_group_id: Option<i64>,
        rbac_group_name: Option<String>,
    },
    User {
        account: UserAccount,
    },
    Mailbox {
        primary_address: Option<String>,
        upn: Option<String>,
        display_name: Option<String>,
        account: Option<UserAccount>,
    },
    Process {
        account: Option<UserAccount>,
        mde_device_id: Option<String>,
    },
    /// A file seen on a device: only the device it was seen on matters here.
    File {
        mde_device_id: Option<String>,
    },
    /// Any other evidence type (ip, url, …, or one this version does not know): kept, never an
    /// error, and never an impacted asset. An empty `odata_type` is evidence that carried no
    /// `@odata.type` at all, so nothing in it could be read.
    Other {
        odata_type: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub roles: Vec<EvidenceRole>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub service_source: ServiceSource,
    pub detection_source: DetectionSource,
    pub evidence: Vec<Evidence>,
}

/// An existing incident comment (only the text matters: it may carry a verdict marker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentComment {
    pub comment: String,
    pub created_by: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub display_name: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    pub redirect_incident_id: Option<String>,
    /// Who the incident is assigned to (`assignedTo`): Defender Experts set it to their own
    /// name when they take an incident on.
    pub assigned_to: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_update_at: DateTime<Utc>,
    pub alerts: Vec<Alert>,
    pub comments: Vec<IncidentComment>,
}

/// The two scoped groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    Users,
    Devices,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Users => "users",
            GroupKind::Devices => "devices",
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_and_normalise() {
        assert_eq!(
            UserId::parse("6F1C2A9E-0B7D-4A57-9A51-2D9F0C3E7B14")
                .unwrap()
                .as_str(),
            "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14"
        );
        assert!(UserId::parse("6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b1").is_err());
        assert_eq!(
            Upn::parse("Ann@X.com").unwrap(),
            Upn::parse("ann@x.com").unwrap()
        );
        assert!(Upn::parse("ann").is_err());
        assert!(Upn::parse("ann @x.com").is_err());
        assert!(Upn::parse("ann@localhost").is_err());
        assert!(Upn::parse("bob_fabrikam.com#EXT#@contoso.onmicrosoft.com").is_ok());
        assert!(MachineId::parse("73e7e2de709dff64ef64b1d0c30e67fab63279db").is_ok());
        assert!(MachineId::parse("73e7e2de709dff64ef64b1d0c30e67fab63279dz").is_err());
        assert!(DnsName::parse("ws-ber-0012.contoso.local").is_ok());
        assert!(DnsName::parse("ws ber").is_err());
    }

    #[test]
    fn fixed_length_ids_read_and_write_as_their_text() {
        let id = MachineId::parse("73E7E2DE709DFF64EF64B1D0C30E67FAB63279DB").unwrap();
        assert_eq!(
            format!("{id:?}"),
            r#"MachineId("73e7e2de709dff64ef64b1d0c30e67fab63279db")"#
        );
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""73e7e2de709dff64ef64b1d0c30e67fab63279db""#);
        assert_eq!(serde_json::from_str::<MachineId>(&json).unwrap(), id);
        // Read back through the parser: upper case is normalised, anything else refused.
        let user: UserId =
            serde_json::from_str(r#""6F1C2A9E-0B7D-4A57-9A51-2D9F0C3E7B14""#).unwrap();
        assert_eq!(user.as_str(), "6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14");
        let err = serde_json::from_str::<ObjectId>(r#""not-a-guid""#).unwrap_err();
        assert!(
            err.to_string().contains("not a valid directory object id"),
            "{err}"
        );
        // Ordering is the text's.
        let a = UserId::parse("0f000000-0000-4000-8000-000000000000").unwrap();
        let b = UserId::parse("a0000000-0000-4000-8000-000000000000").unwrap();
        assert!(a < b && a.as_str() < b.as_str());
    }

    #[test]
    fn enums_parse_case_insensitively_with_fallback() {
        assert_eq!(Severity::parse("Medium"), Severity::Medium);
        assert_eq!(Severity::parse("HIGH"), Severity::High);
        assert_eq!(
            ServiceSource::parse("somethingNew"),
            ServiceSource::Other("somethingNew".into())
        );
        assert_eq!(
            DetectionSource::parse("CustomDetection"),
            DetectionSource::CustomDetection
        );
    }

    #[test]
    fn a_member_is_kept_small() {
        // 100,000 members are listed at once; each byte here is 0.1 MB there.
        assert_eq!(std::mem::size_of::<GroupMember>(), 72);
    }
}
