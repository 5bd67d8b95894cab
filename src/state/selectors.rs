//! Each selector's last good expansion: the identities it yielded when its source was last
//! read, kept so that a source that cannot be read (deleted, forbidden, a rejected filter)
//! keeps what it produced instead of removing it. Stored in the `cursor` table under
//! `selector:{key}` as a JSON list, so no schema change is needed. Beside it, under
//! `selector-delta:{key}`, the `groups/delta` links that tell an unchanged tree from a changed
//! one, so a restart stays as cheap as the pass before it.

use rusqlite::{OptionalExtension, params};

use super::{State, StateError};

const PREFIX: &str = "selector:";

/// One identity a selector yielded: its object id and the label it was shown with.
pub type Yielded = (String, String);

impl State {
    /// What selector `key` yielded when it was last read, if it ever was.
    pub fn selector_expansion(&self, key: &str) -> Result<Option<Vec<Yielded>>, StateError> {
        let name = format!("{PREFIX}{key}");
        let value: Option<String> = self.read("read a selector's last expansion", |conn| {
            conn.query_row("select value from cursor where name = ?1", [&name], |r| {
                r.get(0)
            })
            .optional()
        })?;
        match value {
            None => Ok(None),
            Some(v) => serde_json::from_str(&v)
                .map(Some)
                .map_err(|_| self.corrupt("selector expansion", &name)),
        }
    }

    /// Stores what selector `key` yielded now (replacing the last expansion).
    pub fn set_selector_expansion(&self, key: &str, yielded: &[Yielded]) -> Result<(), StateError> {
        let name = format!("{PREFIX}{key}");
        let value = serde_json::to_string(yielded).unwrap_or_else(|_| "[]".to_string());
        self.write("store a selector's expansion", |tx| {
            tx.execute(
                "insert into cursor (name, value) values (?1, ?2) \
                 on conflict (name) do update set value = excluded.value",
                params![name, value],
            )?;
            Ok(())
        })
    }
}

/// The `cursor` row prefix of a selector's change tracking (its `groups/delta` links).
const TRACKING: &str = "selector-delta:";

impl State {
    /// What selector `key` stored to follow its source cheaply (opaque text to this table).
    pub fn selector_tracking(&self, key: &str) -> Result<Option<String>, StateError> {
        let name = format!("{TRACKING}{key}");
        self.read("read a selector's change tracking", |conn| {
            conn.query_row("select value from cursor where name = ?1", [&name], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    /// Stores (or with `None` forgets) how selector `key` follows its source.
    pub fn set_selector_tracking(&self, key: &str, value: Option<&str>) -> Result<(), StateError> {
        let name = format!("{TRACKING}{key}");
        self.write("store a selector's change tracking", |tx| {
            match value {
                Some(v) => tx.execute(
                    "insert into cursor (name, value) values (?1, ?2) \
                     on conflict (name) do update set value = excluded.value",
                    params![name, v],
                )?,
                None => tx.execute("delete from cursor where name = ?1", [&name])?,
            };
            Ok(())
        })
    }
}

/// The `cursor` row holding how every selector fared in the last pass that stored them.
const FINDINGS: &str = "selectors-last-pass";

impl State {
    /// How the selectors fared in the last storing pass (opaque text to this table).
    pub fn selector_findings(&self) -> Result<Option<String>, StateError> {
        self.read("read how the selectors fared", |conn| {
            conn.query_row(
                "select value from cursor where name = ?1",
                [FINDINGS],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Replaces the record of how the selectors fared.
    pub fn set_selector_findings(&self, value: &str) -> Result<(), StateError> {
        self.write("store how the selectors fared", |tx| {
            tx.execute(
                "insert into cursor (name, value) values (?1, ?2) \
                 on conflict (name) do update set value = excluded.value",
                params![FINDINGS, value],
            )?;
            Ok(())
        })
    }
}
