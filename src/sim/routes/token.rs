//! The identity platform token endpoint (`POST /{tenant}/oauth2/v2.0/token`, client
//! credentials) and bearer-token checks for the API routes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::Reply;
use crate::sim::model::{IssuedToken, Tenant};
use crate::sim::quota::Surface;

/// Graph's App ID URI, the `aud` of Graph tokens.
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// The MDE (WindowsDefenderATP) App ID URI, the `aud` of MDE tokens.
pub const MDE_AUDIENCE: &str = "https://api.securitycenter.microsoft.com";
/// The Defender XDR App ID URI: tokens for it are issued but accepted by neither API here.
pub const XDR_AUDIENCE: &str = "https://api.security.microsoft.com";

fn aadsts(status: u16, error: &str, code: u32, description: &str) -> Reply {
    let trace = uuid::Uuid::new_v4().to_string();
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace}"),
            "error_codes": [code],
            "timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": trace,
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

/// Serves a token request for `tenant_segment` with the form `form` and an optional HTTP Basic
/// `authorization` header.
pub fn issue(
    t: &mut Tenant,
    tenant_segment: &str,
    form: &[(String, String)],
    authorization: Option<&str>,
) -> Reply {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let tid = t.ids.tenant_id.to_string();
    if !tenant_segment.eq_ignore_ascii_case(&tid)
        && !tenant_segment.eq_ignore_ascii_case(&t.ids.tenant_domain)
    {
        return aadsts(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant_segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if field("grant_type") != Some("client_credentials") {
        return aadsts(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let client = match authenticate(t, &field, authorization) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match audience(field("scope").unwrap_or("")) {
        Ok((aud, surface)) => mint(t, aud, surface, &client),
        Err(r) => r,
    }
}

/// Checks the client id and its credential (a secret, in the form or HTTP Basic, or a client
/// assertion); returns the client id the tokens are issued to.
fn authenticate<'f>(
    t: &Tenant,
    field: &dyn Fn(&str) -> Option<&'f str>,
    authorization: Option<&str>,
) -> Result<String, Reply> {
    let (basic_id, basic_secret) = basic_credentials(authorization);
    let client_id = field("client_id").map(str::to_string).or(basic_id);
    let client = t.ids.client_id.to_string();
    let Some(client_id) = client_id else {
        return Err(aadsts(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    if !client_id.eq_ignore_ascii_case(&client) {
        return Err(aadsts(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    let secret = field("client_secret").map(str::to_string).or(basic_secret);
    if let Some(secret) = secret {
        if secret != t.ids.client_secret.expose_secret() {
            return Err(aadsts(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ));
        }
    } else if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(aadsts(
                400,
                "invalid_request",
                700023,
                "Client assertion type is not supported.",
            ));
        }
        if let Err(why) = check_assertion(t, assertion, &client) {
            return Err(aadsts(401, "invalid_client", 700027, &why));
        }
    } else {
        return Err(aadsts(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(client)
}

/// The audience and API surface a `{resource}/.default` scope asks for.
fn audience(scope: &str) -> Result<(&'static str, Surface), Reply> {
    match scope.trim().trim_end_matches("/.default") {
        GRAPH_AUDIENCE => Ok((GRAPH_AUDIENCE, Surface::GraphDirectory)),
        MDE_AUDIENCE | "https://securitycenter.onmicrosoft.com/windowsatpservice" => {
            Ok((MDE_AUDIENCE, Surface::Mde))
        }
        XDR_AUDIENCE => Ok((XDR_AUDIENCE, Surface::Token)),
        _ => Err(aadsts(
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )),
    }
}

fn mint(t: &mut Tenant, aud: &str, surface: Surface, client: &str) -> Reply {
    let now = t.now_ms();
    let lifetime = t.behaviour.token_lifetime_secs.max(1);
    let roles = match surface {
        Surface::Mde => t.behaviour.mde_roles.clone(),
        Surface::GraphDirectory => t.behaviour.graph_roles.clone(),
        _ => Vec::new(),
    };
    let jti = uuid::Uuid::new_v4().to_string();
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "sim"});
    let claims = json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{}/", t.ids.tenant_id),
        "iat": now / 1000, "nbf": now / 1000, "exp": now / 1000 + lifetime,
        "appid": client, "azp": client, "tid": t.ids.tenant_id.to_string(),
        "oid": uuid::Uuid::from_u128(t.ids.client_id.as_u128() ^ 1).to_string(),
        "roles": roles, "jti": jti, "ver": "1.0",
    });
    let mut sig = [0u8; 32];
    rand::rng().fill_bytes(&mut sig);
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    );
    t.tokens.insert(
        jti,
        IssuedToken {
            audience: surface,
            client: client.to_string(),
            roles,
            expires_ms: now + lifetime * 1000,
            uses: 0,
        },
    );
    t.stats.tokens_issued += 1;
    Reply::json(
        200,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
               "access_token": token}),
    )
}

fn basic_credentials(authorization: Option<&str>) -> (Option<String>, Option<String>) {
    let decoded = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((id, secret)) => (
            Some(super::percent_decode(id)),
            Some(super::percent_decode(secret)),
        ),
        None => (None, None),
    }
}

fn decode_claims(jwt: &str) -> Option<Value> {
    let mut parts = jwt.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Checks a client assertion's claims: `iss` = `sub` = client id, `aud` the token endpoint of
/// this tenant, not expired. The signature is not verified: the simulator holds no
/// certificate, and what it must catch is a client building the wrong claims.
fn check_assertion(t: &Tenant, assertion: &str, client: &str) -> Result<(), String> {
    let claims = decode_claims(assertion)
        .ok_or_else(|| "Client assertion is not a well-formed JWT.".to_string())?;
    let claim = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    if !claim("iss").eq_ignore_ascii_case(client) || !claim("sub").eq_ignore_ascii_case(client) {
        return Err("Client assertion 'iss' and 'sub' must be the client id.".into());
    }
    let aud = claim("aud");
    let tenant_path = format!("/{}/oauth2/v2.0/token", t.ids.tenant_id);
    let domain_path = format!("/{}/oauth2/v2.0/token", t.ids.tenant_domain);
    if !(aud.ends_with(&tenant_path) || aud.ends_with(&domain_path)) {
        return Err(format!(
            "Client assertion audience claim does not match Realm issuer: '{aud}'."
        ));
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp * 1000 < t.now_ms() {
        return Err("Client assertion is expired.".into());
    }
    Ok(())
}

/// Why a bearer token was refused.
pub enum Denied {
    /// 401: missing, unknown, expired or meant for another API.
    Unauthenticated(&'static str),
    /// 403: valid, but without one of the roles the call needs.
    Forbidden,
}

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: String,
    pub roles: Vec<String>,
}

impl Caller {
    /// True when the token carries any of `roles` (or none are needed).
    pub fn has_any(&self, roles: &[&str]) -> bool {
        roles.is_empty() || roles.iter().any(|r| self.roles.iter().any(|x| x == r))
    }
}

/// Checks the `Authorization` header for `surface` and returns the caller; a token accepted
/// here has served one more request (see `FaultConfig::token_uses`).
pub fn authorize(
    t: &mut Tenant,
    authorization: Option<&str>,
    surface: Surface,
) -> Result<Caller, &'static str> {
    let token = authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .ok_or("Access token is empty.")?;
    let claims = decode_claims(token.trim()).ok_or("IDX14100: JWT is not well formed.")?;
    let jti = claims.get("jti").and_then(Value::as_str).unwrap_or("");
    let now = t.now_ms();
    let issued = t
        .tokens
        .get_mut(jti)
        .ok_or("Invalid signature or unknown token.")?;
    let wanted = match surface {
        Surface::Mde => Surface::Mde,
        _ => Surface::GraphDirectory,
    };
    if issued.audience != wanted {
        return Err("Invalid audience.");
    }
    const EXPIRED: &str = "Lifetime validation failed, the token is expired.";
    if issued.expires_ms <= now {
        return Err(EXPIRED);
    }
    if t.faults.token_spent(surface, issued.uses) {
        *t.stats.faults.entry("token_expiry".into()).or_default() += 1;
        return Err(EXPIRED);
    }
    issued.uses += 1;
    Ok(Caller {
        client: issued.client.clone(),
        roles: issued.roles.clone(),
    })
}
