//! Alert transitions (a pure state machine) and their sinks: log, webhook, metrics.
