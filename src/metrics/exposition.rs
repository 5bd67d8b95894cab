//! The classic Prometheus text exposition format (`text/plain; version=0.0.4`), converted from
//! the OpenMetrics text `prometheus-client` encodes, and the `Accept` negotiation between them.
//!
//! The conversion follows the differences the two formats document: the text format has no
//! `# EOF` terminator, no `# UNIT` line and no `_created` samples; a counter family is named
//! with its `_total` suffix (its samples already carry it); an OpenMetrics `info` family has no
//! text-format type and becomes a gauge named `<name>_info` with the value 1. Histogram and
//! gauge families are written alike in both.

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic text exposition content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which format an `Accept` header asks for: OpenMetrics when it names
/// `application/openmetrics-text` with a non-zero quality (as Prometheus does, preferring it),
/// else the text format, which every scraper reads.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The text format of an OpenMetrics exposition.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The current family: its name and type.
    let mut family: (&str, &str) = ("", "");
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            family = (name, kind);
            out.push_str(&format!("# HELP {} {help}\n", text_name(name, kind)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = (name, kind);
            let text_kind = if kind == "info" { "gauge" } else { kind };
            out.push_str(&format!("# TYPE {} {text_kind}\n", text_name(name, kind)));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        if sample.strip_prefix(family.0) == Some("_created") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The family name in the text format.
fn text_name(name: &str, kind: &str) -> String {
    match kind {
        "counter" => format!("{name}_total"),
        "info" => format!("{name}_info"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let cases = [
            (None, false),
            (Some("*/*"), false),
            (Some("text/plain; version=0.0.4"), false),
            (Some("application/openmetrics-text"), true),
            // Prometheus 2.x's own header.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                true,
            ),
            (
                Some("text/plain;version=0.0.4, application/openmetrics-text; q=0"),
                false,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_openmetrics(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn conversion() {
        let om = "# HELP x_passes Passes run.\n# TYPE x_passes counter\n\
                  x_passes_total{loop=\"a\"} 1\nx_passes_created{loop=\"a\"} 1.7e9\n\
                  # HELP x_wait_seconds Time waited.\n# TYPE x_wait_seconds counter\n\
                  # UNIT x_wait_seconds seconds\n\
                  x_wait_seconds_total 0.5\n\
                  # HELP x_build The build.\n# TYPE x_build info\nx_build_info{version=\"1\"} 1\n\
                  # HELP x_d Duration.\n# TYPE x_d histogram\nx_d_bucket{le=\"+Inf\"} 1\n\
                  x_d_sum 0.1\nx_d_count 1\nx_d_created 1.7e9\n# EOF\n";
        let want = "# HELP x_passes_total Passes run.\n# TYPE x_passes_total counter\n\
                    x_passes_total{loop=\"a\"} 1\n\
                    # HELP x_wait_seconds_total Time waited.\n# TYPE x_wait_seconds_total counter\n\
                    x_wait_seconds_total 0.5\n\
                    # HELP x_build_info The build.\n# TYPE x_build_info gauge\nx_build_info{version=\"1\"} 1\n\
                    # HELP x_d Duration.\n# TYPE x_d histogram\nx_d_bucket{le=\"+Inf\"} 1\n\
                    x_d_sum 0.1\nx_d_count 1\n";
        assert_eq!(to_text(om), want);
    }
}
