//! Defender for Endpoint client: machines and tags.
