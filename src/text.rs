//! Small text helpers shared by messages meant for people: one-line text, tenant labels, "did
//! you mean" hints and durations.

use std::time::Duration;

/// Makes any text safe for a one-line message: line breaks and other control characters become
/// spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The most characters a tenant label keeps, the ellipsis included.
pub const LABEL_MAX_CHARS: usize = 120;

/// Makes a label read from the tenant (a display name, a UPN, a device name) safe to print on
/// one line for a person: control characters (ESC, CR, LF, TAB…), bidi controls and zero-width
/// characters are escaped visibly (`\n`, `\u{1b}`, `\u{202e}`), and the result is cut to
/// [`LABEL_MAX_CHARS`] with a trailing `…`. A backslash is kept as it is, so the helper is
/// idempotent: a label made safe where it enters the domain stays the same when a later layer
/// makes it safe again.
pub fn label(s: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if is_hidden(c) => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        };
        let len = piece.chars().count();
        // Room is kept for the ellipsis unless this piece ends the label.
        let room = if chars.peek().is_some() {
            LABEL_MAX_CHARS - 1
        } else {
            LABEL_MAX_CHARS
        };
        if count + len > room {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
        count += len;
    }
    out
}

/// Characters that change how the text around them is shown without being seen: control
/// characters, bidi embeddings, overrides, isolates and marks, and zero-width characters.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{2029}'
                | '\u{2060}'..='\u{2064}'
                | '\u{061c}'
                | '\u{feff}'
        )
}

/// Levenshtein distance, for "did you mean" hints on short keys.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diag = above;
        }
    }
    row[b.len()]
}

/// A duration the way an operator reads it: `45s`, `4m`, `1m 30s`, `1h 30m`, `2d 3h`; under a
/// second in milliseconds (`250ms`). At most the two largest units, the smaller truncated, so a
/// value is never rounded up past what it is (59 s stays `59s`, not `1m`).
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return match d.subsec_millis() {
            0 if d.is_zero() => "0s".into(),
            0 => "<1ms".into(),
            ms => format!("{ms}ms"),
        };
    }
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    // secs ≥ 1, so the seconds unit at least matches.
    let first = UNITS
        .iter()
        .position(|(size, _)| secs >= *size)
        .unwrap_or(UNITS.len() - 1);
    let (size, unit) = UNITS[first];
    let mut out = format!("{}{unit}", secs / size);
    if let Some((next, next_unit)) = UNITS.get(first + 1) {
        let rest = secs % size / next;
        if rest > 0 {
            out.push_str(&format!(" {rest}{next_unit}"));
        }
    }
    out
}

/// A coarse age for a summary line, at most two units: `59s`, `12m`, `3h 5m`, `3d 4h`.
pub(crate) fn age(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LABEL_MAX_CHARS, duration, edit_distance, label, one_line};

    #[test]
    fn labels_are_escaped_visibly_and_capped() {
        for (input, expected) in [
            ("Helpdesk", "Helpdesk"),
            ("", ""),
            ("two\nlines\r\ttab", "two\\nlines\\r\\ttab"),
            ("red\x1b[31m", "red\\u{1b}[31m"),
            (
                "a\u{202e}b\u{2066}c\u{200e}d\u{061c}e",
                "a\\u{202e}b\\u{2066}c\\u{200e}d\\u{61c}e",
            ),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("nul\0del\u{7f}", "nul\\u{0}del\\u{7f}"),
            ("ünïcödé ok", "ünïcödé ok"),
        ] {
            assert_eq!(label(input), expected, "{input:?}");
            assert_eq!(label(expected), expected, "idempotent on {input:?}");
        }
    }

    #[test]
    fn long_labels_end_in_an_ellipsis_within_the_cap() {
        let exact = "a".repeat(LABEL_MAX_CHARS);
        assert_eq!(label(&exact), exact);
        let long = label(&"b".repeat(LABEL_MAX_CHARS + 1));
        assert_eq!(long.chars().count(), LABEL_MAX_CHARS);
        assert!(long.ends_with("b…"), "{long}");
        assert_eq!(label(&long), long, "idempotent");
        // An escape is never cut in half.
        let escapes = label(&"\x1b".repeat(LABEL_MAX_CHARS));
        assert!(escapes.chars().count() <= LABEL_MAX_CHARS);
        assert!(escapes.ends_with("\\u{1b}…"), "{escapes}");
    }

    #[test]
    fn one_line_replaces_control_characters() {
        for (input, expected) in [
            ("plain", "plain"),
            ("two\nlines", "two lines"),
            ("cr\r\nlf\ttab", "cr  lf tab"),
            ("", ""),
        ] {
            assert_eq!(one_line(input), expected, "{input:?}");
        }
    }

    #[test]
    fn distances() {
        for (a, b, d) in [
            ("", "", 0),
            ("prune", "prune", 0),
            ("max_removal", "max_removals", 1),
            ("dns_name", "name", 4),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} / {b}");
        }
    }

    #[test]
    fn durations() {
        for (d, shown) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "<1ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_999), "1s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "1m 30s"),
            (Duration::from_secs(240), "4m"),
            (Duration::from_secs(3_599), "59m 59s"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::from_secs(3_661), "1h 1m"),
            (Duration::from_secs(5_400), "1h 30m"),
            (Duration::from_secs(7_200), "2h"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(86_400 + 3 * 3_600 + 59), "1d 3h"),
            (Duration::from_secs(90 * 86_400), "90d"),
        ] {
            assert_eq!(duration(d), shown, "{d:?}");
        }
    }
}
