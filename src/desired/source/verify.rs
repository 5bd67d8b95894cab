//! Checks that a commit carries a valid SSH signature by an allowed signer, through
//! `git verify-commit` with `gpg.format = ssh` (git hands the check to `ssh-keygen -Y
//! find-principals` and `ssh-keygen -Y verify`; no cryptography is done here).

use std::path::Path;

use super::run::{Git, GitFailure};
use super::{CommitId, Refusal, SourceError};

/// The header of an SSH signature inside a commit object's `gpgsig` field.
const SSH_SIGNATURE: &str = "-----BEGIN SSH SIGNATURE-----";

/// How much of a commit object is read to find its signature header.
const MAX_COMMIT_BYTES: usize = 1024 * 1024;

/// `Ok` when `commit` is signed with SSH by a key `allowed_signers` lists; otherwise
/// [`SourceError::Unverified`] naming the commit and the reason.
pub fn verify(git: &Git, commit: &CommitId, allowed_signers: &Path) -> Result<(), SourceError> {
    let refuse = |reason: Refusal| SourceError::Unverified {
        commit: commit.clone(),
        reason,
    };
    let object = git
        .run(&["cat-file", "commit", commit.as_str()], MAX_COMMIT_BYTES)
        .map_err(|e| refuse(Refusal::Unreadable(e.to_string())))?;
    match signature_kind(&object) {
        None => return Err(refuse(Refusal::Unsigned)),
        Some(false) => return Err(refuse(Refusal::NotSsh)),
        Some(true) => {}
    }
    if !allowed_signers.is_file() {
        return Err(refuse(Refusal::NoAllowedSigners(
            allowed_signers.display().to_string(),
        )));
    }
    let mut git = git.clone();
    git.config("gpg.format", "ssh").config(
        "gpg.ssh.allowedSignersFile",
        &allowed_signers.to_string_lossy(),
    );
    match git.run(&["verify-commit", commit.as_str()], 0) {
        Ok(_) => Ok(()),
        Err(e @ GitFailure::Exit { .. }) => Err(refuse(rejection(e.stderr()))),
        Err(e) => Err(refuse(Refusal::Unreadable(e.to_string()))),
    }
}

/// `None` when the commit object has no signature header; `Some(true)` for an SSH signature,
/// `Some(false)` for another kind (OpenPGP, X.509). The headers end at the first empty line;
/// a signature is `gpgsig` (SHA-1 repositories) or `gpgsig-sha256`.
fn signature_kind(object: &[u8]) -> Option<bool> {
    let text = String::from_utf8_lossy(object);
    let headers = text.split("\n\n").next().unwrap_or_default();
    headers.lines().find_map(|line| {
        let value = line
            .strip_prefix("gpgsig ")
            .or_else(|| line.strip_prefix("gpgsig-sha256 "))?;
        Some(value.trim() == SSH_SIGNATURE)
    })
}

/// Why `git verify-commit` said no. A valid signature by a key not listed makes git print a
/// "Good … signature" line followed by `No principal matched.`; that is a refusal, not a pass.
fn rejection(stderr: &str) -> Refusal {
    if stderr.contains("No principal matched") {
        let key = stderr
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .unwrap_or("unknown key");
        return Refusal::UnknownSigner(key.to_string());
    }
    Refusal::BadSignature(stderr.lines().last().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_header_kinds() {
        let ssh = b"tree 1\nauthor a\ngpgsig -----BEGIN SSH SIGNATURE-----\n xx\n\nmsg\n";
        let pgp = b"tree 1\ngpgsig -----BEGIN PGP SIGNATURE-----\n xx\n\nmsg\n";
        let none = b"tree 1\nauthor a\n\ngpgsig -----BEGIN SSH SIGNATURE-----\n";
        assert_eq!(signature_kind(ssh), Some(true));
        assert_eq!(signature_kind(pgp), Some(false));
        assert_eq!(signature_kind(none), None, "a message line is not a header");
    }

    #[test]
    fn unknown_signer_is_named_by_its_key() {
        let stderr = "Good \"git\" signature with ED25519 key SHA256:abc\nNo principal matched.";
        assert_eq!(
            rejection(stderr),
            Refusal::UnknownSigner("SHA256:abc".into())
        );
    }
}
