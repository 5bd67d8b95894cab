//! The desired state read from git itself: a branch head fetched into a private bare
//! repository, its signature checked, its files read from the commit's tree.
//!
//! [`GitCache::fetch`] brings the branch head of a [`GitSource`] into `<cache>/repo.git`,
//! verifies it when `verify = "ssh"`, tells whether history was rewritten since the last
//! applied commit, and reads the desired-state files from the commit's tree, ready for
//! [`crate::desired::parse_files`]. Every failure is a [`SourceError`] and never an empty
//! state: the caller keeps applying the last good commit, which stays readable through
//! [`GitCache::read`] (nothing in the cache is ever garbage-collected).
//!
//! # Implementation: the system `git`
//!
//! git is run as a process (see [`run`] for the environment it gets). It is the reference
//! implementation of every transport (smart HTTP, SSH, local), of credentials and of SSH
//! commit signatures, it is packaged by every distribution and patched by their security
//! teams, and it adds no crate to the build: the tree keeps one reqwest and one TLS stack.
//! `gix` would bring a second HTTP client (curl or its own reqwest) and does not verify SSH
//! signatures; libgit2 brings a C library with its own TLS and SSH stacks and no SSH signature
//! verification either. The cost is a runtime dependency on `git` and `ssh-keygen` (Debian:
//! `git`, `openssh-client`), stated in the error when they are missing.
//!
//! # Decisions
//!
//! - **Atomic by construction.** Files are read by object id from the fetched commit's tree;
//!   there is no working copy, so a reader never sees half of a change, and the commit id
//!   returned is the one whose tree was read.
//! - **Only the head is verified** (as Flux does). A commit signature covers the commit's tree
//!   id, so a signed head vouches for every byte of the state it applies, whoever wrote the
//!   commits below it; requiring every ancestor signed would refuse repositories with older
//!   unsigned history and merges made on a forge, and would add nothing to what the head's
//!   signer approved. An unsigned or wrongly signed head is refused even when an older commit
//!   was fine: the caller keeps the last applied state and alerts. Any principal in
//!   `allowed_signers` is accepted, within the `valid-after`/`valid-before` limits the file
//!   gives (git checks them at the commit's time); the file is the list of who may approve.
//! - **Rewritten history is applied, and reported.** When the new head does not descend from
//!   the last applied commit (a force push, a reset, a different repository), it is applied
//!   if it passes verification, with `rewritten: true` so the caller alerts and logs. Refusing
//!   would stop all changes until someone repaired the branch, and the head's signature
//!   already says who approved the content; the report is there because a force push can also
//!   bring back an older signed commit (a rollback), which only a person can judge.
//! - **Known hosts (ssh).** With `known_hosts` set, the host key must be in that file
//!   (`StrictHostKeyChecking=yes`). Without it, the key seen at the first fetch is recorded in
//!   `<cache>/known_hosts` and required from then on (`accept-new`): a changed host key fails
//!   the fetch. SSH runs with `-F /dev/null` (no user or system ssh config), `BatchMode=yes`,
//!   `IdentitiesOnly=yes` and no agent.
//! - **Credentials** are read at each fetch (a rotated token is picked up without a restart).
//!   An `https://` token is sent as `Authorization: Basic` (user name from the URL, else
//!   `x-access-token`, which GitHub, GitLab, Gitea and Azure DevOps accept with a token) through
//!   `http.extraHeader` in the environment, never as an argument; redirects are refused so the
//!   header never reaches another host; git's messages are scrubbed of the token before they
//!   are kept.
//! - The cache repository uses SHA-1 object ids (git's default); a SHA-256 remote is refused by
//!   git at fetch time.

mod oneshot;
mod run;
mod tree;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

pub use crate::config::{
    DEFAULT_FETCH_EVERY, GitSource, GitSourceSettings, InvalidGitSource, MIN_FETCH_EVERY, Verify,
};
pub use oneshot::{OneShotError, read_head, source_from_spec};
pub use run::GitFailure;
pub use tree::MAX_TOTAL_BYTES;

/// How long one git call may take when the caller does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The ref the fetched branch head is kept under in the cache repository.
const HEAD_REF: &str = "refs/dexscope/head";

/// The cache directory of the daemon's git source: beside the state database, so it lives
/// under the unit's `StateDirectory`.
pub fn cache_dir(state_path: &Path) -> PathBuf {
    state_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("git-source")
}

/// The desired state in `files` read from `commit`, with the commit id recorded in it.
pub fn parse_commit(
    commit: &CommitId,
    files: &[(PathBuf, String)],
    today: chrono::NaiveDate,
    mode: crate::desired::Mode,
) -> Result<crate::desired::Loaded, crate::desired::Diagnostics> {
    let texts: Vec<(&Path, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    let mut loaded = crate::desired::parse_files(&texts, today, mode).into_result()?;
    loaded.state.commit = Some(commit.to_string());
    loaded.state.sources = files.iter().map(|(p, _)| p.clone()).collect();
    Ok(loaded)
}

/// A commit id: lower-case hex, 40 (SHA-1) or 64 (SHA-256) digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(String);

impl CommitId {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let ok = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The head is the last applied commit (verified again when `verify = "ssh"`).
    Unchanged { commit: CommitId },
    /// A head to apply: its files, read from its tree in name order, and whether it does not
    /// descend from the last applied commit.
    New {
        commit: CommitId,
        files: Vec<(PathBuf, String)>,
        rewritten: bool,
    },
}

/// Why a head commit was refused by `verify = "ssh"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the commit is not signed")]
    Unsigned,
    #[error("the commit is signed, but not with an SSH key (gpg.format = ssh)")]
    NotSsh,
    #[error("the commit is signed by key {0}, which allowed_signers does not list")]
    UnknownSigner(String),
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("the allowed_signers file {0} does not exist")]
    NoAllowedSigners(String),
    #[error("the commit cannot be checked: {0}")]
    Unreadable(String),
}

/// Why a fetch or a read failed: one variant per step, naming what it failed on. No variant
/// holds a secret. None of them means "the desired state is empty": keep the last good one.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot prepare the git cache {}: {problem}", dir.display())]
    Cache { dir: PathBuf, problem: String },
    #[error("cannot read the git credential file {}", file.display())]
    Credential {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch branch {branch} from {url}")]
    Fetch {
        url: String,
        branch: String,
        #[source]
        source: GitFailure,
    },
    #[error("the fetched branch {branch} names no commit")]
    Head {
        branch: String,
        #[source]
        source: GitFailure,
    },
    #[error("head commit {commit} refused: {reason}")]
    Unverified { commit: CommitId, reason: Refusal },
    #[error("cannot tell whether commit {commit} descends from {last}")]
    History {
        commit: CommitId,
        last: CommitId,
        #[source]
        source: GitFailure,
    },
    #[error("cannot read {path} at commit {commit}: {problem}")]
    Read {
        commit: CommitId,
        path: String,
        problem: String,
    },
}

/// A git source and its private bare repository under the state directory.
pub struct GitCache {
    source: GitSource,
    dir: PathBuf,
    /// Local operations only: no transport, no credential.
    local: run::Git,
    timeout: Duration,
}

impl GitCache {
    /// Opens (creating it if need be) the cache for `source` in `dir`, each git call bounded
    /// by `timeout`.
    pub fn open(source: GitSource, dir: &Path, timeout: Duration) -> Result<Self, SourceError> {
        let fail = |problem: String| SourceError::Cache {
            dir: dir.to_path_buf(),
            problem,
        };
        create_private_dir(dir).map_err(|e| fail(e.to_string()))?;
        let git_dir = dir.join("repo.git");
        let local = run::Git::new(&git_dir, "file", timeout);
        if !git_dir.join("HEAD").is_file() {
            // An empty template: no sample hooks, nothing but the repository itself.
            local
                .run(&["init", "--bare", "--quiet", "--template="], 0)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(Self {
            source,
            dir: dir.to_path_buf(),
            local,
            timeout,
        })
    }

    pub fn source(&self) -> &GitSource {
        &self.source
    }

    /// Fetches the branch head and decides what it means against `last_applied` (the commit
    /// whose state the caller applies now; `None` when it has none): [`Fetched::Unchanged`]
    /// when they are the same, else the verified head's files. Run again after any failure:
    /// every step is idempotent.
    pub fn fetch(&self, last_applied: Option<&CommitId>) -> Result<Fetched, SourceError> {
        self.fetch_remote()?;
        let Some(commit) = self.cached_head()? else {
            return Err(SourceError::Head {
                branch: self.source.branch().to_string(),
                source: GitFailure::Exit {
                    status: "missing ref".into(),
                    stderr: "the fetch stored no head".into(),
                },
            });
        };
        self.check_signature(&commit)?;
        if last_applied == Some(&commit) {
            return Ok(Fetched::Unchanged { commit });
        }
        let rewritten = match last_applied {
            Some(last) => !self.descends_from(&commit, last)?,
            None => false,
        };
        let files = self.read(&commit)?;
        Ok(Fetched::New {
            commit,
            files,
            rewritten,
        })
    }

    /// The files at the source's path in `commit`, which must be in the cache (any commit a
    /// fetch returned is). Not verified again: [`GitCache::fetch`] verifies the heads it
    /// returns.
    pub fn read(&self, commit: &CommitId) -> Result<Vec<(PathBuf, String)>, SourceError> {
        tree::read(&self.local, commit, self.source.path())
    }

    /// The head of the last successful fetch, without touching the network; `None` before
    /// the first one.
    pub fn cached_head(&self) -> Result<Option<CommitId>, SourceError> {
        let spec = format!("{HEAD_REF}^{{commit}}");
        match self.local.run(
            &[
                "rev-parse",
                "--quiet",
                "--verify",
                "--end-of-options",
                &spec,
            ],
            4096,
        ) {
            Ok(out) => Ok(CommitId::parse(&String::from_utf8_lossy(&out))),
            Err(GitFailure::Exit { status, .. }) if status == "exit status 1" => Ok(None),
            Err(source) => Err(SourceError::Head {
                branch: self.source.branch().to_string(),
                source,
            }),
        }
    }

    fn fetch_remote(&self) -> Result<(), SourceError> {
        let git = self.remote()?;
        let refspec = format!("+refs/heads/{}:{HEAD_REF}", self.source.branch());
        let url = self.source.url().as_str();
        git.run(
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--end-of-options",
                url,
                &refspec,
            ],
            64 * 1024,
        )
        .map(drop)
        .map_err(|source| SourceError::Fetch {
            url: url.to_string(),
            branch: self.source.branch().to_string(),
            source,
        })
    }

    /// The git that talks to the remote: the local one plus the transport's credential.
    fn remote(&self) -> Result<run::Git, SourceError> {
        let url = self.source.url();
        let mut git = run::Git::new(&self.dir.join("repo.git"), url.scheme(), self.timeout);
        match url.scheme() {
            "https" => {
                if let Some(file) = self.source.credential_file() {
                    let token = read_secret(file)?;
                    let user = match url.username() {
                        "" => "x-access-token",
                        user => user,
                    };
                    let basic = base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{}", token.expose_secret()));
                    let header = SecretString::from(format!("Authorization: Basic {basic}"));
                    git.secret_config(
                        "http.extraHeader",
                        header,
                        vec![token, SecretString::from(basic)],
                    );
                }
            }
            "ssh" => {
                if let Some(file) = self.source.credential_file() {
                    std::fs::File::open(file).map_err(|source| SourceError::Credential {
                        file: file.to_path_buf(),
                        source,
                    })?;
                }
                git.env("GIT_SSH_VARIANT", "ssh")
                    .env("GIT_SSH_COMMAND", self.ssh_command());
            }
            _ => {}
        }
        Ok(git)
    }

    /// The ssh command git runs (through `sh -c`, as git documents for `GIT_SSH_COMMAND`, so
    /// every path is single-quoted).
    fn ssh_command(&self) -> String {
        let (strict, known_hosts) = match self.source.known_hosts() {
            Some(file) => ("yes", file.to_path_buf()),
            None => ("accept-new", self.dir.join("known_hosts")),
        };
        let mut cmd = String::from("ssh -F /dev/null");
        if let Some(key) = self.source.credential_file() {
            cmd += &format!(" -i {}", shell_quote(&key.to_string_lossy()));
        }
        cmd += " -o IdentitiesOnly=yes -o BatchMode=yes -o IdentityAgent=none";
        cmd += " -o ConnectTimeout=30";
        cmd += &format!(
            " -o StrictHostKeyChecking={strict} -o UserKnownHostsFile={}",
            shell_quote(&known_hosts.to_string_lossy())
        );
        cmd
    }

    fn check_signature(&self, commit: &CommitId) -> Result<(), SourceError> {
        match (self.source.verify(), self.source.allowed_signers()) {
            (Verify::Ssh, Some(signers)) => verify::verify(&self.local, commit, signers),
            // `GitSource::new` refuses `verify = "ssh"` without allowed signers.
            (Verify::Ssh, None) => Err(SourceError::Unverified {
                commit: commit.clone(),
                reason: Refusal::NoAllowedSigners("(none configured)".into()),
            }),
            (Verify::None, _) => Ok(()),
        }
    }

    /// Whether `last` is `commit` or one of its ancestors. A `last` the cache does not hold is
    /// not in the fetched history, so the history was rewritten.
    fn descends_from(&self, commit: &CommitId, last: &CommitId) -> Result<bool, SourceError> {
        let fail = |source| SourceError::History {
            commit: commit.clone(),
            last: last.clone(),
            source,
        };
        let present = format!("{last}^{{commit}}");
        if !self
            .local
            .test(&["cat-file", "-e", &present])
            .map_err(fail)?
        {
            return Ok(false);
        }
        self.local
            .test(&[
                "merge-base",
                "--is-ancestor",
                last.as_str(),
                commit.as_str(),
            ])
            .map_err(fail)
    }
}

fn read_secret(file: &Path) -> Result<SecretString, SourceError> {
    let text = std::fs::read_to_string(file).map_err(|source| SourceError::Credential {
        file: file.to_path_buf(),
        source,
    })?;
    Ok(SecretString::from(text.trim().to_string()))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `text` as one POSIX shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn commit_ids() {
        assert!(CommitId::parse(&"A".repeat(40)).is_some_and(|c| c.as_str() == "a".repeat(40)));
        assert!(CommitId::parse(&"a".repeat(64)).is_some());
        assert!(CommitId::parse("abc").is_none());
        assert!(CommitId::parse(&"g".repeat(40)).is_none());
    }
}
