//! Integration tests: one binary, one module per area.

mod defender;
mod graph;
mod http;
