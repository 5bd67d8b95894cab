//! Incident coverage verdicts: poll, decide (pure), render (pure), post exactly once.

pub mod comment;
pub mod verdict;
