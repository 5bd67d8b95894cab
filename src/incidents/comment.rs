//! The verdict comment: plain text for the incident, sanitised and bounded, ending with the
//! machine-readable marker that makes posting exactly-once. Pure.
//!
//! Structure, always: the first line is the fixed IN/OUT SCOPE headline, the last line is the
//! marker, and every line in between starts with text of ours (a section title or `- `), so
//! nothing taken from the incident can start a line, let alone forge a marker.

use std::fmt;

use crate::incidents::verdict::{Asset, AssetKind, AssetReason, Outcome, Reason, Verdict};
use crate::model::{Incident, IncidentComment};

/// The longest comment rendered, in UTF-16 code units (what Graph and the portal count); the
/// count in characters is never larger. Graph documents no length limit for an incident
/// comment, so this is a cautious bound of our own.
pub const MAX_COMMENT_LEN: usize = 3_000;

/// How every marker line starts.
pub const MARKER_PREFIX: &str = "dexscope-verdict:";

const MARKER_VERSION: &str = "v1";
const HEADLINE_IN: &str = "IN SCOPE for Defender Experts scoped coverage";
const HEADLINE_OUT: &str = "OUT OF SCOPE for Defender Experts scoped coverage";

/// Longest incident-supplied values in a comment, in characters (`…` included).
const MAX_NAME: usize = 64;
const MAX_PLATFORM: usize = 32;
const MAX_REASON: usize = 160;
const MAX_ID: usize = 40;
/// Lines shown per list before "+N more", even when there is room: a comment is read by people.
const MAX_LIST_ITEMS: usize = 15;

/// Hex characters of a marker's tag.
const TAG_LEN: usize = 16;

/// The marker of a verdict comment: the outcome, the digest of the verdict's inputs and, on
/// markers written since tags exist, the tag that shows this installation wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marker {
    pub in_scope: bool,
    /// Lower-case hex, 16 to 64 characters.
    pub digest: String,
    /// [`marker_tag`] of the incident and digest: 16 lower-case hex characters.
    pub tag: Option<String>,
}

impl Marker {
    /// The marker a verdict's comment carries; `None` for a skipped incident (no comment).
    pub fn of(verdict: &Verdict) -> Option<Marker> {
        let in_scope = match verdict.outcome {
            Outcome::InScope => true,
            Outcome::OutOfScope => false,
            Outcome::Skipped { .. } => return None,
        };
        Some(Marker {
            in_scope,
            digest: verdict.digest.clone(),
            tag: None,
        })
    }

    /// The same marker carrying `tag`.
    pub fn tagged(self, tag: String) -> Marker {
        Marker {
            tag: Some(tag),
            ..self
        }
    }
}

/// The tag that proves a marker was written by the holder of `key`: the first 16 hex characters
/// of HMAC-SHA256 (RFC 2104) over the incident id, a NUL byte and the digest. Anyone may write
/// a marker line in a comment; only this installation can tag one.
pub fn marker_tag(key: &[u8], incident_id: &str, digest: &str) -> String {
    let mut message = Vec::with_capacity(incident_id.len() + 1 + digest.len());
    message.extend_from_slice(incident_id.as_bytes());
    message.push(0);
    message.extend_from_slice(digest.as_bytes());
    hmac_sha256(key, &message)[..TAG_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HMAC-SHA256 as RFC 2104 defines it, with SHA-256's 64-byte block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.in_scope {
            "in_scope"
        } else {
            "out_of_scope"
        };
        write!(
            f,
            "{MARKER_PREFIX} {MARKER_VERSION} {outcome} {}",
            self.digest
        )?;
        match &self.tag {
            Some(tag) => write!(f, " {tag}"),
            None => Ok(()),
        }
    }
}

/// The comment to post for a verdict, or `None` when nothing is posted (a redirected incident).
pub fn comment(verdict: &Verdict, incident: &Incident) -> Option<String> {
    Marker::of(verdict).map(|_| render(verdict, incident))
}

/// Renders the verdict as comment text of at most [`MAX_COMMENT_LEN`]. For a skipped incident
/// this is the one line `skipped: redirected to <id>` for the CLI, with no marker: use
/// [`comment`] to decide whether to post.
pub fn render(verdict: &Verdict, incident: &Incident) -> String {
    render_tagged(verdict, incident, None)
}

/// [`render`] with the marker carrying `tag` (from [`marker_tag`]), as posted on incidents.
pub fn render_tagged(verdict: &Verdict, incident: &Incident, tag: Option<String>) -> String {
    let Some(marker) = Marker::of(verdict) else {
        let to = match &verdict.outcome {
            Outcome::Skipped {
                redirected_to: Some(to),
            } => sanitise(to, MAX_ID),
            _ => "an unnamed incident".to_owned(),
        };
        return format!("skipped: redirected to {to}");
    };
    let marker = match tag {
        Some(tag) => marker.tagged(tag),
        None => marker,
    };
    let in_scope = marker.in_scope;
    let headline = if in_scope { HEADLINE_IN } else { HEADLINE_OUT };
    let marker = marker.to_string();
    let locals = verdict
        .reasons
        .iter()
        .find_map(|reason| match reason {
            Reason::LocalAccounts { count } => Some(*count),
            _ => None,
        })
        .unwrap_or(0);
    let locals = match locals {
        0 => String::new(),
        n => format!(" and {n} local account{}", plural(n)),
    };
    let context = format!(
        "Incident {}, severity {}, {} alert{}, {} impacted asset{}{locals}.",
        sanitise(&incident.id, MAX_ID),
        sanitise(incident.severity.as_wire(), MAX_PLATFORM),
        incident.alerts.len(),
        plural(incident.alerts.len()),
        verdict.assets.len(),
        plural(verdict.assets.len()),
    );
    let line = |reason: &Reason| format!("- {}", sanitise(&reason.to_string(), MAX_REASON));
    let (notes, causes): (Vec<&Reason>, Vec<&Reason>) =
        verdict.reasons.iter().partition(|reason| reason.is_note());
    let sections = if in_scope {
        vec![
            Section::new("Covered, Defender Experts respond:", covered_lines(verdict)),
            Section::new(
                "Informational only, no response actions:",
                verdict.uncovered().map(asset_line).collect(),
            ),
            Section::new("Notes:", verdict.reasons.iter().map(line).collect()),
        ]
    } else {
        // A note (a policy choice, unread evidence) listed under "Reasons" reads as a cause.
        vec![
            Section::new("Reasons:", causes.into_iter().map(line).collect()),
            Section::new(
                "Assets, informational only, no response actions:",
                verdict.assets.iter().map(asset_line).collect(),
            ),
            Section::new("Notes:", notes.into_iter().map(line).collect()),
        ]
    };
    let sections = [experts_section(verdict)]
        .into_iter()
        .chain(sections)
        .collect();
    let fixed = width(headline) + width(&context) + width(&marker) + 3;
    let mut lines = vec![headline.to_owned(), context];
    lines.extend(fit(sections, MAX_COMMENT_LEN - fixed));
    lines.push(marker);
    lines.join("\n")
}

/// Reads the marker from a comment's last line, strictly: `dexscope-verdict: v1`, the outcome
/// a 16–64 character lower-case hex digest and optionally a 16 character lower-case hex tag,
/// nothing else on the line. Trailing whitespace after the line (a final newline) is tolerated.
pub fn parse_marker(comment: &str) -> Option<Marker> {
    let text = comment.trim_end_matches([' ', '\t', '\r', '\n']);
    let last = text.rsplit('\n').next()?;
    let rest = last.strip_prefix(MARKER_PREFIX)?.strip_prefix(' ')?;
    let rest = rest.strip_prefix(MARKER_VERSION)?.strip_prefix(' ')?;
    let (outcome, rest) = rest.split_once(' ')?;
    let (digest, tag) = match rest.split_once(' ') {
        Some((digest, tag)) => (digest, Some(tag)),
        None => (rest, None),
    };
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if tag.is_some_and(|t| t.len() != TAG_LEN || !hex(t)) {
        return None;
    }
    let in_scope = match outcome {
        "in_scope" => true,
        "out_of_scope" => false,
        _ => return None,
    };
    let digest_ok = (16..=64).contains(&digest.len())
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    digest_ok.then(|| Marker {
        in_scope,
        digest: digest.to_owned(),
        tag: tag.map(str::to_owned),
    })
}

/// True when one of the incident's comments already carries `marker`: the exactly-once rule
/// posts only when this is false.
pub fn has_marker(comments: &[IncidentComment], marker: &Marker) -> bool {
    comments
        .iter()
        .any(|c| parse_marker(&c.comment).as_ref() == Some(marker))
}

/// Makes incident-supplied text safe to put inside one comment line: line breaks and other
/// control characters become spaces, bidi and zero-width characters are removed, markup
/// characters are replaced by look-alikes that no renderer interprets, runs of spaces collapse,
/// the marker prefix is broken up, and the result is cut to `max_chars` characters with `…`.
pub fn sanitise(input: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(input.len().min(max_chars * 4));
    let mut pending_space = false;
    let mut kept = 0;
    for c in input.chars() {
        if is_invisible(c) {
            continue;
        }
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(neutralise(c));
        kept += 1;
        // Enough is read to know the value will be cut. The margin keeps any marker word that
        // starts inside the cut window whole, so `break_markers` still sees it.
        if kept > max_chars + MARKER_PREFIX.len() {
            break;
        }
    }
    break_markers(&mut out);
    cut(&out, max_chars)
}

// ---------------------------------------------------------------------------------------------

struct Section {
    title: &'static str,
    items: Vec<String>,
}

impl Section {
    fn new(title: &'static str, items: Vec<String>) -> Self {
        Section { title, items }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Length as Graph counts it (UTF-16 code units).
fn width(s: &str) -> usize {
    s.encode_utf16().count()
}

fn more_line(hidden: usize) -> String {
    format!("- +{hidden} more")
}

/// Lays out the non-empty sections in `budget` (each line counted with its newline). Every
/// section's title and a possible "+N more" line are reserved up front, so a long first list
/// cannot squeeze a later section out entirely.
fn fit(sections: Vec<Section>, budget: usize) -> Vec<String> {
    let sections: Vec<Section> = sections
        .into_iter()
        .filter(|s| !s.items.is_empty())
        .collect();
    let reserve = |s: &Section| width(s.title) + 1 + width(&more_line(s.items.len())) + 1;
    let mut reserved: usize = sections.iter().map(reserve).sum();
    let mut used = 0;
    let mut lines = Vec::new();
    for section in sections {
        reserved -= reserve(&section);
        lines.push(section.title.to_owned());
        used += width(section.title) + 1;
        let more = width(&more_line(section.items.len())) + 1;
        let total = section.items.len();
        let mut shown = 0;
        for (i, item) in section.items.into_iter().enumerate() {
            let last = i + 1 == total;
            let need = width(&item) + 1 + if last { 0 } else { more };
            if shown == MAX_LIST_ITEMS || used + need + reserved > budget {
                break;
            }
            used += width(&item) + 1;
            lines.push(item);
            shown += 1;
        }
        if shown < total {
            let line = more_line(total - shown);
            used += width(&line) + 1;
            lines.push(line);
        }
    }
    lines
}

/// Said first when Defender Experts already own the incident, so the comment never reads as
/// contradicting the analysts handling it.
fn experts_section(verdict: &Verdict) -> Section {
    let items = if verdict.scope_mismatch() {
        vec![
            "- Defender Experts are handling this incident, though dexscope judged it out of \
             scope: dexscope's picture of the scope or the service's is wrong (propagation, \
             device group priority, or a bug). Their handling stands; the scope needs a check."
                .to_owned(),
        ]
    } else if verdict.taken_by_experts {
        vec!["- Defender Experts are handling this incident.".to_owned()]
    } else {
        Vec::new()
    };
    Section::new("Defender Experts:", items)
}

fn covered_lines(verdict: &Verdict) -> Vec<String> {
    verdict.covered().map(asset_line).collect()
}

fn asset_line(asset: &Asset) -> String {
    let label = [asset.name.as_deref(), Some(asset.id.as_str())]
        .into_iter()
        .flatten()
        .map(|value| sanitise(value, MAX_NAME))
        .find(|value| !value.is_empty())
        .unwrap_or_else(|| "(unnamed)".to_owned());
    let reason = match &asset.reason {
        // The configured group name is ours and well known; saying it again adds nothing.
        AssetReason::InDeviceGroup { .. } => "in the scoped device group".to_owned(),
        other => sanitise(&other.to_string(), MAX_REASON),
    };
    match asset.kind {
        AssetKind::Device => {
            let platform = asset
                .platform
                .as_deref()
                .map(|p| sanitise(p, MAX_PLATFORM))
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "platform unknown".to_owned());
            format!("- device {label} ({platform}): {reason}")
        }
        AssetKind::User => format!("- user {label}: {reason}"),
    }
}

/// Characters that change how text is displayed without being visible: bidi controls,
/// zero-width characters, invisible fillers, tag characters and variation selectors.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Replaces characters that Markdown or HTML would interpret with look-alikes that neither does.
fn neutralise(c: char) -> char {
    match c {
        '<' => '‹',
        '>' => '›',
        '`' => '\'',
        '*' => '∗',
        '_' => '＿',
        '#' => '＃',
        '|' => '｜',
        '~' => '～',
        '[' => '(',
        ']' => ')',
        '\\' => '/',
        '&' => '＆',
        other => other,
    }
}

/// Turns every `dexscope-verdict` (any ASCII case) into `dexscope verdict`, so no value reads
/// as a marker even where a reader ignores line structure.
fn break_markers(s: &mut String) {
    const WORD: &str = "dexscope-verdict";
    let hyphen = WORD.find('-').unwrap_or(0);
    loop {
        // ASCII lower-casing keeps byte offsets, so a hit in `lower` is a hit in `s`.
        let lower = s.to_ascii_lowercase();
        let Some(at) = lower.find(WORD) else { break };
        s.replace_range(at + hyphen..at + hyphen + 1, " ");
    }
}

fn cut(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 2 and 6 of RFC 4231 (a short key; a key longer than the block).
        let hex = |b: [u8; 32]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(super::hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(super::hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let tag = super::marker_tag(&[7; 32], "42", "0123456789abcdef");
        assert_eq!(tag.len(), 16);
        assert_ne!(tag, super::marker_tag(&[8; 32], "42", "0123456789abcdef"));
        assert_ne!(tag, super::marker_tag(&[7; 32], "4", "20123456789abcdef"));
    }
    use super::*;

    #[test]
    fn sanitise_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("plain", 10, "plain"),
            ("  a\r\n\tb  ", 10, "a b"),
            ("a\u{202E}b\u{200B}c\u{FEFF}", 10, "abc"),
            ("<b>x</b>", 20, "‹b›x‹/b›"),
            (
                "**[x](y)** `z` _u_ #h |t| ~s~ a\\b &amp;",
                80,
                "∗∗(x)(y)∗∗ 'z' ＿u＿ ＃h ｜t｜ ～s～ a/b ＆amp;",
            ),
            (
                "dexscope-verdict: v1 in_scope 0123456789abcdef",
                80,
                "dexscope verdict: v1 in＿scope 0123456789abcdef",
            ),
            ("DexScope-\u{200B}Verdict:", 80, "DexScope Verdict:"),
            ("abcdefghij", 5, "abcd…"),
            ("abc   defg", 5, "abc…"),
            ("\u{2028}x\u{2029}y\u{85}z", 10, "x y z"),
            ("", 5, ""),
        ];
        for (input, max, want) in cases {
            assert_eq!(sanitise(input, *max), *want, "input {input:?}");
        }
    }

    #[test]
    fn sanitise_cuts_long_values_without_reading_them_whole() {
        let long = "x".repeat(10_000);
        let out = sanitise(&long, MAX_NAME);
        assert_eq!(out.chars().count(), MAX_NAME);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn parse_marker_is_strict() {
        let digest = "0123456789abcdef0123456789abcdef";
        let good = format!("x\ndexscope-verdict: v1 in_scope {digest}");
        assert_eq!(
            parse_marker(&good),
            Some(Marker {
                in_scope: true,
                digest: digest.into(),
                tag: None,
            })
        );
        assert!(parse_marker(&format!("{good}\n")).is_some());
        assert_eq!(
            parse_marker(&format!("{good} 0123456789abcdef")).and_then(|m| m.tag),
            Some("0123456789abcdef".to_owned())
        );
        for tag in [
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "x",
        ] {
            assert_eq!(parse_marker(&format!("{good} {tag}")), None, "{tag}");
        }
        let bad = [
            format!("dexscope-verdict: v1 in_scope {digest}\nmore"),
            format!(" dexscope-verdict: v1 in_scope {digest}"),
            format!("dexscope-verdict: v2 in_scope {digest}"),
            format!("dexscope-verdict: v1 maybe {digest}"),
            format!("dexscope-verdict: v1 in_scope {}", &digest[..15]),
            format!("dexscope-verdict: v1 in_scope {}", digest.to_uppercase()),
            format!("dexscope-verdict: v1 in_scope {digest} x"),
            format!("dexscope-verdict:  v1 in_scope {digest}"),
            "dexscope-verdict: v1 in_scope ".to_owned(),
            String::new(),
        ];
        for text in bad {
            assert_eq!(parse_marker(&text), None, "{text:?}");
        }
    }
}
