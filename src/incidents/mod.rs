//! Incident coverage verdicts: poll, decide (pure), render (pure), post exactly once.
//!
//! `verdict` and `comment` are pure; `poll` is the pass ([`poll_once`]) and the exactly-once
//! post; `command` holds the `verdict` and `poll` commands.

pub mod command;
pub mod comment;
pub mod observe;
pub mod poll;
pub mod verdict;

pub use poll::{PollReport, PollSettings, poll_once};
