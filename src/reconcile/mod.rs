//! Reconcile the scoped groups: the pure planner, the executor and `reconcile_once`.

pub mod plan;
