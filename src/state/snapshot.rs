//! The member snapshot: the scoped user group's direct members as last read, with the delta
//! link that continues from there. Only a cache of the tenant: losing it costs one full read.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{State, StateError, ts};
use crate::model::{GroupMember, ObjectId, Upn, UserId};

/// Where the member snapshot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSync {
    /// The group the snapshot is of (a changed `user_group_id` makes it useless).
    pub group: ObjectId,
    /// Graph's `@odata.deltaLink`: not a secret, but long; never logged.
    pub delta_link: String,
    /// When the delta link was issued (the service keeps the state about 7 days).
    pub link_at: DateTime<Utc>,
    /// When the members (and their UPNs) were last listed in full.
    pub full_at: DateTime<Utc>,
}

const USER_GROUP_ROW: &str = "users";
const USER_ODATA_TYPE: &str = "#microsoft.graph.user";

impl State {
    /// The stored snapshot, or `None` when there is none.
    ///
    /// Rows become [`GroupMember`]s as they are read: 100k members are never held twice (as
    /// row strings and as members).
    pub fn member_snapshot(&self) -> Result<Option<(MemberSync, Vec<GroupMember>)>, StateError> {
        let found = self.read("read the member snapshot", |conn| {
            let sync: Option<(String, String, String, String)> = conn
                .query_row(
                    "select group_id, delta_link, link_at, full_at from member_sync where grp = ?1",
                    [USER_GROUP_ROW],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some(sync) = sync else {
                return Ok(None);
            };
            let count: i64 =
                conn.query_row("select count(*) from member_snapshot", [], |r| r.get(0))?;
            let mut members = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let mut bad = None;
            let mut stmt =
                conn.prepare("select id, odata_type, upn, display_name from member_snapshot")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                match snapshot_member(r)? {
                    Ok(m) => members.push(m),
                    Err(id) => {
                        bad = Some(id);
                        break;
                    }
                }
            }
            Ok(Some((sync, members, bad)))
        })?;
        let Some(((group, delta_link, link_at, full_at), members, bad)) = found else {
            return Ok(None);
        };
        if let Some(id) = bad {
            return Err(self.corrupt("snapshot member", &id));
        }
        let sync = MemberSync {
            group: ObjectId::parse(&group)
                .map_err(|_| self.corrupt("snapshot group id", &group))?,
            delta_link,
            link_at: self.parse_ts("delta link time", &link_at)?,
            full_at: self.parse_ts("full read time", &full_at)?,
        };
        Ok(Some((sync, members)))
    }

    /// Replaces the snapshot with a full read, in one transaction.
    pub fn replace_member_snapshot(
        &self,
        sync: &MemberSync,
        members: &[GroupMember],
    ) -> Result<(), StateError> {
        self.write("store the member snapshot", |tx| {
            tx.execute("delete from member_snapshot", [])?;
            put_sync(tx, sync)?;
            upsert_members(tx, members)
        })
    }

    /// Applies changes to the snapshot in one transaction: `present` are inserted or updated,
    /// `removed` deleted, and the delta link moves on when `sync` is given. Idempotent: set
    /// operations, so a replayed change or a repeated call leaves the same rows.
    pub fn update_member_snapshot(
        &self,
        sync: Option<&MemberSync>,
        present: &[GroupMember],
        removed: &[ObjectId],
    ) -> Result<(), StateError> {
        self.write("update the member snapshot", |tx| {
            if let Some(sync) = sync {
                put_sync(tx, sync)?;
            }
            let mut del = tx.prepare("delete from member_snapshot where id = ?1")?;
            for id in removed {
                del.execute([id.as_str()])?;
            }
            upsert_members(tx, present)
        })
    }

    /// Forgets the snapshot, so the next pass reads the members in full.
    pub fn clear_member_snapshot(&self) -> Result<(), StateError> {
        self.write("clear the member snapshot", |tx| {
            tx.execute("delete from member_sync", [])?;
            tx.execute("delete from member_snapshot", [])?;
            Ok(())
        })
    }
}

/// One snapshot row as a member; `Err(id)` when its id is not a valid object id.
fn snapshot_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<GroupMember, String>> {
    let id = r.get_ref(0)?.as_str()?;
    let odata_type = r.get_ref(1)?.as_str()?;
    if odata_type == USER_ODATA_TYPE {
        let Ok(id) = UserId::parse(id) else {
            return Ok(Err(id.to_string()));
        };
        let upn = r
            .get_ref(2)?
            .as_str_or_null()?
            .and_then(|u| Upn::parse(u).ok());
        Ok(Ok(GroupMember::User { id, upn }))
    } else {
        let Ok(id) = ObjectId::parse(id) else {
            return Ok(Err(id.to_string()));
        };
        Ok(Ok(GroupMember::Other {
            id,
            odata_type: odata_type.into(),
            display_name: r.get::<_, Option<String>>(3)?.map(String::into_boxed_str),
        }))
    }
}

fn put_sync(tx: &Transaction<'_>, sync: &MemberSync) -> rusqlite::Result<()> {
    tx.execute(
        "insert into member_sync (grp, group_id, delta_link, link_at, full_at) \
         values (?1, ?2, ?3, ?4, ?5) on conflict (grp) do update set \
         group_id = excluded.group_id, delta_link = excluded.delta_link, \
         link_at = excluded.link_at, full_at = excluded.full_at",
        params![
            USER_GROUP_ROW,
            sync.group.as_str(),
            sync.delta_link,
            ts(sync.link_at),
            ts(sync.full_at)
        ],
    )?;
    Ok(())
}

fn upsert_members(tx: &Transaction<'_>, members: &[GroupMember]) -> rusqlite::Result<()> {
    // In id order, each insert lands next to the last one in the primary-key b-tree, so the
    // pages it touches stay in SQLite's page cache; in the order the service answered (random
    // GUIDs) nearly every insert reads and rewrites a different index page once the index
    // outgrows the cache.
    let mut sorted: Vec<&GroupMember> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| member_id(a).cmp(member_id(b)));
    let mut stmt = tx.prepare(
        "insert into member_snapshot (id, odata_type, upn, display_name) values (?1, ?2, ?3, ?4) \
         on conflict (id) do update set odata_type = excluded.odata_type, \
         upn = coalesce(excluded.upn, member_snapshot.upn), \
         display_name = coalesce(excluded.display_name, member_snapshot.display_name)",
    )?;
    for m in sorted {
        match m {
            GroupMember::User { id, upn } => stmt.execute(params![
                id.as_str(),
                USER_ODATA_TYPE,
                upn.as_ref().map(Upn::as_str),
                None::<String>
            ])?,
            GroupMember::Other {
                id,
                odata_type,
                display_name,
            } => stmt.execute(params![
                id.as_str(),
                odata_type,
                None::<String>,
                display_name
            ])?,
        };
    }
    Ok(())
}

/// The id a member is stored under.
fn member_id(m: &GroupMember) -> &str {
    match m {
        GroupMember::User { id, .. } => id.as_str(),
        GroupMember::Other { id, .. } => id.as_str(),
    }
}
