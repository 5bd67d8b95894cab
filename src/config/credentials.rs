//! Secrets: where secret files are looked up, how they are read, the one credential and the
//! webhook URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::show_path;
use super::reader::{Reader, check_transport};
use super::secret_file;
use super::{ConfigError, Credential, DEV_SECRET_VAR, SecretSource};

/// Where relative secret file names are looked for: `$CREDENTIALS_DIRECTORY` (systemd
/// `LoadCredential=`) first, then the config file's directory.
pub(super) struct SecretLookup {
    pub(super) creds_dir: Option<PathBuf>,
    pub(super) config_dir: PathBuf,
}

impl SecretLookup {
    pub(super) fn find(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Some(dir) = &self.creds_dir {
            let candidate = dir.join(p);
            if candidate.exists() {
                return candidate;
            }
        }
        self.config_dir.join(p)
    }
}

impl SecretLookup {
    /// Under `$CREDENTIALS_DIRECTORY` systemd has set the owner and mode itself (the files are
    /// readable by the service's user only), so the permission checks are left to it there.
    fn is_managed(&self, path: &Path) -> bool {
        self.creds_dir
            .as_deref()
            .is_some_and(|d| path.starts_with(d))
    }
}

/// Reads a secret file into a `SecretString`, trailing newline trimmed. The file is opened
/// without following a symbolic link, must be a regular file of at most
/// [`secret_file::MAX_SECRET_FILE`] bytes and, outside `$CREDENTIALS_DIRECTORY`, owned by this
/// process's user and not readable by group or others. Errors name the file, never its content.
pub(super) fn read_secret_file(
    what: &'static str,
    path: &Path,
    lookup: &SecretLookup,
) -> Result<SecretString, ConfigError> {
    let err = |problem: String, todo: &str| ConfigError::SecretFile {
        what,
        path: show_path(path),
        problem,
        todo: todo.to_string(),
    };
    let bytes = secret_file::read(path, lookup.is_managed(path))
        .map_err(|refusal| err(refusal.problem, &refusal.todo))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| err("is not UTF-8 text".into(), "write the secret as plain text"))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        return Err(err("is empty".into(), "write the secret into it"));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

pub(super) fn read_credential(
    r: &Reader,
    lookup: &SecretLookup,
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Credential, ConfigError> {
    let secret_file = r.opt_str(("tenant", "client_secret_file"))?;
    let cert_file = r.opt_str(("tenant", "certificate_file"))?;
    let dev = env.get(DEV_SECRET_VAR).filter(|s| !s.is_empty());
    let credential = match (secret_file, cert_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Credential {
                problem: format!(
                    "two credentials configured: [tenant] client_secret_file ({}) and \
                     certificate_file ({})",
                    r.origin(("tenant", "client_secret_file")),
                    r.origin(("tenant", "certificate_file"))
                ),
                todo: "keep exactly one".into(),
            });
        }
        (Some(name), None) => {
            let path = lookup.find(&name);
            Credential::ClientSecret {
                secret: read_secret_file("client secret", &path, lookup)?,
                from: SecretSource::File(path),
            }
        }
        (None, Some(name)) => {
            let path = lookup.find(&name);
            let pem = read_secret_file("certificate", &path, lookup)?;
            check_pem(&pem, &path)?;
            Credential::Certificate { pem, path }
        }
        (None, None) => match dev {
            Some(secret) => {
                warnings.push(format!(
                    "using the client secret from {DEV_SECRET_VAR}: this is for development \
                     only; set [tenant] client_secret_file or certificate_file in production"
                ));
                return Ok(Credential::ClientSecret {
                    secret: SecretString::from(secret.clone()),
                    from: SecretSource::DevEnvironment,
                });
            }
            None => {
                return Err(ConfigError::Credential {
                    problem: "no credential configured".into(),
                    todo: format!(
                        "set [tenant] client_secret_file or certificate_file (or \
                         {DEV_SECRET_VAR} for development)"
                    ),
                });
            }
        },
    };
    if dev.is_some() {
        warnings.push(format!(
            "{DEV_SECRET_VAR} is ignored because a credential file is configured"
        ));
    }
    Ok(credential)
}

/// The PEM must hold a certificate and an unencrypted private key; the auth layer parses them.
pub(super) fn check_pem(pem: &SecretString, path: &Path) -> Result<(), ConfigError> {
    let text = pem.expose_secret();
    let err = |problem: &str, todo: &str| ConfigError::SecretFile {
        what: "certificate",
        path: show_path(path),
        problem: problem.into(),
        todo: todo.into(),
    };
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(err(
            "holds an encrypted private key",
            "store the key unencrypted and protect the file instead (systemd LoadCredential)",
        ));
    }
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(err(
            "holds no PEM certificate",
            "put the certificate and its private key in one PEM file",
        ));
    }
    let has_key = text.contains("-----BEGIN PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----");
    if !has_key {
        return Err(err(
            "holds no RSA private key",
            "put the certificate and its private key in one PEM file",
        ));
    }
    Ok(())
}

pub(super) fn check_webhook(url: &SecretString, path: &Path) -> Result<(), ConfigError> {
    let err = |problem: String| ConfigError::SecretFile {
        what: "alert webhook URL",
        path: show_path(path),
        problem,
        todo: "write one https:// URL into it (http:// only for loopback)".into(),
    };
    // Neither the URL nor its parse error text is echoed: the URL carries its own credential.
    let parsed = Url::parse(url.expose_secret().trim())
        .map_err(|e| err(format!("does not hold a valid URL ({e})")))?;
    check_transport(&parsed).map_err(|problem| err(format!("holds a URL that {problem}")))
}
