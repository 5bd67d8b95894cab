//! The logs of the real binary against the simulated tenant: JSON fields carry plain values
//! (numbers, strings, absent), never Rust debug text; a fatal error goes through the configured
//! logger; under journald every line carries its syslog priority and no timestamp of its own;
//! `NO_COLOR` turns colour off on a terminal; the guard alert has one name.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dexscope::sim::{self, SimHandle, SimOptions};
use dexscope::state::AlertKind;
use secrecy::ExposeSecret;
use serde_json::Value;

/// Why a logged string looks like Rust debug text, if it does: an `Option`, a `Result`, a struct
/// or enum variant with fields, a `Vec` of strings.
fn debug_text(s: &str) -> Option<&'static str> {
    let patterns: &[(&str, &str)] = &[
        ("Some(", "an Option"),
        ("Ok(", "a Result"),
        ("Err(", "a Result"),
        ("{ ", "a struct"),
        ("[\"", "a Vec"),
    ];
    if let Some((_, why)) = patterns.iter().find(|(p, _)| s.contains(p)) {
        return Some(why);
    }
    let words: Vec<&str> = s
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .collect();
    if words.contains(&"None") {
        return Some("an Option");
    }
    // `Name {` or `Name(`: a capitalised identifier glued to its fields.
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices([' ', '(']) {
        let before = &s[..i];
        let ident = before
            .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or("");
        let opens = if bytes[i] == b' ' {
            s[i..].starts_with(" {")
        } else {
            true
        };
        let camel = ident.len() > 1
            && ident.starts_with(|c: char| c.is_ascii_uppercase())
            && ident.chars().skip(1).any(|c| c.is_ascii_lowercase())
            && ident.chars().all(|c| c.is_ascii_alphanumeric());
        if opens && camel && !ident.chars().all(|c| c.is_ascii_uppercase()) {
            return Some("a struct or enum variant");
        }
    }
    // `(AlreadyPosted)`: a compound enum variant name shown for what it stands for.
    for part in s.split('(').skip(1) {
        let word = part.split(')').next().unwrap_or("");
        let humps = word.chars().filter(char::is_ascii_uppercase).count();
        if part.contains(')')
            && humps >= 2
            && word.starts_with(|c: char| c.is_ascii_uppercase())
            && word.chars().all(|c| c.is_ascii_alphabetic())
            && word.chars().any(|c| c.is_ascii_lowercase())
        {
            return Some("an enum variant");
        }
    }
    None
}

/// Every string in `v` (recursively) with the key it sits under.
fn strings<'a>(v: &'a Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((key.to_string(), s)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, key, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| strings(x, k, out)),
        _ => {}
    }
}

/// Parses every stderr line as a JSON event and fails on any line that is not one, or on any
/// string value that looks like debug text. Returns the events.
fn plain_json(what: &str, stderr: &str) -> Vec<Value> {
    json_events(what, stderr, &[])
}

/// [`plain_json`] for a command that also reports to people on stderr: lines starting with
/// one of `report` are its report, not log events.
fn json_events(what: &str, stderr: &str, report: &[&str]) -> Vec<Value> {
    let mut events = Vec::new();
    for line in stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !report.iter().any(|r| l.starts_with(r)))
    {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: a log line that is not JSON ({e}): {line}"));
        let mut found = Vec::new();
        strings(&v, "", &mut found);
        for (key, s) in found {
            if let Some(why) = debug_text(s) {
                panic!("{what}: field {key:?} holds {why} in debug form: {s:?}\nline: {line}");
            }
        }
        events.push(v);
    }
    events
}

/// How `plan` and `apply` start the lines of their report on stderr (unresolved entries,
/// refusals), which are for the person running them rather than log events.
const REPORT: &[&str] = &["warning: ", "dexscope: "];

fn secret(sim: &SimHandle) -> String {
    sim.client_secret().expose_secret().to_string()
}

/// A desired state of three existing users, one unknown user and two tagged machines (the
/// scoped group holds more users, so `apply` without `--allow-mass-removal` trips the guard).
fn write_desired(sim: &SimHandle, dir: &Path) {
    let mut users: Vec<String> = {
        let state = sim.state();
        let t = state.lock().unwrap();
        t.directory
            .users
            .iter()
            .flatten()
            .take(3)
            .map(|u| u.upn.to_string())
            .collect()
    };
    users.push("nobody@contoso.com".into());
    let devices: Vec<String> = sim
        .machines_with_tag(sim::model::DEVICE_TAG)
        .into_iter()
        .take(2)
        .map(|m| m.dns_name)
        .collect();
    let list = |l: &[String]| {
        l.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.join("desired.toml"),
        format!(
            "users = [{}]\ndevices = [{}]\n",
            list(&users),
            list(&devices)
        ),
    )
    .unwrap();
}

/// config.toml pointed at the sim, with `[log] format = log` and `[metrics] listen`.
fn write_config(sim: &SimHandle, dir: &Path, log: &str, listen: &str) -> PathBuf {
    let head = super::support::sim_config_head(sim);
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{head}device_tag = \"{}\"\ndevice_group_name = \"{}\"\n\
             desired_state = \"desired.toml\"\nmax_removals = 1\n\
             [schedule]\nreconcile_every = \"1h\"\npriority_every = \"1h\"\n\
             incidents_every = \"1h\"\n\
             [state]\npath = \"state.db\"\n[metrics]\nlisten = \"{listen}\"\n\
             [log]\nformat = \"{log}\"\n",
            sim::model::DEVICE_TAG,
            sim::model::DEVICE_GROUP_NAME,
        ),
    )
    .unwrap();
    path
}

/// The binary with the sim's secret and no inherited log settings.
fn dexscope(sim: &SimHandle, config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dexscope"));
    c.arg("--config")
        .arg(config)
        .env("DEXSCOPE_CLIENT_SECRET", secret(sim))
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    c
}

/// Runs a one-shot command to its end (in a blocking thread); returns (exit code, stderr).
async fn one_shot(mut command: Command) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run` until each loop has logged its first pass, then SIGTERM; returns its stderr lines.
async fn daemon_passes(sim: &SimHandle, config: &Path) -> Vec<String> {
    let mut child = dexscope(sim, config)
        .arg("run")
        .env("RUST_LOG", "dexscope=trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |lines: &[String]| {
        ["reconcile pass: ", "priority pass: ", "incidents pass: "]
            .iter()
            .all(|p| lines.iter().any(|l| l.contains(p)))
    };
    while !done(&lines.lock().unwrap()) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "the three passes did not log within 60 s:\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    reader.join().unwrap();
    assert_eq!(code.code(), Some(0), "SIGTERM ends the daemon cleanly");
    Arc::try_unwrap(lines).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_plain_values_in_plan_apply_and_a_daemon_run() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_desired(&sim, dir.path());
    let config = write_config(&sim, dir.path(), "json", "127.0.0.1:0");

    let mut plan = dexscope(&sim, &config);
    plan.arg("plan").env("RUST_LOG", "dexscope=trace");
    let (code, stderr) = one_shot(plan).await;
    assert_eq!(code, Some(2), "changes pending:\n{stderr}");
    let events = json_events("plan", &stderr, REPORT);
    assert!(!events.is_empty(), "{stderr}");

    // Without --allow-mass-removal the guard refuses the removals: an error event.
    let mut apply = dexscope(&sim, &config);
    apply.arg("apply").env("RUST_LOG", "dexscope=trace");
    let (_, stderr) = one_shot(apply).await;
    let events = json_events("apply", &stderr, REPORT);
    let guard = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("removal guard refused")
        })
        .unwrap_or_else(|| panic!("no guard event:\n{stderr}"));
    assert_eq!(guard["level"], "ERROR");
    assert_eq!(guard["alert"], AlertKind::RemovalGuardTripped.as_str());
    assert!(guard["removals"].is_u64(), "{guard}");
    let done = events
        .iter()
        .find(|e| e["message"] == "reconcile pass done")
        .unwrap_or_else(|| panic!("no pass event:\n{stderr}"));
    assert!(done["changes"].is_u64(), "{done}");
    assert!(done["unresolved"].as_u64() >= Some(1), "{done}");
    let how = done["members_read"].as_str().unwrap();
    assert!(
        how.starts_with("full read: ") || how.starts_with("delta round: "),
        "{how}"
    );

    let mut apply = dexscope(&sim, &config);
    apply.args(["apply", "--allow-mass-removal"]);
    let (code, stderr) = one_shot(apply).await;
    json_events("apply --allow-mass-removal", &stderr, REPORT);
    assert!(code.is_some(), "{stderr}");

    let lines = daemon_passes(&sim, &config).await;
    let events = plain_json("run", &lines.join("\n"));
    let running = events
        .iter()
        .find(|e| e["message"] == "dexscope running")
        .expect("a start event");
    assert_eq!(running["loops"], "reconcile,priority,incidents");
    let reconcile = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("reconcile pass: ")
        })
        .unwrap();
    // A number when there is a figure, absent when there is none; never "Some(…)"/"None".
    if let Some(drift) = reconcile.get("drift") {
        assert!(drift.is_u64(), "{reconcile}");
    }
    assert!(reconcile["duration_ms"].is_u64(), "{reconcile}");
    let read = events
        .iter()
        .find(|e| e["message"] == "desired state read")
        .expect("the desired state read event");
    assert!(read.get("commit").is_none_or(Value::is_string), "{read}");
    assert!(read["users"].is_u64(), "{read}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_fatal_error_goes_through_the_json_logger() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_desired(&sim, dir.path());
    // The metrics port is taken for as long as this listener lives: `run` cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let config = write_config(&sim, dir.path(), "json", &listen);
    let mut run = dexscope(&sim, &config);
    run.arg("run");
    let (code, stderr) = one_shot(run).await;
    assert_eq!(code, Some(1), "{stderr}");
    let events = plain_json("run with the port taken", &stderr);
    let last = events.last().expect("the fatal error is logged");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["message"].as_str().unwrap().contains(&listen),
        "the error names the address: {stderr}"
    );
    assert!(!stderr.contains(&secret(&sim)));
    drop(taken);
    sim.shutdown().await;
}

/// The journal's `<device>:<inode>` of a file, as systemd puts it in `JOURNAL_STREAM`.
fn stream_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

/// Runs `apply` (guard refusal: error, pass summary: info) with stderr into `log` and the given
/// `JOURNAL_STREAM` (empty: the log's own); returns the log's lines but `apply`'s report.
async fn apply_into(sim: &SimHandle, config: &Path, log: &Path, stream: &str) -> Vec<String> {
    let file = std::fs::File::create(log).unwrap();
    let stream = if stream.is_empty() {
        stream_id(log)
    } else {
        stream.to_string()
    };
    let mut apply = dexscope(sim, config);
    apply
        .arg("apply")
        .env("JOURNAL_STREAM", stream)
        .stdout(Stdio::null())
        .stderr(file);
    tokio::task::spawn_blocking(move || apply.status().unwrap())
        .await
        .unwrap();
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| !REPORT.iter().any(|r| l.starts_with(r)))
        .map(str::to_string)
        .collect()
}

/// Whether a line starts (after any priority prefix) with an RFC 3339 timestamp.
fn stamped(line: &str) -> bool {
    let rest = line
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .map_or(line, |(_, r)| r);
    let b = rest.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_each_line_carries_its_priority_and_no_timestamp() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_desired(&sim, dir.path());
    let config = write_config(&sim, dir.path(), "text", "127.0.0.1:0");
    let log = dir.path().join("stderr.log");

    // JOURNAL_STREAM names the file stderr is: the journal's stream.
    let lines = apply_into(&sim, &config, &log, "").await;
    let with = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", lines.join("\n")))
    };
    assert!(
        with("removal guard refused").starts_with("<3>ERROR "),
        "{lines:#?}"
    );
    assert!(
        with("reconcile pass done").starts_with("<6> INFO "),
        "{lines:#?}"
    );
    for line in &lines {
        let prefix = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&prefix),
            "a line without its priority: {line}"
        );
        assert!(!stamped(line), "journald stamps lines itself: {line}");
        assert!(!line.contains('\x1b'), "no colour in the journal: {line}");
    }

    // A JOURNAL_STREAM inherited by a process whose stderr goes elsewhere is not the journal.
    let elsewhere = dir.path().join("other");
    std::fs::write(&elsewhere, "").unwrap();
    let lines = apply_into(&sim, &config, &log, &stream_id(&elsewhere)).await;
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(!line.starts_with('<'), "{line}");
        assert!(stamped(line), "plain stderr keeps its timestamp: {line}");
    }

    // JSON under journald: the prefix, then one JSON object (journald strips the prefix).
    let config = write_config(&sim, dir.path(), "json", "127.0.0.1:0");
    let lines = apply_into(&sim, &config, &log, "").await;
    let guard = lines
        .iter()
        .find(|l| l.contains("removal guard refused"))
        .unwrap();
    let json = guard.strip_prefix("<3>").expect("err priority");
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["level"], "ERROR");
    sim.shutdown().await;
}

/// Runs `dexscope --config <missing> plan` on a terminal (`script` allocates one); returns
/// what the terminal showed.
fn on_a_terminal(no_color: Option<&str>) -> String {
    let bin = env!("CARGO_BIN_EXE_dexscope");
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c"])
        .arg(format!("{bin} --config /nonexistent/dexscope.toml plan"))
        .arg("/dev/null")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("DEXSCOPE_CONFIG")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let out = c.output().unwrap_or_else(|e| {
        panic!(
            "`script` runs the binary on a pseudo-terminal ({e}); install it: \
             apt-get install bsdutils"
        )
    });
    assert_eq!(out.status.code(), Some(78));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_turns_the_terminal_colours_off() {
    let coloured = on_a_terminal(None);
    assert!(coloured.contains("cannot read config file"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(plain.contains("cannot read config file"), "{plain}");
    assert!(!plain.contains('\x1b'), "NO_COLOR=1: {plain:?}");
    // no-color.org: an empty NO_COLOR is as if unset.
    assert!(on_a_terminal(Some("")).contains("\x1b["));
}

#[test]
fn the_guard_alert_has_one_name_in_the_docs_and_the_dashboard() {
    let name = AlertKind::RemovalGuardTripped.as_str();
    assert_eq!(name, "removal_guard_tripped");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["README.md", "config/grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for (i, _) in text.match_indices("removal_guard") {
            assert!(
                text[i..].starts_with(name),
                "{file}: the guard alert is {name}, not {:?}",
                &text[i..(i + 30).min(text.len())]
            );
        }
    }
}

#[test]
fn the_debug_text_detector_catches_what_it_must() {
    for bad in [
        "Some(60)",
        "None",
        "Delta { pages: 1, changes: 0 }",
        "Ok(())",
        "Err(x)",
        "[\"reconcile\", \"priority\"]",
        "worst finding: Warning(3)",
        "incident 1: in_scope (AlreadyPosted)",
    ] {
        assert!(debug_text(bad).is_some(), "{bad}");
    }
    for good in [
        "60",
        "delta round: 1 pages, 0 changes",
        "incident 1000: in_scope (comment already posted)",
        "reconcile,priority,incidents",
        "removal guard refused 19 removals from users (max_removals = 10)",
        "GET /v1.0/groups/x/members",
        "dexscope running",
    ] {
        assert_eq!(debug_text(good), None, "{good}");
    }
}

#[test]
fn the_demo_says_what_became_of_each_comment_in_words() {
    let out = Command::new(env!("CARGO_BIN_EXE_dexscope"))
        .args(["demo", "--cycles", "2", "--pause", "0"])
        .env_remove("RUST_LOG")
        .env_remove("DEXSCOPE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let has = |suffix: &str| {
        lines
            .iter()
            .any(|l| l.starts_with("· incident ") && l.ends_with(suffix))
    };
    // The first cycle posts; the second finds the first cycle's comments already there.
    assert!(has("(comment posted)"), "{text}");
    assert!(has("(comment already posted)"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("priority: ") && l.ends_with("worst finding: ok")),
        "{text}"
    );
    for word in [
        "Posted",
        "AlreadyPosted",
        "LoggedOnly",
        "Redirected",
        "Malformed",
        "Gone",
        "Warning",
        "Critical",
        "Some(",
        "None",
    ] {
        assert!(
            !text
                .split(|c: char| !c.is_alphanumeric() && c != '(')
                .any(|w| w == word),
            "the demo shows the Rust name {word}:\n{text}"
        );
    }
}
