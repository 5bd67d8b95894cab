//! Priority verification: prove from device placement that the scoped device group is not outranked.

pub mod check;
