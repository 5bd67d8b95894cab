//! The SQLite state database: audit log, cursors, tag timestamps, alert state, incident pickups.
//!
//! One file (`state.path`, default `/var/lib/dexscope/state.db`) in WAL mode, so `status` and
//! `check` in other processes read while the daemon writes. The schema is versioned with
//! `PRAGMA user_version` and migrated forward on open; every write is one transaction. Times are
//! stored as RFC 3339 UTC text with microseconds, so they sort as text.
//!
//! The audit log is meant to be queried by operators:
//!
//! ```sh
//! sqlite3 -header -column /var/lib/dexscope/state.db \
//!   "select at, grp, operation, object_label, object_id, result, message, request_id, commit_id,
//!           settled_at
//!      from audit where at >= '2026-12-01' order by id desc limit 50"
//! ```
//!
//! Columns of `audit`: `id` (insertion order), `at`, `grp` (`users`|`devices`), `object_id`,
//! `object_label`, `operation` (`add`|`remove`|`tag`|`untag`), `result` (`ok`|`already`|
//! `failed`|`pending`), `message` (why it failed, or how a pending row was settled),
//! `request_id` (the API request id), `commit_id` (the desired-state commit), `settled_at` (set
//! when a later pass settled a row left `pending` by an interrupted one). A row is written
//! `pending` before its request is sent, so a crash loses no record.
//!
//! The connection sits behind a mutex, so a [`State`] can be shared (`Arc<State>`) by the loops
//! of one process; calls are short, blocking SQLite calls.

mod alerts;
mod audit;
mod cursors;
mod gitsource;
mod guard;
mod passes;
mod pickup;
pub mod records;
mod schema;
mod selectors;
mod snapshot;
mod tags;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, Transaction};

pub use alerts::{AlertKind, AlertRecord, AlertSeverity, AlertState};
pub use audit::{AuditEntry, ChangeResult, FinishedChange, Operation, PendingChange};
pub use cursors::PostedVerdict;
pub use gitsource::{GitSourceRecord, RefusedHead};
pub use guard::GuardRefusal;
pub use passes::LoopPass;
pub use pickup::{AgreementCount, PickupRecord};
pub use schema::SCHEMA_VERSION;
pub use snapshot::MemberSync;

/// How long a write waits for another process's write to finish before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What failed, on which database file. Messages say what to check; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}; check that dexscope may write there")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no state database at {path}: has the daemon run? start it (dexscope run) or check [state] path"
    )]
    Missing { path: PathBuf },
    #[error(
        "the state database {path} has schema version {found}, older than this dexscope writes ({known}); start the daemon once to migrate it"
    )]
    TooOld {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot open the state database {path}; check state.path and its permissions")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate the state database {path} to schema version {version}")]
    Migrate {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database {path} has schema version {found}, newer than this dexscope knows ({known}); run a newer dexscope or point state.path elsewhere"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot {op} in the state database {path}")]
    Query {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the state database {path} holds a malformed {what}: {value:?}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        value: String,
    },
}

/// The open state database.
pub struct State {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Opens (creating the parent directory and the file when missing) and migrates the
    /// database. Safe to call from several processes at once: migrations run in an immediate
    /// transaction that re-reads the version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL lets readers in other processes (`status`, `check`) run beside the daemon.
        let _mode: String = conn
            .query_row("pragma journal_mode = wal", [], |r| r.get(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "normal")
            .map_err(open_err)?;
        let state = State {
            path,
            conn: Mutex::new(conn),
        };
        state.migrate()?;
        Ok(state)
    }

    /// Opens an existing database read-only, for readers beside the daemon (`status`,
    /// `check`): nothing is created, migrated or written, so a reader never changes the
    /// daemon's file and works on a read-only copy. A schema this build does not read exactly
    /// is refused with what to do.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StateError> {
        use rusqlite::OpenFlags;
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(StateError::Missing { path });
        }
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let state = State {
            path,
            conn: Mutex::new(conn),
        };
        let found = state.schema_version()?;
        let known = schema::SCHEMA_VERSION;
        if found > known {
            return Err(StateError::TooNew {
                path: state.path,
                found,
                known,
            });
        }
        if found < known {
            return Err(StateError::TooOld {
                path: state.path,
                found,
                known,
            });
        }
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.query_row("pragma user_version", [], |r| r.get(0))
            .map_err(|e| self.query("read the schema version", e))
    }
    // Plumbing.

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the transaction
        // rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut conn = self.conn();
        let run = || {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.query(op, e))
    }

    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let conn = self.conn();
        f(&conn).map_err(|e| self.query(op, e))
    }

    fn query(&self, op: &'static str, source: rusqlite::Error) -> StateError {
        StateError::Query {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &'static str, value: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            what,
            value: value.chars().take(80).collect(),
        }
    }

    fn parse_ts(&self, what: &'static str, s: &str) -> Result<DateTime<Utc>, StateError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| self.corrupt(what, s))
    }
}

/// RFC 3339 UTC with a fixed number of digits, so stored times sort as text.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}
