//! What Defender Experts did with each judged incident: whether and when they took it, the
//! status they set, and the agreement between dexscope's verdict and their pickup, settled
//! once per incident. Written by the incident pass from the incidents it lists (no request of
//! its own); read by `status` for the agreement of the last days.
//!
//! Columns of `pickup`: `incident_id`, `verdict` (the latest, `in_scope`|`out_of_scope`),
//! `created_at` (the incident's `createdDateTime`), `judged_at` (first judged), `taken_at`
//! (the incident's `lastUpdateDateTime` when first seen assigned to Defender Experts), `status`
//! and `status_at` (the last status seen, and the update that set it), `closed_at` (first seen
//! resolved, merged or gone), `settled_verdict` and `settled` (`taken`|`not_taken`) with
//! `settled_at`: the agreement, counted once.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{State, StateError, ts};

/// One judged incident's pickup record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupRecord {
    pub incident_id: String,
    /// The latest verdict: `in_scope` | `out_of_scope`.
    pub verdict: String,
    pub created_at: DateTime<Utc>,
    pub judged_at: DateTime<Utc>,
    pub taken_at: Option<DateTime<Utc>>,
    pub status: String,
    pub status_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The agreement, once settled: (verdict then, `taken` | `not_taken`), and when.
    pub settled: Option<(String, String, DateTime<Utc>)>,
}

/// The settled agreement of a period: (verdict, `taken`|`not_taken`, incidents).
pub type AgreementCount = (String, String, u64);

const COLUMNS: &str = "incident_id, verdict, created_at, judged_at, taken_at, status, status_at, \
                       closed_at, settled_verdict, settled, settled_at";

type RawRow = [Option<String>; 11];

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    let mut out: RawRow = Default::default();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = r.get(i)?;
    }
    Ok(out)
}

impl State {
    /// The pickup record of one incident, if it was judged.
    pub fn pickup(&self, incident_id: &str) -> Result<Option<PickupRecord>, StateError> {
        let row = self.read("read a pickup record", |conn| {
            conn.query_row(
                &format!("select {COLUMNS} from pickup where incident_id = ?1"),
                [incident_id],
                raw,
            )
            .optional()
        })?;
        row.map(|r| self.pickup_row(r)).transpose()
    }

    /// Stores (inserts or replaces) one pickup record.
    pub fn save_pickup(&self, p: &PickupRecord) -> Result<(), StateError> {
        let opt = |t: Option<DateTime<Utc>>| t.map(ts);
        let (sv, s, sat) = match &p.settled {
            Some((v, s, at)) => (Some(v.as_str()), Some(s.as_str()), Some(ts(*at))),
            None => (None, None, None),
        };
        self.write("store a pickup record", |tx| {
            tx.execute(
                &format!(
                    "insert or replace into pickup ({COLUMNS}) \
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    p.incident_id,
                    p.verdict,
                    ts(p.created_at),
                    ts(p.judged_at),
                    opt(p.taken_at),
                    p.status,
                    ts(p.status_at),
                    opt(p.closed_at),
                    sv,
                    s,
                    sat
                ],
            )?;
            Ok(())
        })
    }

    /// The records an incident pass reviews without listing their incidents: not settled
    /// yet, or still open and either IN SCOPE untaken or OUT OF SCOPE taken.
    pub fn open_pickups(&self) -> Result<Vec<PickupRecord>, StateError> {
        let rows = self.read("read open pickup records", |conn| {
            let mut stmt = conn.prepare(&format!(
                "select {COLUMNS} from pickup where settled is null or (closed_at is null \
                 and ((verdict = 'in_scope' and taken_at is null) \
                 or (verdict = 'out_of_scope' and taken_at is not null))) order by incident_id"
            ))?;
            let rows = stmt.query_map([], raw)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|r| self.pickup_row(r)).collect()
    }

    /// Incidents whose agreement was settled since `since`, counted by (verdict, pickup),
    /// sorted.
    pub fn pickup_agreement(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<AgreementCount>, StateError> {
        self.read("count pickup agreement", |conn| {
            let mut stmt = conn.prepare(
                "select settled_verdict, settled, count(*) from pickup \
                 where settled_at >= ?1 group by settled_verdict, settled \
                 order by settled_verdict, settled",
            )?;
            let rows = stmt.query_map([ts(since)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })
    }

    fn pickup_row(&self, r: RawRow) -> Result<PickupRecord, StateError> {
        let [
            id,
            verdict,
            created,
            judged,
            taken,
            status,
            status_at,
            closed,
            sv,
            s,
            sat,
        ] = r;
        let time = |what, v: Option<String>| -> Result<DateTime<Utc>, StateError> {
            let v = v.ok_or_else(|| self.corrupt(what, ""))?;
            self.parse_ts(what, &v)
        };
        let opt_time = |what, v: Option<String>| v.map(|v| self.parse_ts(what, &v)).transpose();
        let settled = match (sv, s, sat) {
            (Some(v), Some(s), Some(at)) => {
                Some((v, s, self.parse_ts("pickup settled time", &at)?))
            }
            (None, None, None) => None,
            _ => return Err(self.corrupt("pickup agreement", "partly settled")),
        };
        Ok(PickupRecord {
            incident_id: id.unwrap_or_default(),
            verdict: verdict.unwrap_or_default(),
            created_at: time("incident creation time", created)?,
            judged_at: time("pickup judged time", judged)?,
            taken_at: opt_time("pickup time", taken)?,
            status: status.unwrap_or_default(),
            status_at: time("incident status time", status_at)?,
            closed_at: opt_time("incident close time", closed)?,
            settled,
        })
    }
}
