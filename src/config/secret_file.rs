//! Opening a secret file safely: no symbolic link followed, a regular file only, a size cap, and
//! (outside `$CREDENTIALS_DIRECTORY`) owned by this user and private to it.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::text::one_line;

/// The largest secret file read: a PEM with its chain is a few KiB; anything this big is not a
/// secret file, and a device such as `/dev/zero` would otherwise be read for ever.
pub(super) const MAX_SECRET_FILE: u64 = 256 * 1024;

/// Why a secret file was not read: what is wrong and what to do. Never holds the content.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) problem: String,
    pub(super) todo: String,
}

fn refuse(problem: impl Into<String>, todo: impl Into<String>) -> Refusal {
    Refusal {
        problem: problem.into(),
        todo: todo.into(),
    }
}

/// The bytes of the secret file at `path`. `managed` is true under `$CREDENTIALS_DIRECTORY`,
/// where systemd owns the file's owner and mode, so only those two checks are skipped there.
pub(super) fn read(path: &Path, managed: bool) -> Result<Vec<u8>, Refusal> {
    let shown = path.display().to_string();
    // O_NOFOLLOW: a link planted in place of the secret is refused rather than followed;
    // O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just below).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_refusal(&e, &shown))?;
    let meta = file.metadata().map_err(|e| {
        refuse(
            format!("cannot be read ({})", one_line(&e.to_string())),
            "check the file",
        )
    })?;
    check_kind_and_size(&meta, &shown)?;
    if !managed {
        check_owner_and_mode(&meta, &shown)?;
    }
    read_capped(file)
}

fn open_refusal(e: &std::io::Error, shown: &str) -> Refusal {
    match e.kind() {
        std::io::ErrorKind::NotFound => refuse(
            format!("cannot be read ({})", one_line(&e.to_string())),
            "create it, or fix the file name (relative names are looked up in \
             $CREDENTIALS_DIRECTORY, then next to the config file)",
        ),
        // Linux answers ELOOP when O_NOFOLLOW meets a symbolic link.
        _ if e.raw_os_error() == Some(libc::ELOOP) => refuse(
            "is a symbolic link, which is not followed for a secret",
            format!(
                "replace the link with the file itself (cp --remove-destination \"$(readlink -f {shown})\" {shown}) or point the config at the target"
            ),
        ),
        _ => refuse(
            format!("cannot be read ({})", one_line(&e.to_string())),
            "make it readable by the dexscope user",
        ),
    }
}

fn check_kind_and_size(meta: &Metadata, shown: &str) -> Result<(), Refusal> {
    if !meta.is_file() {
        return Err(refuse(
            "is not a regular file",
            format!("write the secret into a regular file and name it here instead of {shown}"),
        ));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(refuse(
            format!(
                "is {} bytes, more than a secret file may hold ({MAX_SECRET_FILE})",
                meta.len()
            ),
            "check that the setting names the secret file",
        ));
    }
    Ok(())
}

fn check_owner_and_mode(meta: &Metadata, shown: &str) -> Result<(), Refusal> {
    if let Some(me) = effective_uid()
        && meta.uid() != me
    {
        return Err(refuse(
            format!(
                "is owned by user id {}, not by the user dexscope runs as ({me})",
                meta.uid()
            ),
            format!(
                "chown the file to the dexscope user (chown {me} {shown}) or load it with systemd LoadCredential="
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(
            format!(
                "is readable or writable by group or others (mode {:04o})",
                meta.mode() & 0o7777
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    Ok(())
}

/// This process's effective user id. proc(5): `/proc/[pid]` is owned by the process's effective
/// user id; read that way it needs no `unsafe` call. `None` where `/proc` is not mounted, and
/// the owner check is then skipped (the mode check still applies).
fn effective_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Reads at most one byte past the cap, so a file that grows while read is still refused.
fn read_capped(file: File) -> Result<Vec<u8>, Refusal> {
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            refuse(
                format!("cannot be read ({})", one_line(&e.to_string())),
                "check the file",
            )
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(refuse(
            format!("holds more than a secret file may ({MAX_SECRET_FILE} bytes)"),
            "check that the setting names the secret file",
        ));
    }
    Ok(bytes)
}
