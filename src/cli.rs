//! Command-line interface: clap definitions of the global flags and the commands.
//!
//! Every command is one variant of [`Command`] with its own `…Args` struct, so a new command is
//! a new variant plus a match arm in `main.rs`; the global flags stay here.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Exit code for a command line clap cannot parse (`EX_USAGE`). Not clap's default 2, since
/// `plan` uses 2 for "changes pending" and a CI pipeline must not mistake a typo for drift.
pub const EXIT_USAGE: u8 = 64;

/// Keeps Defender Experts for XDR scoped coverage true to a desired state kept in git.
#[derive(Debug, Parser)]
#[command(name = "dexscope", version, about, propagate_version = true)]
pub struct Cli {
    /// The config file (TOML). Read by plan, apply, check, poll, run and export, by status (for
    /// the state database's path) and by verdict unless it is given both --file and --desired;
    /// validate, sim, demo, completions and man ignore it.
    #[arg(
        long,
        global = true,
        env = "DEXSCOPE_CONFIG",
        value_name = "PATH",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,

    /// More detail in the logs: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands. Later ones (`plan`, `apply`, `check`, `run`, `sim`, `demo`, `verdict`,
/// `export`, `status`) slot in as further variants.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check desired-state files offline (for CI in the GitOps repo): no network, no config.
    Validate(ValidateArgs),
    /// Serve the simulated tenant (token endpoint, Graph and MDE subsets) on loopback.
    Sim(crate::sim::SimArgs),
    /// Monitoring probe (Nagios/Icinga): one status line with perfdata; exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN.
    Check(CheckArgs),
    /// Show the changes a reconcile pass would make (read-only): exit 0 none, 2 pending, 1 error.
    Plan(PlanArgs),
    /// Run one reconcile pass, then exit: 0 converged, 1 error, 3 removals refused by the guard.
    Apply(ApplyArgs),
    /// Evaluate one incident (live, or offline against a desired state) and print the verdict
    /// and the comment; post it with --post.
    Verdict(crate::incidents::command::VerdictArgs),
    /// Run the incident pass: judge new and updated incidents and post each verdict once.
    Poll(crate::incidents::command::PollArgs),
    /// The daemon: reconcile, priority and incident loops, metrics endpoint (systemd Type=notify).
    Run,
    /// The daemon against an in-process simulated tenant, narrating what it does.
    Demo(crate::demo::DemoArgs),
    /// Write the tenant's scoped coverage as it is today as a desired-state file (adoption).
    Export(ExportArgs),
    /// Summary of coverage health from the state database (no tenant calls).
    Status(StatusArgs),
    /// Print the completion script for a shell to stdout (see the README for where it goes).
    Completions(CompletionsArgs),
    /// Print the man page dexscope(1) (roff) to stdout, or write it and one page per command
    /// into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write dexscope.1 and dexscope-<command>.1 for every command into this directory (e.g.
    /// /usr/local/share/man/man1) instead of printing dexscope.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell`, generated from the command definition itself so it
/// offers exactly the commands and flags this binary has.
///
/// A subcommand rather than a build-time generator: the installed binary writes the files at
/// install time (README), they always match that binary, and the build stays as it is.
pub fn write_completions(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut command, "dexscope", &mut buf);
    out.write_all(&buf)
}

/// Writes the man page dexscope(1), rendered by `clap_mangen` from the command definition:
/// name, synopsis, description, global options and the list of commands, each named as its
/// own page dexscope-<command>(1).
pub fn write_man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(man_command()).render(out)
}

/// Writes dexscope.1 and one dexscope-<command>.1 per command into `dir`, the pages that
/// dexscope(1) refers to; returns the files written.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    clap_mangen::generate_to(man_command(), dir)?;
    let mut pages = vec![dir.join("dexscope.1")];
    pages.extend(
        man_command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| dir.join(format!("dexscope-{}.1", c.get_name()))),
    );
    Ok(pages)
}

fn man_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().disable_help_subcommand(true)
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write the file; without it the file goes to stdout.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing --output file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How the summary is printed.
    #[arg(long, value_enum, default_value_t = crate::status::StatusFormat::Text)]
    pub format: crate::status::StatusFormat,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How the result is printed.
    #[arg(long, value_enum, default_value_t = crate::check::CheckFormat::Text)]
    pub format: crate::check::CheckFormat,
    /// End within this many seconds, UNKNOWN if the tenant has not answered by then.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = crate::check::DEFAULT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// How the plan is printed.
    #[arg(long, value_enum, default_value_t = crate::reconcile::PlanFormat::Text)]
    pub format: crate::reconcile::PlanFormat,

    /// Plan from the head of a git branch instead of the configured source.
    #[arg(long, value_name = "URL#BRANCH:PATH")]
    pub git: Option<String>,

    /// With --git: refuse a head not signed by a key this allowed-signers file lists.
    #[arg(long, value_name = "FILE", requires = "git")]
    pub allowed_signers: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Lift the removal guard (`scope.max_removals`) for this pass.
    #[arg(long)]
    pub allow_mass_removal: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Desired-state files or directories, taken together as one desired state.
    #[arg(required_unless_present = "git", value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Validate the head of a git branch instead (for CI): `URL#branch:path`.
    #[arg(long, value_name = "URL#BRANCH:PATH", conflicts_with = "paths")]
    pub git: Option<String>,

    /// With --git: refuse a head not signed by a key this allowed-signers file lists.
    #[arg(long, value_name = "FILE", requires = "git")]
    pub allowed_signers: Option<PathBuf>,

    /// How findings are printed.
    #[arg(long, value_enum, default_value_t = ValidateFormat::Text)]
    pub format: ValidateFormat,
}

pub use crate::desired::ValidateFormat;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What a parsed command line should give: (config, verbosity, paths, format).
    type Want = (&'static str, u8, &'static [&'static str], ValidateFormat);

    fn check(args: &[&str], want: Option<Want>) {
        let got = Cli::try_parse_from(args.iter().copied());
        match (got, want) {
            (Ok(cli), Some((config, verbose, paths, format))) => {
                assert_eq!(cli.config, PathBuf::from(config), "{args:?}");
                assert_eq!(cli.verbose, verbose, "{args:?}");
                let Command::Validate(v) = cli.command else {
                    panic!("{args:?} should parse as validate");
                };
                let got_paths: Vec<PathBuf> = v.paths;
                let want_paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
                assert_eq!(got_paths, want_paths, "{args:?}");
                assert_eq!(v.format, format, "{args:?}");
            }
            (Err(_), None) => {}
            (Ok(cli), None) => panic!("{args:?} should fail, parsed {cli:?}"),
            (Err(e), Some(_)) => panic!("{args:?} should parse: {e}"),
        }
    }

    #[test]
    fn command_lines() {
        use ValidateFormat::*;
        // DEXSCOPE_CONFIG may be set where the tests run; the default case only holds without it.
        let default_config = std::env::var("DEXSCOPE_CONFIG").unwrap_or(DEFAULT_CONFIG_PATH.into());
        let default: &'static str = Box::leak(default_config.into_boxed_str());
        let cases: &[(&[&str], Option<Want>)] = &[
            (
                &["dexscope", "validate", "a.toml"],
                Some((default, 0, &["a.toml"], Text)),
            ),
            (
                &[
                    "dexscope", "--config", "/x.toml", "validate", "a", "b", "--format", "json",
                ],
                Some(("/x.toml", 0, &["a", "b"], Json)),
            ),
            (
                &[
                    "dexscope",
                    "validate",
                    "-vv",
                    "d/",
                    "--config",
                    "c.toml",
                    "--format=github",
                ],
                Some(("c.toml", 2, &["d/"], Github)),
            ),
            (
                &["dexscope", "-v", "-v", "-v", "validate", "a"],
                Some((default, 3, &["a"], Text)),
            ),
            (&["dexscope", "validate"], None),
            (&["dexscope", "validate", "a", "--format", "xml"], None),
            (&["dexscope"], None),
            (&["dexscope", "frobnicate"], None),
        ];
        for (args, want) in cases {
            check(args, *want);
        }
    }

    #[test]
    fn help_and_version_are_not_usage_errors() {
        for flag in ["--help", "--version"] {
            let err = Cli::try_parse_from(["dexscope", flag]).unwrap_err();
            assert!(
                !err.use_stderr(),
                "{flag} should print to stdout and succeed"
            );
        }
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--config",
            "DEXSCOPE_CONFIG",
            "/etc/dexscope/config.toml",
            "validate",
        ] {
            assert!(help.contains(needle), "help lacks {needle}: {help}");
        }
    }
}
