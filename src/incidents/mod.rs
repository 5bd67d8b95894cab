//! Incident coverage verdicts: poll, decide (pure), render (pure), post exactly once.
//!
//! `verdict` and `comment` are pure; `poll` is the pass ([`poll_once`]) and the exactly-once
//! post; `pickup` (pure) follows what Defender Experts did with each judged incident;
//! `command` holds the `verdict` and `poll` commands; `window` (pure) decides whether a pass is
//! fresh or a sweep and what it lists.

pub mod command;
pub mod comment;
pub mod observe;
pub mod pickup;
pub mod poll;
pub mod verdict;
pub mod window;

pub use poll::{PollReport, PollSettings, poll_once};
