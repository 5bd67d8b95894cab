//! Command-line interface: clap definitions of the global flags and the commands.
