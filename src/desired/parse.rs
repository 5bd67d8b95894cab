//! Parses one desired-state TOML text into entries and diagnostics. Pure: no I/O, no clock.
//!
//! The text is parsed into toml's spanned document tree (`DeTable`), so every value and key keeps
//! its byte span; spans become 1-based `line:col` here. Every problem in a file is reported, not
//! just the first; only a TOML syntax error stops the file.

use std::hash::Hash;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use super::lines::LineIndex;
use super::selector::{self, Selector, Subject, clip, did_you_mean as suggest};
use super::{DeviceKey, Diagnostic, Entry, Location, UserKey};
use crate::model::{AadDeviceId, DnsName, MachineId, Upn, UserId, is_guid};

/// The top-level keys a desired-state file may have.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "users",
    "devices",
    "exclude_users",
    "exclude_devices",
    "allow_empty",
];

/// An entry as parsed, with the place of its `expires` value for expiry diagnostics (boxed:
/// few entries have one, and inline it adds 24 bytes to each, 2.4 MB at 100k entries).
#[derive(Debug, Clone)]
pub struct Parsed<K> {
    pub entry: Entry<K>,
    pub expires_at: Option<Box<Location>>,
}

/// What the keys of one inline-table entry said (`ok`: none was malformed or unknown); each bad
/// key is already reported. `idents` holds the identifying keys: name, span, key if it parsed.
struct EntryFields<K> {
    ok: bool,
    idents: Vec<(&'static str, Range<usize>, Option<K>)>,
    note: Option<Box<str>>,
    expires: Option<NaiveDate>,
    expires_at: Option<Location>,
    unknown_key: bool,
}

/// What one file says.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    pub file: std::path::PathBuf,
    pub users: Vec<Parsed<UserKey>>,
    pub devices: Vec<Parsed<DeviceKey>>,
    /// Selector entries of `users` and `devices`, in position order per list.
    pub selectors: Vec<Selector>,
    pub exclude_users: Vec<Parsed<UserKey>>,
    pub exclude_devices: Vec<Parsed<DeviceKey>>,
    pub allow_empty: bool,
    /// Where the file's `users` (else `devices`) key is, to point an "empty" error at.
    pub listed_at: Option<Location>,
    /// Number of array items written, valid or not.
    pub items: usize,
    pub diagnostics: Vec<Diagnostic>,
}

/// How the two kinds of entry (users, devices) are recognised.
pub trait EntryKind: Sized + Clone + Eq + Hash + std::fmt::Display {
    /// Singular noun for messages: `user`, `device`.
    const WHAT: &'static str;
    /// The list a selector written among these entries belongs to.
    const SUBJECT: Subject;
    /// The keys that identify an entry in table form; exactly one must be present.
    const IDENT_KEYS: &'static [&'static str];
    /// Every key a table entry may have.
    const ALLOWED_KEYS: &'static [&'static str];
    /// Common mistakes and the key that was meant.
    const ALIASES: &'static [(&'static str, &'static str)];
    /// Parses the value of identifying key `key` (one of `IDENT_KEYS`).
    fn from_key(key: &str, value: &str) -> Result<Self, String>;
    /// Classifies a bare string by its shape.
    fn from_bare(value: &str) -> Result<Self, String>;
}

impl EntryKind for UserKey {
    const WHAT: &'static str = "user";
    const SUBJECT: Subject = Subject::Users;
    const IDENT_KEYS: &'static [&'static str] = &["upn", "id"];
    const ALLOWED_KEYS: &'static [&'static str] = &["upn", "id", "note", "expires"];
    const ALIASES: &'static [(&'static str, &'static str)] = &[
        ("user_principal_name", "upn"),
        ("userprincipalname", "upn"),
        ("email", "upn"),
        ("mail", "upn"),
        ("name", "upn"),
        ("object_id", "id"),
        ("objectid", "id"),
        ("oid", "id"),
        ("user_id", "id"),
        ("expiry", "expires"),
        ("expires_on", "expires"),
        ("comment", "note"),
    ];

    fn from_key(key: &str, value: &str) -> Result<Self, String> {
        match key {
            "upn" => Upn::parse(value).map(UserKey::Upn).map_err(|e| {
                if is_guid(value) {
                    format!("{e}; for an object id write id = \"{value}\"")
                } else {
                    e.to_string()
                }
            }),
            _ => UserId::parse(value).map(UserKey::Id).map_err(|e| {
                if value.contains('@') {
                    format!("{e}; for a UPN write upn = \"{value}\"")
                } else {
                    e.to_string()
                }
            }),
        }
    }

    fn from_bare(value: &str) -> Result<Self, String> {
        if is_guid(value) {
            UserId::parse(value)
                .map(UserKey::Id)
                .map_err(|e| e.to_string())
        } else if value.contains('@') {
            Upn::parse(value)
                .map(UserKey::Upn)
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "{:?} is neither a user principal name nor an object id: write a UPN like \
                 alice@contoso.com or an Entra object id like 6f1c2a9e-0b7d-4a57-9a51-2d9f0c3e7b14",
                clip(value)
            ))
        }
    }
}

impl EntryKind for DeviceKey {
    const WHAT: &'static str = "device";
    const SUBJECT: Subject = Subject::Devices;
    const IDENT_KEYS: &'static [&'static str] = &["id", "aad_device_id", "name"];
    const ALLOWED_KEYS: &'static [&'static str] =
        &["id", "aad_device_id", "name", "note", "expires"];
    const ALIASES: &'static [(&'static str, &'static str)] = &[
        ("dns_name", "name"),
        ("dnsname", "name"),
        ("computer_dns_name", "name"),
        ("computerdnsname", "name"),
        ("hostname", "name"),
        ("host", "name"),
        ("fqdn", "name"),
        ("machine_id", "id"),
        ("machineid", "id"),
        ("mde_id", "id"),
        ("aaddeviceid", "aad_device_id"),
        ("device_id", "aad_device_id"),
        ("deviceid", "aad_device_id"),
        ("entra_device_id", "aad_device_id"),
        ("azure_ad_device_id", "aad_device_id"),
        ("expiry", "expires"),
        ("expires_on", "expires"),
        ("comment", "note"),
    ];

    fn from_key(key: &str, value: &str) -> Result<Self, String> {
        match key {
            "id" => MachineId::parse(value)
                .map(DeviceKey::Machine)
                .map_err(|e| {
                    if is_guid(value) {
                        format!("{e}; for an Entra device id write aad_device_id = \"{value}\"")
                    } else {
                        e.to_string()
                    }
                }),
            "aad_device_id" => AadDeviceId::parse(value)
                .map(DeviceKey::AadDevice)
                .map_err(|e| e.to_string()),
            _ => DnsName::parse(value)
                .map(DeviceKey::Name)
                .map_err(|e| e.to_string()),
        }
    }

    fn from_bare(value: &str) -> Result<Self, String> {
        if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return MachineId::parse(value)
                .map(DeviceKey::Machine)
                .map_err(|e| e.to_string());
        }
        if is_guid(value) {
            return AadDeviceId::parse(value)
                .map(DeviceKey::AadDevice)
                .map_err(|e| e.to_string());
        }
        // A mistyped id (a digit short, a dash too many) would otherwise pass as a valid DNS
        // label and only show up later as "unknown device"; long runs of hex and dashes with no
        // dot are taken as a broken id instead.
        if value.len() >= 32
            && !value.contains('.')
            && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(format!(
                "{:?} looks like a mistyped id: an MDE machine id is 40 hex digits like \
                 73e7e2de709dff64ef64b1d0c30e67fab63279db and an Entra device id a GUID like \
                 1a2b3c4d-1111-2222-3333-444455556666",
                clip(value)
            ));
        }
        DnsName::parse(value).map(DeviceKey::Name).map_err(|e| {
            format!("{e}, or an MDE machine id (40 hex digits), or an Entra device id (a GUID)")
        })
    }
}

/// Items per piece when a big `users` or `devices` array is parsed piece by piece.
const PIECE_ITEMS: usize = 2_000;

/// What a piece of an array is wrapped in to make it a document of its own.
const PIECE_PREFIX: &str = "x=[";

/// Parses one file. Never panics, whatever the input.
///
/// Memory: toml's parser holds every token and event of the text besides the tree it builds
/// (about 270 bytes per array item), so 150k entries parsed at once would peak near 50 MiB.
/// A file whose top-level `users` and `devices` arrays can be cut is instead parsed as its
/// skeleton (the arrays' contents blanked, every byte offset kept) and then the arrays'
/// items in pieces of [`PIECE_ITEMS`], each piece converted to entries and dropped before the
/// next. Any TOML error on that path makes the whole text be parsed at once, so diagnostics
/// are exactly those of a whole-text parse.
pub fn parse_file(file: &Path, text: &str) -> ParsedFile {
    if let Some(arrays) = cut_arrays(text)
        && let Some(out) = parse_in_pieces(file, text, &arrays)
    {
        return out;
    }
    parse_whole(file, text)
}

fn new_cx<'a>(file: &Path, text: &'a str) -> Cx<'a> {
    Cx {
        file: Arc::from(file),
        index: LineIndex::new(text),
        piece_at: None,
        out: ParsedFile {
            file: file.to_path_buf(),
            users: Vec::new(),
            devices: Vec::new(),
            selectors: Vec::new(),
            exclude_users: Vec::new(),
            exclude_devices: Vec::new(),
            allow_empty: false,
            listed_at: None,
            items: 0,
            diagnostics: Vec::new(),
        },
        pieces: &[],
        text,
        failed: false,
        excluding: None,
    }
}

fn parse_whole(file: &Path, text: &str) -> ParsedFile {
    let mut cx = new_cx(file, text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error(
                span,
                format!(
                    "invalid TOML: {}; fix the syntax here (nothing else in this file was checked)",
                    e.message().trim_end_matches('.')
                ),
            );
            return cx.out;
        }
    };
    cx.document(doc.get_ref());
    cx.out
}

/// `None` when some part is not valid TOML: the caller parses the whole text instead.
fn parse_in_pieces(file: &Path, text: &str, arrays: &[CutArray]) -> Option<ParsedFile> {
    let mut skeleton = text.as_bytes().to_vec();
    for a in arrays {
        skeleton[a.open..a.close].fill(b' ');
    }
    // Only ASCII bytes were replaced, inside a text that was UTF-8, at token boundaries.
    let skeleton = String::from_utf8(skeleton).ok()?;
    let doc = DeTable::parse(&skeleton).ok()?;
    let mut cx = new_cx(file, text);
    cx.pieces = arrays;
    cx.document(doc.get_ref());
    if cx.failed { None } else { Some(cx.out) }
}

/// A top-level `users = [` or `devices = [` array whose items are parsed in pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CutArray {
    /// Byte offset of the key.
    key: usize,
    /// Just after the `[`.
    open: usize,
    /// The closing `]`.
    close: usize,
    /// Piece boundaries between `open` and `close`: just after every [`PIECE_ITEMS`]th comma
    /// between items.
    cuts: Vec<usize>,
}

impl CutArray {
    /// The pieces' byte ranges, in order, covering `open..close`.
    fn pieces(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let starts = std::iter::once(self.open).chain(self.cuts.iter().copied());
        let ends = self.cuts.iter().copied().chain(std::iter::once(self.close));
        starts.zip(ends).map(|(a, b)| a..b)
    }
}

/// Finds the top-level `users` and `devices` arrays with toml's own lexer (a stream: no token
/// list is kept). `None` when the file has a table header or brackets that do not balance:
/// such a file is parsed whole.
fn cut_arrays(text: &str) -> Option<Vec<CutArray>> {
    use toml_parser::lexer::TokenKind as T;

    #[derive(Clone, Copy, PartialEq)]
    enum At {
        LineStart,
        Key(Option<usize>),
        Equals(Option<usize>),
        Other,
    }
    let mut found = Vec::new();
    let mut at = At::LineStart;
    // Nesting outside a cut array, and inside the one being cut.
    let mut depth = 0usize;
    let mut cutting: Option<(CutArray, usize, usize)> = None;
    for token in toml_parser::Source::new(text).lex() {
        let (kind, span) = (token.kind(), token.span());
        if let Some((array, inner, commas)) = &mut cutting {
            match kind {
                T::LeftSquareBracket | T::LeftCurlyBracket => *inner += 1,
                T::RightSquareBracket | T::RightCurlyBracket if *inner > 0 => *inner -= 1,
                T::RightSquareBracket => {
                    array.close = span.start();
                    found.push(array.clone());
                    cutting = None;
                    at = At::Other;
                }
                T::RightCurlyBracket => return None,
                T::Comma if *inner == 0 => {
                    *commas += 1;
                    if (*commas).is_multiple_of(PIECE_ITEMS) {
                        array.cuts.push(span.end());
                    }
                }
                _ => {}
            }
            continue;
        }
        if depth > 0 {
            match kind {
                T::LeftSquareBracket | T::LeftCurlyBracket => depth += 1,
                T::RightSquareBracket | T::RightCurlyBracket => depth -= 1,
                _ => {}
            }
            continue;
        }
        at = match (kind, at) {
            (T::Newline, _) => At::LineStart,
            (T::Whitespace | T::Comment, at) => at,
            (T::Atom, At::LineStart) => {
                let name = &text[span.start()..span.end()];
                At::Key((name == "users" || name == "devices").then_some(span.start()))
            }
            (T::Equals, At::Key(key)) => At::Equals(key),
            (T::LeftSquareBracket, At::Equals(Some(key))) => {
                let array = CutArray {
                    key,
                    open: span.end(),
                    close: span.end(),
                    cuts: Vec::new(),
                };
                cutting = Some((array, 0, 0));
                At::Other
            }
            // A table header: keys after it are not top-level; not worth cutting.
            (T::LeftSquareBracket, At::LineStart) => return None,
            (T::LeftSquareBracket | T::LeftCurlyBracket, _) => {
                depth += 1;
                At::Other
            }
            (T::RightSquareBracket | T::RightCurlyBracket, _) => return None,
            _ => At::Other,
        };
    }
    (cutting.is_none() && depth == 0 && !found.is_empty()).then_some(found)
}

struct Cx<'a> {
    /// Shared by every location of the file.
    file: Arc<Path>,
    index: LineIndex<'a>,
    /// Where the piece being read starts in the text (its spans count from its prefix).
    piece_at: Option<usize>,
    out: ParsedFile,
    /// The arrays whose items are read piece by piece (empty for a whole-text parse).
    pieces: &'a [CutArray],
    text: &'a str,
    /// A piece was not valid TOML: the whole text is to be parsed instead.
    failed: bool,
    /// The exclusion list being read, if any: it takes single entries only.
    excluding: Option<&'static str>,
}

impl<'a> Cx<'a> {
    fn at(&self, span: Range<usize>) -> Location {
        let offset = match self.piece_at {
            Some(start) => (span.start + start).saturating_sub(PIECE_PREFIX.len()),
            None => span.start,
        };
        let (line, col) = self.index.line_col(offset);
        Location {
            file: Arc::clone(&self.file),
            line,
            col,
        }
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        let at = self.at(span);
        self.out.diagnostics.push(Diagnostic::error(at, message));
    }

    fn document(&mut self, doc: &DeTable<'_>) {
        for (key, value) in doc.iter() {
            let name: &str = key.get_ref();
            match name {
                "users" => {
                    self.note_listed(key.span());
                    let users = match self.cut_at(key.span().start) {
                        Some(array) => self.entries_in_pieces::<UserKey>(array),
                        None => self.entries::<UserKey>(name, value),
                    };
                    self.out.users = users;
                }
                "devices" => {
                    self.note_listed(key.span());
                    let devices = match self.cut_at(key.span().start) {
                        Some(array) => self.entries_in_pieces::<DeviceKey>(array),
                        None => self.entries::<DeviceKey>(name, value),
                    };
                    self.out.devices = devices;
                }
                "exclude_users" => {
                    self.excluding = Some("exclude_users");
                    self.out.exclude_users = self.entries::<UserKey>(name, value);
                    self.excluding = None;
                }
                "exclude_devices" => {
                    self.excluding = Some("exclude_devices");
                    self.out.exclude_devices = self.entries::<DeviceKey>(name, value);
                    self.excluding = None;
                }
                "allow_empty" => match value.get_ref() {
                    DeValue::Boolean(b) => self.out.allow_empty = *b,
                    other => self.error(
                        value.span(),
                        format!(
                            "`allow_empty` must be true or false, found {}",
                            describe(other)
                        ),
                    ),
                },
                other => {
                    let hint = suggest(other, TOP_LEVEL_KEYS, &[("user", "users")]);
                    self.error(
                        key.span(),
                        format!(
                            "unknown top-level key `{}`{hint}; allowed keys: {}",
                            clip(other),
                            TOP_LEVEL_KEYS.join(", ")
                        ),
                    );
                }
            }
        }
    }

    fn cut_at(&self, key: usize) -> Option<&'a CutArray> {
        let pieces: &'a [CutArray] = self.pieces;
        pieces.iter().find(|a| a.key == key)
    }

    /// The items of a cut array, one piece at a time; each piece's tree is dropped before the
    /// next is parsed.
    fn entries_in_pieces<K: EntryKind>(&mut self, array: &CutArray) -> Vec<Parsed<K>> {
        let mut all = Vec::new();
        let mut piece = String::new();
        for range in array.pieces() {
            piece.clear();
            piece.push_str(PIECE_PREFIX);
            piece.push_str(&self.text[range.clone()]);
            piece.push(']');
            let Ok(doc) = DeTable::parse(&piece) else {
                self.failed = true;
                return Vec::new();
            };
            let Some(DeValue::Array(items)) = doc.get_ref().iter().next().map(|(_, v)| v.get_ref())
            else {
                self.failed = true;
                return Vec::new();
            };
            self.piece_at = Some(range.start);
            self.out.items += items.len();
            // Grown by each piece, not doubled: a doubled list keeps up to half its room
            // unused (5 MB at 100k users); as one mapped block, growing it moves no bytes.
            all.reserve_exact(items.len());
            all.extend(items.iter().filter_map(|item| self.entry::<K>(item)));
            self.piece_at = None;
        }
        all
    }

    fn note_listed(&mut self, span: Range<usize>) {
        // `users` wins over `devices` whatever the map order: it is the key people look for.
        let at = self.at(span);
        match &self.out.listed_at {
            Some(prev) if prev <= &at => {}
            _ => self.out.listed_at = Some(at),
        }
    }

    fn entries<K: EntryKind>(
        &mut self,
        list: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Vec<Parsed<K>> {
        let DeValue::Array(items) = value.get_ref() else {
            let example = match K::WHAT {
                "user" => "users = [\"alice@contoso.com\"]",
                _ => "devices = [\"ws-ber-0012.contoso.local\"]",
            };
            self.error(
                value.span(),
                format!(
                    "`{list}` must be an array of entries, found {}; write it like {example}",
                    describe(value.get_ref())
                ),
            );
            return Vec::new();
        };
        self.out.items += items.len();
        items
            .iter()
            .filter_map(|item| self.entry::<K>(item))
            .collect()
    }

    fn entry<K: EntryKind>(&mut self, item: &Spanned<DeValue<'_>>) -> Option<Parsed<K>> {
        let at = self.at(item.span());
        match item.get_ref() {
            DeValue::String(s) => match K::from_bare(s) {
                Ok(key) => Some(Parsed {
                    entry: Entry {
                        key,
                        note: None,
                        expires: None,
                        at,
                    },
                    expires_at: None,
                }),
                Err(message) => {
                    self.error(item.span(), message);
                    None
                }
            },
            DeValue::Table(table) if selector::is_selector(table) => {
                self.selector::<K>(table, item.span(), at);
                None
            }
            DeValue::Table(table) => {
                let fields = self.entry_fields::<K>(table);
                self.identified(fields, item.span(), at)
            }
            other => {
                self.error(
                    item.span(),
                    format!(
                        "a {} entry must be a string or an inline table, found {}",
                        K::WHAT,
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// A `group` or `where` entry: kept apart from the single entries, every problem reported.
    fn selector<K: EntryKind>(&mut self, table: &DeTable<'_>, span: Range<usize>, at: Location) {
        if let Some(list) = self.excluding {
            let message = format!(
                "`{list}` takes single {}s only, not a selector; exclude the identities one by one",
                K::WHAT
            );
            self.error(span, message);
            return;
        }
        let (found, problems) = selector::parse(K::SUBJECT, table, span, at);
        for (span, message) in problems {
            self.error(span, message);
        }
        self.out.selectors.extend(found);
    }

    /// Reads every key of an inline-table entry, reporting each bad or unknown one.
    fn entry_fields<K: EntryKind>(&mut self, table: &DeTable<'_>) -> EntryFields<K> {
        let mut fields = EntryFields {
            ok: true,
            idents: Vec::new(),
            note: None,
            expires: None,
            expires_at: None,
            unknown_key: false,
        };
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(ident) = K::IDENT_KEYS.iter().find(|k| **k == name) {
                let parsed = match self.string_value(ident, value) {
                    Some(s) => match K::from_key(ident, s) {
                        Ok(k) => Some(k),
                        Err(message) => {
                            self.error(value.span(), message);
                            fields.ok = false;
                            None
                        }
                    },
                    None => {
                        fields.ok = false;
                        None
                    }
                };
                fields.idents.push((ident, key.span(), parsed));
                continue;
            }
            match name {
                "note" => match self.string_value("note", value) {
                    Some(s) => fields.note = Some(s.into()),
                    None => fields.ok = false,
                },
                "expires" => match self.date_value(value) {
                    Some(d) => {
                        fields.expires = Some(d);
                        fields.expires_at = Some(self.at(value.span()));
                    }
                    None => fields.ok = false,
                },
                other => {
                    let hint = suggest(other, K::ALLOWED_KEYS, K::ALIASES);
                    self.error(
                        key.span(),
                        format!(
                            "unknown key `{}` in a {} entry{hint}; allowed keys: {}",
                            clip(other),
                            K::WHAT,
                            K::ALLOWED_KEYS.join(", ")
                        ),
                    );
                    fields.ok = false;
                    fields.unknown_key = true;
                }
            }
        }
        fields
    }

    /// The entry the fields make when exactly one identifying key is set and every key was
    /// well-formed; otherwise none, with the missing or doubled key reported.
    fn identified<K: EntryKind>(
        &mut self,
        mut fields: EntryFields<K>,
        span: Range<usize>,
        at: Location,
    ) -> Option<Parsed<K>> {
        // Map order is by key name; report the identifying key written last.
        fields.idents.sort_by_key(|(_, span, _)| span.start);
        let alternatives = K::IDENT_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        match fields.idents.as_slice() {
            // `{ dns_name = … }` is one mistake: the unknown key already says what was meant.
            [] if fields.unknown_key => None,
            [] => {
                self.error(
                    span,
                    format!(
                        "a {} entry needs one identifying key: {alternatives}",
                        K::WHAT
                    ),
                );
                None
            }
            [(_, _, key)] => match (fields.ok, key) {
                (true, Some(key)) => Some(Parsed {
                    entry: Entry {
                        key: key.clone(),
                        note: fields.note,
                        expires: fields.expires,
                        at,
                    },
                    expires_at: fields.expires_at.map(Box::new),
                }),
                _ => None,
            },
            [(first, ..), (second, second_span, _), ..] => {
                self.error(
                    second_span.clone(),
                    format!(
                        "a {} entry has both `{first}` and `{second}`; keep exactly one of \
                         {alternatives} (write two entries for two {}s)",
                        K::WHAT,
                        K::WHAT
                    ),
                );
                None
            }
        }
    }

    fn string_value<'v>(&mut self, key: &str, value: &'v Spanned<DeValue<'_>>) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                self.error(
                    value.span(),
                    format!("`{key}` must be a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn date_value(&mut self, value: &Spanned<DeValue<'_>>) -> Option<NaiveDate> {
        let date = match value.get_ref() {
            DeValue::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt.date,
            _ => None,
        };
        let found = date.and_then(|d| {
            NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
        });
        if found.is_none() {
            let hint = match value.get_ref() {
                DeValue::String(s) => format!("; write it without quotes: expires = {s}"),
                _ => String::new(),
            };
            self.error(
                value.span(),
                format!(
                    "`expires` must be a date like 2027-03-31, found {}{hint}",
                    describe(value.get_ref())
                ),
            );
        }
        found
    }
}

/// "a string", "an integer", …: what a value is, for "found …" messages.
fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(dt) if dt.date.is_some() && dt.time.is_some() => "a date-time",
        DeValue::Datetime(dt) if dt.date.is_some() => "a date",
        DeValue::Datetime(_) => "a time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::edit_distance;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let text = "ab\nçd\n\nx";
        let ix = LineIndex::new(text);
        let cases = [
            (0, (1, 1)),
            (1, (1, 2)),
            (3, (2, 1)),
            (5, (2, 2)),
            (7, (3, 1)),
            (8, (4, 1)),
            (99, (4, 2)),
        ];
        for (offset, want) in cases {
            assert_eq!(ix.line_col(offset), want, "offset {offset}");
        }
        // Inside a multi-byte character: the column of that character.
        assert_eq!(ix.line_col(4), (2, 1));
        let bom = LineIndex::new("\u{feff}users");
        assert_eq!(bom.line_col(3), (1, 1));
    }

    /// Cut into pieces or parsed whole, a file gives the same entries and diagnostics.
    #[test]
    fn pieces_read_like_the_whole_text() {
        let user = |n: usize| format!("  \"user{n}@contoso.com\",\n");
        let mut many = String::from("allow_empty = false\nusers = [\n");
        for n in 0..PIECE_ITEMS * 2 + 7 {
            match n {
                // A bad entry and a table entry in later pieces, a comment between items.
                2_500 => many.push_str("  \"not a upn\",\n"),
                4_001 => many.push_str("  { upn = \"t@contoso.com\", note = \"x, y\" }, # [\n"),
                _ => many.push_str(&user(n)),
            }
        }
        many.push_str("]\ndevices = ['ws-1.contoso.local', 'ws-2.contoso.local']\n");
        let broken = many.replace(
            "  \"user3000@contoso.com\",",
            "  \"user3000@contoso.com\" \"x\",",
        );
        let header = format!("{many}[extra]\nkey = 1\n");
        for (text, cut) in [(&many, true), (&broken, true), (&header, false)] {
            assert_eq!(cut_arrays(text).is_some(), cut);
            let file = Path::new("d.toml");
            let got = format!("{:?}", parse_file(file, text));
            assert_eq!(got, format!("{:?}", parse_whole(file, text)));
        }
        let arrays = cut_arrays(&many).expect("cut");
        assert_eq!(arrays.len(), 2);
        assert_eq!(arrays[0].cuts.len(), 2);
        let parsed = parse_file(Path::new("d.toml"), &many);
        assert_eq!(parsed.users.len(), PIECE_ITEMS * 2 + 6);
        assert_eq!(parsed.items, PIECE_ITEMS * 2 + 9);
        assert_eq!(parsed.diagnostics.len(), 1);
        assert_eq!(parsed.diagnostics[0].at.line, 2_503);
    }

    #[test]
    fn suggestions() {
        let device = (DeviceKey::ALLOWED_KEYS, DeviceKey::ALIASES);
        let user = (UserKey::ALLOWED_KEYS, UserKey::ALIASES);
        let cases = [
            (device, "dns_name", " (did you mean `name`?)"),
            (device, "Hostname", " (did you mean `name`?)"),
            (user, "upm", " (did you mean `upn`?)"),
            (user, "expire", " (did you mean `expires`?)"),
            (user, "x", ""),
            (device, "colour", ""),
        ];
        for ((allowed, aliases), key, want) in cases {
            assert_eq!(suggest(key, allowed, aliases), want, "{key}");
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
