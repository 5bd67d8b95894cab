//! The incident poll cursor, the verdicts posted on incidents and the installation key that
//! signs their markers.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{State, StateError, ts};

/// The `cursor` row that holds the installation key, hex-encoded.
const INSTALLATION_KEY: &str = "installation-key";

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
        self.set_cursors(&[(name, at)])
    }

    /// Stores several poll cursors in one transaction: all of them or none. Nothing is written
    /// when `cursors` is empty.
    pub fn set_cursors(&self, cursors: &[(&str, DateTime<Utc>)]) -> Result<(), StateError> {
        if cursors.is_empty() {
            return Ok(());
        }
        self.write("store the poll cursor", |tx| {
            for (name, at) in cursors {
                tx.execute(
                    "insert into cursor (name, value) values (?1, ?2) \
                     on conflict (name) do update set value = excluded.value",
                    params![name, ts(*at)],
                )?;
            }
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

    /// This installation's secret key for verdict marker tags: 32 random bytes made on first
    /// use and kept in the `cursor` table, so a restart signs and verifies with the same key.
    pub fn installation_key(&self) -> Result<[u8; 32], StateError> {
        let stored: Option<String> = self.read("read the installation key", |conn| {
            conn.query_row(
                "select value from cursor where name = ?1",
                [INSTALLATION_KEY],
                |r| r.get(0),
            )
            .optional()
        })?;
        let hex: String = match stored {
            Some(hex) => hex,
            None => self.create_installation_key()?,
        };
        let mut key = [0u8; 32];
        let valid = hex.len() == 64
            && hex.is_ascii()
            && key.iter_mut().enumerate().all(|(i, b)| {
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map(|v| *b = v)
                    .is_ok()
            });
        if valid {
            Ok(key)
        } else {
            Err(self.query(
                "read the installation key",
                rusqlite::Error::InvalidColumnType(
                    0,
                    INSTALLATION_KEY.into(),
                    rusqlite::types::Type::Text,
                ),
            ))
        }
    }

    fn create_installation_key(&self) -> Result<String, StateError> {
        self.write("create the installation key", |tx| {
            let fresh: [u8; 32] = rand::random();
            let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
            // Two processes on one file keep whichever key was stored first.
            tx.execute(
                "insert or ignore into cursor (name, value) values (?1, ?2)",
                params![INSTALLATION_KEY, fresh],
            )?;
            tx.query_row(
                "select value from cursor where name = ?1",
                [INSTALLATION_KEY],
                |r| r.get(0),
            )
        })
    }

    /// Whether this verdict (incident + marker digest) was recorded as posted. The incident's
    /// own comments stay the authority for exactly-once posting; this record lets a marker
    /// written before markers carried a tag count as dexscope's own.
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
