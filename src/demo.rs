//! `dexscope demo`: the daemon machinery against an in-process simulated tenant, narrated.
//!
//! Starts a seeded simulated tenant on loopback, misranks the scoped device group on purpose
//! (a `Helpdesk-Legacy` group whose rule also matches the scoped tag is put at rank 1), writes a
//! desired state and a config into a temporary directory, and runs the daemon's own loops
//! ([`daemon::build_loops`], [`daemon::Scheduler::run_pass`]) cycle by cycle, printing a few
//! lines per pass. Needs no config file and no network beyond loopback.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::Notify;

use crate::alerts::{AlertState, Alerter, NoticeKind};
use crate::config::Config;
use crate::daemon::{self, DesiredWatch, PassContext, Scheduler};
use crate::metrics::Metrics;
use crate::sim::{self, GroupRule, SeedSpec, SimOptions};
use crate::state::State;
use crate::tenant::Tenant;

/// The group the demo puts above the scoped device group.
pub const MISRANKED_GROUP: &str = "Helpdesk-Legacy";

/// `dexscope demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Cycles to run (each runs every loop once); Ctrl-C stops earlier.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub cycles: u32,
    /// Pause between cycles, in seconds (the demo's propagation grace is 1 s).
    #[arg(long, default_value_t = 1.5)]
    pub pause: f64,
    /// Read the desired state from a git repository the demo creates and commits it to,
    /// fetched over file:// as a `[scope.git]` source (needs `git`).
    #[arg(long)]
    pub git: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the simulated tenant: {0}")]
    Sim(#[from] sim::SimError),
    #[error("cannot write the demo files in {dir}: {source}")]
    Files {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error("cannot create the demo's git repository: {0}")]
    Git(String),
}

/// Logs go to stderr at `warn` unless `-v` or `RUST_LOG` asks for more, so the narration on
/// stdout stays readable.
pub fn init_logging(verbosity: u8) -> Result<(), crate::telemetry::TelemetryError> {
    if verbosity == 0 && std::env::var_os("RUST_LOG").is_none() {
        // The narration already shows alerts; the log keeps only other warnings and errors.
        let filter = crate::telemetry::filter(0, Some("warn,dexscope::alerts=off"))?;
        let output = crate::telemetry::Output::detect();
        return crate::telemetry::init_with(crate::config::LogFormat::Text, filter, output);
    }
    crate::telemetry::init(crate::config::LogFormat::Text, verbosity)
}

/// Runs the demo and prints the narration to stdout.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let out = &mut std::io::stdout();
    run_to(args, out).await
}

/// Runs the demo, narrating into `out`.
pub async fn run_to(args: DemoArgs, out: &mut dyn std::io::Write) -> Result<(), DemoError> {
    let sim = start_tenant(out).await?;
    let dir = TempDir::create()?;
    let config = write_files(&sim, &dir, args.git, out)?;
    let mut demo = connect(config, out).await?;
    let (ok, failed, ran) = run_cycles(&sim, &mut demo, &args, out).await;
    let firing: Vec<String> = demo
        .ctx
        .state
        .alerts()
        .map_err(daemon::DaemonError::from)?
        .into_iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| a.kind.to_string())
        .collect();
    let stats = demo.ctx.tenant.http.stats();
    say(
        out,
        format!(
            "\nsummary: {ran} cycles, {ok} passes ok, {failed} failed; {} requests to the \
             tenant; alerts firing: {}",
            stats.total_requests(),
            if firing.is_empty() {
                "none".to_string()
            } else {
                firing.join(", ")
            }
        ),
    );
    drop(demo);
    sim.shutdown().await;
    Ok(())
}

fn say(out: &mut dyn std::io::Write, line: String) {
    let _ = writeln!(out, "{line}");
}

/// The daemon's machinery as the demo runs it: the scheduler, the pass context and the loops.
struct Demo {
    scheduler: Scheduler,
    ctx: PassContext,
    loops: Vec<daemon::Loop>,
}

/// Starts the seeded simulated tenant with the scoped device group misranked.
async fn start_tenant(out: &mut dyn std::io::Write) -> Result<sim::SimHandle, DemoError> {
    let sim = sim::start(SimOptions {
        generate: SeedSpec {
            users: 40,
            devices: 24,
            incidents: 6,
            scoped_users: 4,
            tagged_share: 0.25,
            nested: true,
        },
        placement_delay_secs: 0.0,
        ..SimOptions::default()
    })
    .await?;
    sim.add_device_group(
        MISRANKED_GROUP,
        1,
        GroupRule {
            tags: vec![sim::model::DEVICE_TAG.into()],
            ..GroupRule::default()
        },
    );
    say(
        out,
        format!(
            "simulated tenant on {} (loopback only); device group {MISRANKED_GROUP} put at rank \
             1 above {}, with a rule matching the tag {}",
            sim.base_url(),
            sim::model::DEVICE_GROUP_NAME,
            sim::model::DEVICE_TAG
        ),
    );
    Ok(sim)
}

/// Writes the desired state and the config into `dir` and loads the config.
fn write_files(
    sim: &sim::SimHandle,
    dir: &TempDir,
    git: bool,
    out: &mut dyn std::io::Write,
) -> Result<Arc<Config>, DemoError> {
    let (desired_text, users, devices) = desired_state(sim);
    let config_path = dir.path().join("config.toml");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).map_err(|source| DemoError::Files {
            dir: dir.path().display().to_string(),
            source,
        })
    };
    write("desired.toml", &desired_text)?;
    let mut config = config_text(sim);
    if git {
        let repo = dir.path().join("repo");
        let commit = commit_repo(&repo, &desired_text)?;
        say(
            out,
            format!(
                "desired state committed to the git repository {} (commit {commit}): {users} \
                 user entries (one a group selector), {devices} devices; the daemon fetches it over \
                 file://",
                repo.display()
            ),
        );
        config = config.replace("desired_state = \"desired.toml\"\n", "")
            + &format!(
                "[scope.git]\nurl = \"file://{}\"\nbranch = \"main\"\n\
                 path = \"scope/desired.toml\"\nverify = \"none\"\n",
                repo.display()
            );
    } else {
        say(
            out,
            format!(
                "desired state written to {}: {users} user entries (one a group selector), \
                 {devices} devices",
                dir.path().join("desired.toml").display()
            ),
        );
    }
    write("config.toml", &config)?;
    let secret = sim.client_secret().expose_secret().to_string();
    Ok(Arc::new(Config::load(
        &config_path,
        [(crate::config::DEV_SECRET_VAR, secret.as_str())],
    )?))
}

/// Opens the state, connects (narrating each token), reads the desired state and builds the
/// loops, as a daemon generation does.
async fn connect(config: Arc<Config>, out: &mut dyn std::io::Write) -> Result<Demo, DemoError> {
    let state = Arc::new(State::open(&config.state.path).map_err(daemon::DaemonError::from)?);
    let tenant = Tenant::from_config(&config).map_err(daemon::DaemonError::from)?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_http_client(tenant.http.clone());
    let alerter = Alerter::new(
        state.clone(),
        config.tenant.tenant_id.to_string(),
        config.alerts.renotify_every,
        None,
    )
    .map_err(daemon::DaemonError::from)?;
    let scheduler = Scheduler::new(state.clone(), metrics.clone(), Arc::new(alerter));
    for (resource, report) in tenant.tokens.self_check().await {
        let name = resource.display_name();
        match report {
            Ok(r) => say(out, format!("token for {name}: {}", r.message)),
            Err(e) => say(out, format!("token for {name}: failed: {e}")),
        }
    }
    metrics.token_obtained(chrono::Utc::now());
    let desired = match &config.scope.git {
        None => {
            let desired = Arc::new(
                DesiredWatch::new(config.scope.desired_state.clone())
                    .spill_to(daemon::state_dir(&state)),
            );
            daemon::load_desired(&desired, &scheduler.alerter).await;
            daemon::DesiredSource::Files(desired)
        }
        Some(git) => {
            let watch = Arc::new(
                daemon::GitWatch::open(git, state.clone()).map_err(daemon::DaemonError::from)?,
            );
            daemon::refresh_git(&watch, &scheduler.alerter, None).await;
            let read = watch.current().and_then(|k| k.commit().map(str::to_owned));
            say(
                out,
                format!(
                    "desired state fetched from {}: commit {}",
                    watch.describe(),
                    read.as_deref().unwrap_or("(none)")
                ),
            );
            daemon::DesiredSource::Git(watch)
        }
    };
    let ctx = PassContext {
        config,
        tenant,
        state,
        desired,
    };
    let loops = daemon::build_loops(&ctx, Arc::new(Notify::new()));
    metrics.set_loops(&loops.iter().map(|l| (l.name, l.every)).collect::<Vec<_>>());
    say(
        out,
        format!(
            "loops: {}",
            loops.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
        ),
    );
    Ok(Demo {
        scheduler,
        ctx,
        loops,
    })
}

/// Runs the cycles: an incident arrives, every loop runs once, each pass is narrated. Returns
/// (passes ok, passes failed, cycles run).
async fn run_cycles(
    sim: &sim::SimHandle,
    demo: &mut Demo,
    args: &DemoArgs,
    out: &mut dyn std::io::Write,
) -> (u32, u32, u32) {
    let (mut ok, mut failed, mut ran) = (0u32, 0u32, 0u32);
    let pause = Duration::from_secs_f64(args.pause.clamp(0.0, 60.0));
    for cycle in 1..=args.cycles {
        say(out, format!("\n— cycle {cycle} of {}", args.cycles));
        let (spec, what) = arrival(sim, cycle);
        let id = sim.create_incident(&spec);
        say(out, format!("  incident {id} arrives: {what}"));
        for lp in demo.loops.iter_mut() {
            let report = demo.scheduler.run_pass(lp).await;
            match &report.result {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            say(out, narrate(&report));
        }
        if let Some(comment) = sim.comments(&id).last() {
            let first = comment.lines().next().unwrap_or_default();
            let last = comment.lines().last().unwrap_or_default();
            say(
                out,
                format!("  comment on incident {id}: \"{first}\" … \"{last}\""),
            );
        }
        ran = cycle;
        if cycle < args.cycles {
            sim.advance(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tokio::signal::ctrl_c() => {
                    say(out, "Ctrl-C: stopping after this cycle".into());
                    break;
                }
            }
        }
    }
    (ok, failed, ran)
}

/// A few lines about one pass: what it did, its detail lines, the notices it raised.
fn narrate(report: &daemon::PassReport) -> String {
    let mut text = String::new();
    match &report.result {
        Ok(s) => {
            let _ = write!(text, "  {}: {}", report.loop_name, s.text);
            for line in &s.lines {
                let _ = write!(text, "\n    · {line}");
            }
        }
        Err(e) => {
            let _ = write!(text, "  {}: failed: {e}", report.loop_name);
        }
    }
    for n in &report.notices {
        let verb = match n.notice {
            NoticeKind::Firing => "ALERT firing",
            NoticeKind::Repeat => "ALERT still firing",
            NoticeKind::Resolved => "alert resolved",
        };
        let _ = write!(text, "\n    ! {verb} [{}]: {}", n.alert, n.summary);
    }
    text
}

/// A desired state naming some users and tagged machines of the simulated tenant: (text,
/// users, devices).
/// The incident that arrives in `cycle`: one the service covers, then kinds it does not.
fn arrival(sim: &sim::SimHandle, cycle: u32) -> (sim::IncidentSpec, &'static str) {
    let upn = {
        let state = sim.state();
        let t = state.lock().unwrap_or_else(|p| p.into_inner());
        t.directory
            .users
            .iter()
            .flatten()
            .next()
            .map(|u| u.upn.to_string())
            .unwrap_or_default()
    };
    let base = sim::IncidentSpec {
        title: "Suspicious sign-in followed by credential dumping".into(),
        severity: "high".into(),
        service_source: "microsoftDefenderForEndpoint".into(),
        detection_source: "microsoftDefenderForEndpoint".into(),
        users: vec![upn],
        ..sim::IncidentSpec::default()
    };
    match cycle % 3 {
        1 => (
            base,
            "high severity, EDR alert on a user in the desired state",
        ),
        2 => (
            sim::IncidentSpec {
                title: "Sensitive file shared externally".into(),
                severity: "medium".into(),
                service_source: "dataLossPrevention".into(),
                detection_source: "microsoftDataLossPrevention".into(),
                ..base
            },
            "a DLP-only incident on the same user",
        ),
        _ => (
            sim::IncidentSpec {
                title: "Unusual process on a workstation".into(),
                severity: "low".into(),
                ..base
            },
            "low severity on the same user",
        ),
    }
}

fn desired_state(sim: &sim::SimHandle) -> (String, usize, usize) {
    let upns: Vec<String> = {
        let state = sim.state();
        let t = state.lock().unwrap_or_else(|p| p.into_inner());
        t.directory
            .users
            .iter()
            .flatten()
            .take(6)
            .map(|u| u.upn.to_string())
            .collect()
    };
    let names: Vec<String> = sim
        .machines_with_tag(sim::model::DEVICE_TAG)
        .into_iter()
        .take(4)
        .map(|m| m.dns_name)
        .collect();
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("  \"{s}\",\n"))
            .collect::<String>()
    };
    let group = selector_group(sim);
    let text = format!(
        "# demo desired state\nusers = [\n{}  {{ group = \"{group}\", note = \"Berlin-Staff and \
         the group nested in it\" }},\n]\ndevices = [\n{}]\n",
        list(&upns),
        list(&names)
    );
    (text, upns.len() + 1, names.len())
}

/// The group the demo's selector names: Berlin-Staff holds three users and SOC-Tier2, which
/// holds two more; the selector puts all five in scope. Returns Berlin-Staff's id.
fn selector_group(sim: &sim::SimHandle) -> uuid::Uuid {
    let root = uuid::Uuid::from_u128(0xbe71_0001);
    let nested = uuid::Uuid::from_u128(0xbe71_0002);
    let state = sim.state();
    let mut t = state.lock().unwrap_or_else(|p| p.into_inner());
    let ids: Vec<uuid::Uuid> = t.directory.users.iter().flatten().map(|u| u.id).collect();
    t.directory.add_group(root, "Berlin-Staff");
    t.directory.add_group(nested, "SOC-Tier2");
    for id in ids.iter().skip(10).take(3) {
        t.directory.add_member(&root, *id);
    }
    for id in ids.iter().skip(13).take(2) {
        t.directory.add_member(&nested, *id);
    }
    t.directory.add_member(&root, nested);
    root
}

/// A private directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn create() -> Result<Self, DemoError> {
        let path = std::env::temp_dir().join(format!(
            "dexscope-demo-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&path).map_err(|source| DemoError::Files {
            dir: path.display().to_string(),
            source,
        })?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a repository at `repo` whose branch `main` holds `scope/desired.toml` in one
/// commit; the commit id.
fn commit_repo(repo: &std::path::Path, desired: &str) -> Result<String, DemoError> {
    let fail = |e: String| DemoError::Git(e);
    std::fs::create_dir_all(repo.join("scope")).map_err(|e| fail(e.to_string()))?;
    std::fs::write(repo.join("scope/desired.toml"), desired).map_err(|e| fail(e.to_string()))?;
    let git = |args: &[&str]| -> Result<String, DemoError> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Scope Owner")
            .env("GIT_AUTHOR_EMAIL", "owner@example.com")
            .env("GIT_COMMITTER_NAME", "Scope Owner")
            .env("GIT_COMMITTER_EMAIL", "owner@example.com")
            .output()
            .map_err(|e| fail(format!("cannot run git ({e}); install git")))?;
        if !out.status.success() {
            return Err(fail(crate::text::one_line(&String::from_utf8_lossy(
                &out.stderr,
            ))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    git(&["init", "-q", "-b", "main"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "Scoped coverage for the demo tenant"])?;
    git(&["rev-parse", "HEAD"])
}

fn config_text(sim: &sim::SimHandle) -> String {
    let base = sim.base_url();
    format!(
        "[tenant]\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
         [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
         [scope]\nuser_group_id = \"{}\"\ndevice_tag = \"{}\"\ndesired_state = \"desired.toml\"\n\
         propagation_grace = \"1s\"\n\
         [schedule]\nreconcile_every = \"1s\"\npriority_every = \"1s\"\nincidents_every = \"1s\"\n\
         [state]\npath = \"state.db\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        sim.tenant_id(),
        sim.client_id(),
        sim.user_group_id(),
        sim::model::DEVICE_TAG,
    )
}
