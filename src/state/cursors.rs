//! The incident poll cursor and the verdicts posted on incidents.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{State, StateError, ts};

/// A verdict comment posted on an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedVerdict {
    pub incident_id: String,
    pub digest: String,
    /// `in_scope` | `out_of_scope`.
    pub verdict: String,
    pub at: DateTime<Utc>,
}

impl State {
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
}
