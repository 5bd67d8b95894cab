//! Settings: built-in defaults, then the file, then `DEXSCOPE__…` environment, validated into a typed `Config`.
