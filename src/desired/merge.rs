//! Joins parsed files into one desired state: duplicates across files, `expires` against
//! `today`, and the refusal of an empty state. Pure: `today` is a parameter.

use std::collections::HashMap;
use std::collections::hash_map;

use chrono::NaiveDate;

use super::parse::{EntryKind, Parsed, ParsedFile};
use super::{DesiredState, Diagnostic, Entry, Location, Mode, Outcome, Selector};

/// How many days ahead `validate` warns that an entry is about to expire.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Merges `files` (in merge order) into one state with every diagnostic found.
pub fn merge(files: Vec<ParsedFile>, today: NaiveDate, mode: Mode) -> Outcome {
    let order: HashMap<std::path::PathBuf, usize> = files
        .iter()
        .enumerate()
        .rev()
        .map(|(i, f)| (f.file.clone(), i))
        .collect();
    let mut diagnostics = Vec::new();
    let mut state = DesiredState {
        sources: files.iter().map(|f| f.file.clone()).collect(),
        allow_empty: files.iter().any(|f| f.allow_empty),
        ..DesiredState::default()
    };
    let listed_at = files
        .iter()
        .find_map(|f| f.listed_at.clone())
        .or_else(|| files.first().map(|f| first_line(&f.file)));
    let several = files.len() > 1;
    let mut users = Vec::new();
    let mut devices = Vec::new();
    let mut excluded = (Vec::new(), Vec::new());
    for mut file in files {
        // A file emptied mid-write (a shell redirect, `cp`, an editor, a checkout) would
        // otherwise take its entries out of scope while the other files keep the whole state
        // from looking empty. One file alone is covered by the whole-state rule below.
        if several && file.items == 0 && !file.allow_empty && file.diagnostics.is_empty() {
            let at = file
                .listed_at
                .clone()
                .unwrap_or_else(|| first_line(&file.file));
            diagnostics.push(Diagnostic::error(at, EMPTY_FILE.to_string()));
        }
        diagnostics.append(&mut file.diagnostics);
        join(&mut users, file.users);
        join(&mut devices, file.devices);
        state.selectors.append(&mut file.selectors);
        excluded.0.append(&mut file.exclude_users);
        excluded.1.append(&mut file.exclude_devices);
    }
    state.selectors.sort_by_key(|s| s.subject);
    duplicate_selectors(&state.selectors, &mut diagnostics);
    contradictions(
        &users,
        &excluded.0,
        "users",
        "exclude_users",
        &mut diagnostics,
    );
    contradictions(
        &devices,
        &excluded.1,
        "devices",
        "exclude_devices",
        &mut diagnostics,
    );
    let mut ignore = 0;
    state.exclude_users = in_scope(excluded.0, today, mode, &mut diagnostics, &mut ignore);
    state.exclude_devices = in_scope(excluded.1, today, mode, &mut diagnostics, &mut ignore);
    let mut expired = 0;
    state.users = in_scope(users, today, mode, &mut diagnostics, &mut expired);
    state.devices = in_scope(devices, today, mode, &mut diagnostics, &mut expired);

    let has_error = diagnostics.iter().any(Diagnostic::is_error);
    // Only when nothing else is wrong: a file whose only entry is malformed is reported for
    // that entry, not also as "empty".
    if state.lists_nothing()
        && !state.allow_empty
        && !has_error
        && let Some(at) = listed_at
    {
        diagnostics.push(Diagnostic::error(at, empty_message(expired)));
    }
    diagnostics.sort_by_key(|d| {
        let file = order.get(&*d.at.file).copied().unwrap_or(usize::MAX);
        (file, d.at.line, d.at.col)
    });
    Outcome { state, diagnostics }
}

/// Drops duplicates (keeping the first, naming it in the error) and expired entries.
///
/// Memory: duplicates are found through an index of references into `entries` (no key or
/// location is copied), and the kept entries are collected into the same buffer.
fn in_scope<K: EntryKind>(
    entries: Vec<Parsed<K>>,
    today: NaiveDate,
    mode: Mode,
    diagnostics: &mut Vec<Diagnostic>,
    expired: &mut usize,
) -> Vec<Entry<K>> {
    let duplicate = mark_duplicates(&entries, diagnostics);
    let mut kept: Vec<Entry<K>> = entries
        .into_iter()
        .enumerate()
        .filter_map(|(i, Parsed { entry, expires_at })| {
            if duplicate[i] {
                return None;
            }
            let Some(expires) = entry.expires else {
                return Some(entry);
            };
            let at = expires_at.map_or_else(|| entry.at.clone(), |at| *at);
            let days_left = (expires - today).num_days();
            if days_left <= 0 {
                *expired += 1;
                diagnostics.push(expired_diagnostic(&entry, expires, at, mode));
                return None;
            }
            if days_left <= EXPIRY_WARNING_DAYS {
                diagnostics.push(Diagnostic::warning(
                    at,
                    format!(
                        "{} {} expires on {expires}, in {days_left} day{}: set a later `expires` \
                         if it should stay in scope",
                        K::WHAT,
                        entry.key,
                        if days_left == 1 { "" } else { "s" }
                    ),
                ));
            }
            Some(entry)
        })
        .collect();
    // Collected in place, the list keeps the room of the larger parsed entries (a tenth more
    // at 100k entries) and of the duplicates and expired entries dropped; the state is held
    // for the whole pass, so the room is given back. A large list is one mapped block, which
    // the allocator shrinks where it is without copying.
    kept.shrink_to_fit();
    kept
}

/// Which entries repeat an earlier one; each repeat gets an error naming the first.
fn mark_duplicates<K: EntryKind>(
    entries: &[Parsed<K>],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<bool> {
    let mut first: HashMap<&K, usize> = HashMap::with_capacity(entries.len());
    let mut duplicate = vec![false; entries.len()];
    for (i, Parsed { entry, .. }) in entries.iter().enumerate() {
        match first.entry(&entry.key) {
            hash_map::Entry::Occupied(seen) => {
                duplicate[i] = true;
                diagnostics.push(Diagnostic::error(
                    entry.at.clone(),
                    format!(
                        "duplicate {} {}: already listed at {}; remove one of the two entries",
                        K::WHAT,
                        entry.key,
                        entries[*seen.get()].entry.at
                    ),
                ));
            }
            hash_map::Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }
    duplicate
}

fn expired_diagnostic<K: EntryKind>(
    entry: &Entry<K>,
    expires: NaiveDate,
    at: Location,
    mode: Mode,
) -> Diagnostic {
    match mode {
        Mode::Strict => Diagnostic::error(
            at,
            format!(
                "{} {} expired on {expires}: remove the entry, or set a later \
                 `expires` if it should stay in scope",
                K::WHAT,
                entry.key
            ),
        ),
        Mode::Runtime => Diagnostic::warning(
            at,
            format!(
                "{} {} expired on {expires} and is out of scope: remove the entry, or \
                 set a later `expires` if it should stay in scope",
                K::WHAT,
                entry.key
            ),
        ),
    }
}

/// A selector written twice (the same source, whatever the key order) is an error naming the
/// first place.
fn duplicate_selectors(selectors: &[Selector], diagnostics: &mut Vec<Diagnostic>) {
    let mut first: HashMap<String, &Location> = HashMap::new();
    for s in selectors {
        match first.entry(s.key()) {
            hash_map::Entry::Occupied(seen) => diagnostics.push(Diagnostic::error(
                s.at.clone(),
                format!(
                    "duplicate selector {}: already listed at {}; remove one of the two entries",
                    s.key(),
                    seen.get()
                ),
            )),
            hash_map::Entry::Vacant(slot) => {
                slot.insert(&s.at);
            }
        }
    }
}

/// A single entry that is also excluded says two opposite things: an error at the exclusion,
/// naming both places, so that neither silently wins.
fn contradictions<K: EntryKind>(
    listed: &[Parsed<K>],
    excluded: &[Parsed<K>],
    list: &str,
    exclude_list: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if excluded.is_empty() {
        return;
    }
    let by_key: HashMap<&K, &Location> =
        listed.iter().map(|p| (&p.entry.key, &p.entry.at)).collect();
    for x in excluded {
        if let Some(at) = by_key.get(&x.entry.key) {
            diagnostics.push(Diagnostic::error(
                x.entry.at.clone(),
                format!(
                    "{} {} is both listed in `{list}` at {at} and excluded in `{exclude_list}` \
                     here; remove one of the two (an exclusion only takes identities out of what \
                     selectors yield)",
                    K::WHAT,
                    x.entry.key
                ),
            ));
        }
    }
}

/// Appends `more` to `all`, taking the buffer over when `all` is still empty (one file, the
/// usual case, is not copied).
fn join<T>(all: &mut Vec<T>, mut more: Vec<T>) {
    if all.is_empty() {
        *all = more;
    } else {
        all.append(&mut more);
    }
}

const EMPTY_FILE: &str = "this file lists no users and no devices; a file that lists nothing is \
     refused so that a file caught half-written never takes its entries out of scope: add \
     `allow_empty = true` if the file is meant to be empty";

fn empty_message(expired: usize) -> String {
    let what = if expired == 0 {
        "the desired state lists no users and no devices".to_string()
    } else {
        format!("the desired state has no users and no devices left in scope ({expired} expired)")
    };
    format!(
        "{what}; an empty desired state is refused so that a broken file never removes everyone \
         from scope: add `allow_empty = true` if removing everyone is really meant"
    )
}

fn first_line(file: &std::path::Path) -> Location {
    Location {
        file: file.into(),
        line: 1,
        col: 1,
    }
}
