//! The `dexscope` binary: command dispatch and exit codes.
//!
//! Thin on purpose: parse the command line, set up logging, hand over to the library, turn the
//! outcome into an explicit exit code. `anyhow` appears here and nowhere else.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use dexscope::cli::{
    ApplyArgs, CheckArgs, Cli, Command, EXIT_USAGE, ExportArgs, PlanArgs, StatusArgs, ValidateArgs,
};
use dexscope::config::{self, Config, LogFormat};
use dexscope::incidents::command::VerdictArgs;
use dexscope::telemetry;
use dexscope::text::one_line;

fn main() -> ExitCode {
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; anything else is a usage error.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            telemetry::fatal(&one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Validate(args) => {
            // validate needs no config, so its logs are always plain text.
            telemetry::init(LogFormat::Text, cli.verbose)?;
            Ok(run_validate(args))
        }
        Command::Sim(args) => {
            telemetry::init(LogFormat::Text, cli.verbose)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dexscope::sim::run_command(args.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            dexscope::demo::init_logging(cli.verbose)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dexscope::demo::run(args.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => run_check(cli, args),
        Command::Verdict(args) => run_verdict(cli, args),
        Command::Plan(args) => with_config(cli, |config| run_plan(config, args)),
        Command::Apply(args) => with_config(cli, |config| run_apply(&config, args)),
        Command::Export(args) => with_config(cli, |config| run_export(&config, args)),
        Command::Status(args) => with_config(cli, |config| run_status(&config, args)),
        Command::Completions(args) => {
            dexscope::cli::write_completions(args.shell, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => {
            match &args.dir {
                Some(dir) => {
                    for page in dexscope::cli::write_man_pages(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot write the man pages into {}: {e}; create the directory or \
                             pick one you can write to",
                            dir.display()
                        )
                    })? {
                        println!("{}", page.display());
                    }
                }
                None => dexscope::cli::write_man(&mut std::io::stdout().lock())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Poll(args) => with_config(cli, |config| {
            let runtime = tokio::runtime::Runtime::new()?;
            let out = &mut std::io::stdout().lock();
            runtime.block_on(dexscope::incidents::command::poll(args, &config, out))?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Run => with_config(cli, |config| {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dexscope::daemon::run(config, Default::default()))?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Runs a command that needs the config; a config that cannot be loaded ends it with the exit
/// code [`load_config`] chose.
fn with_config(
    cli: &Cli,
    command: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match load_config(cli) {
        Ok(config) => command(config),
        Err(code) => Ok(code),
    }
}

fn run_check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    // Nagios reads stdout; logs go to stderr, warnings only unless -v.
    telemetry::init(LogFormat::Text, cli.verbose)?;
    let outcome = one_shot()?.block_on(dexscope::check::run(
        &cli.config,
        std::env::vars(),
        chrono::Utc::now(),
        std::time::Duration::from_secs(args.timeout),
    ));
    print!("{}", outcome.render(args.format));
    Ok(ExitCode::from(outcome.status.code()))
}

fn run_verdict(cli: &Cli, args: &VerdictArgs) -> anyhow::Result<ExitCode> {
    let config = if args.needs_config() {
        match load_config(cli) {
            Ok(config) => Some(config),
            Err(code) => return Ok(code),
        }
    } else {
        telemetry::init(LogFormat::Text, cli.verbose)?;
        None
    };
    let out = &mut std::io::stdout().lock();
    one_shot()?.block_on(dexscope::incidents::command::verdict(
        args,
        config.as_ref(),
        out,
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn run_plan(mut config: Config, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    if let Some(spec) = &args.git {
        let source =
            dexscope::desired::source::source_from_spec(spec, args.allowed_signers.as_deref())?;
        let stale_after = source.fetch_every();
        config.scope.git = Some(config::ScopeGit {
            source,
            stale_after,
        });
    }
    // UTC, as `apply` uses, so both agree on which entries have expired.
    let today = chrono::Utc::now().date_naive();
    let code = one_shot()?.block_on(dexscope::reconcile::plan_command(
        &config,
        args.format,
        today,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ));
    Ok(ExitCode::from(code))
}

fn run_apply(config: &Config, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let code = one_shot()?.block_on(dexscope::reconcile::apply_command(
        config,
        args.allow_mass_removal,
        chrono::Utc::now(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ));
    Ok(ExitCode::from(code))
}

fn run_export(config: &Config, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let code = one_shot()?.block_on(dexscope::export::export_command(
        config,
        args.output.as_deref(),
        args.force,
        chrono::Utc::now().date_naive(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ));
    Ok(ExitCode::from(code))
}

fn run_status(config: &Config, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let code = dexscope::status::status_command(
        config,
        args.format,
        chrono::Utc::now(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    Ok(ExitCode::from(code))
}

/// The runtime of a one-shot command (`plan`, `apply`, `export`, `verdict`, `check`): one
/// thread. These commands await one request after another (a `$batch` carries the fan-out),
/// so worker threads would add no speed, only their stacks and their allocator arenas.
fn one_shot() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// glibc malloc settings for a process whose peak is a few large, short-lived lists (the
/// desired state, the members and the machine list at 100k users / 50k machines), set before
/// any thread starts. What each buys, measured with `cargo bench --bench dexscope --
/// unchanged_pass_at_scale` (peak RSS of `plan` cold / `plan` warm / `apply` with nothing to
/// change; the settings swapped through `GLIBC_TUNABLES`, one binary):
/// - a fixed mmap threshold of 128 KiB: 77.7 / 81.7 / 81.6 MiB against 82.7 / 86.0 / 89.8
///   without it. A large buffer (a response body, a growing list) is mapped on its own, grows
///   and shrinks in place and goes back to the kernel when freed; by default glibc raises the
///   threshold to the largest block freed so far, after which such buffers come from the heap
///   and their freed space stays resident. 32 or 16 KiB measured the same as 128 KiB;
/// - trim the heap top once 1 MiB is free there: no difference measured next to 128 or 64 KiB
///   (the default, 128 KiB, is kept as a floor once the mmap threshold is set by hand);
/// - one arena: no difference for the one-shot commands, which allocate from one thread; the
///   daemon (`daemon_backlog_latency_rss`) peaks at 82.6 MiB with it and 90.1 MiB without,
///   where each worker thread gets an arena of its own whose freed memory no other reuses.
///
/// Elsewhere than glibc these calls do not exist and nothing is set.
fn tune_allocator() {
    // An operator's own glibc tunables win: with `GLIBC_TUNABLES` set nothing is changed here
    // (also how the settings below were compared without a rebuild).
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called first thing in `main`,
    // before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

fn run_validate(args: &ValidateArgs) -> ExitCode {
    let today = chrono::Local::now().date_naive();
    let code = match &args.git {
        Some(spec) => dexscope::desired::validate_git_command(
            spec,
            args.allowed_signers.as_deref(),
            args.format,
            today,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr(),
        ),
        None => dexscope::desired::validate_command(
            &args.paths,
            args.format,
            today,
            &mut std::io::stdout().lock(),
        ),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Loads the config for a command that talks to the tenant, sets up logging in the configured
/// format and logs the load warnings. A bad config is logged as an error (in text: its format
/// is not known) and yields exit 78, before any request.
fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    let config = match config::load_for_command(&cli.config, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            telemetry::fatal(&e.to_string());
            return Err(ExitCode::from(config::EXIT_CONFIG));
        }
    };
    if let Err(e) = telemetry::init(config.log.format, cli.verbose) {
        telemetry::fatal(&e.to_string());
        return Err(ExitCode::FAILURE);
    }
    for warning in &config.warnings {
        tracing::warn!(config = %config.path.display(), "{warning}");
    }
    Ok(config)
}
