//! Selector entries: `{ group = "<guid>" }` and `{ where = { … } }` in `users` and `devices`,
//! parsed and checked offline. Pure: no I/O, no clock.
//!
//! A selector names a *source* of identities (an Entra group, flattened; or attribute
//! conditions) instead of one identity. What it yields is only known against the tenant
//! (`crate::selectors` expands it); here it is only checked that it is well-formed.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Location;
use crate::model::{ObjectId, is_guid};

/// Which list a selector is written in, and so what it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Users,
    Devices,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Users => "users",
            Subject::Devices => "devices",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Subject::Users => "user",
            Subject::Devices => "device",
        }
    }

    /// The `where` keys this list accepts: (key in the file, the service's property name).
    pub fn where_keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Subject::Users => USER_WHERE,
            Subject::Devices => DEVICE_WHERE,
        }
    }

    fn allowed_keys(self) -> &'static [&'static str] {
        match self {
            Subject::Users => &["group", "where", "note", "include_disabled"],
            Subject::Devices => &["group", "where", "note"],
        }
    }
}

/// User `where` keys and the Graph `user` property each one filters on.
pub const USER_WHERE: &[(&str, &str)] = &[
    ("department", "department"),
    ("country", "country"),
    ("company_name", "companyName"),
    ("job_title", "jobTitle"),
    ("office_location", "officeLocation"),
    ("usage_location", "usageLocation"),
    ("employee_type", "employeeType"),
];

/// Device `where` keys and the MDE machine property each one filters on.
pub const DEVICE_WHERE: &[(&str, &str)] = &[
    ("tag", "machineTags"),
    ("os", "osPlatform"),
    ("name_prefix", "computerDnsName"),
    ("health_status", "healthStatus"),
    ("onboarding_status", "onboardingStatus"),
];

/// One `where` condition: the attribute has one of `values` (a list means any of them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Condition {
    /// The key as written in the file (one of [`Subject::where_keys`]).
    pub key: &'static str,
    pub values: Vec<String>,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.values.as_slice() {
            [one] => write!(f, "{} = {one}", self.key),
            many => write!(f, "{} in ({})", self.key, many.join(", ")),
        }
    }
}

/// Where a selector's identities come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An Entra group and every group nested in it.
    Group(ObjectId),
    /// Every condition must hold; in key order.
    Where(Vec<Condition>),
}

/// A selector entry of `users` or `devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub subject: Subject,
    pub source: Source,
    pub note: Option<String>,
    /// Users only: disabled accounts are taken too (by default only enabled ones).
    pub include_disabled: bool,
    /// Where the entry is written.
    pub at: Location,
}

impl Selector {
    /// A stable name for the selector, the same whatever the file or key order: what its last
    /// expansion is stored under.
    pub fn key(&self) -> String {
        let disabled = if self.include_disabled {
            " +disabled"
        } else {
            ""
        };
        format!("{}: {}{disabled}", self.subject.as_str(), self.source)
    }
}

impl fmt::Display for Source {
    /// `group <id>` or `where department = Finance, country = DE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Group(id) => write!(f, "group {id}"),
            Source::Where(conditions) => {
                f.write_str("where ")?;
                for (i, c) in conditions.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

/// Problems found in one selector entry: the byte span each is about, and the message.
pub type Problems = Vec<(Range<usize>, String)>;

/// Whether an inline-table entry is a selector (it has a `group` or `where` key).
pub fn is_selector(table: &DeTable<'_>) -> bool {
    table
        .iter()
        .any(|(k, _)| matches!(k.get_ref().as_ref(), "group" | "where"))
}

/// Parses a selector entry (an inline table [`is_selector`] accepted). `at` is where the
/// entry is written. Every problem is reported; the selector is returned only when none.
pub fn parse(
    subject: Subject,
    table: &DeTable<'_>,
    span: Range<usize>,
    at: Location,
) -> (Option<Selector>, Problems) {
    let mut problems = Problems::new();
    let mut source: Vec<(Range<usize>, Option<Source>)> = Vec::new();
    let mut note = None;
    let mut include_disabled = false;
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        match name {
            "group" => source.push((key.span(), group(subject, value, &mut problems))),
            "where" => source.push((key.span(), conditions(subject, value, &mut problems))),
            "note" => match value.get_ref() {
                DeValue::String(s) => note = Some(s.to_string()),
                other => problems.push((
                    value.span(),
                    format!("`note` must be a string, found {}", describe(other)),
                )),
            },
            "include_disabled" if subject == Subject::Users => match value.get_ref() {
                DeValue::Boolean(b) => include_disabled = *b,
                other => problems.push((
                    value.span(),
                    format!(
                        "`include_disabled` must be true or false, found {}",
                        describe(other)
                    ),
                )),
            },
            other => problems.push((key.span(), unknown_key(subject, other))),
        }
    }
    source.sort_by_key(|(span, _)| span.start);
    let source = match source.as_slice() {
        [(_, Some(s))] => Some(s.clone()),
        [(_, None)] => None,
        [_, (second, _), ..] => {
            problems.push((
                second.clone(),
                format!(
                    "a {} selector has both `group` and `where`; write two entries, one for each",
                    subject.what()
                ),
            ));
            None
        }
        [] => {
            problems.push((span, "a selector needs `group` or `where`".to_string()));
            None
        }
    };
    match source {
        Some(source) if problems.is_empty() => (
            Some(Selector {
                subject,
                source,
                note,
                include_disabled,
                at,
            }),
            problems,
        ),
        _ => (None, problems),
    }
}

fn unknown_key(subject: Subject, key: &str) -> String {
    let hint = did_you_mean(
        key,
        subject.allowed_keys(),
        &[("group_id", "group"), ("filter", "where")],
    );
    let extra = if key == "expires" {
        "; `expires` is for single entries: a selector stays until it is removed".to_string()
    } else {
        String::new()
    };
    format!(
        "unknown key `{}` in a {} selector{hint}{extra}; allowed keys: {}",
        clip(key),
        subject.what(),
        subject.allowed_keys().join(", ")
    )
}

fn group(
    subject: Subject,
    value: &Spanned<DeValue<'_>>,
    problems: &mut Problems,
) -> Option<Source> {
    let kind = match subject {
        Subject::Users => "an Entra group",
        Subject::Devices => "an Entra device group",
    };
    match value.get_ref() {
        DeValue::String(s) if is_guid(s) => ObjectId::parse(s).ok().map(Source::Group),
        DeValue::String(s) => {
            problems.push((
                value.span(),
                format!(
                    "`group` must be the object id of {kind}, a GUID like \
                     5e2c6a0d-8f3b-4c1e-9a7d-2b6f0e4c8a13, found {:?}; group names are not \
                     unique, so a selector names its group by id (Entra admin center › Groups › \
                     Object ID)",
                    clip(s)
                ),
            ));
            None
        }
        other => {
            problems.push((
                value.span(),
                format!(
                    "`group` must be a string (the object id of {kind}), found {}",
                    describe(other)
                ),
            ));
            None
        }
    }
}

fn conditions(
    subject: Subject,
    value: &Spanned<DeValue<'_>>,
    problems: &mut Problems,
) -> Option<Source> {
    let DeValue::Table(table) = value.get_ref() else {
        problems.push((
            value.span(),
            format!(
                "`where` must be a table of conditions like {}, found {}",
                example(subject),
                describe(value.get_ref())
            ),
        ));
        return None;
    };
    if table.is_empty() {
        problems.push((
            value.span(),
            format!(
                "`where` is empty: it would select every {}; name at least one condition, like {}",
                subject.what(),
                example(subject)
            ),
        ));
        return None;
    }
    let before = problems.len();
    let mut out = Vec::new();
    for (key, v) in table.iter() {
        let name: &str = key.get_ref();
        let Some(&(known, _)) = subject.where_keys().iter().find(|(k, _)| *k == name) else {
            let keys: Vec<&str> = subject.where_keys().iter().map(|(k, _)| *k).collect();
            let hint = did_you_mean(name, &keys, where_aliases(subject));
            problems.push((
                key.span(),
                format!(
                    "unknown `where` key `{}` for {}{hint}; allowed keys: {}",
                    clip(name),
                    subject.as_str(),
                    keys.join(", ")
                ),
            ));
            continue;
        };
        if let Some(values) = values(known, v, problems) {
            if let Some(problem) = undocumented_value(known, &values) {
                problems.push((v.span(), problem));
                continue;
            }
            out.push(Condition { key: known, values });
        }
    }
    out.sort();
    (problems.len() == before).then_some(Source::Where(out))
}

/// The values the machine list documents for its `healthStatus` and `onboardingStatus`
/// fields (MDE "Machine resource type"; compared case-insensitively).
const DOCUMENTED_VALUES: &[(&str, &[&str])] = &[
    (
        "health_status",
        &[
            "Active",
            "Inactive",
            "ImpairedCommunication",
            "NoSensorData",
            "NoSensorDataImpairedCommunication",
            "Unknown",
        ],
    ),
    (
        "onboarding_status",
        &[
            "Onboarded",
            "CanBeOnboarded",
            "Unsupported",
            "InsufficientInfo",
        ],
    ),
];

/// The problem with a value of `key` the service does not document, if any: the service
/// would refuse the filter, and the selector would never expand.
fn undocumented_value(key: &str, values: &[String]) -> Option<String> {
    let (_, allowed) = DOCUMENTED_VALUES.iter().find(|(k, _)| *k == key)?;
    let bad = values
        .iter()
        .find(|v| !allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))?;
    let lower = bad.to_ascii_lowercase();
    let hint = allowed
        .iter()
        .filter(|a| crate::text::edit_distance(&lower, &a.to_ascii_lowercase()) <= 2)
        .min_by_key(|a| crate::text::edit_distance(&lower, &a.to_ascii_lowercase()))
        .map(|a| format!(" (did you mean `{a}`?)"))
        .unwrap_or_default();
    Some(format!(
        "`{key}` value `{}` is not one the machine list knows{hint}; allowed values: {}",
        clip(bad),
        allowed.join(", ")
    ))
}

/// A condition's value: a non-empty string or a non-empty list of them.
fn values(key: &str, v: &Spanned<DeValue<'_>>, problems: &mut Problems) -> Option<Vec<String>> {
    let bad = |what: &str| format!("`{key}` must be a non-empty string or a list of them, {what}");
    match v.get_ref() {
        DeValue::String(s) if !s.trim().is_empty() => Some(vec![s.to_string()]),
        DeValue::String(_) => {
            problems.push((v.span(), bad("found an empty string")));
            None
        }
        DeValue::Array(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) if !s.trim().is_empty() => out.push(s.to_string()),
                    other => {
                        problems.push((item.span(), bad(&format!("found {}", describe(other)))));
                        return None;
                    }
                }
            }
            out.sort();
            out.dedup();
            Some(out)
        }
        DeValue::Array(_) => {
            problems.push((v.span(), bad("found an empty list")));
            None
        }
        other => {
            problems.push((v.span(), bad(&format!("found {}", describe(other)))));
            None
        }
    }
}

fn where_aliases(subject: Subject) -> &'static [(&'static str, &'static str)] {
    match subject {
        Subject::Users => &[
            ("dept", "department"),
            ("companyname", "company_name"),
            ("company", "company_name"),
            ("jobtitle", "job_title"),
            ("title", "job_title"),
            ("office", "office_location"),
            ("officelocation", "office_location"),
            ("usagelocation", "usage_location"),
            ("employeetype", "employee_type"),
        ],
        Subject::Devices => &[
            ("tags", "tag"),
            ("machine_tag", "tag"),
            ("os_platform", "os"),
            ("osplatform", "os"),
            ("prefix", "name_prefix"),
            ("name", "name_prefix"),
            ("healthstatus", "health_status"),
            ("health", "health_status"),
            ("onboardingstatus", "onboarding_status"),
        ],
    }
}

fn example(subject: Subject) -> &'static str {
    match subject {
        Subject::Users => "{ department = \"Finance\", country = \"DE\" }",
        Subject::Devices => "{ name_prefix = \"srv-ber-\", os = [\"WindowsServer2022\"] }",
    }
}

/// ` (did you mean `x`?)` when `key` is a known alias or a small typo of an allowed key.
pub(super) fn did_you_mean(key: &str, allowed: &[&str], aliases: &[(&str, &str)]) -> String {
    let lower = key.to_ascii_lowercase();
    let meant = aliases
        .iter()
        .find(|(alias, _)| *alias == lower)
        .map(|(_, meant)| *meant)
        .or_else(|| {
            allowed
                .iter()
                .copied()
                .filter(|k| {
                    crate::text::edit_distance(&lower, k) <= if k.len() <= 3 { 1 } else { 2 }
                })
                .min_by_key(|k| crate::text::edit_distance(&lower, k))
        });
    match meant {
        Some(m) => format!(" (did you mean `{m}`?)"),
        None => String::new(),
    }
}

fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date or time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Cuts user text to keep a message one readable line.
pub(super) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
