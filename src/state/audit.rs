//! The audit log: every applied change, written `pending` before its request and settled
//! after, so a crash loses no record.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{State, StateError, ts};
use crate::model::GroupKind;

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

impl State {
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
