//! Integration tests, compiled into one binary: one module per area of dexscope.

mod auth;
mod config;
mod daemon;
mod defender;
mod desired;
mod graph;
mod http;
mod metrics;
mod sim;
mod state;
mod tenant;
mod verdict;
