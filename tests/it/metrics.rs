//! The metrics endpoint over loopback HTTP: OpenMetrics text and `/readyz` flipping from 503
//! to 200 as the daemon reports a token and passes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dexscope::metrics::{self, Metrics, PassFigures};

/// Every family the endpoint must export, by its `# TYPE` line.
pub const FAMILIES: &[&str] = &[
    "# TYPE dexscope_passes counter",
    "# TYPE dexscope_pass_duration_seconds histogram",
    "# TYPE dexscope_changes_applied counter",
    "# TYPE dexscope_drift_objects gauge",
    "# TYPE dexscope_http_requests counter",
    "# TYPE dexscope_throttled_requests counter",
    "# TYPE dexscope_throttle_wait_seconds counter",
    "# TYPE dexscope_verdicts counter",
    "# TYPE dexscope_alerts_firing gauge",
    "# TYPE dexscope_last_success_timestamp_seconds gauge",
    "# TYPE dexscope_build info",
];

/// Checks the OpenMetrics shape: every family present, `# EOF` last, every sample line of the
/// form `name{labels} value` with a numeric value and a `dexscope_` name.
pub fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator:\n{text}");
    for family in FAMILIES {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(name.starts_with("dexscope_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

/// A client that asks for OpenMetrics, as Prometheus does (without it `/metrics` answers the
/// classic text format).
pub fn client() -> reqwest::Client {
    let mut accept = reqwest::header::HeaderMap::new();
    accept.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0"),
    );
    reqwest::Client::builder()
        .default_headers(accept)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, Option<String>) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), ct)
}

#[tokio::test]
async fn readyz_flips_when_a_token_and_every_loop_have_reported() {
    let m = Arc::new(Metrics::new());
    m.set_loops(&[
        ("reconcile", Duration::from_secs(60)),
        ("priority", Duration::from_secs(60)),
    ]);
    let (listener, addr) = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, m.clone(), async {
        let _ = stopped.await;
    }));
    let c = client();
    let base = format!("http://{addr}");

    let (status, body, _) = get(&c, &format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body, _) = get(&c, &format!("{base}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("no token obtained yet"), "{body}");

    m.token_obtained(Utc::now());
    let pass = |ok| PassFigures {
        ok,
        duration: Duration::from_millis(10),
        finished: Utc::now(),
        ..PassFigures::default()
    };
    m.record_pass("reconcile", &pass(true));
    m.record_pass("priority", &pass(false));
    let (status, body, _) = get(&c, &format!("{base}/readyz")).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("priority loop has no successful pass"),
        "{body}"
    );

    m.record_pass("priority", &pass(true));
    let (status, body, _) = get(&c, &format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (status, text, ct) = get(&c, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some(metrics::CONTENT_TYPE));
    check_openmetrics(&text);
    assert!(
        text.contains("dexscope_passes_total{loop=\"priority\",result=\"error\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("dexscope_passes_total{loop=\"priority\",result=\"ok\"} 1\n"),
        "{text}"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
