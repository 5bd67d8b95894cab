//! Reads the desired-state files out of one commit's tree: the blob at the path, or the
//! `*.toml` blobs directly in the tree at the path. Objects are addressed by id and never
//! change, so what is read is one commit, whole.

use std::path::PathBuf;

use super::run::Git;
use super::{CommitId, SourceError};

/// The most bytes read from one commit, all files together.
pub const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;

/// The most bytes of tree listing read (a directory of about 100k entries).
const MAX_LISTING_BYTES: usize = 16 * 1024 * 1024;

/// One entry of `git ls-tree -l -z`.
struct Entry {
    mode: String,
    kind: String,
    id: String,
    size: Option<usize>,
    name: String,
}

/// The files at `path` in `commit`, in name order, each named by its path in the repository.
pub fn read(
    git: &Git,
    commit: &CommitId,
    path: &str,
) -> Result<Vec<(PathBuf, String)>, SourceError> {
    let fail = |problem: String| SourceError::Read {
        commit: commit.clone(),
        path: display_path(path),
        problem,
    };
    let blobs: Vec<(String, Entry)> = if path.is_empty() {
        let root = format!("{commit}^{{tree}}");
        toml_entries(git, &root, "", &fail)?
    } else {
        let listing = ls_tree(git, &[commit.as_str(), "--", path], &fail)?;
        let Some(entry) = listing.into_iter().find(|e| e.name == path) else {
            return Err(fail("no such file or directory in the commit".into()));
        };
        match (entry.kind.as_str(), entry.mode.as_str()) {
            ("tree", _) => toml_entries(git, &entry.id, path, &fail)?,
            ("blob", "120000") => return Err(fail("is a symbolic link: name the file".into())),
            ("blob", _) => vec![(path.to_string(), entry)],
            _ => {
                return Err(fail(format!(
                    "is a {}, not a file or directory",
                    entry.kind
                )));
            }
        }
    };
    let total: usize = blobs.iter().filter_map(|(_, e)| e.size).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(fail(format!(
            "holds {total} bytes, more than the {MAX_TOTAL_BYTES} read from one commit"
        )));
    }
    blobs
        .into_iter()
        .map(|(name, entry)| {
            let bytes = git
                .run(&["cat-file", "blob", &entry.id], MAX_TOTAL_BYTES)
                .map_err(|e| fail(format!("cannot read {name}: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| fail(format!("{name} is not valid UTF-8: save it as UTF-8")))?;
            Ok((PathBuf::from(name), text))
        })
        .collect()
}

/// `path` as errors show it: the repository root is `/`.
fn display_path(path: &str) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.into()
    }
}

/// The `*.toml` blobs directly in the tree `tree` (not hidden, not symbolic links), in name
/// order, each with its repository path (`dir/name.toml`).
fn toml_entries(
    git: &Git,
    tree: &str,
    dir: &str,
    fail: &dyn Fn(String) -> SourceError,
) -> Result<Vec<(String, Entry)>, SourceError> {
    let mut entries: Vec<(String, Entry)> = ls_tree(git, &[tree], fail)?
        .into_iter()
        // Hidden files are editor backups and lock files, not state someone meant to add; a
        // symbolic link's blob is its target's name, not a file.
        .filter(|e| e.kind == "blob" && e.mode != "120000")
        .filter(|e| e.name.ends_with(".toml") && !e.name.starts_with('.'))
        .map(|e| {
            let full = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            (full, e)
        })
        .collect();
    entries.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    if entries.is_empty() {
        return Err(fail(
            "directory holds no .toml files: add one, or name the file directly".into(),
        ));
    }
    Ok(entries)
}

fn ls_tree(
    git: &Git,
    target: &[&str],
    fail: &dyn Fn(String) -> SourceError,
) -> Result<Vec<Entry>, SourceError> {
    let mut args = vec!["ls-tree", "-l", "-z", "--full-tree"];
    args.extend_from_slice(target);
    let out = git
        .run(&args, MAX_LISTING_BYTES)
        .map_err(|e| fail(format!("cannot list the tree: {e}")))?;
    out.split(|b| *b == 0)
        .filter(|record| !record.is_empty())
        .map(|record| {
            parse_entry(record).ok_or_else(|| fail("unexpected git ls-tree output".into()))
        })
        .collect()
}

/// `<mode> SP <type> SP <id> SP+ <size or -> TAB <name>` (`git ls-tree --long`).
fn parse_entry(record: &[u8]) -> Option<Entry> {
    let record = std::str::from_utf8(record).ok()?;
    let (meta, name) = record.split_once('\t')?;
    let mut fields = meta.split_whitespace();
    let mode = fields.next()?.to_string();
    let kind = fields.next()?.to_string();
    let id = fields.next()?.to_string();
    let size = fields.next()?.parse().ok();
    Some(Entry {
        mode,
        kind,
        id,
        size,
        name: name.to_string(),
    })
}
