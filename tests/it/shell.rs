//! Shell completions and man pages as the installed binary writes them, checked with the real
//! tools where they exist: bash loads the completion, `man` renders every page.

use std::path::Path;
use std::process::{Command, Stdio};

use clap::CommandFactory;
use dexscope::cli::Cli;

/// The names of the commands, from the clap definition (the completions and the pages must
/// cover exactly these).
fn commands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn dexscope(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .args(args)
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    let names = commands();
    assert!(names.len() >= 13, "{names:?}");
    // How each shell's script offers a command: bash's case arm, zsh's `name:about` entry,
    // fish's `-a name` candidate.
    type Offer = fn(&str) -> String;
    let shells: [(&str, &str, Offer); 3] = [
        ("bash", "complete -F _dexscope", |n| {
            format!("dexscope,{n})")
        }),
        ("zsh", "#compdef dexscope", |n| format!("'{n}:")),
        ("fish", "complete -c dexscope", |n| format!("-a \"{n}\"")),
    ];
    for (shell, marker, offer) in shells {
        let (code, script, err) = dexscope(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for name in &names {
            assert!(
                script.contains(&offer(name)),
                "{shell}: {name} is not offered"
            );
        }
        // Flags of commands too, not only their names.
        for flag in ["allow-mass-removal", "timeout", "format", "config"] {
            assert!(script.contains(flag), "{shell}: no --{flag}");
        }
    }
    let (code, _, err) = dexscope(&["completions", "tcsh"]);
    assert_eq!(code, Some(64), "an unknown shell is a usage error: {err}");
    assert!(err.contains("bash"), "the error lists the shells: {err}");
}

#[test]
fn bash_loads_the_completion_and_completes_a_command() {
    if !found("bash") {
        panic!("bash is needed to load the completion: apt-get install bash");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dexscope.bash");
    let (_, script, _) = dexscope(&["completions", "bash"]);
    std::fs::write(&file, script).unwrap();
    // What bash offers after `dexscope ap<TAB>` and after `dexscope apply --al<TAB>`.
    let probe = format!(
        "source {}; complete -p dexscope; \
         COMP_WORDS=(dexscope ap); COMP_CWORD=1; _dexscope dexscope ap dexscope; \
         echo \"words: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(dexscope apply --al); COMP_CWORD=2; _dexscope dexscope --al apply; \
         echo \"flags: ${{COMPREPLY[*]}}\"",
        file.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &probe])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-F _dexscope dexscope"), "{text}");
    assert!(text.contains("words: apply"), "{text}");
    assert!(text.contains("flags: --allow-mass-removal"), "{text}");
}

/// The rendered text of a page, by `man -l` (warnings on).
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", page.display());
    assert!(
        err.trim().is_empty(),
        "{}: man warns: {err}",
        page.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_man_pages_render_and_cover_every_command() {
    let names = commands();
    let (code, page, err) = dexscope(&["man"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(page.contains(".TH dexscope 1"), "roff title header: {page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    for name in &names {
        assert!(
            page.contains(&format!("dexscope\\-{name}(1)")),
            "dexscope(1) does not list {name}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (code, listed, err) = dexscope(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(listed.lines().count(), names.len() + 1, "{listed}");
    let mut want = vec!["dexscope.1".to_string()];
    want.extend(names.iter().map(|n| format!("dexscope-{n}.1")));
    for file in &want {
        let path = dir.path().join(file);
        assert!(path.is_file(), "{file} not written: {listed}");
        assert!(
            listed.lines().any(|l| Path::new(l) == path),
            "{file} not listed"
        );
    }
    if !found("man") {
        panic!("`man` renders the pages: apt-get install man-db");
    }
    let main = render(&dir.path().join("dexscope.1"));
    for needle in ["NAME", "SYNOPSIS", "--config", "DEXSCOPE_CONFIG"] {
        assert!(main.contains(needle), "dexscope(1) lacks {needle}:\n{main}");
    }
    let apply = render(&dir.path().join("dexscope-apply.1"));
    assert!(apply.contains("--allow-mass-removal"), "{apply}");
    let check = render(&dir.path().join("dexscope-check.1"));
    assert!(check.contains("--timeout"), "{check}");
    for file in &want {
        render(&dir.path().join(file));
    }

    let (code, _, err) = dexscope(&["man", "--dir", "/nonexistent/man1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/man1"), "{err}");
}

#[test]
fn config_help_names_the_commands_that_read_it() {
    let help = Cli::command().render_long_help().to_string();
    let config = help
        .split("--config <PATH>")
        .nth(1)
        .and_then(|s| s.split("-v, --verbose").next())
        .unwrap();
    let config = config.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        config.contains("by status (for the state database's path)"),
        "{config}"
    );
    for reads in ["plan", "apply", "check", "poll", "run", "export", "verdict"] {
        assert!(config.contains(reads), "{reads}: {config}");
    }
    assert!(
        config.contains("validate, sim, demo, completions and man ignore it"),
        "{config}"
    );
}

#[test]
fn the_unit_documents_what_the_install_steps_install() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/dexscope.service")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(docs.contains(&"man:dexscope(1)"), "{docs:?}");
    // The man pages as the README's install step writes them.
    let step = "dexscope man --dir /usr/local/share/man/man1";
    assert!(
        readme.contains(step),
        "the README installs the man pages with `{step}`"
    );
    let man = tempfile::tempdir().unwrap();
    let man1 = man.path().join("man1");
    std::fs::create_dir(&man1).unwrap();
    let (code, _, err) = dexscope(&["man", "--dir", man1.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for doc in &docs {
        if let Some(page) = doc.strip_prefix("man:") {
            let name = page.strip_suffix("(1)").expect("section 1");
            assert!(
                man1.join(format!("{name}.1")).is_file(),
                "{doc} is not written"
            );
        } else if let Some(path) = doc.strip_prefix("file://") {
            let installs = readme
                .lines()
                .any(|l| l.starts_with("install ") && l.trim_end().ends_with(path));
            assert!(installs, "{doc}: no README install step puts a file there");
        } else {
            panic!("{doc}: neither a man page nor an installed file");
        }
    }
    if !found("systemd-analyze") {
        println!("systemd-analyze not found: the unit is not verified (apt-get install systemd)");
        return;
    }
    // The unit as installed: the binary where ExecStart says, the pages where man finds them.
    let installed = man.path().join("dexscope.service");
    std::fs::write(
        &installed,
        unit.replace("/usr/local/bin/dexscope", env!("CARGO_BIN_EXE_dexscope")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed)
        .env("MANPATH", man.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "systemd-analyze verify: {err}");
}
