//! The git source's settings (`[scope.git]`, [`GitSource`]), checked when they are built: what
//! can be wrong with a URL, a branch or a path is found at load time, not at the first fetch.
//! They live in the config so that a bad source fails loading (exit 78); the fetching is
//! `desired::source`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::credentials::SecretLookup;
use super::reader::{Reader, Sk};
use super::{ConfigError, Origin, ScopeGit};

/// How many `fetch_every` periods fetches may fail before `desired_state_stale` fires by
/// default. One failed fetch is routine (a forge restart, a network blip) and two can be bad
/// luck; three in a row mean the state is no longer following the branch. A multiple, not a
/// fixed time, so the alert comes as fast relative to how often the operator chose to look.
pub const STALE_AFTER_FETCHES: u32 = 3;

/// The shortest `fetch_every`: a git host is not polled more often than this.
pub const MIN_FETCH_EVERY: Duration = Duration::from_secs(10);

/// `fetch_every` when the settings leave it out.
pub const DEFAULT_FETCH_EVERY: Duration = Duration::from_secs(60);

/// Whether the head commit must carry a signature from an allowed signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Any head is applied (the transport's own authentication is the only check).
    None,
    /// The head must carry a valid SSH signature (`gpg.format = ssh`) by a key listed in
    /// `allowed_signers`.
    Ssh,
}

/// The settings as written (`[scope.git]`), before they are checked. Durations are text such as
/// `90s`, `1m`, `2h`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceSettings {
    pub url: String,
    pub branch: String,
    /// A `.toml` file, or a directory whose `*.toml` files are read; `""` or `.` is the
    /// repository's root.
    pub path: String,
    pub fetch_every: Option<String>,
    /// A token file for `https://`, an SSH private key file for `ssh://`; none for `file://`.
    pub credential_file: Option<PathBuf>,
    pub verify: Verify,
    /// The `ssh-keygen -Y verify` allowed-signers file; required with `verify = "ssh"`.
    pub allowed_signers: Option<PathBuf>,
    /// An `ssh://` source's known-hosts file. Without it the host key is trusted on first use
    /// and pinned in the cache directory.
    pub known_hosts: Option<PathBuf>,
}

/// Where the desired state is read from in git: checked settings. Built by
/// [`GitSource::new`] or deserialised (which runs the same checks).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "GitSourceSettings")]
pub struct GitSource {
    url: Url,
    branch: String,
    path: String,
    fetch_every: Duration,
    credential_file: Option<PathBuf>,
    verify: Verify,
    allowed_signers: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

/// A git source setting that cannot be used, and why. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("git source `{field}` {problem}")]
pub struct InvalidGitSource {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidGitSource {
    InvalidGitSource {
        field,
        problem: problem.into(),
    }
}

impl TryFrom<GitSourceSettings> for GitSource {
    type Error = InvalidGitSource;

    fn try_from(settings: GitSourceSettings) -> Result<Self, Self::Error> {
        Self::new(settings)
    }
}

impl GitSource {
    /// Checks `settings`: the URL is `https://`, `ssh://` or `file://` with no password in it;
    /// the branch is a plain branch name; the path stays inside the repository; the
    /// credential fits the scheme; `verify = "ssh"` comes with `allowed_signers`.
    pub fn new(settings: GitSourceSettings) -> Result<Self, InvalidGitSource> {
        let url = check_url(&settings.url)?;
        check_branch(&settings.branch)?;
        let path = check_path(&settings.path)?;
        let fetch_every = match settings.fetch_every.as_deref() {
            None => DEFAULT_FETCH_EVERY,
            Some(text) => super::reader::parse_duration(text)
                .ok_or_else(|| invalid("fetch_every", "is not a duration such as 90s, 1m, 2h"))?,
        };
        if fetch_every < MIN_FETCH_EVERY {
            return Err(invalid(
                "fetch_every",
                format!("is shorter than {}s", MIN_FETCH_EVERY.as_secs()),
            ));
        }
        if settings.credential_file.is_some() && url.scheme() == "file" {
            return Err(invalid(
                "credential_file",
                "is set for a file:// url, which takes no credential",
            ));
        }
        if settings.known_hosts.is_some() && url.scheme() != "ssh" {
            return Err(invalid("known_hosts", "is only used with an ssh:// url"));
        }
        match (settings.verify, &settings.allowed_signers) {
            (Verify::Ssh, None) => {
                return Err(invalid(
                    "allowed_signers",
                    "is required with verify = \"ssh\": name the allowed-signers file",
                ));
            }
            (Verify::None, Some(_)) => {
                return Err(invalid(
                    "allowed_signers",
                    "is set but verify = \"none\": set verify = \"ssh\" or remove it",
                ));
            }
            _ => {}
        }
        Ok(Self {
            url,
            branch: settings.branch,
            path,
            fetch_every,
            credential_file: settings.credential_file,
            verify: settings.verify,
            allowed_signers: settings.allowed_signers,
            known_hosts: settings.known_hosts,
        })
    }

    /// The repository URL; it never holds a password.
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The path inside the repository, without leading `./` or trailing `/`; `""` is the root.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn fetch_every(&self) -> Duration {
        self.fetch_every
    }

    pub fn credential_file(&self) -> Option<&Path> {
        self.credential_file.as_deref()
    }

    pub fn verify(&self) -> Verify {
        self.verify
    }

    pub fn allowed_signers(&self) -> Option<&Path> {
        self.allowed_signers.as_deref()
    }

    pub fn known_hosts(&self) -> Option<&Path> {
        self.known_hosts.as_deref()
    }

    /// The same source with its credential and trust files resolved by `resolve` (the config
    /// looks them up in `$CREDENTIALS_DIRECTORY` or beside the config file).
    pub fn with_files(mut self, resolve: impl Fn(&Path) -> PathBuf) -> Self {
        for file in [
            &mut self.credential_file,
            &mut self.allowed_signers,
            &mut self.known_hosts,
        ]
        .into_iter()
        .flatten()
        {
            *file = resolve(file);
        }
        self
    }
}

fn check_url(text: &str) -> Result<Url, InvalidGitSource> {
    if text.chars().any(char::is_control) {
        return Err(invalid("url", "contains a control character"));
    }
    // The parse error may quote the text, which could hold a password: say only that it failed.
    let url = Url::parse(text).map_err(|_| invalid("url", "is not a URL"))?;
    if url.password().is_some() {
        return Err(invalid(
            "url",
            "holds a password: put the token in credential_file instead",
        ));
    }
    match url.scheme() {
        "https" | "ssh" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid("url", "has no host"));
            }
        }
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(invalid("url", "names a host for file://"));
            }
        }
        _ => {
            return Err(invalid(
                "url",
                "must start with https://, ssh:// or file://",
            ));
        }
    }
    if url.fragment().is_some() || url.query().is_some() {
        return Err(invalid(
            "url",
            "has a query or fragment: give branch and path apart",
        ));
    }
    Ok(url)
}

/// A branch name git accepts (`git check-ref-format --branch` rules, checked here without a
/// process) that cannot climb out of `refs/heads/` or be read as an option.
fn check_branch(branch: &str) -> Result<(), InvalidGitSource> {
    let problem = if branch.is_empty() {
        Some("is empty")
    } else if branch.chars().any(|c| c.is_control() || c == ' ') {
        Some("contains a control character or a space")
    } else if branch.contains("..") {
        Some("contains ..")
    } else if branch
        .chars()
        .any(|c| matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        || branch.contains("@{")
    {
        Some("contains a character git does not allow in a branch name")
    } else if branch.starts_with(['-', '/', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("//")
        || branch.contains("/.")
        || branch == "@"
    {
        Some("is not a valid branch name")
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(invalid("branch", p)))
}

/// The path with `./` and trailing `/` removed; every part a plain name.
fn check_path(path: &str) -> Result<String, InvalidGitSource> {
    if path.chars().any(char::is_control) {
        return Err(invalid("path", "contains a control character"));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "path",
            "is absolute: give it relative to the repository root",
        ));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(invalid("path", "contains .."));
    }
    if parts.iter().any(|part| part.eq_ignore_ascii_case(".git")) {
        return Err(invalid("path", "names a .git directory"));
    }
    Ok(parts.join("/"))
}

/// `[scope.git]`, when the config has it: the source checked by [`GitSource::new`] (each
/// problem reported against its key), its files looked up like the client secret, and
/// `stale_after`. Refuses `[scope] desired_state` set beside it: exactly one source is read.
pub(super) fn read_scope_git(
    r: &Reader,
    lookup: &SecretLookup,
) -> Result<Option<ScopeGit>, ConfigError> {
    let key = |k: &'static str| -> Sk { ("scope.git", k) };
    let present = super::known_keys()
        .filter(|(section, _)| *section == "scope.git")
        .any(|(_, k)| r.get(key(k)).is_some());
    if !present {
        return Ok(None);
    }
    let desired = ("scope", "desired_state");
    if r.origin(desired) != Origin::Default {
        return Err(r.invalid(
            desired,
            "is set together with [scope.git]".into(),
            "keep one: desired_state for files on this host, [scope.git] to fetch them from git",
        ));
    }
    let verify_text = r.req_str(key("verify"), "set verify = \"ssh\" (or \"none\")")?;
    let verify = match verify_text.trim() {
        "none" => Verify::None,
        "ssh" => Verify::Ssh,
        _ => {
            return Err(r.invalid(
                key("verify"),
                format!("{} is not a verification mode", r.quote(&verify_text)),
                "write ssh (signed heads only) or none",
            ));
        }
    };
    let file = |k: &'static str| -> Result<Option<PathBuf>, ConfigError> {
        Ok(r.opt_str(key(k))?.map(|name| lookup.find(&name)))
    };
    let settings = GitSourceSettings {
        url: r.req_str(
            key("url"),
            "set the repository URL (https://, ssh:// or file://)",
        )?,
        branch: r.req_str(key("branch"), "set the branch to follow, like main")?,
        path: r.req_str(
            key("path"),
            "set the desired-state file or directory inside the repository (\".\" for its root)",
        )?,
        fetch_every: r.opt_str(key("fetch_every"))?,
        credential_file: file("credential_file")?,
        verify,
        allowed_signers: file("allowed_signers")?,
        known_hosts: file("known_hosts")?,
    };
    let source = GitSource::new(settings).map_err(|e| {
        r.invalid(
            key(e.field),
            e.problem,
            "fix it (the README's GitOps section shows a [scope.git] example)",
        )
    })?;
    let stale_after = match r.get(key("stale_after")) {
        None => source.fetch_every() * STALE_AFTER_FETCHES,
        Some(_) => r.duration(key("stale_after"), source.fetch_every())?,
    };
    Ok(Some(ScopeGit {
        source,
        stale_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, branch: &str, path: &str) -> GitSourceSettings {
        GitSourceSettings {
            url: url.into(),
            branch: branch.into(),
            path: path.into(),
            fetch_every: None,
            credential_file: None,
            verify: Verify::None,
            allowed_signers: None,
            known_hosts: None,
        }
    }

    fn check(url: &str, branch: &str, path: &str, expected: Result<&str, &str>) {
        let got = GitSource::new(settings(url, branch, path))
            .map(|s| s.path().to_string())
            .map_err(|e| e.to_string());
        assert_eq!(
            got.as_deref().map_err(String::as_str),
            expected,
            "{url} {branch} {path}"
        );
    }

    #[test]
    fn settings_are_checked() {
        let ok = "https://git.example.com/secops/scope.git";
        check(ok, "main", "scoped-coverage/", Ok("scoped-coverage"));
        check(ok, "release/2026", "./a/./b.toml", Ok("a/b.toml"));
        check(ok, "main", "", Ok(""));
        check("ssh://git@git.example.com/scope.git", "main", ".", Ok(""));
        check("file:///srv/scope.git", "main", "x.toml", Ok("x.toml"));
        check(
            "https://user:hunter2@git.example.com/x.git",
            "main",
            "",
            Err("git source `url` holds a password: put the token in credential_file instead"),
        );
        check(
            "http://git.example.com/x.git",
            "main",
            "",
            Err("git source `url` must start with https://, ssh:// or file://"),
        );
        check(
            "https://h/x.git#main",
            "main",
            "",
            Err("git source `url` has a query or fragment: give branch and path apart"),
        );
        check(ok, "a..b", "", Err("git source `branch` contains .."));
        check(
            ok,
            "-x",
            "",
            Err("git source `branch` is not a valid branch name"),
        );
        check(
            ok,
            "a\nb",
            "",
            Err("git source `branch` contains a control character or a space"),
        );
        check(
            ok,
            "main",
            "a/../../etc",
            Err("git source `path` contains .."),
        );
        check(
            ok,
            "main",
            "/etc",
            Err("git source `path` is absolute: give it relative to the repository root"),
        );
        check(
            ok,
            "main",
            "a\u{7}",
            Err("git source `path` contains a control character"),
        );
    }

    #[test]
    fn deserialises_with_checks_and_durations() {
        let source: GitSource = toml::from_str(
            "url = \"file:///srv/x.git\"\nbranch = \"main\"\npath = \"d/\"\nfetch_every = \"2m\"\n\
             verify = \"ssh\"\nallowed_signers = \"allowed\"\n",
        )
        .unwrap();
        assert_eq!(source.fetch_every(), Duration::from_secs(120));
        assert_eq!(source.verify(), Verify::Ssh);
        let unknown = toml::from_str::<GitSource>(
            "url = \"file:///x\"\nbranch = \"main\"\npath = \"\"\nverify = \"none\"\nbogus = 1\n",
        );
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `bogus`")
        );
        let unsigned = toml::from_str::<GitSource>(
            "url = \"file:///x\"\nbranch = \"main\"\npath = \"\"\nverify = \"ssh\"\n",
        );
        assert!(
            unsigned
                .unwrap_err()
                .to_string()
                .contains("allowed_signers")
        );
    }
}
