//! The roles self-check: which required application permissions a token's `roles` claim carries.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Resource;

/// Which of the required application permissions a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesReport {
    pub resource: Resource,
    /// Every role the token's `roles` claim lists.
    pub present: Vec<String>,
    /// Required roles the token lacks, in [`Resource::required_roles`] order.
    pub missing: Vec<&'static str>,
    /// One line for the operator: all fine, or what is missing and where to grant it.
    pub message: String,
}

impl RolesReport {
    /// True when nothing required is missing.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Higher-privileged roles that Microsoft documents as also allowing the operation.
fn covering_roles(required: &str) -> &'static [&'static str] {
    match required {
        "GroupMember.ReadWrite.All" => &["Group.ReadWrite.All", "Directory.ReadWrite.All"],
        "User.Read.All" => &[
            "User.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
        _ => &[],
    }
}

#[derive(Deserialize)]
struct RolesClaim {
    #[serde(default)]
    roles: Vec<String>,
}

/// Read the `roles` claim of our own access token and name each missing application permission.
///
/// The signature is deliberately not verified: the token came straight from the token endpoint
/// over TLS to us, and we only read it to tell the operator what consent is missing; the API
/// that receives it does the verifying. A token that is not a readable JWT is reported with all
/// required roles missing, so a start-up check fails loudly rather than passing blind.
pub fn check_roles(resource: Resource, token: &SecretString) -> RolesReport {
    let present = match read_roles(token.expose_secret()) {
        Some(roles) => roles,
        None => {
            return RolesReport {
                resource,
                present: Vec::new(),
                missing: resource.required_roles().to_vec(),
                message: format!(
                    "{resource} token is not a readable JWT, so its application permissions cannot \
                     be checked — check endpoints.login points at the Microsoft identity platform"
                ),
            };
        }
    };
    let has = |role: &str| present.iter().any(|p| p.eq_ignore_ascii_case(role));
    let missing: Vec<&'static str> = resource
        .required_roles()
        .iter()
        .copied()
        .filter(|req| !has(req) && !covering_roles(req).iter().any(|alt| has(alt)))
        .collect();
    let message = roles_message(resource, &missing);
    RolesReport {
        resource,
        present,
        missing,
        message,
    }
}

fn read_roles(token: &str) -> Option<Vec<String>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let json = B64URL.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<RolesClaim>(&json)
        .ok()
        .map(|c| c.roles)
}

fn roles_message(resource: Resource, missing: &[&str]) -> String {
    let place = match resource {
        Resource::Graph => "Entra ID › App registrations › API permissions",
        Resource::Defender => {
            "Entra ID › App registrations › API permissions (APIs my organization uses › WindowsDefenderATP)"
        }
    };
    match missing {
        [] => format!("{resource} token carries every required application permission"),
        [one] => format!(
            "{resource} token lacks application permission {one} — grant it in {place} and grant admin consent"
        ),
        many => format!(
            "{resource} token lacks application permissions {} — grant them in {place} and grant admin consent",
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> SecretString {
        SecretString::from(format!(
            "{}.{}.sig",
            B64URL.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            B64URL.encode(payload)
        ))
    }

    #[test]
    fn roles_are_checked_per_resource() {
        fn check(resource: Resource, payload: &str, missing: &[&str]) {
            let report = check_roles(resource, &jwt(payload));
            assert_eq!(report.missing, missing, "{payload}");
            assert_eq!(report.is_complete(), missing.is_empty());
            for m in missing {
                assert!(report.message.contains(m), "{}", report.message);
            }
        }
        let all_graph = r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All","SecurityIncident.ReadWrite.All"]}"#;
        check(Resource::Graph, all_graph, &[]);
        check(
            Resource::Graph,
            r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All"]}"#,
            &["SecurityIncident.ReadWrite.All"],
        );
        check(
            Resource::Graph,
            r#"{"roles":["Directory.ReadWrite.All","securityincident.readwrite.all"]}"#,
            &[],
        );
        check(
            Resource::Graph,
            r#"{"aud":"x"}"#,
            &[
                "GroupMember.ReadWrite.All",
                "User.Read.All",
                "SecurityIncident.ReadWrite.All",
            ],
        );
        check(
            Resource::Defender,
            r#"{"roles":["Machine.Read.All"]}"#,
            &["Machine.ReadWrite.All"],
        );
        check(
            Resource::Defender,
            r#"{"roles":["Machine.ReadWrite.All"]}"#,
            &[],
        );
        check(Resource::Defender, all_graph, &["Machine.ReadWrite.All"]);
    }

    #[test]
    fn roles_messages_read_as_one_line() {
        let one = check_roles(
            Resource::Graph,
            &jwt(r#"{"roles":["GroupMember.ReadWrite.All","User.Read.All"]}"#),
        );
        expect_test::expect!["Microsoft Graph token lacks application permission SecurityIncident.ReadWrite.All — grant it in Entra ID › App registrations › API permissions and grant admin consent"]
            .assert_eq(&one.message);
        let opaque = check_roles(Resource::Defender, &SecretString::from("opaque-token"));
        assert_eq!(opaque.missing, ["Machine.ReadWrite.All"]);
        assert!(!opaque.message.contains("opaque-token"));
        assert!(!opaque.message.contains('\n'));
    }
}
