//! Runs the system `git` with a clean, fixed environment, a deadline, capped output and secrets
//! scrubbed from anything it prints.
//!
//! The environment is cleared and rebuilt: no system or user configuration is read
//! (`GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`), no prompt can block
//! (`GIT_TERMINAL_PROMPT=0`, and no askpass or agent variable survives the clear), only the
//! source's own transport is allowed (`GIT_ALLOW_PROTOCOL`), and settings are passed as
//! `GIT_CONFIG_COUNT` / `GIT_CONFIG_KEY_<n>` / `GIT_CONFIG_VALUE_<n>` so that nothing secret is
//! ever an argument (arguments are readable by every user through `/proc/<pid>/cmdline`; the
//! environment only by the process owner). The process never goes through a shell: arguments
//! are passed as a vector.
//!
//! git runs in its own process group, and the whole group (git and its transport helpers:
//! `git-remote-https`, `ssh`, `ssh-keygen`) is killed when the deadline passes.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

/// How much of git's standard error is kept for an error message.
const STDERR_CAP: usize = 16 * 1024;

/// What replaces a secret found in git's output.
const REDACTED: &str = "[redacted]";

/// Why one git call failed. Its text names no secret: standard error is scrubbed of every
/// secret the call was given before it is kept.
#[derive(Debug, thiserror::Error)]
pub enum GitFailure {
    #[error("cannot start git: {0}; install git (Debian: apt-get install git openssh-client)")]
    Spawn(#[source] std::io::Error),
    #[error("git did not finish within {}s and was stopped", .0.as_secs())]
    Timeout(Duration),
    #[error("git output is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("git failed ({status}): {stderr}")]
    Exit { status: String, stderr: String },
    #[error("cannot read git output: {0}")]
    Io(#[source] std::io::Error),
}

impl GitFailure {
    /// git's own words (scrubbed), for callers that tell failures apart by them.
    pub fn stderr(&self) -> &str {
        match self {
            GitFailure::Exit { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// One git invocation's fixed surroundings: the repository, the deadline, the settings passed
/// through the environment and the secrets to scrub from its output.
#[derive(Clone)]
pub struct Git {
    git_dir: OsString,
    timeout: Duration,
    env: Vec<(OsString, OsString)>,
    config: Vec<(String, SecretString)>,
    secrets: Vec<SecretString>,
}

impl Git {
    /// A git for the bare repository `git_dir`, allowing only `protocol` (`https`, `ssh` or
    /// `file`) as a transport.
    pub fn new(git_dir: &Path, protocol: &str, timeout: Duration) -> Self {
        let mut git = Self {
            git_dir: git_dir.as_os_str().to_owned(),
            timeout,
            env: Vec::new(),
            config: Vec::new(),
            secrets: Vec::new(),
        };
        git.env("GIT_ALLOW_PROTOCOL", protocol);
        for (key, value) in BASE_CONFIG {
            git.config(key, value);
        }
        git
    }

    /// Adds one environment variable (never a secret: see [`Git::secret_config`]).
    pub fn env(&mut self, key: &str, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds one git setting, passed through the environment.
    pub fn config(&mut self, key: &str, value: &str) -> &mut Self {
        self.config
            .push((key.to_string(), SecretString::from(value.to_string())));
        self
    }

    /// Adds one git setting whose value is secret; `scrub` lists the secret forms (the token
    /// itself, its encoded form) removed from anything git prints.
    pub fn secret_config(
        &mut self,
        key: &str,
        value: SecretString,
        scrub: Vec<SecretString>,
    ) -> &mut Self {
        self.config.push((key.to_string(), value.clone()));
        self.secrets.push(value);
        self.secrets.extend(scrub);
        self
    }

    /// Runs `git <args>` and returns its standard output, at most `max_out` bytes.
    pub fn run(&self, args: &[&str], max_out: usize) -> Result<Vec<u8>, GitFailure> {
        let mut child = self.command(args).spawn().map_err(GitFailure::Spawn)?;
        let stdout = drain(child.stdout.take(), max_out);
        let stderr = drain(child.stderr.take(), STDERR_CAP);
        let status = wait(&mut child, self.timeout);
        let (out, out_overflow) = join(stdout)?;
        let (err, _) = join(stderr)?;
        let status = status?;
        if !status.success() {
            return Err(GitFailure::Exit {
                status: describe(status),
                stderr: self.scrub(&String::from_utf8_lossy(&err)),
            });
        }
        if out_overflow {
            return Err(GitFailure::TooLarge { limit: max_out });
        }
        Ok(out)
    }

    /// Runs `git <args>` for its exit status alone: `Ok(true)` on 0, `Ok(false)` on 1 (the
    /// "no" of `merge-base --is-ancestor` and `cat-file -e`), an error otherwise.
    pub fn test(&self, args: &[&str]) -> Result<bool, GitFailure> {
        match self.run(args, 0) {
            Ok(_) => Ok(true),
            Err(GitFailure::Exit { status, .. }) if status == "exit status 1" => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_LITERAL_PATHSPECS", "1")
            .env("GIT_DIR", &self.git_dir)
            // git and ssh look here for nothing once the settings above are fixed; a HOME
            // that is the repository keeps them away from the service user's files.
            .env("HOME", &self.git_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GIT_CONFIG_COUNT", self.config.len().to_string());
        for (n, (key, value)) in self.config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{n}"), key)
                .env(format!("GIT_CONFIG_VALUE_{n}"), value.expose_secret());
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.trim().to_string();
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if !secret.is_empty() {
                text = text.replace(secret, REDACTED);
            }
        }
        text
    }
}

/// Settings every call carries.
const BASE_CONFIG: &[(&str, &str)] = &[
    // The cache is only ever written by fetch; nothing is collected behind the daemon's back,
    // so a commit read once stays readable (the last good state survives a force push).
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    // Every object received is checked before it is stored.
    ("transfer.fsckObjects", "true"),
    ("fetch.fsckObjects", "true"),
    // A redirect could carry the credential header to another host: refuse it.
    ("http.followRedirects", "false"),
    // No hook of any kind runs (reference-transaction hooks run on every ref update).
    ("core.hooksPath", "/dev/null"),
    ("credential.helper", ""),
    ("advice.detachedHead", "false"),
];

/// Reads a pipe to its end on a thread, keeping at most `cap` bytes; `true` when more came.
fn drain<R: Read + Send + 'static>(
    pipe: Option<R>,
    cap: usize,
) -> JoinHandle<std::io::Result<(Vec<u8>, bool)>> {
    std::thread::spawn(move || {
        let Some(mut pipe) = pipe else {
            return Ok((Vec::new(), false));
        };
        let mut kept = Vec::new();
        let mut overflow = false;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = pipe.read(&mut buf)?;
            if n == 0 {
                return Ok((kept, overflow));
            }
            let room = cap.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
            overflow |= n > room;
        }
    })
}

fn join(
    handle: JoinHandle<std::io::Result<(Vec<u8>, bool)>>,
) -> Result<(Vec<u8>, bool), GitFailure> {
    handle
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("output reader panicked")))
        .map_err(GitFailure::Io)
}

/// Waits for the child until `timeout`; past it, kills git's whole process group.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, GitFailure> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(GitFailure::Io)? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill_group(child);
            let _ = child.wait();
            return Err(GitFailure::Timeout(timeout));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

// std offers no way to signal a process group, and the crate's other unsafe code is denied.
#[allow(unsafe_code)]
fn kill_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (it was started with `process_group(0)`); it touches no memory of ours.
        Ok(pid) if pid > 0 => unsafe {
            libc::kill(-pid, libc::SIGKILL);
        },
        _ => {
            let _ = child.kill();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
