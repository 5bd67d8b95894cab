//! Tidy checks: the architecture written at the top of `src/lib.rs` held against the code.
//!
//! Reads the sources as text (no build step, no dependency) and fails when
//! - a file under `src/` does not open with its `//!` line;
//! - a file holds more than 800 lines of non-test code, or a function runs past 100 lines
//!   (data tables named in [`LONG_TABLES`] excepted);
//! - a module listed as pure in `lib.rs` gains an `async fn`, a client or runtime type, file or
//!   network I/O, or a clock read;
//! - the module graph built from `crate::…` and `super::…` paths has a cycle, between files or
//!   between top-level modules, or an arrow that runs against the layers written in `lib.rs`.
//!
//! Each failure names the file and what to do, as `cargo test --test tidy` prints it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest non-test part a file may have.
const MAX_FILE_LINES: usize = 800;
/// Longest function body, braces included.
const MAX_FN_LINES: usize = 100;
/// Functions that are data tables, not logic: long by nature, read as a list.
const LONG_TABLES: &[&str] = &[];

/// What a pure module must not contain: the marks of async code, clients, I/O and clocks.
const IMPURE: &[(&str, &str)] = &[
    ("async fn", "an async function"),
    (".await", "an await"),
    ("reqwest", "the HTTP client"),
    ("tokio::", "the async runtime"),
    ("rusqlite", "the database"),
    ("std::fs", "file I/O"),
    ("std::net", "network I/O"),
    // Types from lower layers are fine (a record, a change); their handles are not.
    ("crate::tenant", "a tenant connection"),
    ("crate::http", "the HTTP layer"),
    ("GraphClient", "the Graph client"),
    ("DefenderClient", "the MDE client"),
    ("state::State", "the state database"),
    ("State::open", "the state database"),
    ("Utc::now", "a clock read"),
    ("Local::now", "a clock read"),
    ("SystemTime::now", "a clock read"),
    ("Instant::now", "a clock read"),
];

#[test]
fn every_file_opens_with_its_doc_line() {
    let bad: Vec<String> = sources()
        .iter()
        .filter(|s| !s.text.trim_start().starts_with("//!"))
        .map(|s| format!("{}: add a `//!` line saying what the file is for", s.rel))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn files_and_functions_stay_short() {
    let mut bad = Vec::new();
    for s in sources() {
        let code = non_test(&s.text);
        let lines = code.lines().count();
        if lines > MAX_FILE_LINES {
            bad.push(format!(
                "{}: {lines} lines of non-test code (at most {MAX_FILE_LINES}): split it along its sections",
                s.rel
            ));
        }
        for (name, line, len) in functions(&code) {
            if len > MAX_FN_LINES && !LONG_TABLES.contains(&name.as_str()) {
                bad.push(format!(
                    "{}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES}): split it at a step boundary",
                    s.rel
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn pure_modules_stay_pure() {
    let arch = architecture();
    assert!(!arch.pure.is_empty(), "lib.rs lists no pure modules");
    let all = sources();
    let mut bad = Vec::new();
    for pure in &arch.pure {
        let files: Vec<&Source> = all.iter().filter(|s| within(&s.module, pure)).collect();
        if files.is_empty() {
            bad.push(format!(
                "lib.rs lists `{pure}` as pure but no such module exists"
            ));
        }
        for s in files {
            let code = strip_comments_and_strings(&non_test(&s.text));
            for (mark, what) in IMPURE {
                if let Some(at) = code.find(mark) {
                    let line = code[..at].lines().count().max(1);
                    bad.push(format!(
                        "{}:{line}: {what} (`{mark}`) in a module lib.rs lists as pure: take it as a parameter or move it to the caller",
                        s.rel
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The daemon schedules and wires; what a finding means (its alert, severity and words) is
/// decided by a pure function beside the finding's module, as `alerts::observe`,
/// `reconcile::observe` and `incidents::observe` do.
#[test]
fn the_daemon_decides_no_alert() {
    let bad: Vec<String> = sources()
        .iter()
        .filter(|s| within(&s.module, "daemon"))
        .flat_map(|s| {
            let code = strip_comments_and_strings(&non_test(&s.text));
            ["Observation::bad", "Observation::good", "AlertSeverity::"]
                .into_iter()
                .filter(move |mark| code.contains(mark))
                .map(move |mark| {
                    format!(
                        "{}: `{mark}` decides an alert in the daemon: build the observation in a pure `observe` function",
                        s.rel
                    )
                })
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn module_graph_has_no_cycle_between_files() {
    let graph = file_graph(&sources());
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between modules: {}\nmove what both need into a lower module",
            cycle.join(" → ")
        );
    }
}

#[test]
fn top_level_modules_follow_the_layers() {
    let arch = architecture();
    let all = sources();
    let tops: BTreeSet<String> = all.iter().map(|s| top(&s.module).to_string()).collect();
    let mut bad = Vec::new();
    for t in &tops {
        if t != "lib" && t != "main" && !arch.layers.contains_key(t) {
            bad.push(format!(
                "module `{t}` is in no layer of lib.rs: add it to the layer list"
            ));
        }
    }
    for t in arch.layers.keys() {
        if !tops.contains(t) {
            bad.push(format!(
                "lib.rs places `{t}` in a layer but src/ has no such module"
            ));
        }
    }
    let graph = top_graph(&all);
    for (from, tos) in &graph {
        let (Some(lf), true) = (arch.layers.get(from), from != "main") else {
            continue;
        };
        for to in tos {
            if let Some(lt) = arch.layers.get(to)
                && lt > lf
            {
                bad.push(format!(
                    "`{from}` (layer {lf}) uses `{to}` (layer {lt}): a module may use only its own layer and those above it in lib.rs"
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        bad.push(format!(
            "import cycle between top-level modules: {}",
            cycle.join(" → ")
        ));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn codemap_names_every_top_level_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let codemap = section(&lib, "# Codemap");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))
        })
        .map(|l| l.trim_end_matches(';'))
        .collect();
    // A codemap line names its modules before the first colon: "- `graph`, `defender`: …".
    let named: BTreeSet<String> = codemap
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_once("`:").map(|(names, _)| format!("{names}`")))
        .flat_map(|names| backticked(&names))
        .collect();
    let bad: Vec<String> = declared
        .iter()
        .filter(|m| !named.contains(**m))
        .map(|m| format!("module `{m}` has no `- `{m}`: …` line in lib.rs's codemap"))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The checker's own checks: each rule must be able to fail.

#[test]
fn the_checks_catch_what_they_are_for() {
    // A cycle of three.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert!(find_cycle(&g).is_none());

    // Function lengths, with braces inside strings, chars and comments not counted.
    let code = "fn short() {\n    let s = \"}}}\";\n}\n\nfn long() {\n// {\n    let c = '{';\n"
        .to_string()
        + &"    x();\n".repeat(101)
        + "}\n";
    let fns = functions(&code);
    assert_eq!(fns[0], ("short".to_string(), 1, 3));
    assert_eq!(fns[1].0, "long");
    assert!(fns[1].2 > MAX_FN_LINES);

    // Paths to modules, with braces and `super`.
    let modules: BTreeSet<String> = ["a", "a::b", "c", "c::d"].map(String::from).into();
    let uses = module_uses(
        "use crate::a::{b::X, Y};\nuse super::d::Z;\nfn f() { crate::c::g(); }",
        "c::e",
        &modules,
    );
    assert_eq!(uses, ["a", "a::b", "c", "c::d"].map(String::from).into());

    // The impure marks are seen in code, not in comments or strings.
    let text =
        strip_comments_and_strings("// Utc::now\nlet s = \"async fn\";\nlet t = Utc::now();");
    assert!(!text.contains("async fn") && text.contains("Utc::now"));
}

// ---------------------------------------------------------------------------------------------
// Reading the sources.

struct Source {
    /// Path from the repository root, for messages.
    rel: String,
    /// Module path (`reconcile::plan`); `lib` and `main` for the crate roots.
    module: String,
    text: String,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources() -> Vec<Source> {
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn walk(dir: &Path, out: &mut Vec<Source>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            out.push(Source {
                rel: format!("src/{}", path.strip_prefix(src()).unwrap().display()),
                module: parts.join("::"),
                text: std::fs::read_to_string(&path).unwrap(),
            });
        }
    }
}

/// The code before the file's test module (`#[cfg(test)]` followed by `mod …` at the margin).
fn non_test(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].starts_with("#[cfg(test)]")
                && lines.get(i + 1).is_some_and(|n| n.starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end].join("\n")
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn within(module: &str, root: &str) -> bool {
    module == root || module.starts_with(&format!("{root}::"))
}

/// Comments, string and char literals replaced by blanks, so that braces and words inside them
/// are not read as code. Line breaks are kept, so line numbers stay true.
fn strip_comments_and_strings(code: &str) -> String {
    let b: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            out.push_str("\"\"");
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a): only the first is blanked.
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Every `fn` with a body: its name, first line (1-based) and length in lines.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let clean = strip_comments_and_strings(code);
    let lines: Vec<&str> = clean.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let mut depth = 0i64;
        let mut opened = false;
        for (j, l) in lines.iter().enumerate().skip(i) {
            for ch in l.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break,
                    _ => {}
                }
            }
            if !opened && l.trim_end().ends_with(';') {
                break; // a declaration without a body (trait item, extern)
            }
            if opened && depth <= 0 {
                out.push((name.clone(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    // Everything before `fn` must be a qualifier, so `fn` in an expression is not taken.
    let qualifiers = ["pub", "async", "const", "unsafe", "extern", "\"C\""];
    let before_ok = words[..at]
        .iter()
        .all(|w| qualifiers.contains(w) || w.starts_with("pub("));
    if !before_ok {
        return None;
    }
    let name: String = words
        .get(at + 1)?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// The module graph.

/// The modules a file's non-test code names through `crate::…` and `super::…` paths, each path
/// taken to the deepest module that exists.
fn module_uses(code: &str, module: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let clean = strip_comments_and_strings(code);
    let mut paths = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = clean.as_str();
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            rest = &rest[at..];
            let end = path_end(rest);
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                expand(&rest[..end], &mut paths);
            }
            rest = &rest[start.len()..];
        }
    }
    let mut out = BTreeSet::new();
    for path in paths {
        let mut parts: Vec<&str> = path.split("::").collect();
        let base: Vec<String> = match parts.first() {
            Some(&"crate") => {
                parts.remove(0);
                Vec::new()
            }
            Some(&"super") => {
                let mut m: Vec<String> = module.split("::").map(String::from).collect();
                while parts.first() == Some(&"super") {
                    parts.remove(0);
                    m.pop();
                }
                m
            }
            _ => continue,
        };
        let mut best = None;
        let mut cur = base.clone();
        if !cur.is_empty() && modules.contains(&cur.join("::")) {
            best = Some(cur.join("::"));
        }
        for p in parts {
            cur.push(p.to_string());
            let name = cur.join("::");
            if modules.contains(&name) {
                best = Some(name);
            } else {
                break;
            }
        }
        if let Some(b) = best {
            out.insert(b);
        }
    }
    out
}

/// Where a path that starts at the front of `s` ends, braces of a `use` tree included.
fn path_end(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => return i,
        }
    }
    s.len()
}

/// `a::{b::C, d}` → `a::b::C`, `a::d`.
fn expand(path: &str, out: &mut Vec<String>) {
    let Some(open) = path.find('{') else {
        out.push(path.trim_end_matches("::").to_string());
        return;
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    for item in items {
        let item: String = item.split_whitespace().collect();
        let item = item.split(" as ").next().unwrap_or("").trim();
        if item.is_empty() || item == "self" {
            out.push(prefix.trim_end_matches("::").to_string());
        } else {
            expand(&format!("{prefix}{item}"), out);
        }
    }
}

/// Arrows between files; a module naming its own ancestor (a child using what its `mod.rs`
/// declares) is not an arrow, nor is a parent naming its child.
fn file_graph(all: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = all.iter().map(|s| s.module.clone()).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in all {
        if s.module == "lib" || s.module == "main" {
            continue;
        }
        let uses = module_uses(&non_test(&s.text), &s.module, &modules);
        let edges = g.entry(s.module.clone()).or_default();
        for u in uses {
            if !within(&s.module, &u) && !within(&u, &s.module) {
                edges.insert(u);
            }
        }
    }
    g
}

fn top_graph(all: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in file_graph(all) {
        let edges = g.entry(top(&from).to_string()).or_default();
        for to in tos {
            if top(&to) != top(&from) {
                edges.insert(top(&to).to_string());
            }
        }
    }
    g
}

/// One cycle, as the list of nodes with the first repeated at the end, or none.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(n, g, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The architecture as lib.rs writes it.

struct Architecture {
    /// Top-level module → its layer (1 is the bottom).
    layers: BTreeMap<String, usize>,
    /// Modules (and everything under them) that must stay pure.
    pure: Vec<String>,
}

fn architecture() -> Architecture {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let text = section(&lib, "# Layers");
    assert!(!text.is_empty(), "lib.rs has no `# Layers` section");
    let mut layers = BTreeMap::new();
    let mut pure = Vec::new();
    let mut in_pure = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some((n, rest)) = line.split_once(". ")
            && let Ok(n) = n.parse::<usize>()
        {
            for name in backticked(rest) {
                layers.insert(name, n);
            }
            in_pure = false;
        } else if line.starts_with("Pure modules") {
            in_pure = true;
            pure.extend(backticked(line.split_once(':').map_or("", |(_, r)| r)));
        } else if in_pure && !line.is_empty() {
            pure.extend(backticked(line));
        } else if line.is_empty() {
            in_pure = false;
        }
    }
    Architecture { layers, pure }
}

/// The doc text of one `//! # Heading` section of lib.rs, without the `//!` marks.
fn section(lib: &str, heading: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            if inside {
                break;
            }
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with("# ") {
            inside = doc == heading;
            continue;
        }
        if inside {
            out.push_str(doc);
            out.push('\n');
        }
    }
    out
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}
