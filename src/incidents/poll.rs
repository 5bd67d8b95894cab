//! The incident poller: one pass lists the incidents updated since the stored cursor (with
//! their alerts and comments inline; one read per incident when that list fails), judges each
//! against the scope read afresh from the tenant, and posts each verdict comment exactly once.
//!
//! The decisions are pure ([`next_cursor`], [`decide`]); [`poll_once`] and [`post_verdict`]
//! carry them out. Exactly-once rests on the incident's own comments, not on local state:
//! before a POST the incident is read and the comment is posted only when no comment carries
//! the same marker, tagged with this installation's key (see [`Trust`]); after an ambiguous POST (timeout, 5xx) the comments are read again and the
//! POST is not repeated in the same pass. A crash at any point therefore leaves either no
//! comment (the cursor did not move, the next pass posts) or the comment (the next pass sees
//! the marker).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{self, Config};
use crate::graph::{self, IncidentQuery};
use crate::incidents::comment::{self, Marker};
use crate::incidents::pickup;
use crate::incidents::verdict::{
    self, ExcludedKind, Outcome, PlatformClass, Policy, PriorityFinding, Scope, Verdict,
};
use crate::incidents::window::{self, Stored, Window};
use crate::model::{Incident, IncidentComment, ObjectId};
use crate::scope::{MemberSource, ResolveError, read_members};
use crate::state::{AlertKind, AlertState, PostedVerdict, State, StateError};
use crate::telemetry::trace_memory;
use crate::tenant::Tenant;
use crate::{defender, model};

/// The name of the incident cursor in the state database.
pub const CURSOR: &str = "incidents";
/// The incident cursor as it was when the last successful sweep started (see [`window`]).
pub const SWEEP_FROM: &str = "incidents-sweep-from";
/// When the last successful sweep started, by the local clock.
pub const SWEPT_AT: &str = "incidents-swept-at";

/// What a pass needs from the config.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub user_group: ObjectId,
    pub device_tag: String,
    pub device_group: String,
    pub propagation_grace: Duration,
    /// `[scope] member_resync`: how old the reconcile loop's member snapshot may be and still
    /// stand in for a full read of the user group.
    pub member_resync: Duration,
    pub lookback: Duration,
    pub overlap: Duration,
    pub post_comments: bool,
    pub policy: Policy,
    /// `[incidents] pickup_within`: how long an IN SCOPE incident may wait for Defender Experts.
    pub pickup_within: Duration,
}

impl PollSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            user_group: config.scope.user_group_id.clone(),
            device_tag: config.scope.device_tag.clone(),
            device_group: config.scope.device_group_name.clone(),
            propagation_grace: config.scope.propagation_grace,
            member_resync: config.scope.member_resync,
            lookback: config.incidents.lookback,
            overlap: config.incidents.overlap,
            post_comments: config.incidents.post_comments,
            policy: policy_from_config(&config.incidents),
            pickup_within: config.incidents.pickup_within,
        }
    }
}

/// The verdict policy the `[incidents]` settings describe. An excluded kind is excluded when any
/// of the source values that identify it is listed in `excluded_sources`.
pub fn policy_from_config(c: &config::IncidentPolicy) -> Policy {
    let sources = |kind: ExcludedKind| -> &'static [&'static str] {
        match kind {
            ExcludedKind::DataLossPrevention => {
                &["dataLossPrevention", "microsoftDataLossPrevention"]
            }
            ExcludedKind::InsiderRisk => &["microsoftInsiderRiskManagement"],
            ExcludedKind::CustomDetection => &["customDetection"],
            ExcludedKind::Sentinel => &["microsoftSentinel"],
        }
    };
    Policy {
        eligible_severities: c.severities.clone(),
        excluded_kinds: ExcludedKind::ALL
            .into_iter()
            .filter(|kind| sources(*kind).iter().any(|s| c.is_excluded_source(s)))
            .collect(),
        covered_platforms: c
            .platforms
            .iter()
            .map(|p| match p {
                config::Platform::Windows => PlatformClass::Windows,
                config::Platform::Linux => PlatformClass::Linux,
                config::Platform::MacOs => PlatformClass::MacOs,
            })
            .collect(),
        pickup_assignee: c.pickup_assignee.trim().to_owned(),
        ..Policy::default()
    }
}

/// Why a pass (or the scope read of `verdict`) failed as a whole. Per-incident failures are
/// not errors of the pass: they are in [`PollReport::failed`] and hold the cursor.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("reading the incident cursor failed: {0}")]
    ReadCursor(#[source] StateError),
    #[error("{0}; the cursor is unchanged, the next pass tries again")]
    List(#[source] graph::Error),
    #[error("reading the scope for incident verdicts failed: {0}")]
    Members(#[source] ResolveError),
    #[error("reading the scope for incident verdicts failed: {0}")]
    Tagged(#[source] defender::Error),
    #[error("reading tag times for incident verdicts failed: {0}")]
    TagTimes(#[source] StateError),
    #[error(
        "storing the incident cursor failed: {0}; the next pass reads the same incidents again"
    )]
    StoreCursor(#[source] StateError),
    #[error(
        "reviewing what Defender Experts took failed: {0}; the cursor is unchanged, the next pass tries again"
    )]
    Pickup(#[source] StateError),
}

/// Why one incident could not be handled in this pass; it holds the cursor and is tried again
/// by the next pass.
#[derive(Debug, thiserror::Error)]
pub enum IncidentFailure {
    #[error(transparent)]
    Graph(Box<graph::Error>),
    #[error(
        "the comment on incident {id} may not have been stored and was not found on re-reading; the next pass decides again"
    )]
    Unconfirmed { id: String },
    #[error("reading the marker key or verdict record for incident {id} failed: {source}")]
    Trust {
        id: String,
        #[source]
        source: Box<StateError>,
    },
    #[error("recording the verdict of incident {id} failed: {source}")]
    Record {
        id: String,
        #[source]
        source: Box<StateError>,
    },
}

impl From<graph::Error> for IncidentFailure {
    fn from(e: graph::Error) -> Self {
        IncidentFailure::Graph(Box::new(e))
    }
}

/// What was done with one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handled {
    /// The verdict comment was posted in this pass.
    Posted,
    /// A comment with the same marker was already there (an earlier pass, or the ambiguous
    /// POST of this pass turned out to have been stored).
    AlreadyPosted,
    /// `post_comments = false`: evaluated and logged only.
    LoggedOnly,
    /// Merged into another incident: no comment.
    Redirected,
    /// The incident no longer exists (404 on the detail read).
    Gone,
    /// The incident could not be parsed: logged and skipped.
    Malformed,
}

/// One incident of a pass.
#[derive(Debug, Clone, Serialize)]
pub struct PolledIncident {
    pub id: String,
    pub handled: Handled,
    /// `in_scope`, `out_of_scope` or `skipped`, when a verdict was made.
    pub verdict: Option<&'static str>,
    pub digest: Option<String>,
    /// This pass saw Defender Experts take the incident: how long after its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub picked_up_after: Option<Duration>,
}

/// A priority finding from incident evidence: raise the priority alert for it.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceFinding {
    pub incident_id: String,
    #[serde(flatten)]
    pub finding: PriorityFinding,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollReport {
    /// The lower bound of this pass's `lastUpdateDateTime` filter.
    pub since: Option<DateTime<Utc>>,
    /// The pass was a sweep (reaching back the overlap), not a fresh pass from the cursor.
    pub sweep: bool,
    /// The cursor stored at the end of the pass (unchanged when nothing was listed).
    pub cursor: Option<DateTime<Utc>>,
    pub listed: usize,
    pub incidents: Vec<PolledIncident>,
    /// Incidents that could not be handled: (id, one-line error). They hold the cursor.
    pub failed: Vec<(String, String)>,
    pub priority_findings: Vec<EvidenceFinding>,
    /// What Defender Experts did with the judged incidents, reviewed at the end of the pass.
    pub pickup: PickupReview,
}

/// The pickup records reviewed at the end of a pass (no request: from the state database).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PickupReview {
    /// Agreements settled in this pass (each incident once, ever).
    pub settled: Vec<pickup::Settled>,
    /// IN SCOPE incidents not taken within `pickup_within`, open now.
    pub gaps: Vec<pickup::Gap>,
    /// Incidents taken by Defender Experts that dexscope judges OUT OF SCOPE, open now.
    pub mismatches: Vec<pickup::Mismatch>,
    /// Incidents whose `coverage_gap` alert was firing before this pass.
    pub firing_gaps: Vec<String>,
    /// Incidents whose `scope_mismatch` alert was firing before this pass.
    pub firing_mismatches: Vec<String>,
}

impl PollReport {
    pub fn count(&self, handled: Handled) -> usize {
        self.incidents
            .iter()
            .filter(|i| i.handled == handled)
            .count()
    }
}

/// What to do with a verdict, given the incident's current comments. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Redirected: nothing to post.
    Skip,
    /// A comment already carries this verdict's marker.
    AlreadyPosted(Marker),
    /// Posting is switched off; log only.
    LogOnly(Marker),
    /// Post this text, which ends with this marker.
    Post { marker: Marker, text: String },
}

/// Which markers on an incident count as dexscope's own. Anyone with comment rights can write
/// a marker line, so a marker counts only when its tag verifies with this installation's key,
/// or, untagged (written before markers carried tags), when the state database records that
/// dexscope posted this verdict, so an upgrade never posts twice.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    pub key: &'a [u8],
    /// The state database records this incident and digest as posted.
    pub recorded: bool,
}

impl Trust<'_> {
    /// The first comment carrying `marker` (tagged) in a form that counts.
    fn find<'c>(
        &self,
        comments: &'c [IncidentComment],
        marker: &Marker,
    ) -> Option<&'c IncidentComment> {
        let untagged = Marker {
            tag: None,
            ..marker.clone()
        };
        comments.iter().find(|c| {
            comment::parse_marker(&c.comment)
                .is_some_and(|m| m == *marker || (self.recorded && m == untagged))
        })
    }
}

/// Decides whether the verdict is posted: only when it has a marker (not redirected), posting
/// is on, and none of `comments` carries the same marker in a form `trust` counts.
pub fn decide(
    verdict: &Verdict,
    incident: &Incident,
    comments: &[IncidentComment],
    post_comments: bool,
    trust: Trust<'_>,
) -> Action {
    let Some(marker) = Marker::of(verdict) else {
        return Action::Skip;
    };
    let tag = comment::marker_tag(trust.key, &incident.id, &marker.digest);
    let marker = marker.tagged(tag.clone());
    if trust.find(comments, &marker).is_some() {
        Action::AlreadyPosted(marker)
    } else if !post_comments {
        Action::LogOnly(marker)
    } else {
        Action::Post {
            text: comment::render_tagged(verdict, incident, Some(tag)),
            marker,
        }
    }
}

/// The cursor after a pass, or `None` to keep the stored one. `listed` holds the
/// `lastUpdateDateTime` of every incident the list returned and whether it was handled;
/// malformed incidents have no trustworthy time and do not appear. The cursor moves to the
/// newest time seen when everything was handled, and otherwise no further than the oldest
/// unhandled incident, so that incident is listed again (every pass lists from the cursor or
/// earlier, see [`window`]). Pure.
pub fn next_cursor(
    stored: Option<DateTime<Utc>>,
    listed: &[(DateTime<Utc>, bool)],
) -> Option<DateTime<Utc>> {
    let oldest_unhandled = listed.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).min();
    let newest = listed.iter().map(|(t, _)| *t).max();
    let next = match oldest_unhandled {
        Some(t) => Some(t),
        None => match (stored, newest) {
            (Some(s), Some(n)) => Some(s.max(n)),
            (s, n) => n.or(s),
        },
    };
    next.filter(|n| Some(*n) != stored)
}

/// Reads the effective scope from the tenant: the direct members of the user group and the
/// machines carrying the tag with their placement, each with when it was tagged (or first seen
/// tagged) as noted in the state database.
///
/// The members come from the reconcile loop's snapshot continued with one delta round (one
/// request when nothing changed, instead of every page of the group), read-only: the
/// snapshot and its delta link stay as the reconcile loop left them. The delta round makes the
/// members as current as a full read would; without a fresh snapshot (none yet, or older
/// than `member_resync`) the members are read in full, as before.
pub async fn read_scope(
    tenant: &Tenant,
    state: &State,
    settings: &PollSettings,
    now: DateTime<Utc>,
) -> Result<Scope, PollError> {
    let source = MemberSource {
        state: Some(state),
        store: false,
        resync_every: settings.member_resync,
        now,
    };
    let members = read_members(&tenant.graph, &settings.user_group, source)
        .await
        .map_err(PollError::Members)?
        .members;
    let machines = tenant
        .defender
        .machines_by_tag(&settings.device_tag)
        .await
        .map_err(PollError::Tagged)?;
    let since = state.tagged_since_all().map_err(PollError::TagTimes)?;
    let tagged = machines.into_iter().map(|m| {
        let at = since.get(&m.id).copied();
        (m, at)
    });
    Ok(Scope::live(
        settings.device_group.clone(),
        settings.propagation_grace,
        members,
        tagged,
    ))
}

/// Carries out [`decide`] for one incident whose comments were read with it: posts when the
/// marker is absent and records the posted (or found) verdict in the state database.
///
/// Idempotent: it may run again after a crash between the POST and the record (the marker is
/// then found and the record written), or after an ambiguous POST (the comments are read again
/// before anything else, and a missing comment is left to the next pass rather than posted
/// twice in a row without a fresh read).
pub async fn post_verdict(
    tenant: &Tenant,
    state: &State,
    incident: &Incident,
    verdict: &Verdict,
    post_comments: bool,
    now: DateTime<Utc>,
) -> Result<Handled, IncidentFailure> {
    let id = &incident.id;
    let record = |marker: &Marker, at: DateTime<Utc>| {
        state
            .record_verdict(&PostedVerdict {
                incident_id: id.clone(),
                digest: marker.digest.clone(),
                verdict: verdict.outcome.code().to_owned(),
                at,
            })
            .map_err(|source| IncidentFailure::Record {
                id: id.clone(),
                source: Box::new(source),
            })
    };
    let trusting = |source| IncidentFailure::Trust {
        id: id.clone(),
        source: Box::new(source),
    };
    let key = state.installation_key().map_err(trusting)?;
    let recorded = state
        .verdict_posted(id, &verdict.digest)
        .map_err(trusting)?;
    let trust = Trust {
        key: &key,
        recorded,
    };
    match decide(verdict, incident, &incident.comments, post_comments, trust) {
        Action::Skip => Ok(Handled::Redirected),
        Action::LogOnly(marker) => {
            tracing::info!(incident = %id, verdict = verdict.outcome.code(), %marker, "verdict (posting is off)");
            Ok(Handled::LoggedOnly)
        }
        Action::AlreadyPosted(marker) => {
            let at = trust
                .find(&incident.comments, &marker)
                .and_then(|c| c.created_at)
                .unwrap_or(now);
            record(&marker, at)?;
            Ok(Handled::AlreadyPosted)
        }
        Action::Post { marker, text } => {
            match tenant.graph.post_comment(id, &text).await {
                Ok(_) => {}
                Err(e) if e.is_ambiguous() => {
                    tracing::warn!(incident = %id, error = %e, "comment post ambiguous; reading the comments again");
                    let fresh = tenant.graph.get_incident(id).await?;
                    if trust.find(&fresh.comments, &marker).is_none() {
                        return Err(IncidentFailure::Unconfirmed { id: id.clone() });
                    }
                }
                Err(e) => return Err(e.into()),
            }
            record(&marker, now)?;
            tracing::info!(incident = %id, verdict = verdict.outcome.code(), %marker, "verdict comment posted");
            Ok(Handled::Posted)
        }
    }
}

/// One pass: list the incidents updated since the cursor (a fresh pass), or at most once per
/// `overlap` since the start of the last sweep minus the overlap (a sweep, for incidents that
/// became visible late; the first pass looks back `lookback` from `now`), judge each with its
/// alerts against the scope read afresh, post each verdict exactly once, and move the cursor
/// past what was handled. [`window`] decides which.
///
/// The list is worked one page at a time and each page is dropped once judged, so a backlog
/// of thousands of incidents (with alerts and evidence) is never held at once; what outlives a
/// page is one (time, handled) pair and the id of each incident, which the cursor needs.
/// Posting between pages does not make the listing skip anything: the list is newest first,
/// and a comment only moves an incident already listed to the front (at worst an incident is
/// listed twice, and judged once).
///
/// Idempotent: the cursor and the sweep's record are stored only at the end, the cursor never
/// past an unhandled incident, and every POST is preceded by a read of the incident's
/// comments, so a pass killed anywhere and run again neither misses an incident nor duplicates
/// a comment (a sweep killed midway is not recorded, so the next pass sweeps again).
pub async fn poll_once(
    tenant: &Tenant,
    state: &State,
    settings: &PollSettings,
    now: DateTime<Utc>,
) -> Result<PollReport, PollError> {
    let cursors = stored_cursors(state).map_err(PollError::ReadCursor)?;
    let stored = cursors.cursor;
    let Window { since, sweep } = window::window(cursors, now, settings.overlap, settings.lookback);
    if sweep.is_some() {
        tracing::info!(%since, "incident pass: a sweep back over the overlap");
    } else {
        tracing::debug!(%since, "incident pass: fresh, from the cursor");
    }
    let mut pass = Pass {
        report: PollReport {
            since: Some(since),
            sweep: sweep.is_some(),
            ..PollReport::default()
        },
        times: Vec::new(),
        seen: HashMap::new(),
        scope: None,
    };
    let query = |expand_alerts| IncidentQuery {
        expand_alerts,
        ..IncidentQuery::default()
    };
    // `detail`: the list does not carry the alerts, each incident is fetched on its own.
    let mut detail = false;
    let mut pages = tenant
        .graph
        .incident_pages(since, query(true))
        .map_err(PollError::List)?;
    loop {
        let page = match pages.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            // Large tenants have seen persistent 500s listing with `$expand=alerts`: list
            // without alerts from the start instead. Incidents already judged are not judged
            // again (`seen`).
            Err(e) if !detail && is_server_error(&e) => {
                tracing::warn!(error = %e, "listing incidents with their alerts failed; fetching them one by one");
                detail = true;
                pass.report.listed = 0;
                pages = tenant
                    .graph
                    .incident_pages(since, query(false))
                    .map_err(PollError::List)?;
                continue;
            }
            Err(e) => return Err(PollError::List(e)),
        };
        pass.report.listed += page.len();
        for entry in page {
            pass.take(tenant, state, settings, entry, detail, now)
                .await?;
        }
    }
    trace_memory("incident pass listed and judged");
    let mut report = pass.report;
    report.pickup =
        review_pickups(state, settings.pickup_within, now).map_err(PollError::Pickup)?;
    report.cursor = stored;
    let next = next_cursor(stored, &pass.times);
    let mut writes: Vec<(&str, DateTime<Utc>)> = next.map(|n| (CURSOR, n)).into_iter().collect();
    if let Some(swept) = sweep {
        writes.extend([(SWEEP_FROM, swept.from), (SWEPT_AT, swept.at)]);
    }
    state.set_cursors(&writes).map_err(PollError::StoreCursor)?;
    report.cursor = next.or(stored);
    Ok(report)
}

/// The incident cursor and the record of the last sweep, as stored.
fn stored_cursors(state: &State) -> Result<Stored, StateError> {
    Ok(Stored {
        cursor: state.get_cursor(CURSOR)?,
        sweep_from: state.get_cursor(SWEEP_FROM)?,
        swept_at: state.get_cursor(SWEPT_AT)?,
    })
}

fn is_server_error(e: &graph::Error) -> bool {
    e.http_source()
        .and_then(|h| h.status())
        .is_some_and(|s| s >= 500)
}

type HandleResult = Result<(PolledIncident, Vec<PriorityFinding>), IncidentFailure>;

/// What one pass carries from page to page.
struct Pass {
    report: PollReport,
    /// The `lastUpdateDateTime` of every incident listed and whether it was handled: the
    /// input of [`next_cursor`].
    times: Vec<(DateTime<Utc>, bool)>,
    /// Incident id → whether it was handled; one incident listed twice (it moved between
    /// pages) is judged once.
    seen: HashMap<String, bool>,
    /// Read on the first incident that needs it, then kept for the pass.
    scope: Option<Scope>,
}

impl Pass {
    async fn take(
        &mut self,
        tenant: &Tenant,
        state: &State,
        settings: &PollSettings,
        entry: Result<Incident, graph::IncidentError>,
        detail: bool,
        now: DateTime<Utc>,
    ) -> Result<(), PollError> {
        let summary = match entry {
            Ok(incident) => incident,
            Err(e) => {
                tracing::warn!(error = %e, "malformed incident skipped");
                self.report.incidents.push(PolledIncident {
                    id: e.id.clone().unwrap_or_default(),
                    handled: Handled::Malformed,
                    verdict: None,
                    digest: None,
                    picked_up_after: None,
                });
                return Ok(());
            }
        };
        if let Some(&ok) = self.seen.get(&summary.id) {
            self.times.push((summary.last_update_at, ok));
            return Ok(());
        }
        let result = handle(
            tenant,
            state,
            settings,
            &summary,
            detail,
            &mut self.scope,
            now,
        )
        .await?;
        let ok = match result {
            Ok((polled, findings)) => {
                self.report
                    .priority_findings
                    .extend(findings.into_iter().map(|finding| EvidenceFinding {
                        incident_id: summary.id.clone(),
                        finding,
                    }));
                self.report.incidents.push(polled);
                true
            }
            Err(e) => {
                tracing::warn!(incident = %summary.id, error = %e, "incident not handled; the next pass tries again");
                self.report.failed.push((summary.id.clone(), e.to_string()));
                false
            }
        };
        self.times.push((summary.last_update_at, ok));
        self.seen.insert(summary.id, ok);
        Ok(())
    }
}

/// One listed incident: fetch it with its alerts when the list did not carry them (`detail`),
/// judge it, post. The outer error fails the pass (the scope could not be read); the inner one
/// fails only this incident.
async fn handle(
    tenant: &Tenant,
    state: &State,
    settings: &PollSettings,
    summary: &Incident,
    detail: bool,
    scope: &mut Option<Scope>,
    now: DateTime<Utc>,
) -> Result<HandleResult, PollError> {
    let polled = |handled, v: Option<&Verdict>| PolledIncident {
        id: summary.id.clone(),
        handled,
        verdict: v.map(|v| v.outcome.code()),
        digest: v.map(|v| v.digest.clone()),
        picked_up_after: None,
    };
    if summary.status == model::IncidentStatus::Redirected {
        let closed = close_pickup(state, &summary.id, summary.last_update_at.min(now));
        return Ok(closed.map(|()| (polled(Handled::Redirected, None), Vec::new())));
    }
    if !detail {
        return judge(tenant, state, settings, summary, scope, now).await;
    }
    let incident = match tenant.graph.get_incident(&summary.id).await {
        Ok(incident) => incident,
        Err(graph::Error::BadIncident(e)) => {
            tracing::warn!(error = %e, "malformed incident skipped");
            return Ok(Ok((polled(Handled::Malformed, None), Vec::new())));
        }
        Err(e) if e.http_source().and_then(|h| h.status()) == Some(404) => {
            tracing::info!(incident = %summary.id, "incident no longer exists; skipped");
            let closed = close_pickup(state, &summary.id, now);
            return Ok(closed.map(|()| (polled(Handled::Gone, None), Vec::new())));
        }
        Err(e) => return Ok(Err(e.into())),
    };
    judge(tenant, state, settings, &incident, scope, now).await
}

/// Judges an incident read with its alerts and comments, and posts the verdict.
async fn judge(
    tenant: &Tenant,
    state: &State,
    settings: &PollSettings,
    incident: &Incident,
    scope: &mut Option<Scope>,
    now: DateTime<Utc>,
) -> Result<HandleResult, PollError> {
    let polled = |handled, v: &Verdict| PolledIncident {
        id: incident.id.clone(),
        handled,
        verdict: Some(v.outcome.code()),
        digest: Some(v.digest.clone()),
        picked_up_after: None,
    };
    let scope = match scope {
        Some(scope) => scope,
        None => {
            let read = read_scope(tenant, state, settings, now).await?;
            trace_memory("incident scope read");
            scope.insert(read)
        }
    };
    let v = verdict::verdict(incident, scope, &settings.policy, now);
    if let Outcome::Skipped { .. } = v.outcome {
        return Ok(Ok((polled(Handled::Redirected, &v), Vec::new())));
    }
    let handled = match post_verdict(tenant, state, incident, &v, settings.post_comments, now).await
    {
        Ok(handled) => handled,
        Err(e) => return Ok(Err(e)),
    };
    // Noted once the verdict is handled: a failed incident is listed again and noted then.
    Ok(note_pickup(state, incident, &v, now).map(|latency| {
        let polled = PolledIncident {
            picked_up_after: latency,
            ..polled(handled, &v)
        };
        (polled, v.priority_findings.clone())
    }))
}

/// Folds what this pass saw of a judged incident into its pickup record; returns the pickup
/// latency when this pass saw Defender Experts take it.
fn note_pickup(
    state: &State,
    incident: &Incident,
    v: &Verdict,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, IncidentFailure> {
    let failure = |source| IncidentFailure::Record {
        id: incident.id.clone(),
        source: Box::new(source),
    };
    let prev = state.pickup(&incident.id).map_err(failure)?;
    let seen = pickup::Seen {
        verdict: v.outcome.code(),
        taken: v.taken_by_experts,
        incident,
    };
    let (record, latency) = pickup::observe(prev.as_ref(), seen, now);
    if prev.as_ref() != Some(&record) {
        state.save_pickup(&record).map_err(failure)?;
    }
    if let Some(after) = latency {
        tracing::info!(incident = %incident.id, verdict = v.outcome.code(), after_secs = after.as_secs(), "Defender Experts took the incident");
    }
    Ok(latency)
}

/// Marks the pickup record of a merged or deleted incident closed, when there is one.
fn close_pickup(state: &State, id: &str, at: DateTime<Utc>) -> Result<(), IncidentFailure> {
    let failure = |source| IncidentFailure::Record {
        id: id.to_owned(),
        source: Box::new(source),
    };
    if let Some(prev) = state.pickup(id).map_err(failure)? {
        let record = pickup::closed(&prev, at);
        if record != prev {
            state.save_pickup(&record).map_err(failure)?;
        }
    }
    Ok(())
}

/// Reviews the pickup records at the end of a pass: settles the agreements that are due and
/// lists the open coverage gaps and scope mismatches, beside the alerts of both kinds that
/// were firing, so the observations can resolve those that ended. Reads no incident.
pub fn review_pickups(
    state: &State,
    within: Duration,
    now: DateTime<Utc>,
) -> Result<PickupReview, StateError> {
    let mut out = PickupReview::default();
    for mut record in state.open_pickups()? {
        if let Some(settled) = pickup::settle(&mut record, within, now) {
            state.save_pickup(&record)?;
            out.settled.push(settled);
        }
        out.gaps.extend(pickup::gap(&record, within, now));
        out.mismatches.extend(pickup::mismatch(&record));
    }
    for alert in state.alerts()? {
        if alert.state != AlertState::Firing {
            continue;
        }
        match alert.kind {
            AlertKind::CoverageGap => out.firing_gaps.push(alert.subject),
            AlertKind::ScopeMismatch => out.firing_mismatches.push(alert.subject),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + min * 60, 0).unwrap()
    }

    #[test]
    fn cursor_moves_only_past_handled_incidents() {
        type Case = (Option<i64>, &'static [(i64, bool)], Option<i64>);
        let cases: &[Case] = &[
            // Nothing listed: keep.
            (None, &[], None),
            (Some(5), &[], None),
            // Everything handled: the newest time.
            (None, &[(3, true), (9, true), (1, true)], Some(9)),
            (Some(5), &[(3, true), (7, true)], Some(7)),
            // Never backwards when everything was handled (an overlap re-read).
            (Some(10), &[(8, true), (9, true)], None),
            // An unhandled incident holds the cursor at its own time.
            (None, &[(3, true), (9, false), (1, true)], Some(9)),
            (Some(5), &[(6, false), (8, false), (9, true)], Some(6)),
            // Same as stored: nothing to write.
            (Some(6), &[(6, false), (9, true)], None),
            // An unhandled incident inside the overlap may move it back; safe, re-reads more.
            (Some(10), &[(8, false), (11, true)], Some(8)),
        ];
        for (stored, listed, want) in cases {
            let listed: Vec<_> = listed.iter().map(|(m, ok)| (t(*m), *ok)).collect();
            assert_eq!(
                next_cursor(stored.map(t), &listed),
                want.map(t),
                "{stored:?} {listed:?}"
            );
        }
    }

    #[test]
    fn decide_posts_only_a_marker_not_already_there() {
        let incident = |status: &str| {
            crate::graph::parse_incident(&serde_json::json!({
                "id": "7", "createdDateTime": "2025-01-01T00:00:00Z", "severity": "high",
                "status": status, "redirectIncidentId": "3", "alerts": []
            }))
            .unwrap()
        };
        let scope = Scope::new(verdict::ScopeSource::Live, "G", Duration::ZERO, [], []);
        let judge = |i: &Incident| verdict::verdict(i, &scope, &Policy::default(), t(0));
        let active = incident("active");
        let v = judge(&active);
        let trust = Trust {
            key: &[7; 32],
            recorded: false,
        };
        let Action::Post { marker, text } = decide(&v, &active, &[], true, trust) else {
            panic!("should post");
        };
        assert!(text.ends_with(&marker.to_string()));
        assert!(marker.tag.is_some(), "{marker}");
        let said = |text: String| IncidentComment {
            comment: text,
            created_by: Some("dexscope".into()),
            created_at: None,
        };
        let posted = [said(text)];
        assert_eq!(
            decide(&v, &active, &posted, true, trust),
            Action::AlreadyPosted(marker.clone())
        );
        assert_eq!(
            decide(&v, &active, &[], false, trust),
            Action::LogOnly(marker.clone())
        );
        // Forged: untagged, tagged with another key, or tagged for another incident.
        let untagged = Marker {
            tag: None,
            ..marker.clone()
        };
        let foreign = |key: &[u8], id: &str| {
            untagged
                .clone()
                .tagged(comment::marker_tag(key, id, &marker.digest))
        };
        for forged in [
            untagged.clone(),
            foreign(&[8; 32], &active.id),
            foreign(&[7; 32], "8"),
        ] {
            let comments = [said(format!("looks fine\n{forged}"))];
            assert!(
                matches!(
                    decide(&v, &active, &comments, true, trust),
                    Action::Post { .. }
                ),
                "{forged}"
            );
        }
        // An untagged marker counts once the state database records the verdict as posted.
        let legacy = [said(comment::render(&v, &active))];
        let recorded = Trust {
            recorded: true,
            ..trust
        };
        assert_eq!(
            decide(&v, &active, &legacy, true, recorded),
            Action::AlreadyPosted(marker)
        );
        let redirected = incident("redirected");
        assert_eq!(
            decide(&judge(&redirected), &redirected, &[], true, trust),
            Action::Skip
        );
    }

    #[test]
    fn config_sources_map_to_excluded_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[tenant]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
             client_id = \"00000000-0000-0000-0000-000000000002\"\n\
             [scope]\nuser_group_id = \"00000000-0000-0000-0000-000000000003\"\n\
             device_tag = \"DEX-Scoped\"\n\
             [incidents]\nexcluded_sources = [\"customDetection\", \"dataLossPrevention\"]\n\
             platforms = [\"windows\"]\nseverities = [\"high\"]\n",
        )
        .unwrap();
        let config = Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", "s")]).unwrap();
        let p = PollSettings::from_config(&config).policy;
        assert_eq!(
            p.excluded_kinds,
            vec![
                ExcludedKind::DataLossPrevention,
                ExcludedKind::CustomDetection
            ]
        );
        assert_eq!(p.covered_platforms, vec![PlatformClass::Windows]);
        assert_eq!(p.eligible_severities, vec![model::Severity::High]);
        let defaults = policy_from_config(&{
            std::fs::write(
                &path,
                "[tenant]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
                 client_id = \"00000000-0000-0000-0000-000000000002\"\n\
                 [scope]\nuser_group_id = \"00000000-0000-0000-0000-000000000003\"\n\
                 device_tag = \"DEX-Scoped\"\n",
            )
            .unwrap();
            Config::load(&path, [("DEXSCOPE_CLIENT_SECRET", "s")])
                .unwrap()
                .incidents
        });
        assert_eq!(defaults, Policy::default());
    }
}
