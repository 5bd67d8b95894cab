//! The `dexscope` binary: command dispatch and exit codes.

fn main() {}
