//! Reads desired-state files: each path is a `.toml` file or a directory whose `*.toml` files
//! are taken in name order (not recursively; hidden files and other files are ignored).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Diagnostic, Location};

/// Expands `paths` into the files they name, in merge order, without repeats (a file named
/// twice, or named and inside a named directory, is read once).
pub fn expand(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let found = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => dir_files(path, diagnostics),
            Ok(meta) if meta.is_file() => vec![path.clone()],
            Ok(_) => {
                diagnostics.push(Diagnostic::error(
                    Location::whole(path),
                    "is neither a file nor a directory: name a .toml file or a directory of them",
                ));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                diagnostics.push(Diagnostic::error(
                    Location::whole(path),
                    "desired-state path does not exist: check the path (a .toml file or a \
                     directory of them)",
                ));
                continue;
            }
            Err(e) => {
                diagnostics.push(Diagnostic::error(
                    Location::whole(path),
                    format!("cannot read desired-state path: {e}; check its permissions"),
                ));
                continue;
            }
        };
        for file in found {
            let identity = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.insert(identity) {
                files.push(file);
            }
        }
    }
    files
}

/// The `*.toml` files directly inside `dir`, sorted by name.
fn dir_files(dir: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            diagnostics.push(Diagnostic::error(
                Location::whole(dir),
                format!("cannot list desired-state directory: {e}; check its permissions"),
            ));
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        // Hidden files are editor backups and lock files, not state someone meant to add.
        .filter(|name| name.ends_with(".toml") && !name.starts_with('.'))
        .filter(|name| dir.join(name).is_file())
        .collect();
    names.sort();
    if names.is_empty() {
        diagnostics.push(Diagnostic::error(
            Location::whole(dir),
            "desired-state directory holds no .toml files: add one, or name the file directly",
        ));
    }
    names.into_iter().map(|name| dir.join(name)).collect()
}

/// Reads every file `paths` name; problems become diagnostics and the file is left out.
pub fn read_all(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<(PathBuf, String)> {
    expand(paths, diagnostics)
        .into_iter()
        .filter_map(|file| match std::fs::read(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some((file, text)),
                Err(e) => {
                    let (line, col) =
                        super::parse::LineIndex::new(&String::from_utf8_lossy(e.as_bytes()))
                            .line_col(e.utf8_error().valid_up_to());
                    diagnostics.push(Diagnostic::error(
                        Location {
                            file: file.as_path().into(),
                            line,
                            col,
                        },
                        "file is not valid UTF-8: save it as UTF-8",
                    ));
                    None
                }
            },
            Err(e) => {
                diagnostics.push(Diagnostic::error(
                    Location::whole(&file),
                    format!("cannot read desired-state file: {e}; check its permissions"),
                ));
                None
            }
        })
        .collect()
}
