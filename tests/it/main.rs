//! Integration tests, compiled into one binary; each module covers one part of dexscope.

mod state;
