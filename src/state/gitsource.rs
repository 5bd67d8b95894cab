//! The git source's last fetch: the commit applied (read back from the cache at a restart, so
//! a daemon without network still has a state), a refused head, and when fetches last worked,
//! for `status` and `check`.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{State, StateError};

/// The name the record is kept under in the `cursor` table (a name → text table).
const NAME: &str = "git_source";

/// What the daemon knows about its git source after the last fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSourceRecord {
    /// The source the record is about; a record for another URL or branch is not read back.
    pub url: String,
    pub branch: String,
    /// The commit whose desired state is applied.
    pub applied: Option<String>,
    /// Whether heads must be signed (`verify = "ssh"`): the applied commit was verified.
    pub verified: bool,
    /// The branch head refused by verification, while it is the head.
    pub refused: Option<RefusedHead>,
    /// When the last fetch ended, and the last one that reached the repository.
    pub last_fetch: Option<DateTime<Utc>>,
    pub last_ok_fetch: Option<DateTime<Utc>>,
    /// Why the last fetch failed, when it did.
    pub error: Option<String>,
}

/// A head commit that verification refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedHead {
    pub commit: String,
    pub reason: String,
}

impl State {
    /// The git source record, if a daemon with a git source ever stored one.
    pub fn git_source(&self) -> Result<Option<GitSourceRecord>, StateError> {
        let value: Option<String> = self.read("read the git source record", |conn| {
            conn.query_row("select value from cursor where name = ?1", [NAME], |r| {
                r.get(0)
            })
            .optional()
        })?;
        value
            .map(|v| serde_json::from_str(&v).map_err(|_| self.corrupt("git source record", &v)))
            .transpose()
    }

    pub fn set_git_source(&self, record: &GitSourceRecord) -> Result<(), StateError> {
        let value = serde_json::to_string(record).unwrap_or_default();
        self.write("store the git source record", |tx| {
            tx.execute(
                "insert into cursor (name, value) values (?1, ?2) \
                 on conflict (name) do update set value = excluded.value",
                params![NAME, value],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path().join("s.db")).unwrap();
        assert_eq!(state.git_source().unwrap(), None);
        let record = GitSourceRecord {
            url: "file:///x".into(),
            branch: "main".into(),
            applied: Some("a".repeat(40)),
            verified: true,
            refused: Some(RefusedHead {
                commit: "b".repeat(40),
                reason: "the commit is not signed".into(),
            }),
            last_fetch: Some(Utc::now()),
            last_ok_fetch: None,
            error: Some("cannot fetch".into()),
        };
        state.set_git_source(&record).unwrap();
        assert_eq!(state.git_source().unwrap(), Some(record));
    }
}
