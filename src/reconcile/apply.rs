//! The executor: carries a [`Plan`] out with the fewest requests the APIs allow, records every
//! change in the audit log, then re-reads the tenant and says per entry what converged.
//!
//! It makes no decisions: what to add and remove (prune, the guard, protected entries) was
//! settled by the planner. Request shapes: user adds go as `PATCH members@odata.bind` with 20
//! ids, 20 PATCHes per `$batch` (400 users per round trip); removals as `DELETE …/$ref`, 20 per
//! `$batch`; tags as `AddOrRemoveTagForMultipleMachines` with 500 ids per call.
//!
//! No change goes unaudited: each round trip's rows are written `pending` before its request is
//! sent and get their result when the answer comes. A row whose answer never came (the process
//! was killed, the connection dropped, the service answered 5xx after possibly applying it)
//! stays pending, and the next pass settles it by what the tenant shows ([`settle_pending`])
//! before it plans. Every applier is idempotent, because a pass may be killed between a write
//! and its answer and run again: "already a member", "not a member" and re-applying a tag are
//! success, and the next pass plans only what is still missing.

use chrono::{DateTime, Utc};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::defender::{DefenderClient, MAX_IDS_PER_TAG_CALL, TagAction};
use crate::graph::{GraphClient, MAX_BIND_PER_PATCH, MemberOutcome, MemberResult};
use crate::http::MAX_BATCH_ITEMS;
use crate::model::{GroupMember, MachineId, ObjectId, Upn, UserId};
use crate::state::{
    AuditEntry, ChangeResult, FinishedChange, Operation, PendingChange, State, StateError,
};

use super::plan::{Actual, Change, Plan};
use crate::scope::GroupKind;

/// Users added per round trip: 20 ids per PATCH, 20 PATCHes per `$batch`.
pub const ADDS_PER_ROUND_TRIP: usize = MAX_BIND_PER_PATCH * MAX_BATCH_ITEMS;

/// Where the plan is carried out.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub graph: &'a GraphClient,
    pub defender: &'a DefenderClient,
    pub state: &'a State,
    pub user_group: &'a ObjectId,
    pub device_tag: &'a str,
    /// The desired state's git commit, recorded with every change.
    pub commit: Option<&'a str>,
}

/// The result of one applied change, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub group: GroupKind,
    #[serde(serialize_with = "op_str")]
    pub operation: Operation,
    pub id: String,
    pub label: String,
    pub result: AppliedResult,
    /// Why it failed.
    pub message: Option<String>,
    pub request_id: Option<String>,
}

/// How one change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliedResult {
    Ok,
    /// "Already a member" / "not a member": the desired effect held already.
    Already,
    Failed,
}

impl Applied {
    pub fn is_success(&self) -> bool {
        self.result != AppliedResult::Failed
    }
}

fn op_str<S: serde::Serializer>(op: &Operation, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(op.as_str())
}

/// Carries the plan out: user adds, user removals, tags, untags, in that order. A failed
/// round trip is recorded as failed for its entries and the rest goes on (one bad call never
/// blocks the others). Only a failure to write the audit log stops the pass.
pub async fn apply(
    target: Target<'_>,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Vec<Applied>, StateError> {
    let mut done = Vec::new();
    add_users(target, &plan.users.add, now, &mut done).await?;
    apply_after_adds(target, plan, now, &mut done).await?;
    Ok(done)
}

/// Carries out what follows the user adds: user removals, tags, untags, in that order,
/// appending to `done`. A pass that fed its adds to [`add_users_fed`] calls this once the
/// writer is done and the full plan, removal guard included, is decided.
pub async fn apply_after_adds(
    target: Target<'_>,
    plan: &Plan,
    now: DateTime<Utc>,
    done: &mut Vec<Applied>,
) -> Result<(), StateError> {
    remove_members(target, &plan.users.remove, now, done).await?;
    tag(target, TagAction::Add, &plan.devices.add, now, done).await?;
    tag(target, TagAction::Remove, &plan.devices.remove, now, done).await
}

/// Adds users as they are handed over on `fed`, while the caller is still resolving: full
/// rounds ([`ADDS_PER_ROUND_TRIP`]) go out as soon as they fill, several in flight, and the
/// last, partial round when the channel closes, so the adds take the same requests as when
/// the whole list is known at once. A user handed over twice (found early, then listed again
/// by the full plan) is written once. Returns every add applied, in the order sent.
pub async fn add_users_fed(
    target: Target<'_>,
    fed: UnboundedReceiver<Vec<Change<UserId>>>,
    now: DateTime<Utc>,
) -> Result<Vec<Applied>, StateError> {
    let in_flight = rounds_in_flight(target, std::iter::empty());
    let mut done = Vec::new();
    member_rounds(
        target,
        Operation::Add,
        fed_rounds(fed),
        in_flight,
        now,
        &mut done,
    )
    .await?;
    Ok(done)
}

/// What [`fed_rounds`] carries between rounds: the channel, adds not yet in a round, the
/// users already taken, and whether the channel closed.
type Feed = (
    UnboundedReceiver<Vec<Change<UserId>>>,
    std::collections::VecDeque<Change<UserId>>,
    std::collections::HashSet<UserId>,
    bool,
);

/// Full add rounds as soon as the handed-over adds fill one; the rest when `fed` closes.
fn fed_rounds(fed: UnboundedReceiver<Vec<Change<UserId>>>) -> impl Stream<Item = Round> {
    let start: Feed = (fed, Default::default(), Default::default(), false);
    futures::stream::unfold(
        start,
        |(mut fed, mut queue, mut taken, mut closed)| async move {
            loop {
                if queue.len() >= ADDS_PER_ROUND_TRIP || (closed && !queue.is_empty()) {
                    let n = queue.len().min(ADDS_PER_ROUND_TRIP);
                    let round: Vec<Change<UserId>> = queue.drain(..n).collect();
                    return Some((add_round(&round), (fed, queue, taken, closed)));
                }
                if closed {
                    return None;
                }
                match fed.next().await {
                    Some(adds) => {
                        queue.extend(adds.into_iter().filter(|c| taken.insert(c.id.clone())))
                    }
                    None => closed = true,
                }
            }
        },
    )
}

/// One add round: the users' object ids and their audit labels.
fn add_round(round: &[Change<UserId>]) -> Round {
    let ids = round
        .iter()
        .map(|c| ObjectId::parse(c.id.as_str()).expect("a user id is a GUID"))
        .collect();
    (ids, labels(round))
}

/// Adds users, one `$batch` of PATCHes per round, several rounds in flight (see
/// [`member_rounds`]). Idempotent: the planner only lists ids that were not members when read;
/// one that became a member since makes its PATCH fail as a whole, and the Graph client then
/// redoes that PATCH's ids one by one, where "already a member" is success — so a pass that
/// runs again after a crash between the write and the audit row converges without an error.
async fn add_users(
    target: Target<'_>,
    adds: &[Change<crate::model::UserId>],
    now: DateTime<Utc>,
    done: &mut Vec<Applied>,
) -> Result<(), StateError> {
    // Named functions, not closures: the pass future must stay `Send` for every lifetime.
    let rounds = futures::stream::iter(adds.chunks(ADDS_PER_ROUND_TRIP).map(add_round));
    let in_flight = rounds_in_flight(target, adds.iter().map(|c| c.id.as_str()));
    member_rounds(target, Operation::Add, rounds, in_flight, now, done).await
}

/// Removes members (any type), always with `DELETE …/members/{id}/$ref`, one `$batch` per
/// round, several rounds in flight (see [`member_rounds`]). Idempotent: "not a member" is
/// success, so it may run again after a crash between the delete and the audit row.
async fn remove_members(
    target: Target<'_>,
    removes: &[Change<ObjectId>],
    now: DateTime<Utc>,
    done: &mut Vec<Applied>,
) -> Result<(), StateError> {
    fn round(round: &[Change<ObjectId>]) -> Round {
        (round.iter().map(|c| c.id.clone()).collect(), labels(round))
    }
    let rounds = futures::stream::iter(removes.chunks(MAX_BATCH_ITEMS).map(round));
    let in_flight = rounds_in_flight(target, removes.iter().map(|c| c.id.as_str()));
    member_rounds(target, Operation::Remove, rounds, in_flight, now, done).await
}

/// One member-write round: the ids and, in the same order, `(id, label)` for the audit rows.
type Round = (Vec<ObjectId>, Vec<(String, String)>);

fn labels<I: std::fmt::Display>(round: &[Change<I>]) -> Vec<(String, String)> {
    round
        .iter()
        .map(|c| (c.id.to_string(), c.label.clone()))
        .collect()
}

/// Member-write rounds to keep in flight: the configured figure, or one at a time when an id
/// appears twice in the list (two writes for the same group/member pair are never in flight
/// at once; the planner lists each id once, so this is a guard, not a path taken).
fn rounds_in_flight<'a>(target: Target<'_>, ids: impl Iterator<Item = &'a str>) -> usize {
    let configured = target
        .graph
        .http()
        .settings()
        .write_batches_in_flight
        .max(1);
    if configured > 1 && !all_distinct(ids) {
        tracing::warn!("a member id is listed twice; member writes go one round at a time");
        return 1;
    }
    configured
}

fn all_distinct<'a>(ids: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().all(|id| seen.insert(id))
}

/// Runs member-write rounds, up to `in_flight` at once, each its own `$batch` round trip with
/// its own audit rows: written `pending` just before its request goes out, given their results
/// when its answer is in. Rounds hold distinct members, so rounds in flight together never
/// touch the same group/member pair; the write window in the HTTP layer keeps them within the
/// quota however many are in flight. Results come back in plan order. A failed audit write
/// stops the pass; rounds then still in flight keep their pending rows, which the next pass
/// settles by what the tenant shows.
async fn member_rounds(
    target: Target<'_>,
    operation: Operation,
    rounds: impl Stream<Item = Round>,
    in_flight: usize,
    now: DateTime<Utc>,
    done: &mut Vec<Applied>,
) -> Result<(), StateError> {
    let round = |(ids, labels): Round| async move {
        let rows = begin(target, GroupKind::Users, operation, &labels, now)?;
        let outcomes = match operation {
            Operation::Remove => target.graph.remove_members(target.user_group, &ids).await,
            _ => target.graph.add_members(target.user_group, &ids).await,
        };
        let unknown = outcomes.as_ref().err().is_some_and(graph_outcome_unknown);
        let applied = member_results(GroupKind::Users, operation, &labels, outcomes);
        finish(target, &rows, &applied, unknown)?;
        Ok::<_, StateError>(applied)
    };
    let mut results = std::pin::pin!(rounds.map(round).buffered(in_flight.max(1)));
    while let Some(applied) = results.next().await {
        done.extend(applied?);
    }
    Ok(())
}

/// Tags or untags machines, 500 per call. Tags are a set, so re-applying is harmless and the
/// step may run again after a crash between the call and the audit row. The planner only
/// lists machines read from the machine list, so no stale id fails a call. Tagged machines get
/// their tag time noted (the start of the priority check's grace period).
async fn tag(
    target: Target<'_>,
    action: TagAction,
    changes: &[Change<MachineId>],
    now: DateTime<Utc>,
    done: &mut Vec<Applied>,
) -> Result<(), StateError> {
    let operation = match action {
        TagAction::Add => Operation::Tag,
        TagAction::Remove => Operation::Untag,
    };
    for call in changes.chunks(MAX_IDS_PER_TAG_CALL) {
        let ids: Vec<MachineId> = call.iter().map(|c| c.id.clone()).collect();
        let labels: Vec<(String, String)> = call
            .iter()
            .map(|c| (c.id.to_string(), c.label.clone()))
            .collect();
        let rows = begin(target, GroupKind::Devices, operation, &labels, now)?;
        let (result, message, request_id, unknown) = match target
            .defender
            .tag_call(target.device_tag, action, &ids)
            .await
        {
            Ok(request_id) => (AppliedResult::Ok, None, request_id, false),
            Err(e) => {
                tracing::error!(error = %e, machines = ids.len(), "tag call failed");
                let unknown = defender_outcome_unknown(&e);
                (AppliedResult::Failed, Some(e.to_string()), None, unknown)
            }
        };
        let applied: Vec<Applied> = call
            .iter()
            .map(|c| Applied {
                group: GroupKind::Devices,
                operation,
                id: c.id.to_string(),
                label: c.label.clone(),
                result,
                message: message.clone(),
                request_id: request_id.clone(),
            })
            .collect();
        finish(target, &rows, &applied, unknown)?;
        if action == TagAction::Add && result == AppliedResult::Ok {
            target.state.note_tagged_many(&ids, now)?;
        }
        done.extend(applied);
    }
    Ok(())
}

/// Per-member results of one Graph round; a round that failed as a whole fails each entry.
fn member_results(
    group: GroupKind,
    operation: Operation,
    labels: &[(String, String)],
    outcomes: Result<Vec<MemberOutcome>, crate::graph::Error>,
) -> Vec<Applied> {
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, members = labels.len(), operation = operation.as_str(),
                            "group membership round failed");
            let message = e.to_string();
            return labels
                .iter()
                .map(|(id, label)| Applied {
                    group,
                    operation,
                    id: id.clone(),
                    label: label.clone(),
                    result: AppliedResult::Failed,
                    message: Some(message.clone()),
                    request_id: None,
                })
                .collect();
        }
    };
    let by_id: std::collections::HashMap<&str, &MemberOutcome> =
        outcomes.iter().map(|o| (o.member.as_str(), o)).collect();
    labels
        .iter()
        .map(|(id, label)| {
            let (result, message, request_id) = match by_id.get(id.as_str()) {
                Some(o) => {
                    let (r, m) = match &o.result {
                        MemberResult::Added | MemberResult::Removed => (AppliedResult::Ok, None),
                        MemberResult::AlreadyMember | MemberResult::NotMember => {
                            (AppliedResult::Already, None)
                        }
                        MemberResult::Failed {
                            status,
                            code,
                            message,
                        } => (
                            AppliedResult::Failed,
                            Some(format!(
                                "status {status}{}{}",
                                code.as_deref()
                                    .map(|c| format!(" ({c})"))
                                    .unwrap_or_default(),
                                message
                                    .as_deref()
                                    .map(|m| format!(": {m}"))
                                    .unwrap_or_default()
                            )),
                        ),
                    };
                    (r, m, o.request_id.clone())
                }
                None => (
                    AppliedResult::Failed,
                    Some("no outcome returned".to_string()),
                    None,
                ),
            };
            Applied {
                group,
                operation,
                id: id.clone(),
                label: label.clone(),
                result,
                message,
                request_id,
            }
        })
        .collect()
}

/// Writes a round trip's rows `pending`, before its request is sent.
fn begin(
    target: Target<'_>,
    group: GroupKind,
    operation: Operation,
    labels: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StateError> {
    let entries: Vec<AuditEntry> = labels
        .iter()
        .map(|(id, label)| AuditEntry {
            at: now,
            group,
            object_id: id.clone(),
            object_label: label.clone(),
            operation,
            result: ChangeResult::Pending,
            request_id: None,
            commit_id: target.commit.map(str::to_string),
        })
        .collect();
    target.state.begin_changes(&entries)
}

/// Gives a round trip's pending rows their results. When the round failed in a way that may
/// have applied it anyway (no answer, 5xx, an answer that did not decode), the rows stay
/// pending and the next pass settles them by what the tenant shows.
fn finish(
    target: Target<'_>,
    rows: &[i64],
    applied: &[Applied],
    outcome_unknown: bool,
) -> Result<(), StateError> {
    if outcome_unknown {
        return Ok(());
    }
    let results: Vec<FinishedChange> = rows
        .iter()
        .zip(applied)
        .map(|(row, a)| FinishedChange {
            row: *row,
            result: match a.result {
                AppliedResult::Ok => ChangeResult::Ok,
                AppliedResult::Already => ChangeResult::Already,
                AppliedResult::Failed => {
                    ChangeResult::Failed(a.message.clone().unwrap_or_default())
                }
            },
            note: None,
            request_id: a.request_id.clone(),
        })
        .collect();
    target.state.finish_changes(&results, None)
}

/// True when a failed Graph round may still have been applied by the service.
fn graph_outcome_unknown(e: &crate::graph::Error) -> bool {
    e.http_source().is_some_and(http_outcome_unknown)
}

/// True when a failed tag call may still have been applied by the service.
fn defender_outcome_unknown(e: &crate::defender::Error) -> bool {
    match e {
        crate::defender::Error::ListMachines { source }
        | crate::defender::Error::GetMachine { source, .. }
        | crate::defender::Error::Tag { source, .. }
        | crate::defender::Error::Http(source) => http_outcome_unknown(source),
    }
}

/// A request whose answer was lost, was a 5xx, or did not decode may have taken effect; a
/// definite refusal (4xx other than throttling) or a request never sent did not.
fn http_outcome_unknown(e: &crate::http::Error) -> bool {
    e.is_transient() || matches!(e, crate::http::Error::Decode { .. })
}

/// How a pending audit row settles against the tenant as read at the start of a pass: the
/// change shows (it took effect before the answer was lost) or it does not (it never landed;
/// the plan includes it again while it is still desired). Pure.
pub fn settle(pending: &[PendingChange], actual: &Actual) -> Vec<FinishedChange> {
    let members: std::collections::HashSet<String> = actual
        .members
        .iter()
        .map(|m| match m {
            GroupMember::User { id, .. } => id.to_string(),
            GroupMember::Other { id, .. } => id.to_string(),
        })
        .collect();
    let tagged: std::collections::HashSet<String> =
        actual.tagged.iter().map(|m| m.id.to_string()).collect();
    pending
        .iter()
        .map(|p| {
            let shows = match p.operation {
                Operation::Add => members.contains(&p.object_id),
                Operation::Remove => !members.contains(&p.object_id),
                Operation::Tag => tagged.contains(&p.object_id),
                Operation::Untag => !tagged.contains(&p.object_id),
            };
            let (result, note) = if shows {
                (
                    ChangeResult::Ok,
                    Some(
                        "settled by a later pass: the answer was lost, the tenant shows the change"
                            .to_string(),
                    ),
                )
            } else {
                (
                    ChangeResult::Failed(
                        "settled by a later pass: the answer was lost and the tenant does not \
                         show the change; it is planned again while still desired"
                            .to_string(),
                    ),
                    None,
                )
            };
            FinishedChange {
                row: p.row,
                result,
                note,
                request_id: None,
            }
        })
        .collect()
}

/// Settles `pending`, the audit rows an earlier, interrupted pass left pending (taken before
/// this pass wrote rows of its own), by the tenant as read at the start of this pass.
/// Idempotent: only pending rows change, so it may run again after a crash between the read
/// and the update.
pub fn settle_pending(
    state: &State,
    pending: &[PendingChange],
    actual: &Actual,
    now: DateTime<Utc>,
) -> Result<usize, StateError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let settled = settle(pending, actual);
    state.finish_changes(&settled, Some(now))?;
    tracing::info!(
        rows = settled.len(),
        "settled audit rows an interrupted pass left pending"
    );
    Ok(settled.len())
}

/// A planned change the tenant does not show after the pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotConverged {
    pub group: GroupKind,
    #[serde(serialize_with = "op_str")]
    pub operation: Operation,
    pub id: String,
    pub label: String,
}

/// Re-reads the tenant and lists the planned changes it does not show. Read-only.
pub async fn verify(
    target: Target<'_>,
    plan: &Plan,
) -> Result<Vec<NotConverged>, super::ReconcileError> {
    let mut out = Vec::new();
    if !(plan.users.add.is_empty() && plan.users.remove.is_empty()) {
        let members = target
            .graph
            .list_group_members(target.user_group)
            .await
            .map_err(super::ReconcileError::Verify)?;
        let ids: std::collections::HashSet<&str> = members
            .iter()
            .map(|m| match m {
                GroupMember::User { id, .. } => id.as_str(),
                GroupMember::Other { id, .. } => id.as_str(),
            })
            .collect();
        out.extend(missing(&plan.users.add, Operation::Add, |id| {
            ids.contains(id)
        }));
        out.extend(missing(&plan.users.remove, Operation::Remove, |id| {
            !ids.contains(id)
        }));
    }
    if !(plan.devices.add.is_empty() && plan.devices.remove.is_empty()) {
        let tagged = target
            .defender
            .machines_by_tag(target.device_tag)
            .await
            .map_err(super::ReconcileError::VerifyMachines)?;
        let ids: std::collections::HashSet<&str> = tagged.iter().map(|m| m.id.as_str()).collect();
        out.extend(missing(&plan.devices.add, Operation::Tag, |id| {
            ids.contains(id)
        }));
        out.extend(missing(&plan.devices.remove, Operation::Untag, |id| {
            !ids.contains(id)
        }));
    }
    Ok(out)
}

fn missing<I: std::fmt::Display>(
    changes: &[Change<I>],
    operation: Operation,
    holds: impl Fn(&str) -> bool,
) -> Vec<NotConverged> {
    changes
        .iter()
        .filter_map(|c| {
            let id = c.id.to_string();
            (!holds(&id)).then(|| NotConverged {
                group: if matches!(operation, Operation::Tag | Operation::Untag) {
                    GroupKind::Devices
                } else {
                    GroupKind::Users
                },
                operation,
                id,
                label: c.label.clone(),
            })
        })
        .collect()
}

/// What the applied user-group changes mean for the snapshot: successful adds (including
/// "already a member") are members, successful removes (including "not a member") are not.
/// Failed changes say nothing and leave the snapshot alone. A user added by UPN keeps it.
pub fn snapshot_changes(applied: &[Applied]) -> (Vec<GroupMember>, Vec<ObjectId>) {
    let mut present = Vec::new();
    let mut removed = Vec::new();
    for a in applied
        .iter()
        .filter(|a| a.group == GroupKind::Users && a.result != AppliedResult::Failed)
    {
        match a.operation {
            Operation::Add => {
                if let Ok(id) = UserId::parse(&a.id) {
                    present.push(GroupMember::User {
                        id,
                        upn: Upn::parse(&a.label).ok(),
                    });
                }
            }
            Operation::Remove => removed.extend(ObjectId::parse(&a.id).ok()),
            Operation::Tag | Operation::Untag => {}
        }
    }
    (present, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Machine;

    fn oid(n: u32) -> ObjectId {
        ObjectId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    fn user(n: u32, upn: Option<&str>) -> GroupMember {
        GroupMember::User {
            id: UserId::parse(oid(n).as_str()).unwrap(),
            upn: upn.map(|u| Upn::parse(u).unwrap()),
        }
    }

    fn pending(row: i64, operation: Operation, id: &str) -> PendingChange {
        PendingChange {
            row,
            group: if matches!(operation, Operation::Tag | Operation::Untag) {
                GroupKind::Devices
            } else {
                GroupKind::Users
            },
            object_id: id.to_string(),
            operation,
        }
    }

    #[test]
    fn a_repeated_member_id_is_noticed_wherever_it_repeats() {
        let check = |ids: &[&str], expected: bool| {
            assert_eq!(all_distinct(ids.iter().copied()), expected, "{ids:?}");
        };
        check(&[], true);
        check(&["a", "b", "c"], true);
        check(&["a", "b", "a"], false);
        check(&["a", "a"], false);
    }

    #[test]
    fn pending_rows_settle_by_what_the_tenant_shows() {
        let member = "11111111-1111-1111-1111-111111111111";
        let outsider = "22222222-2222-2222-2222-222222222222";
        let tagged = "a".repeat(40);
        let untagged = "b".repeat(40);
        let actual = Actual {
            members: vec![GroupMember::User {
                id: UserId::parse(member).unwrap(),
                upn: None,
            }],
            tagged: vec![Machine {
                id: MachineId::parse(&tagged).unwrap(),
                dns_name: None,
                aad_device_id: None,
                os_platform: None,
                tags: vec!["DEX-Scoped".into()],
                rbac_group_id: None,
                rbac_group_name: None,
            }],
        };
        let rows = [
            pending(1, Operation::Add, member),
            pending(2, Operation::Add, outsider),
            pending(3, Operation::Remove, outsider),
            pending(4, Operation::Remove, member),
            pending(5, Operation::Tag, &tagged),
            pending(6, Operation::Tag, &untagged),
            pending(7, Operation::Untag, &untagged),
            pending(8, Operation::Untag, &tagged),
        ];
        let settled = settle(&rows, &actual);
        let landed: Vec<(i64, bool)> = settled
            .iter()
            .map(|f| (f.row, f.result == ChangeResult::Ok))
            .collect();
        assert_eq!(
            landed,
            [
                (1, true),
                (2, false),
                (3, true),
                (4, false),
                (5, true),
                (6, false),
                (7, true),
                (8, false)
            ]
        );
        assert!(settled.iter().all(|f| match &f.result {
            ChangeResult::Ok => f.note.as_deref().is_some_and(|n| n.contains("shows")),
            ChangeResult::Failed(m) => m.contains("does not show") && f.note.is_none(),
            _ => false,
        }));
    }

    #[test]
    fn only_successful_user_changes_reach_the_snapshot() {
        let applied = |op, id: &ObjectId, label: &str, result, group| Applied {
            group,
            operation: op,
            id: id.to_string(),
            label: label.into(),
            result,
            message: None,
            request_id: None,
        };
        let list = vec![
            applied(
                Operation::Add,
                &oid(1),
                "a@x.com",
                AppliedResult::Ok,
                GroupKind::Users,
            ),
            applied(
                Operation::Add,
                &oid(2),
                oid(2).as_str(),
                AppliedResult::Already,
                GroupKind::Users,
            ),
            applied(
                Operation::Add,
                &oid(3),
                "c@x.com",
                AppliedResult::Failed,
                GroupKind::Users,
            ),
            applied(
                Operation::Remove,
                &oid(4),
                "d",
                AppliedResult::Already,
                GroupKind::Users,
            ),
            applied(
                Operation::Remove,
                &oid(5),
                "e",
                AppliedResult::Failed,
                GroupKind::Users,
            ),
            applied(
                Operation::Tag,
                &oid(6),
                "m",
                AppliedResult::Ok,
                GroupKind::Devices,
            ),
        ];
        let (present, removed) = snapshot_changes(&list);
        assert_eq!(present, vec![user(1, Some("a@x.com")), user(2, None)]);
        assert_eq!(removed, vec![oid(4)]);
    }
}
