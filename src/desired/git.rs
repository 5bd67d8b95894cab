//! Finds the commit id of `HEAD` for a path inside a git work tree by reading `.git` directly
//! (no `git` process: the daemon runs sandboxed and must not depend on a git binary).
//!
//! Handles `.git` as a directory or as a `gitdir:` file (linked worktrees, submodules), the
//! `commondir` of a linked worktree, `HEAD` as a symbolic ref or a detached id, loose refs and
//! `packed-refs`. Anything unexpected yields `None`: the commit id is recorded for the audit
//! trail, never needed to act.

use std::path::{Path, PathBuf};

/// How many symbolic refs are followed before giving up (git itself stops at 5).
const MAX_SYMREF_DEPTH: usize = 5;

/// The commit id `HEAD` points at, lower-case hex, for the work tree that contains `path`;
/// `None` when `path` is not inside a git work tree or `HEAD` names no commit yet.
pub fn head_commit(path: &Path) -> Option<String> {
    let start = absolute(path)?;
    let git_dir = find_git_dir(&start)?;
    let common_dir = common_dir(&git_dir);
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    resolve(&git_dir, &common_dir, head.trim(), 0)
}

fn absolute(path: &Path) -> Option<PathBuf> {
    if path.is_absolute() {
        Some(path.to_path_buf())
    } else {
        Some(std::env::current_dir().ok()?.join(path))
    }
}

/// Walks up from `start` to the first directory holding `.git` and returns the git directory.
fn find_git_dir(start: &Path) -> Option<PathBuf> {
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        let Ok(meta) = std::fs::metadata(&dot_git) else {
            continue;
        };
        if meta.is_dir() {
            return Some(dot_git);
        }
        // A linked worktree or a submodule: `.git` is a file `gitdir: <path>`, the path
        // relative to the directory holding the file.
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
        let git_dir = dir.join(target);
        return git_dir.is_dir().then_some(git_dir);
    }
    None
}

/// Where shared refs live: a linked worktree's git dir names it in `commondir`.
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) if !text.trim().is_empty() => git_dir.join(text.trim()),
        _ => git_dir.to_path_buf(),
    }
}

fn resolve(git_dir: &Path, common_dir: &Path, value: &str, depth: usize) -> Option<String> {
    if let Some(target) = value.strip_prefix("ref:") {
        if depth >= MAX_SYMREF_DEPTH {
            return None;
        }
        let target = target.trim();
        // Ref names never climb out of the git directory.
        if target
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            return None;
        }
        let next = read_ref(git_dir, common_dir, target)?;
        return resolve(git_dir, common_dir, &next, depth + 1);
    }
    object_id(value)
}

/// A loose ref (per-worktree first, then shared), else the `packed-refs` line.
fn read_ref(git_dir: &Path, common_dir: &Path, name: &str) -> Option<String> {
    for dir in [git_dir, common_dir] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            return Some(text.trim().to_string());
        }
    }
    let packed = std::fs::read_to_string(common_dir.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('^'))
        .find_map(|line| {
            let (id, refname) = line.split_once(' ')?;
            (refname.trim() == name).then(|| id.to_string())
        })
}

/// A SHA-1 (40) or SHA-256 (64) object id, lower-cased.
fn object_id(s: &str) -> Option<String> {
    let ok = matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}
