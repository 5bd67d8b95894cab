//! The Grafana dashboard (`config/grafana-dashboard.json`) against a real `/metrics` scrape:
//! every panel's PromQL names only sample names the endpoint exposes (OpenMetrics suffixes
//! included), and every exposed family is on some panel. The checker itself is tested on
//! names that must be refused. Then every query, with its variables made concrete, is
//! evaluated by a real Prometheus that scraped the daemon after it did work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dexscope::metrics::{self, Metrics, PassFigures};

const DASHBOARD: &str = include_str!("../../config/grafana-dashboard.json");

/// Every `expr` of every panel (rows' nested panels included), with the panel title.
fn expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str();
                assert!(expr.is_some(), "panel {title:?} has a target without expr");
                out.push((title.clone(), expr.unwrap().to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Clauses followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Operators and aggregations written without a parenthesis right after them
/// (`sum by (x) (…)`), which are therefore not recognised as calls.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are not function calls or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = String::new();
    let mut chars = expr.chars().peekable();
    // Drop strings, `{…}` matchers and `[…]` ranges.
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                s.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            c if depth_brace == 0 && depth_bracket == 0 => s.push(c),
            _ => {}
        }
    }
    let tokens: Vec<(usize, &str)> = {
        let mut v = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i] as char;
            if c.is_ascii_alphabetic() || c == '_' || c == ':' {
                let start = i;
                while i < b.len()
                    && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                v.push((start, &s[start..i]));
            } else if c.is_ascii_digit() || c == '.' {
                // Numbers (and durations like 5m, which only occur inside ranges anyway).
                while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        v
    };
    let next_char = |pos: usize, len: usize| s[pos + len..].trim_start().chars().next();
    let mut names = BTreeSet::new();
    // Label names in `by (…)`, `on (…)` and the like are skipped up to this byte.
    let mut skip_until = 0;
    for (pos, tok) in tokens.iter().copied() {
        if pos < skip_until {
            continue;
        }
        let lower = tok.to_ascii_lowercase();
        if GROUPING.contains(&lower.as_str()) {
            if next_char(pos, tok.len()) == Some('(') {
                let open = pos + tok.len() + s[pos + tok.len()..].find('(').unwrap();
                skip_until = s[open..].find(')').map_or(s.len(), |c| open + c);
            }
            continue;
        }
        if KEYWORDS.contains(&lower.as_str()) || next_char(pos, tok.len()) == Some('(') {
            continue;
        }
        names.insert(tok.to_string());
    }
    names
}

/// The sample names a scrape exposes, from its `# TYPE` lines and OpenMetrics suffix rules,
/// kept only when a sample line with that name is really present.
fn exposed(scrape: &str) -> BTreeMap<String, String> {
    let samples: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            "gauge" | "unknown" => &[""],
            other => panic!("unexpected family type {other}"),
        };
        for suffix in suffixes {
            let name = format!("{family}{suffix}");
            if samples.contains(name.as_str()) {
                out.insert(name, family.to_string());
            }
        }
    }
    out
}

/// Names in `expr` the scrape does not expose.
fn unknown(expr: &str, exposed: &BTreeMap<String, String>) -> Vec<String> {
    metric_names(expr)
        .into_iter()
        .filter(|n| !exposed.contains_key(n))
        .collect()
}

/// A scrape of a real endpoint after one pass of each loop.
async fn scrape() -> String {
    let m = Arc::new(Metrics::new());
    m.set_loops(&[
        ("reconcile", Duration::from_secs(300)),
        ("priority", Duration::from_secs(900)),
        ("incidents", Duration::from_secs(60)),
    ]);
    for name in ["reconcile", "priority", "incidents"] {
        m.record_pass(
            name,
            &PassFigures {
                ok: true,
                duration: Duration::from_millis(120),
                finished: Utc::now(),
                drift: Some(1),
                verdicts: vec![metrics::VerdictReached {
                    kind: "in_scope",
                    incident: name.into(),
                    digest: "d".into(),
                }],
                ..PassFigures::default()
            },
        );
    }
    let (listener, addr) = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, m, async {
        let _ = stopped.await;
    }));
    let text = super::metrics::client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    super::metrics::check_openmetrics(&text);
    text
}

#[tokio::test]
async fn every_panel_query_names_a_family_metrics_exposes_and_every_family_is_shown() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let text = scrape().await;
    let exposed = exposed(&text);

    let mut used_families = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no metric: {expr}"
        );
        let bad = unknown(expr, &exposed);
        assert!(
            bad.is_empty(),
            "panel {title:?} names {bad:?}, not exposed by /metrics: {expr}"
        );
        used_families.extend(names.iter().map(|n| exposed[n].clone()));
    }
    let all_families: BTreeSet<String> = exposed.values().cloned().collect();
    let missing: Vec<_> = all_families.difference(&used_families).collect();
    assert!(missing.is_empty(), "families on no panel: {missing:?}");

    // Importable: a datasource input every query uses, and unique panel ids.
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut ids = BTreeSet::new();
    fn panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
        let mut out = Vec::new();
        for p in v.as_array().into_iter().flatten() {
            out.push(p);
            out.extend(panels(&p["panels"]));
        }
        out
    }
    for p in panels(&dashboard["panels"]) {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
}

#[tokio::test]
async fn the_checker_refuses_made_up_and_wrongly_suffixed_names() {
    let exposed = exposed(&scrape().await);
    let cases: &[(&str, &[&str])] = &[
        // Made up.
        (
            "rate(dexscope_made_up_total[5m])",
            &["dexscope_made_up_total"],
        ),
        // A counter without its _total suffix, a gauge with one, a histogram's bare name.
        ("sum(rate(dexscope_passes[5m]))", &["dexscope_passes"]),
        (
            "dexscope_drift_objects_total",
            &["dexscope_drift_objects_total"],
        ),
        (
            "rate(dexscope_pass_duration_seconds[5m])",
            &["dexscope_pass_duration_seconds"],
        ),
        // Fine: labels, grouping, functions, strings, ranges and keywords are not metric names.
        (
            r#"histogram_quantile(0.9, sum by (le, loop) (rate(dexscope_pass_duration_seconds_bucket{loop="x",le!="+Inf"}[5m])))"#,
            &[],
        ),
        (
            r#"time() - dexscope_last_success_timestamp_seconds offset 5m > bool 60"#,
            &[],
        ),
        (
            r#"sum without (status) (dexscope_http_requests_total) / on (surface) group_left dexscope_throttled_requests_total"#,
            &[],
        ),
        ("up", &["up"]),
    ];
    for (expr, want) in cases {
        let got = unknown(expr, &exposed);
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{expr}");
    }
}

/// A real Prometheus (Debian's `prometheus` package) on loopback, scraping one target every
/// second, its data in a temp dir; killed on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: &str) -> Self {
        let binary = super::exposition::tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dexscope\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = super::metrics::client()
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(std::time::Instant::now() < deadline, "prometheus not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query: `Ok(result vector)` or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let body: serde_json::Value = super::metrics::client()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// The value of a one-sample query result.
fn value(result: &[serde_json::Value]) -> f64 {
    result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn every_dashboard_query_answers_from_a_real_prometheus_scraping_the_daemon() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter().any(|v| v["name"] == "instance"),
        "no instance variable: {vars:?}"
    );
    // ann is unknown in the simulated tenant, so nothing resolves and the desired state counts
    // as empty (allowed): the reconcile pass removes the group's members (changes, coverage),
    // the incident pass judges the seeded incidents (verdicts). Defender Experts take a new
    // incident at the second poll after it arrives, so the daemon sees a pickup happen
    // (agreement, latency).
    let daemon = super::exposition::RunningDaemon::start(
        "users = [\"ann@contoso.com\"]\nallow_empty = true\n",
    )
    .await;
    let picked = daemon
        .sim()
        .create_incident(&dexscope::sim::IncidentSpec::default());
    let take = dexscope::sim::model::IncidentChange {
        assigned_to: Some("Defender Experts".into()),
        status: Some("inProgress".into()),
    };
    assert!(daemon.sim().plan_incident_change(&picked, 2, take));
    daemon.wait_passes(Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = daemon.scrape(None).await;
        if text
            .lines()
            .any(|l| l.starts_with("dexscope_pickup_latency_seconds_count ") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pickup seen:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let target = daemon.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await;

    // Enough scrapes for rate() and increase() (two samples in the window at least).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = prometheus
            .query("count_over_time(dexscope_build_info[1m])")
            .await
            .map(|r| value(&r))
            .unwrap_or(0.0);
        if n >= 5.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "too few scrapes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The daemon did the work the panels measure.
    let did = |expr: &'static str| {
        let p = &prometheus;
        async move { value(&p.query(expr).await.unwrap()) }
    };
    assert!(
        did("sum(dexscope_changes_applied_total)").await > 0.0,
        "no changes applied"
    );
    assert!(
        did("sum(dexscope_verdicts_total)").await > 0.0,
        "no verdicts"
    );
    assert!(
        did("sum(dexscope_pickup_agreement_total)").await > 0.0,
        "no pickup agreement"
    );
    assert!(
        did("sum(dexscope_pickup_latency_seconds_count)").await > 0.0,
        "no pickup latency"
    );

    for (title, expr) in expressions(&dashboard) {
        assert!(
            expr.contains("$instance"),
            "panel {title:?} does not select $instance: {expr}"
        );
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", &target);
        match prometheus.query(&concrete).await {
            Ok(result) => assert!(
                !result.is_empty(),
                "panel {title:?}: no data from a daemon that did the work: {concrete}"
            ),
            Err(e) => panic!("panel {title:?}: prometheus refused {concrete}: {e}"),
        }
    }
}
