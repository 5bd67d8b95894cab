//! Integration tests, compiled into one binary: one module per area of dexscope.

mod alerts;
mod auth;
mod badinput;
mod check;
mod clients_sim;
mod config;
mod crashloop;
mod daemon;
mod dashboard;
mod defender;
mod delta;
mod desired;
mod export;
mod faults;
mod graph;
mod http;
mod incidents;
mod metrics;
mod priority;
mod reconcile;
mod sim;
mod state;
mod status;
mod support;
mod tenant;
mod verdict;
