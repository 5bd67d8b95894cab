//! The removal guard's standing refusals, one per group.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{State, StateError, ts};
use crate::model::GroupKind;

/// The removal guard refused a group's removals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRefusal {
    pub group: GroupKind,
    pub removals: u64,
    pub max_removals: u32,
    pub at: DateTime<Utc>,
}

impl State {
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
}
