//! The state database on real SQLite files: reopen, two connections, migrations, errors.

use chrono::{DateTime, TimeDelta, Utc};
use dexscope::alerts::{self, AlertKind, AlertSeverity, NoticeKind, Observation};
use dexscope::model::MachineId;
use dexscope::scope::GroupKind;
use dexscope::state::{
    AuditEntry, ChangeResult, GuardRefusal, LoopPass, Operation, PostedVerdict, SCHEMA_VERSION,
    State, StateError,
};

fn t(minutes: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T08:00:00.123456Z")
        .unwrap()
        .with_timezone(&Utc)
        + TimeDelta::minutes(minutes)
}

fn mid(n: u32) -> MachineId {
    MachineId::parse(&format!("{n:040x}")).unwrap()
}

fn entry(n: i64, operation: Operation, result: ChangeResult) -> AuditEntry {
    AuditEntry {
        at: t(n),
        group: if matches!(operation, Operation::Tag | Operation::Untag) {
            GroupKind::Devices
        } else {
            GroupKind::Users
        },
        object_id: format!("obj-{n}"),
        object_label: format!("label-{n}"),
        operation,
        result,
        request_id: Some(format!("req-{n}")),
        commit_id: (n % 2 == 0).then(|| "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_string()),
    }
}

/// Writes one of everything.
fn fill(s: &State) {
    s.record_changes(&[
        entry(1, Operation::Add, ChangeResult::Ok),
        entry(2, Operation::Remove, ChangeResult::Already),
    ])
    .unwrap();
    s.record_change(&entry(
        3,
        Operation::Tag,
        ChangeResult::Failed("machine not found; check the id".into()),
    ))
    .unwrap();
    s.set_cursor("incidents", t(10)).unwrap();
    s.record_verdict(&PostedVerdict {
        incident_id: "42".into(),
        digest: "0123456789abcdef".into(),
        verdict: "in_scope".into(),
        at: t(11),
    })
    .unwrap();
    s.note_tagged(&mid(1), t(12)).unwrap();
    let (record, _) = alerts::step(
        None,
        Observation::bad(
            AlertKind::PriorityMisconfigured,
            "",
            AlertSeverity::Critical,
            "outranked by Servers_T0",
            serde_json::json!({"by_group": "Servers_T0"}),
        ),
        t(13),
        TimeDelta::hours(6),
    );
    s.save_alert(&record).unwrap();
    s.set_guard_refusal(
        GroupKind::Users,
        Some(&GuardRefusal {
            group: GroupKind::Users,
            removals: 200,
            max_removals: 50,
            at: t(14),
        }),
    )
    .unwrap();
    s.record_pass(&LoopPass {
        loop_name: "reconcile".into(),
        started: t(15),
        finished: t(16),
        ok: true,
        summary: serde_json::json!({"added": 1}),
    })
    .unwrap();
}

/// Reads back what `fill` wrote, as one comparable text.
fn dump(s: &State) -> String {
    let mut out = Vec::new();
    for e in s.recent_changes(10).unwrap() {
        out.push(format!(
            "audit {} {} {} {} {} {:?} {:?} {:?}",
            e.at.to_rfc3339(),
            e.group,
            e.object_id,
            e.object_label,
            e.operation.as_str(),
            e.result,
            e.request_id,
            e.commit_id
        ));
    }
    out.push(format!(
        "cursor {:?}",
        s.get_cursor("incidents").unwrap().map(|c| c.to_rfc3339())
    ));
    for v in s.recent_verdicts(10).unwrap() {
        out.push(format!(
            "verdict {} {} {} {}",
            v.incident_id,
            v.digest,
            v.verdict,
            v.at.to_rfc3339()
        ));
    }
    out.push(format!(
        "tagged {:?}",
        s.first_seen_tagged(&mid(1))
            .unwrap()
            .map(|c| c.to_rfc3339())
    ));
    for a in s.alerts().unwrap() {
        out.push(format!(
            "alert {} {:?} {:?} {} {:?} {} {}",
            a.kind,
            a.state,
            a.severity,
            a.since.to_rfc3339(),
            a.last_notified.map(|c| c.to_rfc3339()),
            a.summary,
            a.details
        ));
    }
    for g in s.guard_refusals().unwrap() {
        out.push(format!(
            "guard {} {} {} {}",
            g.group,
            g.removals,
            g.max_removals,
            g.at.to_rfc3339()
        ));
    }
    for p in s.last_passes().unwrap() {
        out.push(format!(
            "pass {} {} {} {} {}",
            p.loop_name,
            p.started.to_rfc3339(),
            p.finished.to_rfc3339(),
            p.ok,
            p.summary
        ));
    }
    out.join("\n")
}

const FILLED: &str = r#"audit 2026-12-01T08:03:00.123456+00:00 devices obj-3 label-3 tag Failed("machine not found; check the id") Some("req-3") None
audit 2026-12-01T08:02:00.123456+00:00 users obj-2 label-2 remove Already Some("req-2") Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
audit 2026-12-01T08:01:00.123456+00:00 users obj-1 label-1 add Ok Some("req-1") None
cursor Some("2026-12-01T08:10:00.123456+00:00")
verdict 42 0123456789abcdef in_scope 2026-12-01T08:11:00.123456+00:00
tagged Some("2026-12-01T08:12:00.123456+00:00")
alert priority_misconfigured Firing Critical 2026-12-01T08:13:00.123456+00:00 Some("2026-12-01T08:13:00.123456+00:00") outranked by Servers_T0 {"by_group":"Servers_T0"}
guard users 200 50 2026-12-01T08:14:00.123456+00:00
pass reconcile 2026-12-01T08:15:00.123456+00:00 2026-12-01T08:16:00.123456+00:00 true {"added":1}"#;

#[test]
fn open_creates_directory_database_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/dexscope/state.db");
    let s = State::open(&path).unwrap();
    assert!(path.exists());
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(dump(&s), "cursor None\ntagged None");

    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .query_row("pragma journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn reopen_after_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = State::open(&path).unwrap();
        fill(&s);
        assert_eq!(dump(&s), FILLED);
    }
    let s = State::open(&path).unwrap();
    assert_eq!(dump(&s), FILLED);
    assert_eq!(s.recent_changes(1).unwrap().len(), 1);
    assert!(s.verdict_posted("42", "0123456789abcdef").unwrap());
    assert!(!s.verdict_posted("42", "fedcba9876543210").unwrap());
}

#[test]
fn two_connections_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let daemon = State::open(&path).unwrap();
    let probe = State::open(&path).unwrap();
    fill(&daemon);
    assert_eq!(dump(&probe), FILLED);

    probe.set_guard_refusal(GroupKind::Users, None).unwrap();
    assert!(daemon.guard_refusals().unwrap().is_empty());
}

#[test]
fn migrations_are_idempotent_and_refuse_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    for _ in 0..3 {
        let s = State::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.set_cursor("incidents", t(0)).unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(raw);
    let err = State::open(&path).unwrap_err();
    assert!(matches!(err, StateError::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
    let msg = err.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(msg.contains("newer than this dexscope knows"), "{msg}");
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = State::open(blocker.join("state.db")).unwrap_err();
    assert!(matches!(err, StateError::CreateDir { .. }));
    assert!(err.to_string().contains("not-a-dir"), "{err}");

    // A corrupted row is reported with what it is, not a panic.
    let path = dir.path().join("state.db");
    let s = State::open(&path).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "insert into cursor (name, value) values ('incidents', 'yesterday')",
        [],
    )
    .unwrap();
    let err = s.get_cursor("incidents").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the state database {} holds a malformed poll cursor: \"yesterday\"",
            path.display()
        )
    );
}

#[test]
fn tag_times_keep_the_earliest_and_forget_untagged() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path().join("state.db")).unwrap();
    s.note_tagged_many(&[mid(1), mid(2), mid(3)], t(10))
        .unwrap();
    s.note_tagged(&mid(1), t(20)).unwrap();
    s.note_tagged(&mid(2), t(5)).unwrap();
    assert_eq!(s.first_seen_tagged(&mid(1)).unwrap(), Some(t(10)));
    assert_eq!(s.first_seen_tagged(&mid(2)).unwrap(), Some(t(5)));

    assert_eq!(s.forget_untagged(&[mid(1), mid(9)]).unwrap(), 2);
    let all = s.tagged_since_all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[&mid(1)], t(10));

    // Re-tagged after being forgotten: a fresh grace period.
    s.note_tagged(&mid(2), t(30)).unwrap();
    assert_eq!(s.first_seen_tagged(&mid(2)).unwrap(), Some(t(30)));
}

#[test]
fn verdict_records_are_idempotent_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path().join("state.db")).unwrap();
    let v = |id: &str, verdict: &str, m: i64| PostedVerdict {
        incident_id: id.into(),
        digest: format!("{id:0>16}"),
        verdict: verdict.into(),
        at: t(m),
    };
    s.record_verdict(&v("1", "in_scope", 0)).unwrap();
    s.record_verdict(&v("1", "in_scope", 5)).unwrap();
    s.record_verdict(&v("2", "out_of_scope", 10)).unwrap();
    s.record_verdict(&v("3", "out_of_scope", 20)).unwrap();
    assert_eq!(
        s.verdict_counts(t(0)).unwrap(),
        vec![("in_scope".to_string(), 1), ("out_of_scope".to_string(), 2)]
    );
    assert_eq!(
        s.verdict_counts(t(15)).unwrap(),
        vec![("out_of_scope".to_string(), 1)]
    );
    let recent: Vec<String> = s
        .recent_verdicts(2)
        .unwrap()
        .into_iter()
        .map(|v| v.incident_id)
        .collect();
    assert_eq!(recent, ["3", "2"]);
}

#[test]
fn a_restart_neither_repeats_nor_forgets_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let guard = || {
        Observation::bad(
            AlertKind::RemovalGuardTripped,
            "users",
            AlertSeverity::Critical,
            "200 removals from users refused",
            serde_json::Value::Null,
        )
    };
    let every = TimeDelta::hours(6);
    {
        let s = State::open(&path).unwrap();
        let prev = s
            .load_alert(AlertKind::RemovalGuardTripped, "users")
            .unwrap();
        let (rec, notice) = alerts::step(prev.as_ref(), guard(), t(0), every);
        assert_eq!(notice.unwrap().notice, NoticeKind::Firing);
        s.save_alert(&rec).unwrap();
    }
    let s = State::open(&path).unwrap();
    let prev = s
        .load_alert(AlertKind::RemovalGuardTripped, "users")
        .unwrap();
    let (rec, notice) = alerts::step(prev.as_ref(), guard(), t(60), every);
    assert!(notice.is_none(), "a restart must not fire the alert again");
    s.save_alert(&rec).unwrap();

    let prev = s
        .load_alert(AlertKind::RemovalGuardTripped, "users")
        .unwrap();
    let (rec, notice) = alerts::step(
        prev.as_ref(),
        Observation::good(AlertKind::RemovalGuardTripped, "users"),
        t(70),
        every,
    );
    assert_eq!(notice.unwrap().notice, NoticeKind::Resolved);
    s.save_alert(&rec).unwrap();
    assert!(
        s.load_alert(AlertKind::RemovalGuardTripped, "devices")
            .unwrap()
            .is_none()
    );
}

#[test]
fn pending_audit_rows_are_written_first_and_finished_or_settled_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = State::open(dir.path().join("state.db")).unwrap();
    let pending = |n| AuditEntry {
        request_id: None,
        ..entry(n, Operation::Add, ChangeResult::Pending)
    };
    let rows = s
        .begin_changes(&[pending(1), pending(2), pending(3)])
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(s.pending_changes().unwrap().len(), 3);
    assert!(
        s.recent_changes(10)
            .unwrap()
            .iter()
            .all(|e| e.result == ChangeResult::Pending)
    );
    let finished = |row, result| dexscope::state::FinishedChange {
        row,
        result,
        note: None,
        request_id: Some("req".into()),
    };
    s.finish_changes(&[finished(rows[0], ChangeResult::Ok)], None)
        .unwrap();
    // Settling again (or finishing a settled row) changes nothing.
    s.finish_changes(
        &[
            finished(rows[0], ChangeResult::Failed("late".into())),
            finished(rows[1], ChangeResult::Failed("lost".into())),
        ],
        Some(Utc::now()),
    )
    .unwrap();
    let left = s.pending_changes().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].row, rows[2]);
    let recent = s.recent_changes(10).unwrap();
    assert_eq!(recent[2].result, ChangeResult::Ok);
    assert_eq!(recent[2].request_id.as_deref(), Some("req"));
    assert_eq!(recent[1].result, ChangeResult::Failed("lost".into()));
    assert_eq!(recent[0].result, ChangeResult::Pending);
}
