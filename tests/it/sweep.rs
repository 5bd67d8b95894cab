//! Incident passes after a backlog: fresh passes list only what is new since the cursor, and a
//! sweep at most once per overlap finds an incident the list made visible late, reaching back
//! from the cursor stored when the previous sweep started rather than from today's cursor.

use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use dexscope::incidents::poll::{self, Handled};
use dexscope::sim::{FaultConfig, IncidentSpec, RouteFault, SimHandle};

use super::incidents::{LIST_ROUTE, POST_ROUTE, Poller, picks, poller, start_sim, write_config};

/// The overlap `write_config` sets.
const OVERLAP: TimeDelta = TimeDelta::minutes(5);

/// Runs one pass at `now` (local clock) and returns it with the list pages it read.
async fn counted(
    sim: &SimHandle,
    p: &Poller,
    now: chrono::DateTime<Utc>,
) -> (poll::PollReport, u64) {
    sim.reset_stats();
    let report = p.pass_at(now).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    (report, sim.stats().calls(LIST_ROUTE))
}

fn listed_ids(report: &poll::PollReport) -> Vec<&str> {
    report.incidents.iter().map(|i| i.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_backlog_fresh_passes_read_one_page_and_still_see_new_incidents() {
    let sim = start_sim(120, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let p = poller(&sim, &write_config(&sim, dir.path(), true, "30s"));
    let t0 = Utc::now().trunc_subsecs(3);

    // The first pass is a sweep over the lookback: the backlog, three pages of 50.
    let (first, pages) = counted(&sim, &p, t0).await;
    assert!(first.sweep);
    assert_eq!((first.listed, pages), (120, 3), "{first:?}");
    let posted = first.count(Handled::Posted);
    assert_eq!(posted + first.count(Handled::Redirected), 120, "{first:?}");
    assert_eq!(sim.stats().calls(POST_ROUTE) as usize, posted);

    // Our comments moved every commented incident past the cursor: the next pass, fresh, lists
    // them once more and posts nothing.
    let (second, pages) = counted(&sim, &p, t0 + TimeDelta::seconds(5)).await;
    assert!(!second.sweep);
    assert_eq!(
        second.since, first.cursor,
        "a fresh pass lists from the cursor itself"
    );
    assert!(pages <= 3, "{pages} pages");
    assert_eq!(second.count(Handled::Posted), 0, "{second:?}");

    // From then on, every fresh pass inside the overlap reads one page and posts nothing.
    for n in 2..6 {
        let now = t0 + TimeDelta::seconds(5 * n);
        let (fresh, pages) = counted(&sim, &p, now).await;
        assert!(!fresh.sweep, "pass {n}");
        assert_eq!(pages, 1, "pass {n}: {fresh:?}");
        // Only the incidents updated in the cursor's own millisecond (the filter's precision)
        // are listed again: one, or a few when comments were posted within one millisecond.
        assert!(fresh.listed <= 5, "pass {n}: {} listed", fresh.listed);
        assert_eq!(sim.stats().calls(POST_ROUTE), 0, "pass {n}");
    }

    // A new incident between two fresh passes is listed and commented by the next one.
    let id = sim.create_incident(&IncidentSpec {
        devices: vec![picks(&sim).tagged_windows],
        ..IncidentSpec::default()
    });
    let (fresh, pages) = counted(&sim, &p, t0 + TimeDelta::seconds(30)).await;
    assert!(!fresh.sweep);
    assert_eq!(pages, 1);
    assert_eq!(fresh.count(Handled::Posted), 1, "{fresh:?}");
    assert!(listed_ids(&fresh).contains(&id.as_str()));
    assert_eq!(sim.comments(&id).len(), 1);

    // Once the overlap has passed since the first sweep started, the next pass sweeps (and
    // finds nothing left to post); it is recorded, so the one after it is fresh again.
    let due = t0 + OVERLAP;
    let (sweep, _) = counted(&sim, &p, due).await;
    assert!(sweep.sweep, "{sweep:?}");
    assert_eq!(sim.stats().calls(POST_ROUTE), 0);
    assert_eq!(p.state.get_cursor(poll::SWEPT_AT).unwrap(), Some(due));
    let (after, pages) = counted(&sim, &p, due + TimeDelta::seconds(5)).await;
    assert!(!after.sweep);
    assert_eq!(pages, 1, "{after:?}");
    sim.shutdown().await;
}

/// An incident whose `lastUpdateDateTime` is older than the cursor when it first shows up in
/// the list (the list is eventually consistent): fresh passes do not see it, the next sweep
/// does, even when newer incidents have moved the cursor more than the overlap past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_visible_incident_is_judged_by_the_next_sweep_from_the_last_sweeps_cursor() {
    let sim = start_sim(0, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let p = poller(&sim, &write_config(&sim, dir.path(), true, "30s"));
    let tagged = picks(&sim).tagged_windows;
    let spec = |updated_secs_ago| IncidentSpec {
        devices: vec![tagged.clone()],
        updated_secs_ago,
        ..IncidentSpec::default()
    };
    let first_id = sim.create_incident(&spec(0));
    let t0 = Utc::now().trunc_subsecs(3);
    let first = p.pass_at(t0).await;
    assert!(first.sweep);
    assert_eq!(first.count(Handled::Posted), 1, "{first:?}");
    // Fresh: the first incident again (our comment updated it).
    let second = p.pass_at(t0 + TimeDelta::seconds(1)).await;
    assert!(!second.sweep);
    assert_eq!(listed_ids(&second), [first_id.as_str()]);

    // The late one, updated two minutes ago, shows up only now. A newer incident, ten
    // minutes ahead on the simulator's clock, moves the cursor far past it.
    let late = sim.create_incident(&spec(120));
    sim.advance(Duration::from_secs(600));
    let newer = sim.create_incident(&spec(0));
    for n in 2..4 {
        let fresh = p.pass_at(t0 + TimeDelta::seconds(n)).await;
        assert!(!fresh.sweep, "pass {n}");
        assert!(
            !listed_ids(&fresh).contains(&late.as_str()),
            "pass {n}: {fresh:?}"
        );
    }
    assert!(sim.comments(&late).is_empty());
    assert_eq!(sim.comments(&newer).len(), 1);
    let late_at = {
        let s = sim.state();
        let t = s.lock().unwrap();
        t.incidents.get(late.parse().unwrap()).unwrap().last_update
    };
    let cursor = p.state.get_cursor(poll::CURSOR).unwrap().unwrap();
    assert!(
        cursor > late_at + OVERLAP,
        "the cursor {cursor} is past the late incident's update {late_at} by more than the overlap"
    );

    // The sweep, due once the overlap has passed since the first one started, reaches back
    // from that sweep's cursor (there was none: its start), not from today's cursor.
    let sweep = p.pass_at(t0 + OVERLAP).await;
    assert!(sweep.sweep, "{sweep:?}");
    assert!(sweep.since.unwrap() <= late_at, "{sweep:?}");
    let judged = sweep.incidents.iter().find(|i| i.id == late);
    assert_eq!(
        judged.map(|i| i.handled),
        Some(Handled::Posted),
        "{sweep:?}"
    );
    assert_eq!(judged.and_then(|i| i.verdict), Some("in_scope"));
    assert_eq!(sim.comments(&late).len(), 1);
    // Recorded: the next sweep reaches back from the cursor this one started with.
    assert_eq!(p.state.get_cursor(poll::SWEEP_FROM).unwrap(), Some(cursor));
    let fresh = p.pass_at(t0 + OVERLAP + TimeDelta::seconds(1)).await;
    assert!(!fresh.sweep);
    assert_eq!(fresh.count(Handled::Posted), 0, "{fresh:?}");
    sim.shutdown().await;
}

/// A pass at `now` that fails.
async fn failing(p: &Poller, now: chrono::DateTime<Utc>) -> poll::PollError {
    poll::poll_once(&p.tenant, &p.state, &p.settings, now)
        .await
        .unwrap_err()
}

/// The list route answers 400 from its `after + 1`-th call (counted from now) on.
fn list_fails_after(sim: &SimHandle, after: u64) {
    sim.reset_stats();
    sim.set_faults(FaultConfig {
        route_fails: Some(RouteFault {
            route: LIST_ROUTE.into(),
            after,
            status: 400,
        }),
        ..FaultConfig::default()
    });
}

/// A sweep that fails (here its second list page is refused) stores neither the cursor nor
/// its record, so the next pass sweeps again and finishes what the failed one started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sweep_is_not_recorded_and_the_next_pass_sweeps_again() {
    let sim = start_sim(60, FaultConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let p = poller(&sim, &write_config(&sim, dir.path(), true, "30s"));
    let stored = |name| p.state.get_cursor(name).unwrap();
    let t0 = Utc::now().trunc_subsecs(3);

    // The first pass judges its first page, then the second page is refused.
    list_fails_after(&sim, 1);
    let err = failing(&p, t0).await;
    assert!(matches!(err, poll::PollError::List(_)), "{err}");
    assert_eq!(sim.stats().calls(LIST_ROUTE), 2);
    let posted_before = sim.stats().calls(POST_ROUTE);
    assert!(posted_before > 0, "the first page was judged");
    for name in [poll::CURSOR, poll::SWEEP_FROM, poll::SWEPT_AT] {
        assert_eq!(stored(name), None, "{name}");
    }
    sim.set_faults(FaultConfig::default());
    let again = p.pass_at(t0 + TimeDelta::seconds(1)).await;
    assert!(again.sweep);
    assert_eq!(again.listed, 60, "{again:?}");
    assert_eq!(
        again.count(Handled::Posted) as u64 + posted_before,
        sim.stats().calls(POST_ROUTE)
    );
    assert_eq!(stored(poll::SWEPT_AT), Some(t0 + TimeDelta::seconds(1)));

    // A due sweep refused at its first page: nothing new stored, the next pass sweeps.
    let cursor = stored(poll::CURSOR);
    let from = stored(poll::SWEEP_FROM);
    let due = t0 + TimeDelta::seconds(1) + OVERLAP;
    list_fails_after(&sim, 0);
    failing(&p, due).await;
    assert_eq!(stored(poll::CURSOR), cursor);
    assert_eq!(stored(poll::SWEEP_FROM), from);
    assert_eq!(stored(poll::SWEPT_AT), Some(t0 + TimeDelta::seconds(1)));
    sim.set_faults(FaultConfig::default());
    let swept = p.pass_at(due + TimeDelta::seconds(1)).await;
    assert!(swept.sweep, "{swept:?}");
    assert_eq!(stored(poll::SWEPT_AT), Some(due + TimeDelta::seconds(1)));
    sim.shutdown().await;
}
