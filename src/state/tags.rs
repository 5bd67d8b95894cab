//! Tag timestamps: when each machine was first seen carrying the scoped tag (the start of the
//! priority check's grace period).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{State, StateError, ts};
use crate::model::MachineId;

impl State {
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
}
