//! Integration tests, compiled into one binary: one module per area of dexscope.

mod alerts;
mod auth;
mod check;
mod clients_sim;
mod config;
mod daemon;
mod defender;
mod delta;
mod desired;
mod graph;
mod http;
mod incidents;
mod metrics;
mod priority;
mod reconcile;
mod sim;
mod state;
mod support;
mod tenant;
mod verdict;
