//! The desired state read from git: real repositories made here and fetched over `file://`,
//! SSH commit signatures made with keys generated here, a force push, a failed fetch, and a
//! token that must never show.

use std::collections::HashMap;
use std::error::Error;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use dexscope::desired::source::{
    CommitId, Fetched, GitCache, GitSource, GitSourceSettings, SourceError, Verify,
};
use dexscope::desired::{self, Mode};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Fails (never skips) when the tools the git source needs are missing.
fn require_tools() {
    for (tool, arg) in [("git", "--version"), ("ssh-keygen", "-?")] {
        let found = Command::new(tool).arg(arg).output().is_ok();
        assert!(
            found,
            "`{tool}` is not installed: the git source tests need git and ssh-keygen \
             (Debian: apt-get install git openssh-client)"
        );
    }
}

/// `git` for the test's own repositories: no user configuration, fixed identities, dates that
/// advance by a minute per call so every commit differs.
struct Git {
    home: PathBuf,
    clock: Mutex<i64>,
}

impl Git {
    fn run(&self, dir: &Path, args: &[&str]) -> String {
        let mut clock = self.clock.lock().unwrap();
        *clock += 60;
        let date = format!("{} +0000", *clock);
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", &self.home)
            .env("GIT_AUTHOR_NAME", "Scope Owner")
            .env("GIT_AUTHOR_EMAIL", "owner@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "Scope Owner")
            .env("GIT_COMMITTER_EMAIL", "owner@example.com")
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// An upstream bare repository (`origin.git`, served over `file://`) and a clone the test
/// commits in and pushes from.
struct Fixture {
    tmp: TempDir,
    git: Git,
    work: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        require_tools();
        let tmp = TempDir::new().unwrap();
        let git = Git {
            home: tmp.path().to_path_buf(),
            clock: Mutex::new(1_790_000_000),
        };
        let origin = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git.run(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git.run(&work, &["init", "-q", "-b", "main"]);
        git.run(
            &work,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        Self { tmp, git, work }
    }

    fn url(&self) -> String {
        format!("file://{}", self.tmp.path().join("origin.git").display())
    }

    /// Writes `files`, commits them (signed with `key` when given) and pushes; the commit id.
    fn commit(&self, files: &[(&str, &str)], key: Option<&Path>) -> CommitId {
        for (name, text) in files {
            let path = self.work.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        self.git.run(&self.work, &["add", "-A"]);
        let mut args = vec!["-c", "gpg.format=ssh"];
        let signing = key.map(|k| format!("user.signingkey={}", k.display()));
        if let Some(signing) = &signing {
            args.extend(["-c", signing, "commit", "-q", "-S", "-m", "change"]);
        } else {
            args.extend(["commit", "-q", "-m", "change"]);
        }
        self.git.run(&self.work, &args);
        self.git.run(
            &self.work,
            &["push", "-q", "--force", "origin", "HEAD:main"],
        );
        CommitId::parse(&self.git.run(&self.work, &["rev-parse", "HEAD"])).unwrap()
    }

    /// Generates an ed25519 key pair; the private key's path.
    fn key(&self, name: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// An allowed-signers file listing the public halves of `keys`.
    fn allowed_signers(&self, keys: &[&Path]) -> PathBuf {
        let lines: Vec<String> = keys
            .iter()
            .map(|k| {
                let public = std::fs::read_to_string(k.with_extension("pub")).unwrap();
                format!("owner@example.com namespaces=\"git\" {}", public.trim())
            })
            .collect();
        let path = self.tmp.path().join("allowed_signers");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    fn cache(&self, url: &str, path: &str, signers: Option<PathBuf>) -> GitCache {
        let source = GitSource::new(settings(url, path, signers, None)).unwrap();
        GitCache::open(source, &self.tmp.path().join("cache"), TIMEOUT).unwrap()
    }
}

fn settings(
    url: &str,
    path: &str,
    signers: Option<PathBuf>,
    credential: Option<PathBuf>,
) -> GitSourceSettings {
    GitSourceSettings {
        url: url.into(),
        branch: "main".into(),
        path: path.into(),
        fetch_every: Some("1m".into()),
        credential_file: credential,
        verify: if signers.is_some() {
            Verify::Ssh
        } else {
            Verify::None
        },
        allowed_signers: signers,
        known_hosts: None,
    }
}

/// The error and every source below it, one per line.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!("\n{s}");
        source = s.source();
    }
    text
}

fn new_files(fetched: Fetched) -> (CommitId, Vec<(String, String)>, bool) {
    match fetched {
        Fetched::New {
            commit,
            files,
            rewritten,
        } => {
            let files = files
                .into_iter()
                .map(|(p, t)| (p.display().to_string(), t))
                .collect();
            (commit, files, rewritten)
        }
        other => panic!("expected a new commit, got {other:?}"),
    }
}

fn pair(a: &str, b: &str) -> Vec<(String, String)> {
    vec![
        ("scope/a.toml".to_string(), a.to_string()),
        ("scope/b.toml".to_string(), b.to_string()),
    ]
}

#[test]
fn a_commit_is_read_from_its_tree_and_parses() {
    let fx = Fixture::new();
    let text = "users = [\"alice@contoso.com\"]\n";
    let c1 = fx.commit(&[("scope.toml", text), ("README.md", "not state")], None);
    let cache = fx.cache(&fx.url(), "scope.toml", None);

    let (commit, files, rewritten) = new_files(cache.fetch(None).unwrap());
    assert_eq!((&commit, rewritten), (&c1, false));
    assert_eq!(files, vec![("scope.toml".to_string(), text.to_string())]);
    let named: Vec<(&Path, &str)> = files
        .iter()
        .map(|(p, t)| (Path::new(p.as_str()), t.as_str()))
        .collect();
    let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
    let loaded = desired::parse_files(&named, today, Mode::Strict)
        .into_result()
        .unwrap();
    assert_eq!(loaded.state.users.len(), 1);

    assert_eq!(
        cache.fetch(Some(&c1)).unwrap(),
        Fetched::Unchanged { commit: c1 }
    );
}

#[test]
fn a_change_to_two_files_is_read_whole() {
    let fx = Fixture::new();
    let c1 = fx.commit(
        &[("scope/a.toml", "# 1\n"), ("scope/b.toml", "# 1\n")],
        None,
    );
    let cache = fx.cache(&fx.url(), "scope/", None);
    let (commit, files, _) = new_files(cache.fetch(None).unwrap());
    assert_eq!((commit, files), (c1.clone(), pair("# 1\n", "# 1\n")));

    let c2 = fx.commit(
        &[("scope/a.toml", "# 2\n"), ("scope/b.toml", "# 2\n")],
        None,
    );
    let (commit, files, rewritten) = new_files(cache.fetch(Some(&c1)).unwrap());
    assert_eq!(
        (commit, files, rewritten),
        (c2, pair("# 2\n", "# 2\n"), false)
    );
    // The earlier commit still names its own files, not the later ones.
    assert_eq!(cache.read(&c1).unwrap().len(), 2);
    assert_eq!(cache.read(&c1).unwrap()[1].1, "# 1\n");

    // Commits land while fetches run: every fetch sees one commit's files, whole.
    let fx = Arc::new(fx);
    let made: Arc<Mutex<HashMap<CommitId, String>>> = Arc::default();
    let writer = {
        let (fx, made) = (fx.clone(), made.clone());
        std::thread::spawn(move || {
            for generation in 3..13 {
                let text = format!("# {generation}\n");
                let id = fx.commit(&[("scope/a.toml", &text), ("scope/b.toml", &text)], None);
                made.lock().unwrap().insert(id, text);
            }
        })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        let (commit, files, _) = new_files(cache.fetch(None).unwrap());
        seen.push((commit, files));
    }
    writer.join().unwrap();
    let (commit, files, _) = new_files(cache.fetch(None).unwrap());
    seen.push((commit, files));
    let made = made.lock().unwrap();
    for (commit, files) in &seen {
        let expected = made.get(commit).cloned().unwrap_or_else(|| "# 2\n".into());
        assert_eq!(files, &pair(&expected, &expected), "files of {commit}");
    }
    assert_eq!(seen.last().unwrap().1, pair("# 12\n", "# 12\n"));
}

#[test]
fn an_unsigned_head_is_refused_and_names_the_commit() {
    let fx = Fixture::new();
    let key = fx.key("owner");
    let signers = fx.allowed_signers(&[&key]);
    let c1 = fx.commit(&[("scope.toml", "# signed\n")], Some(&key));
    let cache = fx.cache(&fx.url(), "scope.toml", Some(signers));
    let (commit, _, _) = new_files(cache.fetch(None).unwrap());
    assert_eq!(commit, c1);

    let c2 = fx.commit(&[("scope.toml", "# unsigned\n")], None);
    let err = cache.fetch(Some(&c1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("head commit {c2} refused: the commit is not signed")
    );
    // The last verified state stays readable.
    assert_eq!(cache.read(&c1).unwrap()[0].1, "# signed\n");
}

#[test]
fn a_head_signed_by_an_unlisted_key_is_refused() {
    let fx = Fixture::new();
    let owner = fx.key("owner");
    let stranger = fx.key("stranger");
    let signers = fx.allowed_signers(&[&owner]);
    let c1 = fx.commit(&[("scope.toml", "# stranger\n")], Some(&stranger));
    let cache = fx.cache(&fx.url(), "scope.toml", Some(signers));
    let err = cache.fetch(None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "head commit {c1} refused: the commit is signed by key SHA256:"
        )),
        "{text}"
    );
    assert!(
        text.ends_with("which allowed_signers does not list"),
        "{text}"
    );
    assert!(matches!(err, SourceError::Unverified { .. }));
}

#[test]
fn a_signed_head_is_accepted() {
    let fx = Fixture::new();
    let owner = fx.key("owner");
    let other = fx.key("other");
    let signers = fx.allowed_signers(&[&other, &owner]);
    let c1 = fx.commit(&[("scope.toml", "# one\n")], None);
    let c2 = fx.commit(&[("scope.toml", "# two\n")], Some(&owner));
    let cache = fx.cache(&fx.url(), "scope.toml", Some(signers));
    // The unsigned commit below the signed head does not matter: only the head is verified.
    let (commit, files, rewritten) = new_files(cache.fetch(Some(&c1)).unwrap());
    assert_eq!((commit, rewritten), (c2.clone(), false));
    assert_eq!(files[0].1, "# two\n");
    assert_eq!(
        cache.fetch(Some(&c2)).unwrap(),
        Fetched::Unchanged { commit: c2 }
    );
}

#[test]
fn a_force_push_is_applied_and_reported_as_rewritten() {
    let fx = Fixture::new();
    let c1 = fx.commit(&[("scope.toml", "# 1\n")], None);
    let c2 = fx.commit(&[("scope.toml", "# 2\n")], None);
    let cache = fx.cache(&fx.url(), "scope.toml", None);
    let (commit, _, rewritten) = new_files(cache.fetch(Some(&c1)).unwrap());
    assert_eq!((commit, rewritten), (c2.clone(), false), "a fast-forward");

    fx.git
        .run(&fx.work, &["reset", "-q", "--hard", c1.as_str()]);
    let c3 = fx.commit(&[("scope.toml", "# 3\n")], None);
    let (commit, files, rewritten) = new_files(cache.fetch(Some(&c2)).unwrap());
    assert_eq!((commit, rewritten), (c3.clone(), true));
    assert_eq!(files[0].1, "# 3\n");

    // A rollback to an older commit is a rewrite too.
    fx.git
        .run(&fx.work, &["reset", "-q", "--hard", c1.as_str()]);
    fx.git
        .run(&fx.work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    let (commit, _, rewritten) = new_files(cache.fetch(Some(&c3)).unwrap());
    assert_eq!((commit, rewritten), (c1, true));
    // The commit replaced by the force push is still readable.
    assert_eq!(cache.read(&c2).unwrap()[0].1, "# 2\n");
}

#[test]
fn a_failed_fetch_names_the_url_and_keeps_the_last_commit() {
    let fx = Fixture::new();
    let c1 = fx.commit(&[("scope.toml", "# kept\n")], None);
    fx.cache(&fx.url(), "scope.toml", None).fetch(None).unwrap();

    let missing = format!("file://{}", fx.tmp.path().join("gone.git").display());
    let cache = fx.cache(&missing, "scope.toml", None);
    let err = cache.fetch(Some(&c1)).unwrap_err();
    assert!(matches!(err, SourceError::Fetch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot fetch branch main from {missing}")
    );
    assert!(
        chain(&err).contains("does not appear to be a git repository"),
        "{}",
        chain(&err)
    );
    assert_eq!(cache.cached_head().unwrap(), Some(c1.clone()));
    assert_eq!(cache.read(&c1).unwrap()[0].1, "# kept\n");
}

/// The command lines and environments of this user's processes whose command line mentions
/// git, read from `/proc`.
fn git_processes() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let read = |name: &str| {
            std::fs::read(entry.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmdline = read("cmdline");
        if cmdline.contains("git") {
            found.push((cmdline, read("environ")));
        }
    }
    found
}

#[test]
fn a_token_never_appears_in_errors_or_arguments() {
    let fx = Fixture::new();
    let token = "tok-5f1c0a7e9b2d4c68";
    let token_file = fx.tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // A loopback listener that accepts and says nothing: git waits in the TLS handshake until
    // the timeout stops it, long enough to look at its process.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/scope.git",
        listener.local_addr().unwrap().port()
    );
    let source = GitSource::new(settings(&url, "scope.toml", None, Some(token_file))).unwrap();
    let cache =
        GitCache::open(source, &fx.tmp.path().join("cache"), Duration::from_secs(5)).unwrap();
    let fetch = std::thread::spawn(move || cache.fetch(None));

    let (mut conn, _) = listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let processes = git_processes();
    assert!(
        processes
            .iter()
            .any(|(_, env)| env.contains("Authorization: Basic")),
        "the credential header is handed to git through its environment: {processes:#?}"
    );
    for (cmdline, _) in &processes {
        assert!(!cmdline.contains(token), "token in arguments: {cmdline}");
        assert!(
            !cmdline.contains("Authorization"),
            "header in arguments: {cmdline}"
        );
    }
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink);

    let err = fetch.join().unwrap().unwrap_err();
    let text = chain(&err);
    assert!(
        text.starts_with(&format!("cannot fetch branch main from {url}\n")),
        "{text}"
    );
    assert!(!text.contains(token), "{text}");
    assert!(!text.contains("Basic"), "{text}");
    assert!(!format!("{err:?}").contains(token));
}

#[test]
fn ssh_runs_with_the_key_file_and_a_missing_key_is_named() {
    let fx = Fixture::new();
    // Port 1 on loopback refuses connections: ssh must start (through git's `sh -c`, with the
    // quoted key path holding a space) and report that, not a shell or option error.
    let url = "ssh://git@127.0.0.1:1/scope.git";
    let key = fx.key("deploy key");
    let source = GitSource::new(settings(url, "scope.toml", None, Some(key))).unwrap();
    let cache = GitCache::open(source, &fx.tmp.path().join("cache"), TIMEOUT).unwrap();
    let err = cache.fetch(None).unwrap_err();
    let text = chain(&err);
    assert!(
        text.starts_with(&format!("cannot fetch branch main from {url}\n")),
        "{text}"
    );
    assert!(text.contains("port 1: Connection refused"), "{text}");

    let missing = fx.tmp.path().join("no-such-key");
    let source = GitSource::new(settings(url, "scope.toml", None, Some(missing.clone()))).unwrap();
    let cache = GitCache::open(source, &fx.tmp.path().join("cache"), TIMEOUT).unwrap();
    let err = cache.fetch(None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot read the git credential file {}", missing.display())
    );
}
