//! `dexscope run` reading its desired state from a git repository made here and served over
//! `file://`, against the simulated tenant: a commit applied, a commit changing two files
//! applied whole, an unsigned head refused with the last state kept, a rewritten history
//! applied, a fetch failure (the repository moved away) removing nothing, and a restart
//! without the repository reading the last applied commit back from the cache.
//!
//! Every change is observed by polling the simulator or the log with generous bounds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimHandle, SimOptions};
use dexscope::state::State;
use secrecy::ExposeSecret;
use tempfile::TempDir;

use super::support::{collect_lines, daemon_command};

/// Long enough for a fetch (every 10 s, the shortest allowed) and a reconcile pass on a
/// loaded machine.
const BOUND: Duration = Duration::from_secs(90);

/// `git` for the test's repository: no user configuration, fixed identities, dates that
/// advance by a minute per call so every commit differs.
struct Repo {
    tmp: TempDir,
    clock: Mutex<i64>,
}

impl Repo {
    fn new() -> Self {
        for (tool, arg) in [("git", "--version"), ("ssh-keygen", "-?")] {
            assert!(
                Command::new(tool).arg(arg).output().is_ok(),
                "`{tool}` is not installed (Debian: apt-get install git openssh-client)"
            );
        }
        let repo = Self {
            tmp: TempDir::new().unwrap(),
            clock: Mutex::new(1_790_000_000),
        };
        std::fs::create_dir_all(repo.work()).unwrap();
        repo.git(
            repo.tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        repo.git(&repo.work(), &["init", "-q", "-b", "main"]);
        let origin = repo.origin();
        repo.git(
            &repo.work(),
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        repo
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn work(&self) -> PathBuf {
        self.dir().join("work")
    }

    fn origin(&self) -> PathBuf {
        self.dir().join("origin.git")
    }

    fn git(&self, dir: &Path, args: &[&str]) -> String {
        let mut clock = self.clock.lock().unwrap();
        *clock += 60;
        let date = format!("{} +0000", *clock);
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", self.dir())
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

    /// Writes `files` under `scope/`, commits (signed with `key` when given), pushes with
    /// force; the commit id.
    fn commit(&self, files: &[(&str, String)], key: Option<&Path>) -> String {
        let work = self.work();
        for (name, text) in files {
            let path = work.join("scope").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        self.git(&work, &["add", "-A"]);
        let signing = key.map(|k| format!("user.signingkey={}", k.display()));
        let mut args = vec!["-c", "gpg.format=ssh"];
        match &signing {
            Some(signing) => args.extend(["-c", signing, "commit", "-q", "-S", "-m", "change"]),
            None => args.extend(["commit", "-q", "-m", "change"]),
        }
        self.git(&work, &args);
        self.git(&work, &["push", "-q", "--force", "origin", "HEAD:main"]);
        self.git(&work, &["rev-parse", "HEAD"])
    }

    /// An ed25519 key pair made here, and an allowed-signers file listing it.
    fn signer(&self) -> (PathBuf, PathBuf) {
        let key = self.dir().join("signer");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen runs");
        assert!(out.status.success(), "{out:?}");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let signers = self.dir().join("allowed_signers");
        std::fs::write(
            &signers,
            format!("owner@example.com namespaces=\"git\" {}\n", public.trim()),
        )
        .unwrap();
        (key, signers)
    }
}

/// `users = [...]` for a desired-state file.
fn users(upns: &[&str]) -> String {
    let quoted: Vec<String> = upns.iter().map(|u| format!("{u:?}")).collect();
    format!("users = [{}]\n", quoted.join(", "))
}

/// Users of the simulated tenant outside the scoped group: (UPN, object id).
fn outsiders(sim: &SimHandle, n: usize) -> Vec<(String, String)> {
    let ids = sim.group_members(&sim.user_group_id());
    let state = sim.state();
    let tenant = state.lock().unwrap();
    tenant
        .directory
        .users
        .iter()
        .flatten()
        .map(|u| (u.upn.to_string(), u.id.to_string()))
        .filter(|(_, id)| !ids.contains(id))
        .take(n)
        .collect()
}

/// A config for the simulated tenant with a `[scope.git]` table (`git` is its body).
fn write_config(sim: &SimHandle, dir: &Path, git: &str) -> PathBuf {
    let head = super::support::sim_config_head(sim);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\n\
             [scope.git]\n{git}\
             [schedule]\nreconcile_every = \"3s\"\npriority_every = \"1h\"\nincidents_every = \"1h\"\n\
             [state]\npath = \"state/state.db\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n",
        ),
    )
    .unwrap();
    config
}

/// A `dexscope run` child whose log (JSON lines) is collected as it comes.
struct Daemon {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(sim: &SimHandle, config: &Path) -> Self {
        let mut child = daemon_command(sim, config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, reader) = collect_lines(child.stderr.take().unwrap());
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until at least `n` log lines contain `needle`.
    async fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + BOUND;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} log lines with {needle:?} within {BOUND:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `more` reconcile passes have finished after the ones seen so far.
    async fn wait_passes(&self, more: usize) {
        let seen = self.count("\"reconcile pass: ");
        self.wait_log("\"reconcile pass: ", seen + more).await;
    }

    /// Waits until each of `ids` is (or is not) a member of the scoped group.
    async fn wait_members(&self, sim: &SimHandle, ids: &[&str], member: bool) {
        let deadline = Instant::now() + BOUND;
        loop {
            let now = sim.group_members(&sim.user_group_id());
            if ids.iter().all(|id| now.iter().any(|m| m == id) == member) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ids:?} not all {} within {BOUND:?}; log:\n{}",
                if member { "added" } else { "removed" },
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The commit recorded in the audit log with the addition of `id`.
fn audit_commit(state: &Path, id: &str) -> Option<String> {
    let state = State::open(state).unwrap();
    state
        .recent_changes(1000)
        .unwrap()
        .into_iter()
        .find(|e| e.object_id == id)
        .and_then(|e| e.commit_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commits_are_applied_whole_an_unsigned_head_is_refused_and_a_rewrite_applied() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let repo = Repo::new();
    let (key, signers) = repo.signer();
    let people = outsiders(&sim, 4);
    let (upn, id): (Vec<&str>, Vec<&str>) =
        people.iter().map(|(u, i)| (u.as_str(), i.as_str())).unzip();
    let first = repo.commit(&[("a.toml", users(&upn[..1]))], Some(&key));
    let config = write_config(
        &sim,
        repo.dir(),
        &format!(
            "url = \"file://{}\"\nbranch = \"main\"\npath = \"scope/\"\nfetch_every = \"10s\"\n\
             verify = \"ssh\"\nallowed_signers = {:?}\n",
            repo.origin().display(),
            signers.display().to_string()
        ),
    );
    let daemon = Daemon::start(&sim, &config);
    let state = repo.dir().join("state/state.db");

    // A signed commit is applied, with its id recorded beside the change.
    daemon.wait_members(&sim, &id[..1], true).await;
    assert_eq!(audit_commit(&state, id[0]).as_deref(), Some(first.as_str()));

    // One commit changing two files: both changes come from that commit.
    let second = repo.commit(
        &[("a.toml", users(&upn[..2])), ("b.toml", users(&upn[2..3]))],
        Some(&key),
    );
    daemon.wait_members(&sim, &id[..3], true).await;
    assert_eq!(
        audit_commit(&state, id[1]).as_deref(),
        Some(second.as_str())
    );
    assert_eq!(
        audit_commit(&state, id[2]).as_deref(),
        Some(second.as_str())
    );

    // An unsigned head that would remove two people is refused: the alert names the commit,
    // the passes that follow keep everyone.
    let unsigned = repo.commit(
        &[("a.toml", users(&upn[..1])), ("b.toml", users(&upn[..1]))],
        None,
    );
    daemon.wait_log("unverified_desired_state", 1).await;
    assert!(
        daemon.count(&format!("head commit {unsigned}")) >= 1,
        "{}",
        daemon.text()
    );
    daemon.wait_passes(2).await;
    daemon.wait_members(&sim, &id[..3], true).await;

    // A rewritten history with a signed head: applied (removals included) and reported.
    repo.git(&repo.work(), &["reset", "-q", "--hard", &first]);
    let rewritten = repo.commit(&[("a.toml", users(&[upn[0], upn[3]]))], Some(&key));
    daemon.wait_members(&sim, &[id[0], id[3]], true).await;
    daemon.wait_members(&sim, &id[1..3], false).await;
    assert!(
        daemon.count("history was rewritten") >= 1,
        "{}",
        daemon.text()
    );
    assert_eq!(
        audit_commit(&state, id[3]).as_deref(),
        Some(rewritten.as_str())
    );
    daemon.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_failure_removes_nothing_and_a_restart_reads_the_cache() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let repo = Repo::new();
    let people = outsiders(&sim, 2);
    let (upn, id): (Vec<&str>, Vec<&str>) =
        people.iter().map(|(u, i)| (u.as_str(), i.as_str())).unzip();
    let applied = repo.commit(&[("scope.toml", users(&upn))], None);
    let config = write_config(
        &sim,
        repo.dir(),
        &format!(
            "url = \"file://{}\"\nbranch = \"main\"\npath = \"scope/scope.toml\"\n\
             fetch_every = \"10s\"\nstale_after = \"10s\"\nverify = \"none\"\n",
            repo.origin().display()
        ),
    );
    let daemon = Daemon::start(&sim, &config);
    daemon.wait_members(&sim, &id, true).await;

    // The repository goes away: fetches fail, the state stays, and after stale_after the
    // staleness alert fires; no pass removes anyone.
    std::fs::rename(repo.origin(), repo.dir().join("moved.git")).unwrap();
    daemon.wait_log("cannot fetch the desired state", 1).await;
    daemon.wait_log("desired_state_stale", 1).await;
    daemon.wait_passes(2).await;
    daemon.wait_members(&sim, &id, true).await;
    daemon.stop();

    // A restart without the repository reads the last applied commit back from the cache and
    // goes on applying it.
    let before = sim.group_members(&sim.user_group_id());
    let daemon = Daemon::start(&sim, &config);
    daemon.wait_log("read back from the git cache", 1).await;
    daemon.wait_passes(2).await;
    assert_eq!(
        daemon.count("no valid desired state"),
        0,
        "{}",
        daemon.text()
    );
    assert_eq!(sim.group_members(&sim.user_group_id()), before);
    daemon.stop();

    // `status` shows the source: the applied commit and the failing fetch.
    let out = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(&config)
        .arg("status")
        .env_remove("DEXSCOPE_CONFIG")
        .env(
            "DEXSCOPE_CLIENT_SECRET",
            sim.client_secret().expose_secret(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("applied:        {applied}")),
        "{text}"
    );
    assert!(
        text.contains("fetch error:    cannot fetch branch main"),
        "{text}"
    );
    assert!(text.contains("alert desired_state_stale firing"), "{text}");

    // `check` reads the applied commit from the cache: the desired state is not unreadable.
    let out = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env_remove("DEXSCOPE_CONFIG")
        .env(
            "DEXSCOPE_CLIENT_SECRET",
            sim.client_secret().expose_secret(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("CRITICAL"), "{text}");
    // (`users_desired=` in the perfdata is a figure, not a complaint about the desired state.)
    assert!(!text.contains("desired state"), "{text}");
    sim.shutdown().await;
}

/// `dexscope validate` with the given arguments: (exit code, stdout, stderr).
fn validate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .arg("validate")
        .args(args)
        .env_remove("DEXSCOPE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_reads_a_git_source_without_a_config() {
    let repo = Repo::new();
    let (key, signers) = repo.signer();
    repo.commit(&[("a.toml", users(&["ann@contoso.com"]))], Some(&key));
    let spec = format!("file://{}#main:scope/", repo.origin().display());
    let signers = signers.display().to_string();

    let (code, out, err) = validate(&["--git", &spec, "--allowed-signers", &signers]);
    assert_eq!(code, Some(0), "{out}{err}");

    let unsigned = repo.commit(&[("b.toml", "users = [\"not an upn\"]\n".into())], None);
    let (code, out, err) = validate(&["--git", &spec]);
    assert_eq!(code, Some(1), "an invalid tree fails: {out}{err}");
    assert!(out.contains("scope/b.toml"), "{out}");
    let (code, out, err) = validate(&["--git", &spec, "--allowed-signers", &signers]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "head commit {unsigned} refused: the commit is not signed"
        )),
        "{err}"
    );
    let (code, _, err) = validate(&[
        "--git",
        "file:///nowhere.git",
        "--allowed-signers",
        &signers,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("names no branch"), "{err}");
}
