//! What every row needs: a simulated tenant with a config pointed at it, tenant connections with
//! scaled client quotas, desired-state files, and child processes measured with `wait4`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use dexscope::auth::TokenCache;
use dexscope::config::Config;
use dexscope::defender::DefenderClient;
use dexscope::desired::{self, DesiredState, Mode};
use dexscope::graph::GraphClient;
use dexscope::http::{self, Quotas, Rate};
use dexscope::reconcile::{self, Context, ReconcileReport};
use dexscope::scope::MemberSource;
use dexscope::sim::{self, QuotaConfig, SeedSpec, SimHandle, SimOptions, Stats};
use dexscope::state::State;
use dexscope::tenant::{self, Tenant};
use secrecy::ExposeSecret;

pub const TAG: &str = "DEX-Scoped";
pub const BATCH: &str = "POST /v1.0/$batch";
pub const PATCH_GROUP: &str = "PATCH /v1.0/groups/{id}";
pub const REMOVE_REF: &str = "DELETE /v1.0/groups/{id}/members/{id}/$ref";
pub const BULK_TAG: &str = "POST /api/machines/AddOrRemoveTagForMultipleMachines";
pub const POST_COMMENT: &str = "POST /v1.0/security/incidents/{id}/comments";

/// The simulated tenant's quotas at the documented figures with every rate multiplied by `k`:
/// each window is `k` times shorter, each budget unchanged (so bursts stay realistic too).
/// `k` is a power of two, so the simulator's `budget × k × (1 / k)` is exact.
pub fn sim_quotas(k: u32) -> QuotaConfig {
    assert!(k.is_power_of_two(), "k = {k} must be a power of two");
    let d = QuotaConfig::default();
    let k64 = u64::from(k);
    QuotaConfig {
        enabled: true,
        scale: 1.0 / f64::from(k),
        graph_ru_per_10s: d.graph_ru_per_10s * k64,
        graph_writes_per_150s: d.graph_writes_per_150s * k64,
        security_per_min: d.security_per_min * k64,
        mde_per_min: d.mde_per_min * k64,
        mde_per_hour: d.mde_per_hour * k64,
        ..d
    }
}

/// No service quotas at all (rows that count requests, not time).
pub fn sim_unlimited() -> QuotaConfig {
    QuotaConfig {
        enabled: false,
        ..QuotaConfig::default()
    }
}

/// dexscope's client-side quotas (the shipped defaults) with every rate multiplied by `k` the
/// same way as [`sim_quotas`]: windows `k` times shorter, budgets unchanged.
pub fn client_quotas(k: u32) -> Quotas {
    faster(Quotas::default(), k)
}

/// The `[limits]` of a large tenant (more than 500 users), as its operator would configure
/// them: the read budget Graph documents for that size (8,000 resource units per 10 s for a tenant
/// of more than 500 users, Microsoft Graph throttling limits, identity and access service), everything else at the shipped defaults.
pub const LARGE_TENANT_LIMITS: &str = "[limits]\ngraph_directory_reads_per_10s = 8000\n";

/// `q` with every rate multiplied by `k` (windows `k` times shorter, budgets unchanged).
pub fn faster(q: Quotas, k: u32) -> Quotas {
    let fast = |r: Rate| Rate::new(r.count, r.per / k);
    Quotas {
        graph_reads: fast(q.graph_reads),
        graph_writes: fast(q.graph_writes),
        graph_security: fast(q.graph_security),
        defender_per_minute: fast(q.defender_per_minute),
        defender_per_hour: fast(q.defender_per_hour),
    }
}

/// Simulator options: `users` users (`scoped` of them already members), `devices` machines
/// (`tagged_share` of them tagged), `incidents` incidents, the given quotas.
pub fn seeded(
    users: usize,
    scoped: usize,
    devices: usize,
    tagged_share: f64,
    incidents: usize,
    quotas: QuotaConfig,
) -> SimOptions {
    SimOptions {
        seed: 11,
        generate: SeedSpec {
            users,
            devices,
            incidents,
            scoped_users: scoped,
            tagged_share,
            nested: false,
        },
        quotas,
        ..SimOptions::default()
    }
}

/// A simulated tenant and a directory holding the config, the desired state and the state db.
pub struct Env {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start(opts: SimOptions) -> Env {
        let sim = sim::start(opts).await.expect("the simulated tenant starts");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env = Env { sim, dir };
        env.write_config("");
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the config; `tail` is appended after `[state]` (more sections).
    pub fn write_config(&self, tail: &str) {
        let base = self.sim.base_url();
        let text = format!(
            "[tenant]\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
             [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
             [scope]\nuser_group_id = \"{}\"\ndevice_tag = \"{TAG}\"\n\
             desired_state = \"desired.toml\"\nmax_removals = 1000000\n\
             [state]\npath = \"state.db\"\n{tail}\n",
            self.sim.tenant_id(),
            self.sim.client_id(),
            self.sim.user_group_id(),
        );
        std::fs::write(self.path("config.toml"), text).expect("config written");
    }

    pub fn secret(&self) -> String {
        self.sim.client_secret().expose_secret().to_string()
    }

    pub fn config(&self) -> Config {
        let secret = self.secret();
        Config::load(
            &self.path("config.toml"),
            [("DEXSCOPE_CLIENT_SECRET", secret.as_str())],
        )
        .expect("the bench config is valid")
    }

    /// The client quotas the config's `[limits]` describe, every rate multiplied by `k`.
    pub fn configured_quotas(&self, k: u32) -> Quotas {
        faster(tenant::http_settings(&self.config()).quotas, k)
    }

    /// The tenant connection the config describes, with `quotas` instead of the configured ones.
    pub fn tenant(&self, quotas: Quotas) -> Tenant {
        let config = self.config();
        let mut settings = tenant::http_settings(&config);
        settings.quotas = quotas;
        let reqwest = http::Client::build_reqwest(&settings).expect("reqwest client");
        let tokens = Arc::new(
            TokenCache::new(
                tenant::token_settings(&config).expect("token settings"),
                reqwest.clone(),
            )
            .expect("token cache"),
        );
        let http = http::Client::with_reqwest(settings, tokens.clone(), reqwest);
        Tenant {
            graph: GraphClient::new(http.clone()),
            defender: DefenderClient::new(http.clone()),
            tokens,
            http,
        }
    }

    pub fn write_desired(&self, users: &[String], devices: &[String]) {
        let list = |v: &[String]| v.iter().map(|s| format!("  {s:?},\n")).collect::<String>();
        let text = format!(
            "users = [\n{}]\ndevices = [\n{}]\n",
            list(users),
            list(devices)
        );
        std::fs::write(self.path("desired.toml"), text).expect("desired state written");
    }

    pub fn desired(&self) -> DesiredState {
        desired::load(
            &[self.path("desired.toml")],
            Utc::now().date_naive(),
            Mode::Runtime,
        )
        .expect("the bench desired state is valid")
        .state
    }

    /// The UPNs of the first `n` users, in directory order.
    pub fn upns(&self, n: usize) -> Vec<String> {
        let state = self.sim.state();
        let t = state.lock().unwrap_or_else(|p| p.into_inner());
        t.directory
            .users
            .iter()
            .flatten()
            .take(n)
            .map(|u| u.upn.to_string())
            .collect()
    }

    /// The UPNs of the scoped group's direct user members.
    pub fn member_upns(&self) -> Vec<String> {
        let state = self.sim.state();
        let t = state.lock().unwrap_or_else(|p| p.into_inner());
        t.group_members(&t.ids.user_group_id)
            .into_iter()
            .filter_map(|(id, _)| t.directory.user(&id).map(|u| u.upn.to_string()))
            .collect()
    }

    /// The machine ids of the first `n` machines.
    pub fn machine_ids(&self, n: usize) -> Vec<String> {
        let state = self.sim.state();
        let t = state.lock().unwrap_or_else(|p| p.into_inner());
        t.mde.machines.iter().take(n).map(|m| m.id_hex()).collect()
    }

    pub fn member_count(&self) -> usize {
        self.sim.group_members(&self.sim.user_group_id()).len()
    }

    /// `plan_once` through the library: the reads a pass starts with, and no writes.
    pub async fn plan(&self, tenant: &Tenant) -> reconcile::plan::Plan {
        let config = self.config();
        let settings = reconcile::settings_from_config(&config, true);
        reconcile::plan_once(
            tenant,
            &config.scope.user_group_id,
            TAG,
            &self.desired(),
            &settings,
            MemberSource {
                state: None,
                store: false,
                resync_every: config.scope.member_resync,
                now: Utc::now(),
            },
        )
        .await
        .expect("plan")
    }

    /// One reconcile pass through the library, as the daemon runs it (removal guard lifted).
    pub async fn pass(&self, tenant: &Tenant, desired: &DesiredState) -> ReconcileReport {
        let config = self.config();
        let state = State::open(self.path("state.db")).expect("state database");
        let ctx = Context {
            tenant,
            state: &state,
            user_group: &config.scope.user_group_id,
            device_tag: TAG,
            member_resync: config.scope.member_resync,
        };
        let settings = reconcile::settings_from_config(&config, true);
        reconcile::reconcile_once(ctx, desired, &settings, Utc::now())
            .await
            .expect("reconcile pass")
    }

    /// The real binary with this config, run through a measuring process (see
    /// [`measure_child`]); stdout to `NAME.out`, stderr to `NAME.err`, rusage to `NAME.rusage`.
    pub fn bin(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench executable"));
        let file = |ext: &str| {
            std::fs::File::create(self.path(&format!("{name}.{ext}"))).expect("output file")
        };
        cmd.arg(MEASURE_FLAG)
            .arg(self.path(&format!("{name}.rusage")));
        // A profiling aid, off unless asked for: `DEXSCOPE_BENCH_WRAP="heaptrack -o
        // /tmp/heap.{name}"` runs each child under that command (`{name}` becomes the child's
        // name). The figures of such a run are the wrapper's, not dexscope's alone.
        if let Ok(wrap) = std::env::var("DEXSCOPE_BENCH_WRAP") {
            cmd.args(wrap.split_whitespace().map(|w| w.replace("{name}", name)));
        }
        cmd.arg(env!("CARGO_BIN_EXE_dexscope"))
            .arg("--config")
            .arg(self.path("config.toml"))
            .args(args)
            .env("DEXSCOPE_CLIENT_SECRET", self.secret())
            .env_remove("DEXSCOPE_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("err"));
        cmd
    }

    /// The last lines of a child's stderr, for a failure message.
    pub fn stderr_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{name}.err"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// Write round trips and read requests of a sim stats window: `$batch` envelopes minus
/// `lookup_envelopes` (the envelopes the reads of the same pass used) plus direct writes.
pub fn write_round_trips(s: &Stats, lookup_envelopes: u64) -> u64 {
    // Writes sent on their own (MDE bulk tag calls, any unbatched Graph write).
    let direct_writes: u64 = s
        .http_by_route
        .iter()
        .filter(|(r, _)| !r.starts_with("GET ") && r.as_str() != BATCH && !r.contains("oauth2"))
        .map(|(_, n)| n)
        .sum();
    s.http_by_route.get(BATCH).copied().unwrap_or(0) - lookup_envelopes + direct_writes
}

/// Token requests in a sim stats window.
pub fn token_requests(s: &Stats) -> u64 {
    s.http_by_route
        .iter()
        .filter(|(r, _)| r.contains("oauth2"))
        .map(|(_, n)| n)
        .sum()
}

/// What a finished child cost.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// User + system CPU time.
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

impl Measured {
    pub fn rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// The first argument that turns the bench executable into the measuring process.
pub const MEASURE_FLAG: &str = "--measure-child";

/// The measuring process: `bench --measure-child RESULT PROGRAM ARGS…` runs PROGRAM (same
/// environment and standard streams), writes its pid to `RESULT.pid`, reaps it with `wait4`
/// and writes `code cpu_us max_rss_kib` to RESULT.
///
/// Why a process in between: Linux carries the RSS high-water mark of the address space a
/// process `exec`s from into its `ru_maxrss`. Spawned straight from the bench (which holds a
/// simulated tenant of 100k users), every child would report at least the bench's own peak.
/// This small process has a small address space, so the figure is the child's own.
pub fn measure_child(args: &[String]) -> ! {
    let [result, program, rest @ ..] = args else {
        eprintln!("usage: {MEASURE_FLAG} RESULT PROGRAM [ARGS…]");
        std::process::exit(2);
    };
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let pid = child.id() as libc::pid_t;
    std::fs::write(format!("{result}.pid"), pid.to_string()).expect("pid file");
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 on {program} failed");
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    std::fs::write(
        result,
        format!(
            "{code} {} {}",
            us(usage.ru_utime) + us(usage.ru_stime),
            usage.ru_maxrss
        ),
    )
    .expect("result file");
    std::process::exit(0);
}

/// A dexscope process started through [`measure_child`]. Dropped before it finished (a row
/// timed out), it is killed.
pub struct Running {
    measurer: libc::pid_t,
    result: PathBuf,
    started: Instant,
    reaped: Arc<AtomicBool>,
}

impl Running {
    /// Starts a command built by [`Env::bin`].
    pub fn spawn(mut cmd: Command) -> Running {
        let result = PathBuf::from(
            cmd.get_args()
                .nth(1)
                .expect("a command built by Env::bin")
                .to_os_string(),
        );
        let child = cmd.spawn().expect("the measuring process starts");
        let measurer = child.id() as libc::pid_t;
        // Reaped below with waitpid, not through `Child`.
        drop(child);
        Running {
            measurer,
            result,
            started: Instant::now(),
            reaped: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The dexscope process's pid, once the measuring process has started it (bounded wait).
    fn target(&self) -> Option<libc::pid_t> {
        let file = self.result.with_extension("rusage.pid");
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(pid) = text.trim().parse()
            {
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn signal(&self, signal: libc::c_int) {
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        if let Some(pid) = self.target() {
            // SAFETY: signals the dexscope process this bench started; its parent (the
            // measuring process) has not reaped it while `reaped` is false.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Asks dexscope to stop (SIGTERM), as systemd does.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for dexscope to exit and returns its exit code, CPU time and peak RSS.
    pub async fn wait(self) -> Measured {
        let pid = self.measurer;
        let reaped = self.reaped.clone();
        let result = self.result.clone();
        tokio::task::spawn_blocking(move || {
            let mut status: libc::c_int = 0;
            // SAFETY: waits for our own child; status is a valid pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            reaped.store(true, Ordering::SeqCst);
            assert_eq!(r, pid, "waitpid on the measuring process failed");
            let text = std::fs::read_to_string(&result).expect("the measuring process's result");
            let f: Vec<i64> = text
                .split_whitespace()
                .map(|v| v.parse().expect("a number"))
                .collect();
            Measured {
                code: (f[0] >= 0).then_some(f[0] as i32),
                cpu: Duration::from_micros(f[1] as u64),
                max_rss_kib: f[2] as u64,
            }
        })
        .await
        .expect("the wait thread")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped.load(Ordering::SeqCst) {
            self.signal(libc::SIGKILL);
        }
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Formats a duration as seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
