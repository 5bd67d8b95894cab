//! Integration tests of dexscope, compiled into one binary; one module per area.

mod desired;
