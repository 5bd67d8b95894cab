//! The one place that talks HTTP: client, limiters, retry with Retry-After, paging, `$batch`.
