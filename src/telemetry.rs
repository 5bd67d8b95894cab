//! Tracing setup: human text for a terminal, JSON for journald and SIEM.
