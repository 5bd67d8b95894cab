//! The scenario file (`--scenario FILE`): a tenant described by hand in TOML — users, group
//! members (nested group, device), machines, device groups, incidents, quotas and faults.

use serde::{Deserialize, Serialize};

use super::faults::FaultConfig;
use super::model::GroupRule;
use super::quota::QuotaConfig;
use super::seed::{IncidentSpec, SeedSpec};

/// A whole scenario. Every section is optional; generated content (`[generate]`) comes first,
/// hand-written entries are added to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub seed: Option<u64>,
    pub generate: Option<SeedSpec>,
    pub placement_delay_secs: Option<f64>,
    pub token_lifetime_secs: Option<i64>,
    pub incident_rate_per_min: Option<f64>,
    pub users: Vec<ScenarioUser>,
    pub scoped_group: ScopedGroup,
    pub machines: Vec<ScenarioMachine>,
    pub device_groups: Vec<ScenarioDeviceGroup>,
    pub incidents: Vec<IncidentSpec>,
    pub quotas: Option<QuotaConfig>,
    pub faults: Option<FaultConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioUser {
    pub upn: String,
    pub id: Option<String>,
    pub display_name: Option<String>,
}

/// Members of the scoped user group at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopedGroup {
    /// UPNs of direct user members.
    pub members: Vec<String>,
    /// A nested group with these member UPNs (drift: Defender Experts ignores nesting).
    pub nested_group: Option<Vec<String>>,
    /// An Entra device member, by display name.
    pub device: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioMachine {
    pub name: String,
    pub os: String,
    pub tags: Vec<String>,
    pub aad_device_id: Option<String>,
    /// 40 hex digits; derived from the name when absent.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioDeviceGroup {
    pub name: String,
    pub rank: u32,
    #[serde(flatten)]
    pub rule: GroupRule,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}; check the path")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid scenario file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: "<text>".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        for m in &s.machines {
            if super::model::Os::parse(&m.os).is_none() {
                return Err(ScenarioError::Invalid(format!(
                    "machine {:?} has unknown os {:?}; use one of Windows10, Windows11, WindowsServer2016, WindowsServer2019, WindowsServer2022, Linux, macOS, iOS, Android",
                    m.name, m.os
                )));
            }
            if let Some(id) = &m.id
                && super::model::parse_machine_id(&id.to_ascii_lowercase()).is_none()
            {
                return Err(ScenarioError::Invalid(format!(
                    "machine {:?} has an id that is not 40 hex digits",
                    m.name
                )));
            }
        }
        for g in &s.device_groups {
            if g.rank == 0 {
                return Err(ScenarioError::Invalid(format!(
                    "device group {:?} needs a rank of 1 or more",
                    g.name
                )));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../config/sim-scenario.example.toml");
        let s = Scenario::parse(text).unwrap();
        assert!(!s.machines.is_empty());
        assert!(!s.device_groups.is_empty());
        assert!(!s.incidents.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(
            Scenario::parse("[[machines]]\nname = 'a'\nos = 'Windows11'\ncolour = 'red'").is_err()
        );
        assert!(Scenario::parse("[[machines]]\nname = 'a'\nos = 'BeOS'").is_err());
        assert!(Scenario::parse("[[device_groups]]\nname = 'a'\nrank = 0").is_err());
    }
}
