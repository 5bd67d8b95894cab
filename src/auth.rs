//! Token sources (client secret, certificate assertion), the per-resource token cache and the roles self-check.
