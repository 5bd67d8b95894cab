//! The last pass of each loop, as the daemon recorded it (read by `status` and `check`).

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde_json::Value;

use super::{State, StateError, ts};

/// The last pass of one loop (`reconcile`, `priority`, `incidents`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopPass {
    pub loop_name: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub ok: bool,
    pub summary: Value,
}

impl State {
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
}
