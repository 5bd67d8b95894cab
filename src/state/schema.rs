//! The schema: its migrations, and bringing a database file forward on open.

use super::{State, StateError};

/// Schema migrations; migration `i` brings the database to `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
create table audit (
    id           integer primary key,
    at           text not null,
    grp          text not null,
    object_id    text not null,
    object_label text not null,
    operation    text not null,
    result       text not null,
    message      text,
    request_id   text,
    commit_id    text
);
create index audit_at on audit (at);
create table cursor (
    name  text primary key,
    value text not null
);
create table verdict (
    incident_id text not null,
    digest      text not null,
    verdict     text not null,
    at          text not null,
    primary key (incident_id, digest)
);
create index verdict_at on verdict (at);
create table tagged (
    machine_id text primary key,
    since      text not null
);
create table alert (
    kind          text not null,
    subject       text not null,
    state         text not null,
    since         text not null,
    last_notified text,
    severity      text not null,
    summary       text not null,
    details       text not null,
    primary key (kind, subject)
);
create table guard_refusal (
    grp          text primary key,
    removals     integer not null,
    max_removals integer not null,
    at           text not null
);
create table loop_pass (
    loop     text primary key,
    started  text not null,
    finished text not null,
    ok       integer not null,
    summary  text not null
);
"#,
    // 2: the user group's membership snapshot and its delta link (see "Member snapshot").
    r#"
create table member_sync (
    grp        text primary key,
    group_id   text not null,
    delta_link text not null,
    link_at    text not null,
    full_at    text not null
);
create table member_snapshot (
    id           text primary key,
    odata_type   text not null,
    upn          text,
    display_name text
);
"#,
    // 3: audit rows are written `pending` before their request is sent and settled afterwards;
    // `settled_at` is set when a pass settled a row left pending by an interrupted one.
    r#"
alter table audit add column settled_at text;
create index audit_pending on audit (id) where result = 'pending';
"#,
    // 4: what Defender Experts did with each judged incident (see `pickup`).
    r#"
create table pickup (
    incident_id text primary key,
    verdict     text not null,
    created_at  text not null,
    judged_at   text not null,
    taken_at    text,
    status      text not null,
    status_at   text not null,
    closed_at   text,
    settled_verdict text,
    settled     text,
    settled_at  text
);
create index pickup_settled_at on pickup (settled_at);
create index pickup_open on pickup (incident_id) where settled is null or (closed_at is null
    and ((verdict = 'in_scope' and taken_at is null)
      or (verdict = 'out_of_scope' and taken_at is not null)));
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl State {
    pub(super) fn migrate(&self) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| StateError::Migrate {
                path: self.path.clone(),
                version: SCHEMA_VERSION,
                source,
            })?;
        let found: i64 = tx
            .query_row("pragma user_version", [], |r| r.get(0))
            .map_err(|e| self.query("read the schema version", e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            let migrate_err = |source| StateError::Migrate {
                path: self.path.clone(),
                version,
                source,
            };
            tx.execute_batch(sql).map_err(migrate_err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(migrate_err)?;
        }
        tx.commit().map_err(|source| StateError::Migrate {
            path: self.path.clone(),
            version: SCHEMA_VERSION,
            source,
        })
    }
}
