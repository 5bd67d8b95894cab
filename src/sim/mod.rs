//! The simulated tenant: token endpoint, Graph and MDE subsets served over real HTTP on loopback.
