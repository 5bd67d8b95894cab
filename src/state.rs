//! The SQLite state database: audit log, cursors, tag timestamps, alert state.
