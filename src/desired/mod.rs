//! The desired state: TOML files parsed and validated (pure), read from a file or a directory.
