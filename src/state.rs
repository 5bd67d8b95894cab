//! The SQLite state database: audit log, cursors, tag timestamps, alert state.
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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use crate::alerts::{AlertKind, AlertRecord, AlertSeverity, AlertState};
use crate::model::{GroupMember, MachineId, ObjectId, Upn, UserId};
use crate::reconcile::plan::GroupKind;

/// How long a write waits for another process's write to finish before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; migration `i` brings the database to `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
create table audit (
    id           integer primary key,
    at           text not null,
    grp          text not null,
    object_id    text not null,
    object_label text not null,
    operation    text not null,
    result       text not null,
    message      text,
    request_id   text,
    commit_id    text
);
create index audit_at on audit (at);
create table cursor (
    name  text primary key,
    value text not null
);
create table verdict (
    incident_id text not null,
    digest      text not null,
    verdict     text not null,
    at          text not null,
    primary key (incident_id, digest)
);
create index verdict_at on verdict (at);
create table tagged (
    machine_id text primary key,
    since      text not null
);
create table alert (
    kind          text not null,
    subject       text not null,
    state         text not null,
    since         text not null,
    last_notified text,
    severity      text not null,
    summary       text not null,
    details       text not null,
    primary key (kind, subject)
);
create table guard_refusal (
    grp          text primary key,
    removals     integer not null,
    max_removals integer not null,
    at           text not null
);
create table loop_pass (
    loop     text primary key,
    started  text not null,
    finished text not null,
    ok       integer not null,
    summary  text not null
);
"#,
    // 2: the user group's membership snapshot and its delta link (see "Member snapshot").
    r#"
create table member_sync (
    grp        text primary key,
    group_id   text not null,
    delta_link text not null,
    link_at    text not null,
    full_at    text not null
);
create table member_snapshot (
    id           text primary key,
    odata_type   text not null,
    upn          text,
    display_name text
);
"#,
    // 3: audit rows are written `pending` before their request is sent and settled afterwards;
    // `settled_at` is set when a pass settled a row left pending by an interrupted one.
    r#"
alter table audit add column settled_at text;
create index audit_pending on audit (id) where result = 'pending';
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What failed, on which database file. Messages say what to check; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}; check that dexscope may write there")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// The audited operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Add,
    Remove,
    Tag,
    Untag,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Remove => "remove",
            Operation::Tag => "tag",
            Operation::Untag => "untag",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Operation::Add,
            Operation::Remove,
            Operation::Tag,
            Operation::Untag,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// How an applied change ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeResult {
    Ok,
    /// "Already a member" / "not a member": the desired effect held already.
    Already,
    Failed(String),
    /// Written before the request was sent; not yet known to have taken effect.
    Pending,
}

impl ChangeResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeResult::Ok => "ok",
            ChangeResult::Already => "already",
            ChangeResult::Failed(_) => "failed",
            ChangeResult::Pending => "pending",
        }
    }
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub group: GroupKind,
    pub object_id: String,
    pub object_label: String,
    pub operation: Operation,
    pub result: ChangeResult,
    pub request_id: Option<String>,
    /// The desired state's git commit, when it lives in a work tree.
    pub commit_id: Option<String>,
}

/// An audit row written `pending` and not yet settled ([`State::pending_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// The row id in `audit`.
    pub row: i64,
    pub group: GroupKind,
    pub object_id: String,
    pub operation: Operation,
}

/// The result of one pending audit row ([`State::finish_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedChange {
    pub row: i64,
    pub result: ChangeResult,
    /// Kept in `message` when the result is not a failure (how the row was settled).
    pub note: Option<String>,
    pub request_id: Option<String>,
}

/// A verdict comment posted on an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedVerdict {
    pub incident_id: String,
    pub digest: String,
    /// `in_scope` | `out_of_scope`.
    pub verdict: String,
    pub at: DateTime<Utc>,
}

/// The removal guard refused a group's removals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRefusal {
    pub group: GroupKind,
    pub removals: u64,
    pub max_removals: u32,
    pub at: DateTime<Utc>,
}

/// The last pass of one loop (`reconcile`, `priority`, `incidents`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopPass {
    pub loop_name: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub ok: bool,
    pub summary: Value,
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.query_row("pragma user_version", [], |r| r.get(0))
            .map_err(|e| self.query("read the schema version", e))
    }

    fn migrate(&self) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| StateError::Migrate {
                path: self.path.clone(),
                version: SCHEMA_VERSION,
                source,
            })?;
        let found: i64 = tx
            .query_row("pragma user_version", [], |r| r.get(0))
            .map_err(|e| self.query("read the schema version", e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            let migrate_err = |source| StateError::Migrate {
                path: self.path.clone(),
                version,
                source,
            };
            tx.execute_batch(sql).map_err(migrate_err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(migrate_err)?;
        }
        tx.commit().map_err(|source| StateError::Migrate {
            path: self.path.clone(),
            version: SCHEMA_VERSION,
            source,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Audit log.

    /// Appends one applied change to the audit log.
    pub fn record_change(&self, entry: &AuditEntry) -> Result<(), StateError> {
        self.record_changes(std::slice::from_ref(entry))
    }

    /// Appends applied changes in one transaction (a pass may apply thousands).
    pub fn record_changes(&self, entries: &[AuditEntry]) -> Result<(), StateError> {
        self.write("record changes in the audit log", |tx| {
            let mut stmt = tx.prepare_cached(
                "insert into audit (at, grp, object_id, object_label, operation, result, \
                 message, request_id, commit_id) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in entries {
                let message = match &e.result {
                    ChangeResult::Failed(m) => Some(m.as_str()),
                    _ => None,
                };
                stmt.execute(params![
                    ts(e.at),
                    e.group.as_str(),
                    e.object_id,
                    e.object_label,
                    e.operation.as_str(),
                    e.result.as_str(),
                    message,
                    e.request_id,
                    e.commit_id,
                ])?;
            }
            Ok(())
        })
    }

    /// The latest `limit` audit entries, newest first.
    pub fn recent_changes(&self, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        let op = "read the audit log";
        let rows: Vec<[Option<String>; 9]> = self.read(op, |conn| {
            let mut stmt = conn.prepare(
                "select at, grp, object_id, object_label, operation, result, message, \
                 request_id, commit_id from audit order by id desc limit ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok([
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ])
            })?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(
                |[
                    at,
                    grp,
                    id,
                    label,
                    operation,
                    result,
                    message,
                    request,
                    commit,
                ]| {
                    let text = |v: Option<String>| v.unwrap_or_default();
                    let group = match text(grp).as_str() {
                        "users" => GroupKind::Users,
                        "devices" => GroupKind::Devices,
                        other => return Err(self.corrupt("audit group", other)),
                    };
                    let operation_text = text(operation);
                    let operation = Operation::parse(&operation_text)
                        .ok_or_else(|| self.corrupt("audit operation", &operation_text))?;
                    let result = match text(result).as_str() {
                        "ok" => ChangeResult::Ok,
                        "already" => ChangeResult::Already,
                        "failed" => ChangeResult::Failed(text(message)),
                        "pending" => ChangeResult::Pending,
                        other => return Err(self.corrupt("audit result", other)),
                    };
                    Ok(AuditEntry {
                        at: self.parse_ts("audit time", &text(at))?,
                        group,
                        object_id: text(id),
                        object_label: text(label),
                        operation,
                        result,
                        request_id: request,
                        commit_id: commit,
                    })
                },
            )
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Incident cursor and verdicts.

    /// The stored poll cursor `name` (e.g. `incidents`), if any.
    pub fn get_cursor(&self, name: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let value: Option<String> = self.read("read the poll cursor", |conn| {
            conn.query_row("select value from cursor where name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
        })?;
        value.map(|v| self.parse_ts("poll cursor", &v)).transpose()
    }

    pub fn set_cursor(&self, name: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        self.write("store the poll cursor", |tx| {
            tx.execute(
                "insert into cursor (name, value) values (?1, ?2) \
                 on conflict (name) do update set value = excluded.value",
                params![name, ts(at)],
            )?;
            Ok(())
        })
    }

    /// Records a posted verdict comment; recording the same incident and digest again is a
    /// no-op (a pass may run again after a crash between the POST and this write).
    pub fn record_verdict(&self, v: &PostedVerdict) -> Result<(), StateError> {
        self.write("record a posted verdict", |tx| {
            tx.execute(
                "insert or ignore into verdict (incident_id, digest, verdict, at) \
                 values (?1, ?2, ?3, ?4)",
                params![v.incident_id, v.digest, v.verdict, ts(v.at)],
            )?;
            Ok(())
        })
    }

    /// Whether this verdict (incident + marker digest) was recorded as posted. The incident's
    /// own comments stay the authority for exactly-once posting; this is a fast path.
    pub fn verdict_posted(&self, incident_id: &str, digest: &str) -> Result<bool, StateError> {
        self.read("look up a posted verdict", |conn| {
            conn.query_row(
                "select 1 from verdict where incident_id = ?1 and digest = ?2",
                [incident_id, digest],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
    }

    /// The latest `limit` posted verdicts, newest first.
    pub fn recent_verdicts(&self, limit: usize) -> Result<Vec<PostedVerdict>, StateError> {
        let rows: Vec<(String, String, String, String)> =
            self.read("read posted verdicts", |conn| {
                let mut stmt = conn.prepare(
                    "select incident_id, digest, verdict, at from verdict \
                     order by at desc, incident_id limit ?1",
                )?;
                let rows = stmt.query_map([limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect()
            })?;
        rows.into_iter()
            .map(|(incident_id, digest, verdict, at)| {
                Ok(PostedVerdict {
                    incident_id,
                    digest,
                    verdict,
                    at: self.parse_ts("verdict time", &at)?,
                })
            })
            .collect()
    }

    /// Posted verdicts since `since`, counted per verdict, sorted by verdict.
    pub fn verdict_counts(&self, since: DateTime<Utc>) -> Result<Vec<(String, u64)>, StateError> {
        self.read("count posted verdicts", |conn| {
            let mut stmt = conn.prepare(
                "select verdict, count(*) from verdict where at >= ?1 group by verdict order by verdict",
            )?;
            let rows = stmt.query_map([ts(since)], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    // -----------------------------------------------------------------------------------------
    // Tag timestamps (the grace period of the priority check).

    /// Notes that a machine carries the tag from `at` on (dexscope tagged it, or first saw it
    /// tagged). An earlier note wins: the grace period starts once.
    pub fn note_tagged(&self, machine: &MachineId, at: DateTime<Utc>) -> Result<(), StateError> {
        self.note_tagged_many(std::slice::from_ref(machine), at)
    }

    /// [`State::note_tagged`] for many machines in one transaction.
    pub fn note_tagged_many(
        &self,
        machines: &[MachineId],
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let at = ts(at);
        self.write("note tagged machines", |tx| {
            let mut stmt = tx.prepare_cached(
                "insert into tagged (machine_id, since) values (?1, ?2) \
                 on conflict (machine_id) do update set since = min(since, excluded.since)",
            )?;
            for m in machines {
                stmt.execute(params![m.as_str(), at])?;
            }
            Ok(())
        })
    }

    /// When the machine was tagged or first seen tagged, if noted.
    pub fn first_seen_tagged(
        &self,
        machine: &MachineId,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let value: Option<String> = self.read("read a tag time", |conn| {
            conn.query_row(
                "select since from tagged where machine_id = ?1",
                [machine.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        value.map(|v| self.parse_ts("tag time", &v)).transpose()
    }

    /// Every noted tag time (one read for a whole priority pass).
    pub fn tagged_since_all(
        &self,
    ) -> Result<std::collections::HashMap<MachineId, DateTime<Utc>>, StateError> {
        let rows: Vec<(String, String)> = self.read("read tag times", |conn| {
            let mut stmt = conn.prepare("select machine_id, since from tagged")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(id, since)| {
                let id = MachineId::parse(&id).map_err(|_| self.corrupt("machine id", &id))?;
                Ok((id, self.parse_ts("tag time", &since)?))
            })
            .collect()
    }

    /// Forgets the tag times of machines no longer tagged (so a later re-tag starts a fresh
    /// grace period). `still_tagged` is every machine carrying the tag now. Returns how many
    /// were forgotten.
    pub fn forget_untagged(&self, still_tagged: &[MachineId]) -> Result<usize, StateError> {
        let keep: HashSet<&str> = still_tagged.iter().map(|m| m.as_str()).collect();
        self.write("forget untagged machines", |tx| {
            let known: Vec<String> = {
                let mut stmt = tx.prepare("select machine_id from tagged")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut stmt = tx.prepare_cached("delete from tagged where machine_id = ?1")?;
            let mut forgotten = 0;
            for id in known.iter().filter(|id| !keep.contains(id.as_str())) {
                forgotten += stmt.execute([id])?;
            }
            Ok(forgotten)
        })
    }

    // -----------------------------------------------------------------------------------------
    // Alerts.

    /// Stores an alert record (the result of `alerts::step`).
    pub fn save_alert(&self, r: &AlertRecord) -> Result<(), StateError> {
        self.write("save an alert", |tx| {
            tx.execute(
                "insert into alert (kind, subject, state, since, last_notified, severity, \
                 summary, details) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 on conflict (kind, subject) do update set state = excluded.state, \
                 since = excluded.since, last_notified = excluded.last_notified, \
                 severity = excluded.severity, summary = excluded.summary, \
                 details = excluded.details",
                params![
                    r.kind.as_str(),
                    r.subject,
                    r.state.as_str(),
                    ts(r.since),
                    r.last_notified.map(ts),
                    r.severity.as_str(),
                    r.summary,
                    r.details.to_string(),
                ],
            )?;
            Ok(())
        })
    }

    /// The stored record of one alert.
    pub fn load_alert(
        &self,
        kind: AlertKind,
        subject: &str,
    ) -> Result<Option<AlertRecord>, StateError> {
        Ok(self.alerts_where(Some((kind, subject)))?.into_iter().next())
    }

    /// Every stored alert record, by kind and subject.
    pub fn alerts(&self) -> Result<Vec<AlertRecord>, StateError> {
        self.alerts_where(None)
    }

    fn alerts_where(&self, key: Option<(AlertKind, &str)>) -> Result<Vec<AlertRecord>, StateError> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = self.read("read alerts", |conn| {
            let sql = "select kind, subject, state, since, last_notified, severity, summary, \
                       details from alert where (?1 is null or (kind = ?1 and subject = ?2)) \
                       order by kind, subject";
            let mut stmt = conn.prepare(sql)?;
            let (kind, subject) = key.map_or((None, None), |(k, s)| (Some(k.as_str()), Some(s)));
            let rows = stmt.query_map(params![kind, subject], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(
                |(kind, subject, state, since, notified, severity, summary, details)| {
                    Ok(AlertRecord {
                        kind: AlertKind::parse(&kind)
                            .ok_or_else(|| self.corrupt("alert kind", &kind))?,
                        subject,
                        state: AlertState::parse(&state)
                            .ok_or_else(|| self.corrupt("alert state", &state))?,
                        since: self.parse_ts("alert time", &since)?,
                        last_notified: notified
                            .map(|n| self.parse_ts("alert time", &n))
                            .transpose()?,
                        severity: AlertSeverity::parse(&severity)
                            .ok_or_else(|| self.corrupt("alert severity", &severity))?,
                        summary,
                        details: serde_json::from_str(&details)
                            .map_err(|_| self.corrupt("alert details", &details))?,
                    })
                },
            )
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Removal guard refusals.

    /// Records the guard's outcome for a group in this pass: a refusal replaces the previous
    /// one; `None` (not refused) clears it.
    pub fn set_guard_refusal(
        &self,
        group: GroupKind,
        refusal: Option<&GuardRefusal>,
    ) -> Result<(), StateError> {
        self.write("record the removal guard outcome", |tx| {
            match refusal {
                Some(r) => tx.execute(
                    "insert into guard_refusal (grp, removals, max_removals, at) \
                     values (?1, ?2, ?3, ?4) on conflict (grp) do update set \
                     removals = excluded.removals, max_removals = excluded.max_removals, \
                     at = excluded.at",
                    params![group.as_str(), r.removals as i64, r.max_removals, ts(r.at)],
                )?,
                None => tx.execute("delete from guard_refusal where grp = ?1", [group.as_str()])?,
            };
            Ok(())
        })
    }

    /// The standing refusals, users first.
    pub fn guard_refusals(&self) -> Result<Vec<GuardRefusal>, StateError> {
        let rows: Vec<(String, i64, u32, String)> =
            self.read("read removal guard refusals", |conn| {
                let mut stmt =
                    conn.prepare("select grp, removals, max_removals, at from guard_refusal")?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                rows.collect()
            })?;
        let mut out = rows
            .into_iter()
            .map(|(grp, removals, max_removals, at)| {
                let group = match grp.as_str() {
                    "users" => GroupKind::Users,
                    "devices" => GroupKind::Devices,
                    other => return Err(self.corrupt("guard group", other)),
                };
                Ok(GuardRefusal {
                    group,
                    removals: removals.max(0) as u64,
                    max_removals,
                    at: self.parse_ts("guard time", &at)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|r| r.group);
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Loop passes.

    /// Records the last pass of a loop (replacing the previous one).
    pub fn record_pass(&self, p: &LoopPass) -> Result<(), StateError> {
        self.write("record a loop pass", |tx| {
            tx.execute(
                "insert into loop_pass (loop, started, finished, ok, summary) \
                 values (?1, ?2, ?3, ?4, ?5) on conflict (loop) do update set \
                 started = excluded.started, finished = excluded.finished, ok = excluded.ok, \
                 summary = excluded.summary",
                params![
                    p.loop_name,
                    ts(p.started),
                    ts(p.finished),
                    p.ok,
                    p.summary.to_string()
                ],
            )?;
            Ok(())
        })
    }

    /// The last pass of every loop, by loop name.
    pub fn last_passes(&self) -> Result<Vec<LoopPass>, StateError> {
        let rows: Vec<(String, String, String, bool, String)> =
            self.read("read loop passes", |conn| {
                let mut stmt = conn.prepare(
                    "select loop, started, finished, ok, summary from loop_pass order by loop",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                rows.collect()
            })?;
        rows.into_iter()
            .map(|(loop_name, started, finished, ok, summary)| {
                Ok(LoopPass {
                    loop_name,
                    started: self.parse_ts("pass time", &started)?,
                    finished: self.parse_ts("pass time", &finished)?,
                    ok,
                    summary: serde_json::from_str(&summary)
                        .map_err(|_| self.corrupt("pass summary", &summary))?,
                })
            })
            .collect()
    }

    /// The last pass of one loop.
    pub fn last_pass(&self, loop_name: &str) -> Result<Option<LoopPass>, StateError> {
        Ok(self
            .last_passes()?
            .into_iter()
            .find(|p| p.loop_name == loop_name))
    }

    // -----------------------------------------------------------------------------------------
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

    // -----------------------------------------------------------------------------------------
    // Audit rows written before their request (never lost to a crash).

    /// Writes `entries` as `pending` rows in one transaction, before their request is sent,
    /// and returns their row ids in order. A process killed before the answer leaves them
    /// pending for the next pass to settle by what the tenant shows.
    pub fn begin_changes(&self, entries: &[AuditEntry]) -> Result<Vec<i64>, StateError> {
        self.write("record pending changes in the audit log", |tx| {
            let mut stmt = tx.prepare_cached(
                "insert into audit (at, grp, object_id, object_label, operation, result, \
                 request_id, commit_id) values (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
            )?;
            let mut rows = Vec::with_capacity(entries.len());
            for e in entries {
                stmt.execute(params![
                    ts(e.at),
                    e.group.as_str(),
                    e.object_id,
                    e.object_label,
                    e.operation.as_str(),
                    e.request_id,
                    e.commit_id,
                ])?;
                rows.push(tx.last_insert_rowid());
            }
            Ok(rows)
        })
    }

    /// Sets the result of rows written by [`State::begin_changes`] once the answer came, in
    /// one transaction. `settled_at` marks a row settled by a later pass (after a crash or an
    /// answer that never came). Only pending rows change, so settling twice is harmless.
    pub fn finish_changes(
        &self,
        results: &[FinishedChange],
        settled_at: Option<DateTime<Utc>>,
    ) -> Result<(), StateError> {
        let settled_at = settled_at.map(ts);
        self.write("record change results in the audit log", |tx| {
            let mut stmt = tx.prepare_cached(
                "update audit set result = ?2, message = ?3, \
                 request_id = coalesce(?4, request_id), settled_at = ?5 \
                 where id = ?1 and result = 'pending'",
            )?;
            for f in results {
                let message = match &f.result {
                    ChangeResult::Failed(m) => Some(m.as_str()),
                    _ => f.note.as_deref(),
                };
                stmt.execute(params![
                    f.row,
                    f.result.as_str(),
                    message,
                    f.request_id,
                    settled_at
                ])?;
            }
            Ok(())
        })
    }

    /// Rows still pending, oldest first: changes whose answer this process never saw.
    pub fn pending_changes(&self) -> Result<Vec<PendingChange>, StateError> {
        let rows: Vec<(i64, String, String, String)> =
            self.read("read pending audit rows", |conn| {
                let mut stmt = conn.prepare(
                    "select id, grp, object_id, operation from audit \
                     where result = 'pending' order by id",
                )?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                rows.collect()
            })?;
        rows.into_iter()
            .map(|(row, grp, object_id, operation)| {
                let group = match grp.as_str() {
                    "users" => GroupKind::Users,
                    "devices" => GroupKind::Devices,
                    other => return Err(self.corrupt("audit group", other)),
                };
                let operation = Operation::parse(&operation)
                    .ok_or_else(|| self.corrupt("audit operation", &operation))?;
                Ok(PendingChange {
                    row,
                    group,
                    object_id,
                    operation,
                })
            })
            .collect()
    }
}

/// RFC 3339 UTC with a fixed number of digits, so stored times sort as text.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

// ---------------------------------------------------------------------------------------------
// Member snapshot: the scoped user group's direct members as last read, with the delta link
// that continues from there. Only a cache of the tenant: losing it costs one full read.

/// Where the member snapshot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSync {
    /// The group the snapshot is of (a changed `user_group_id` makes it useless).
    pub group: ObjectId,
    /// Graph's `@odata.deltaLink`: not a secret, but long; never logged.
    pub delta_link: String,
    /// When the delta link was issued (the service keeps the state about 7 days).
    pub link_at: DateTime<Utc>,
    /// When the members (and their UPNs) were last listed in full.
    pub full_at: DateTime<Utc>,
}

const USER_GROUP_ROW: &str = "users";
const USER_ODATA_TYPE: &str = "#microsoft.graph.user";

impl State {
    /// The stored snapshot, or `None` when there is none.
    ///
    /// Rows become [`GroupMember`]s as they are read: 100k members are never held twice (as
    /// row strings and as members).
    pub fn member_snapshot(&self) -> Result<Option<(MemberSync, Vec<GroupMember>)>, StateError> {
        let found = self.read("read the member snapshot", |conn| {
            let sync: Option<(String, String, String, String)> = conn
                .query_row(
                    "select group_id, delta_link, link_at, full_at from member_sync where grp = ?1",
                    [USER_GROUP_ROW],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some(sync) = sync else {
                return Ok(None);
            };
            let count: i64 =
                conn.query_row("select count(*) from member_snapshot", [], |r| r.get(0))?;
            let mut members = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let mut bad = None;
            let mut stmt =
                conn.prepare("select id, odata_type, upn, display_name from member_snapshot")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                match snapshot_member(r)? {
                    Ok(m) => members.push(m),
                    Err(id) => {
                        bad = Some(id);
                        break;
                    }
                }
            }
            Ok(Some((sync, members, bad)))
        })?;
        let Some(((group, delta_link, link_at, full_at), members, bad)) = found else {
            return Ok(None);
        };
        if let Some(id) = bad {
            return Err(self.corrupt("snapshot member", &id));
        }
        let sync = MemberSync {
            group: ObjectId::parse(&group)
                .map_err(|_| self.corrupt("snapshot group id", &group))?,
            delta_link,
            link_at: self.parse_ts("delta link time", &link_at)?,
            full_at: self.parse_ts("full read time", &full_at)?,
        };
        Ok(Some((sync, members)))
    }

    /// Replaces the snapshot with a full read, in one transaction.
    pub fn replace_member_snapshot(
        &self,
        sync: &MemberSync,
        members: &[GroupMember],
    ) -> Result<(), StateError> {
        self.write("store the member snapshot", |tx| {
            tx.execute("delete from member_snapshot", [])?;
            put_sync(tx, sync)?;
            upsert_members(tx, members)
        })
    }

    /// Applies changes to the snapshot in one transaction: `present` are inserted or updated,
    /// `removed` deleted, and the delta link moves on when `sync` is given. Idempotent: set
    /// operations, so a replayed change or a repeated call leaves the same rows.
    pub fn update_member_snapshot(
        &self,
        sync: Option<&MemberSync>,
        present: &[GroupMember],
        removed: &[ObjectId],
    ) -> Result<(), StateError> {
        self.write("update the member snapshot", |tx| {
            if let Some(sync) = sync {
                put_sync(tx, sync)?;
            }
            let mut del = tx.prepare("delete from member_snapshot where id = ?1")?;
            for id in removed {
                del.execute([id.as_str()])?;
            }
            upsert_members(tx, present)
        })
    }

    /// Forgets the snapshot, so the next pass reads the members in full.
    pub fn clear_member_snapshot(&self) -> Result<(), StateError> {
        self.write("clear the member snapshot", |tx| {
            tx.execute("delete from member_sync", [])?;
            tx.execute("delete from member_snapshot", [])?;
            Ok(())
        })
    }
}

/// One snapshot row as a member; `Err(id)` when its id is not a valid object id.
fn snapshot_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<GroupMember, String>> {
    let id = r.get_ref(0)?.as_str()?;
    let odata_type = r.get_ref(1)?.as_str()?;
    if odata_type == USER_ODATA_TYPE {
        let Ok(id) = UserId::parse(id) else {
            return Ok(Err(id.to_string()));
        };
        let upn = r
            .get_ref(2)?
            .as_str_or_null()?
            .and_then(|u| Upn::parse(u).ok());
        Ok(Ok(GroupMember::User { id, upn }))
    } else {
        let Ok(id) = ObjectId::parse(id) else {
            return Ok(Err(id.to_string()));
        };
        Ok(Ok(GroupMember::Other {
            id,
            odata_type: odata_type.to_string(),
            display_name: r.get(3)?,
        }))
    }
}

fn put_sync(tx: &Transaction<'_>, sync: &MemberSync) -> rusqlite::Result<()> {
    tx.execute(
        "insert into member_sync (grp, group_id, delta_link, link_at, full_at) \
         values (?1, ?2, ?3, ?4, ?5) on conflict (grp) do update set \
         group_id = excluded.group_id, delta_link = excluded.delta_link, \
         link_at = excluded.link_at, full_at = excluded.full_at",
        params![
            USER_GROUP_ROW,
            sync.group.as_str(),
            sync.delta_link,
            ts(sync.link_at),
            ts(sync.full_at)
        ],
    )?;
    Ok(())
}

fn upsert_members(tx: &Transaction<'_>, members: &[GroupMember]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(
        "insert into member_snapshot (id, odata_type, upn, display_name) values (?1, ?2, ?3, ?4) \
         on conflict (id) do update set odata_type = excluded.odata_type, \
         upn = coalesce(excluded.upn, member_snapshot.upn), \
         display_name = coalesce(excluded.display_name, member_snapshot.display_name)",
    )?;
    for m in members {
        match m {
            GroupMember::User { id, upn } => stmt.execute(params![
                id.as_str(),
                USER_ODATA_TYPE,
                upn.as_ref().map(Upn::as_str),
                None::<String>
            ])?,
            GroupMember::Other {
                id,
                odata_type,
                display_name,
            } => stmt.execute(params![
                id.as_str(),
                odata_type,
                None::<String>,
                display_name
            ])?,
        };
    }
    Ok(())
}
