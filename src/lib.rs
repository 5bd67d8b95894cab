//! dexscope keeps Microsoft Defender Experts for XDR *scoped coverage* true to a desired state
//! kept in git.
//!
//! # Architecture
//!
//! Data flows one way. The operator's **config** (`config`) names the tenant, the credential and
//! the scope. **auth** turns the credential into one bearer token per resource (Graph, MDE).
//! **http** is the only place that talks HTTP: rate limiters per API surface, retry with
//! `Retry-After`, paging and `$batch`. The **graph** and **defender** clients speak the two APIs
//! and hand domain values (`model`) upward. The **desired** state is parsed from TOML files. The
//! **reconcile** pass compares desired with actual in a pure planner and an executor that makes
//! no decisions; **priority** proves from device placement that the scoped device group is not
//! outranked; **incidents** polls new incidents, decides coverage in a pure verdict engine and
//! posts the verdict as a comment exactly once. **alerts** turns bad findings into notifications;
//! **state** (SQLite) remembers what must survive a restart; the **daemon** schedules the three
//! passes. **sim** is a simulated tenant served over real HTTP for tests, demo and benchmarks.
//!
//! # Codemap
//!
//! - `cli`: clap definitions of the commands and flags; the shell completions and man pages
//!   written from them.
//! - `config`: settings (defaults → file → `DEXSCOPE__…` environment) → validated [`config::Config`];
//!   `load` (syntax, unknown keys, merge), `reader`, `credentials`, `validate`, `types`, `error`,
//!   `git` (the `[scope.git]` source, checked at load).
//! - `telemetry`: tracing setup (text or JSON; journald priorities, `NO_COLOR`, fatal errors).
//! - `model`: domain types with validating constructors; pure.
//! - `auth`: token sources: `settings` (credential), `cache`, `endpoint` (transport, refusals),
//!   `assertion` (certificate), `roles` (self-check).
//! - `retry_after`: `Retry-After` header values read into a bounded wait (pure), for `auth` and `http`.
//! - `http`: the HTTP client, limiters and the send rate each surface learns from throttling
//!   (`adapt`), retry, paging, `$batch`, error classification; `body` (a body read within its
//!   cap, a list page split into its items as it arrives).
//! - `graph`, `defender`: API clients; `wire.rs` in each holds the serde mirrors of the JSON.
//! - `desired`: desired-state parsing and validation (pure) plus file/directory read; `selector`
//!   (`group` and `where` entries checked offline, pure), `lines` (offsets → `line:col`); `kept`
//!   (a valid state kept as its texts in an unlinked file of the state directory, parsed
//!   again for each pass); `source` (a git branch head fetched into a private cache, its
//!   signature verified, its tree read).
//! - `scope`: reading the scope from the tenant, below `reconcile`, `priority` and `incidents`:
//!   `members` (the user group's members from the snapshot + delta), `snapshot` (pure: when the
//!   member snapshot stands in for a full read), `devices` (the one desired-device resolver,
//!   pure), `vocab` (`GroupKind`, `Unresolved`, resolved entries).
//! - `selectors`: `group` and `where` entries expanded against the tenant (group trees, user
//!   `$filter`, Entra devices joined to MDE machines, the machine list's `$filter`), each
//!   selector's last good expansion kept in `state`; `tree` (a nested group read group by
//!   group, with the path to each member), `track` (an unchanged tree told by `groups/delta`),
//!   `expand` (pure: the safety rules, exclusions, origins).
//! - `reconcile`: `resolve` (desired users → ids, the tenant read for the planner), `plan`
//!   (pure), `apply` (executor), `reconcile_once`, the `plan` and `apply` commands.
//! - `priority`: `check` (pure), `priority_once`.
//! - `incidents`: `verdict` (pure: `scope`, `policy`, `assets`, `coverage`, `types`) and `comment`
//!   (pure), `observe` (pure: pass report → alert observations), `pickup` (pure: what Defender
//!   Experts did with each judged incident, coverage gaps, scope mismatches), `window` (pure: a
//!   fresh pass from the cursor or a sweep back over the overlap), `poll`, `poll_once`.
//! - `alerts`: the one alert path, the `Alerter` (load, step, save, then every sink);
//!   `transition` (pure), `observe` (pure: the daemon's own findings as alerts) and `sinks`
//!   (log, webhook through `http`, alert figures).
//! - `check`: the `check` monitoring probe (status decided by the pure `evaluate`).
//! - `state`: SQLite, one file per table family (`schema`, `audit`, `cursors`, `tags`, `alerts`,
//!   `guard`, `passes`, `snapshot`, `gitsource`, `pickup`); `records`: the typed pass records and the one staleness rule.
//! - `sim`: the simulated tenant (model, routes, seed, faults).
//! - `text`: small text helpers for messages to people ("did you mean", durations like `1h 30m`,
//!   tenant labels escaped onto one line).
//! - `tenant`: the connection to one tenant built once from the config (tokens, HTTP, clients).
//! - `metrics`: the registry and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - `daemon`: `run` (signals, generations), `schedule` (loops, back-off, the scheduler),
//!   `systemd` (notify, watchdog), `watch` (desired-state files), `gitwatch` (the git source:
//!   fetch every `fetch_every`, keep the last good commit, alert), `passes` (adapters; the alert and
//!   figure decisions are the pure `reconcile::observe`, `incidents::observe`, `priority::check`).
//! - `demo`: the daemon against an in-process simulated tenant, narrated.
//! - `export`: the tenant's scoped coverage today written as a desired-state file (adoption).
//! - `status`: a summary of coverage health read from the state database only.
//!
//! # Layers
//!
//! A module may use the modules of its own layer and of the layers above it in this list, never
//! one below; no two modules use each other, directly or round a loop. `tests/tidy.rs` checks
//! both from the `crate::…` and `super::…` paths in the code.
//!
//! 1. `text`, `model`, `retry_after`
//! 2. `config`, `telemetry`, `sim`
//! 3. `auth`
//! 4. `http`
//! 5. `graph`, `defender`, `desired`, `state`
//! 6. `tenant`, `scope`, `selectors`
//! 7. `alerts`, `metrics`
//! 8. `reconcile`, `priority`, `incidents`
//! 9. `check`, `status`, `export`
//! 10. `daemon`
//! 11. `demo`, `cli`
//!
//! Pure modules (no `async fn`, no client, runtime, database or file type, no clock read; `now`
//! is a parameter): `model`, `desired::parse`, `desired::selector`, `reconcile::plan`,
//! `priority::check`, `incidents::verdict`, `incidents::comment`, `incidents::pickup`,
//! `incidents::window`,
//! `scope::vocab`, `scope::snapshot`, `selectors::expand`,
//! `alerts::transition`, `alerts::observe`, `state::records`.
//!
//! # Architecture invariants
//!
//! - Nothing under `model`, `desired::parse`, `reconcile::plan`, `priority::check`,
//!   `incidents::verdict`, `incidents::comment` or the alert transition function does I/O or
//!   reads the clock: `now` is a parameter.
//! - Only `http` and `auth` retry. A failed pass is retried by the next tick, never by its caller.
//! - A group member is only ever removed with `DELETE …/members/{id}/$ref`; there is no code path
//!   that sends a member `DELETE` without `/$ref`.
//! - An empty desired state never causes a removal unless it says `allow_empty = true`.
//! - Secrets live in `secrecy` types from the moment they are read; no `Debug`, `Display` or
//!   error message of this crate contains a secret, a token or a client assertion.
//! - Wire types never leave their client module.

#![deny(unsafe_code)]

pub mod alerts;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod defender;
pub mod demo;
pub mod desired;
pub mod export;
pub mod graph;
pub mod http;
pub mod incidents;
pub mod metrics;
pub mod model;
pub mod priority;
pub mod reconcile;
pub mod retry_after;
pub mod scope;
pub mod selectors;
pub mod sim;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tenant;
pub mod text;
