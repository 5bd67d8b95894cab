//! The certificate client assertion: the PEM read once, a freshly signed JWT per token request.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Digest as _;

use super::AssertionAlg;

/// How long a client assertion is valid, in seconds.
const ASSERTION_LIFETIME: u64 = 10 * 60;

/// Signs client assertions with the certificate's private key.
pub(super) struct AssertionSigner {
    key: jsonwebtoken::EncodingKey,
    alg: AssertionAlg,
    /// base64url thumbprint of the certificate DER (SHA-256 or SHA-1 by `alg`).
    thumbprint: String,
}

/// Why the certificate file cannot be used. Never quotes the key material.
#[derive(Debug, thiserror::Error)]
pub(super) enum CertError {
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no PRIVATE KEY or RSA PRIVATE KEY block found")]
    NoKey,
    #[error("the private key is encrypted; decrypt it first")]
    EncryptedKey,
    #[error("the {0} block is not valid base64")]
    BadBase64(String),
    #[error("the private key is not a usable RSA key")]
    NotRsa,
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("signing failed")]
    Sign,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl AssertionSigner {
    pub(super) fn from_pem(pem: &SecretString, alg: AssertionAlg) -> Result<Self, CertError> {
        let blocks = pem_blocks(pem.expose_secret())?;
        if blocks
            .iter()
            .any(|(label, _)| label == "ENCRYPTED PRIVATE KEY")
        {
            return Err(CertError::EncryptedKey);
        }
        // The first certificate is the leaf; any further ones are its chain.
        let cert = blocks
            .iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der)
            .ok_or(CertError::NoCertificate)?;
        let (label, key_der) = blocks
            .iter()
            .find(|(label, _)| label == "PRIVATE KEY" || label == "RSA PRIVATE KEY")
            .ok_or(CertError::NoKey)?;
        let public_key = rsa_public_key(label, key_der)?;
        // The certificate's SubjectPublicKeyInfo embeds the PKCS#1 public key verbatim, so a
        // byte search is enough to tell that key and certificate belong together.
        if !cert.windows(public_key.len()).any(|w| w == public_key) {
            return Err(CertError::KeyMismatch);
        }
        let single = format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            B64.encode(key_der)
        );
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(single.as_bytes())
            .map_err(|_| CertError::NotRsa)?;
        let thumbprint = match alg {
            AssertionAlg::Ps256 => B64URL.encode(sha2::Sha256::digest(cert)),
            AssertionAlg::Rs256 => B64URL.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                cert,
            )),
        };
        let signer = AssertionSigner {
            key,
            alg,
            thumbprint,
        };
        // Prove at load time that the key can sign, so a broken file fails at start.
        signer.sign("probe", "probe", SystemTime::now())?;
        Ok(signer)
    }

    /// A fresh assertion for one token request: unique `jti`, valid from `now` for 10 minutes.
    pub(super) fn sign(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<SecretString, CertError> {
        let mut header = jsonwebtoken::Header::new(match self.alg {
            AssertionAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
            AssertionAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        });
        match self.alg {
            AssertionAlg::Ps256 => header.x5t_s256 = Some(self.thumbprint.clone()),
            AssertionAlg::Rs256 => header.x5t = Some(self.thumbprint.clone()),
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|_| CertError::Sign)
    }
}

/// The PKCS#1 `RSAPublicKey` DER of a PKCS#8 or PKCS#1 RSA private key.
fn rsa_public_key(label: &str, der: &[u8]) -> Result<Vec<u8>, CertError> {
    use aws_lc_rs::signature::KeyPair as _;
    let pair = if label == "PRIVATE KEY" {
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
    } else {
        aws_lc_rs::rsa::KeyPair::from_der(der)
    }
    .map_err(|_| CertError::NotRsa)?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// The `(label, DER)` blocks of a PEM text, in order. Text outside blocks (OpenSSL's "Bag
/// Attributes") is ignored.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, CertError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END ") {
            if let Some((label, body)) = current.take() {
                let der = B64
                    .decode(body.as_bytes())
                    .map_err(|_| CertError::BadBase64(label.clone()))?;
                blocks.push((label, der));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_pem_files_are_named() {
        fn check(pem: &str, expected: &str) {
            let err = AssertionSigner::from_pem(&SecretString::from(pem), AssertionAlg::Ps256)
                .err()
                .map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(expected), "{pem}");
        }
        check("", "no CERTIFICATE block found");
        check(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no PRIVATE KEY or RSA PRIVATE KEY block found",
        );
        check(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "the private key is encrypted; decrypt it first",
        );
        check(
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "the CERTIFICATE block is not valid base64",
        );
        check(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "the private key is not a usable RSA key",
        );
    }
}
