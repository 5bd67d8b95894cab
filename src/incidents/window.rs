//! Which incidents a pass lists: a *fresh* pass lists what was updated since the cursor, a
//! *sweep* reaches back the overlap for incidents that became visible late. Pure.
//!
//! The incident list is eventually consistent: an incident updated at time T may show up in
//! `GET /security/incidents?$filter=lastUpdateDateTime ge …` only some time later, at most
//! `[incidents] overlap` later (that bound is what the overlap is configured as). Listing
//! `cursor − overlap` on every pass covers that, but every comment dexscope posts updates its
//! incident, so after a backlog each pass would list the whole backlog again for as long as it
//! stays inside the overlap. Instead most passes are fresh (`ge cursor`, only what is new) and
//! at most one pass per `overlap` is a sweep.
//!
//! Why a sweep starts from `F − overlap`, F being the cursor stored when the previous
//! successful sweep started, and not from the cursor C of now: an incident updated at T is
//! visible by T + overlap. If it was visible when the previous sweep started, that sweep (or an
//! earlier pass) listed it. If not, that sweep started before T + overlap, and F was read then,
//! so F ≤ that start < T + overlap, hence F − overlap < T and this sweep lists it. C may have
//! moved past T + overlap since (newer incidents arrived), and `C − overlap` would then miss it.
//! "F ≤ the sweep's start" assumes that the service's `lastUpdateDateTime` and the local clock
//! differ by much less than `overlap`; the same assumption stands behind the local clock
//! deciding when a sweep is due and behind F being that start itself on the very first pass.
//! The sweep also never starts after C, so an incident that holds the cursor is listed again.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The cursors a pass starts from, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// The incident cursor: the newest `lastUpdateDateTime` handled (never past an unhandled
    /// incident).
    pub cursor: Option<DateTime<Utc>>,
    /// The cursor as it was when the last successful sweep started.
    pub sweep_from: Option<DateTime<Utc>>,
    /// When (local clock) the last successful sweep started.
    pub swept_at: Option<DateTime<Utc>>,
}

/// What a pass lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The lower bound of the `lastUpdateDateTime ge …` filter.
    pub since: DateTime<Utc>,
    /// `Some` for a sweep: what to store once it has succeeded.
    pub sweep: Option<Swept>,
}

/// The record of a successful sweep, stored as two cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// The incident cursor when the sweep started (the sweep's start itself when there was
    /// none: the first pass).
    pub from: DateTime<Utc>,
    /// When the sweep started.
    pub at: DateTime<Utc>,
}

/// Decides the pass that starts at `now`. A pass is a sweep when there is no cursor yet (it
/// then looks back `lookback`), no sweep was recorded, `overlap` has passed since the last
/// sweep started (or the local clock is now before it, having been set back), or `overlap` is
/// zero; otherwise it is fresh and lists from the cursor.
pub fn window(stored: Stored, now: DateTime<Utc>, overlap: Duration, lookback: Duration) -> Window {
    let swept = Swept {
        from: stored.cursor.unwrap_or(now),
        at: now,
    };
    let Some(cursor) = stored.cursor else {
        return Window {
            since: back(now, lookback),
            sweep: Some(swept),
        };
    };
    let last = stored.sweep_from.zip(stored.swept_at);
    let due = last.is_none_or(|(_, at)| now < at || now - at >= delta(overlap));
    // With a zero overlap every pass is due: no time is shorter than zero.
    if !due {
        return Window {
            since: cursor,
            sweep: None,
        };
    }
    let from = last.map_or(cursor, |(from, _)| from.min(cursor));
    Window {
        since: back(from, overlap),
        sweep: Some(swept),
    }
}

/// `at − by`, clamped to the earliest representable time instead of overflowing.
fn back(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    at.checked_sub_signed(delta(by))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + min * 60, 0).unwrap()
    }

    const MIN: Duration = Duration::from_secs(60);

    /// (cursor, sweep_from, swept_at, now, overlap in minutes) → (since, sweep recorded as
    /// (from, at))
    type Case = (
        (Option<i64>, Option<i64>, Option<i64>, i64, u64),
        (i64, Option<(i64, i64)>),
    );

    #[test]
    fn fresh_passes_list_from_the_cursor_and_sweeps_reach_back_from_the_last_sweep() {
        let cases: &[Case] = &[
            // First pass: no cursor, look back 60 minutes; the sweep starts from its own start.
            ((None, None, None, 100, 5), (40, Some((100, 100)))),
            ((None, Some(90), Some(90), 100, 5), (40, Some((100, 100)))),
            // A cursor but no sweep recorded (state of an older version): sweep from the cursor.
            ((Some(98), None, None, 100, 5), (93, Some((98, 100)))),
            ((Some(98), Some(90), None, 100, 5), (93, Some((98, 100)))),
            // Swept 2 minutes ago: fresh, from the cursor itself.
            ((Some(99), Some(97), Some(98), 100, 5), (99, None)),
            // Swept 4 minutes 59 ago is still fresh; 5 minutes ago is a sweep from F − overlap.
            (
                (Some(99), Some(94), Some(95), 100, 5),
                (89, Some((99, 100))),
            ),
            // F, not C: the cursor moved far past the last sweep's start.
            (
                (Some(130), Some(100), Some(101), 110, 5),
                (95, Some((130, 110))),
            ),
            // A cursor held back (an unhandled incident) below F: the sweep starts below it.
            (
                (Some(80), Some(97), Some(98), 110, 5),
                (75, Some((80, 110))),
            ),
            // And a fresh pass lists from it.
            ((Some(80), Some(97), Some(98), 100, 5), (80, None)),
            // The local clock was set back before the last sweep: sweep.
            ((Some(99), Some(97), Some(98), 90, 5), (92, Some((99, 90)))),
            // Zero overlap: every pass is a sweep, with nothing subtracted.
            ((Some(99), Some(97), Some(99), 99, 0), (97, Some((99, 99)))),
        ];
        for &((cursor, from, at, now, overlap), (since, sweep)) in cases {
            let stored = Stored {
                cursor: cursor.map(t),
                sweep_from: from.map(t),
                swept_at: at.map(t),
            };
            let got = window(stored, t(now), MIN * overlap as u32, MIN * 60);
            let want = Window {
                since: t(since),
                sweep: sweep.map(|(from, at)| Swept {
                    from: t(from),
                    at: t(at),
                }),
            };
            assert_eq!(got, want, "{stored:?} now {now} overlap {overlap}");
        }
        // Just short of the overlap since the last sweep: fresh.
        let stored = Stored {
            cursor: Some(t(99)),
            sweep_from: Some(t(94)),
            swept_at: Some(t(95)),
        };
        let almost = t(100) - TimeDelta::seconds(1);
        assert_eq!(window(stored, almost, MIN * 5, MIN * 60).sweep, None);
    }

    #[test]
    fn huge_durations_clamp_instead_of_overflowing() {
        let w = window(Stored::default(), t(0), MIN, Duration::MAX);
        assert_eq!(w.since, DateTime::<Utc>::MIN_UTC);
        let stored = Stored {
            cursor: Some(t(0)),
            ..Stored::default()
        };
        assert_eq!(
            window(stored, t(0), Duration::MAX, MIN).since,
            DateTime::<Utc>::MIN_UTC
        );
    }
}
