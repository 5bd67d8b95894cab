//! Integration tests, compiled into one binary: one module per area of dexscope.

mod auth;
mod desired;
mod state;
mod verdict;
