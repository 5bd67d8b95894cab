//! One read of a git source for a command (`validate --git`, `plan`): the source written as
//! `URL#branch:path`, fetched into a throwaway cache, the head's files returned. The daemon's
//! cache is never touched, so a command run beside the daemon cannot move its head.

use std::path::{Path, PathBuf};

use super::{CommitId, DEFAULT_TIMEOUT, Fetched, GitCache, SourceError};
use crate::config::{GitSource, GitSourceSettings, Verify};

/// Why a one-shot read failed.
#[derive(Debug, thiserror::Error)]
pub enum OneShotError {
    #[error(
        "{0}: write the source as URL#branch:path, like https://git.example.com/scope.git#main:scoped-coverage/"
    )]
    Spec(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// `URL#branch:path` as a source: verified with `allowed_signers` when given (`verify =
/// "ssh"`), else not verified.
pub fn source_from_spec(
    spec: &str,
    allowed_signers: Option<&Path>,
) -> Result<GitSource, OneShotError> {
    let (url, rest) = spec
        .rsplit_once('#')
        .ok_or_else(|| OneShotError::Spec("the source names no branch".into()))?;
    let (branch, path) = rest.split_once(':').unwrap_or((rest, ""));
    GitSource::new(GitSourceSettings {
        url: url.to_string(),
        branch: branch.to_string(),
        path: path.to_string(),
        fetch_every: None,
        credential_file: None,
        verify: if allowed_signers.is_some() {
            Verify::Ssh
        } else {
            Verify::None
        },
        allowed_signers: allowed_signers.map(Path::to_path_buf),
        known_hosts: None,
    })
    .map_err(|e| OneShotError::Spec(e.to_string()))
}

/// Fetches the branch head of `source` into a throwaway cache (removed afterwards), verifies
/// it as the source says, and returns its commit and files (blocking).
pub fn read_head(source: &GitSource) -> Result<(CommitId, Vec<(PathBuf, String)>), SourceError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("dexscope-git-{}-{nanos}", std::process::id()));
    let result =
        GitCache::open(source.clone(), &dir, DEFAULT_TIMEOUT).and_then(|cache| {
            match cache.fetch(None)? {
                Fetched::New { commit, files, .. } => Ok((commit, files)),
                Fetched::Unchanged { commit } => Ok((commit.clone(), cache.read(&commit)?)),
            }
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = source_from_spec("https://h/x.git#main:scope/", None).unwrap();
        assert_eq!(
            (s.url().as_str(), s.branch(), s.path()),
            ("https://h/x.git", "main", "scope")
        );
        assert_eq!(s.verify(), Verify::None);
        let s = source_from_spec("file:///r.git#release/1", Some(Path::new("/a"))).unwrap();
        assert_eq!(
            (s.branch(), s.path(), s.verify()),
            ("release/1", "", Verify::Ssh)
        );
        assert!(source_from_spec("https://h/x.git", None).is_err());
        assert!(source_from_spec("https://h/x.git#a..b:x", None).is_err());
    }
}
