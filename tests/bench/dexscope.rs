//! The benchmarks: `cargo bench --bench dexscope` measures the performance targets the README
//! lists (requests, time under throttling, CPU, peak memory)
//! and prints one table (figure, measured, target, ok). Everything runs against the simulated
//! tenant over loopback; CPU and memory figures come from the real binary run as a child
//! process and reaped with `wait4`.
//!
//! `cargo bench --bench dexscope -- NAME…` runs only the rows whose function name contains one
//! of the NAMEs. Without `--bench` on its command line (as under `cargo test --all-targets`) it
//! exits at once: it is a benchmark, not a test.

mod adaptive;
mod env;
mod incidents;
mod naive;
mod reconcile;
mod scale;
mod selectors;

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

/// One line of the table. `ok` is `None` for figures without a target.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub target: String,
    pub ok: Option<bool>,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        ok: Option<bool>,
    ) -> Row {
        Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
            ok,
        }
    }
}

/// A row function: its name (for filtering), its time limit, and the function.
struct Bench {
    name: &'static str,
    limit: Duration,
    run: fn() -> BoxFuture<'static, Vec<Row>>,
}

fn benches() -> Vec<Bench> {
    let b = |name, secs, run| Bench {
        name,
        limit: Duration::from_secs(secs),
        run,
    };
    vec![
        b("adds_requests_1000", 60, || {
            reconcile::adds_requests(1_000).boxed()
        }),
        b("adds_requests_10000", 60, || {
            reconcile::adds_requests(10_000).boxed()
        }),
        b("removals_requests_1000", 60, || {
            reconcile::removals_requests(1_000).boxed()
        }),
        b("removals_requests_10000", 60, || {
            reconcile::removals_requests(10_000).boxed()
        }),
        b("tags_requests_1000", 60, || {
            reconcile::tags_requests(1_000).boxed()
        }),
        b("tags_requests_10000", 60, || {
            reconcile::tags_requests(10_000).boxed()
        }),
        b("throttled_converge", 120, || {
            reconcile::throttled_converge().boxed()
        }),
        b("adaptive_quarter_of_budget", 180, || {
            adaptive::quarter_of_budget().boxed()
        }),
        b("adaptive_quota_changes_mid_run", 180, || {
            adaptive::quota_changes_mid_run().boxed()
        }),
        b("naive_comparison_1000", 120, || {
            reconcile::naive_comparison(1_000).boxed()
        }),
        b("naive_comparison_10000", 300, || {
            reconcile::naive_comparison(10_000).boxed()
        }),
        b("unchanged_pass_at_scale", 180, || {
            scale::unchanged_pass_at_scale().boxed()
        }),
        b("plan_rss_growth", 900, || scale::plan_rss_growth().boxed()),
        b("validate_at_scale", 60, || {
            scale::validate_at_scale().boxed()
        }),
        b("desired_parse_cpu", 60, || {
            scale::desired_parse_cpu().boxed()
        }),
        b("pure_plan_cpu", 60, || scale::pure_plan_cpu().boxed()),
        b("selectors_nested_group_100k", 300, || {
            selectors::nested_group_100k().boxed()
        }),
        b("daemon_backlog_latency_rss", 420, || {
            incidents::daemon_backlog_latency_rss().boxed()
        }),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(env::MEASURE_FLAG) {
        env::measure_child(&args[1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("dexscope benchmarks: run them with `cargo bench --bench dexscope`");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for bench in benches() {
            if !filters.is_empty() && !filters.iter().any(|f| bench.name.contains(f.as_str())) {
                continue;
            }
            rows.extend(run_one(bench).await);
        }
        rows
    });
    print_table(&rows);
}

/// Runs one row function in its own task, bounded by its limit; a panic or a timeout becomes
/// a failed row instead of ending the run.
async fn run_one(bench: Bench) -> Vec<Row> {
    eprintln!("bench {} …", bench.name);
    let started = Instant::now();
    let task = tokio::spawn((bench.run)());
    let abort = task.abort_handle();
    let rows = match tokio::time::timeout(bench.limit, task).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
                Err(e) => e.to_string(),
            };
            vec![Row::new(
                bench.name,
                format!("failed: {why}"),
                "",
                Some(false),
            )]
        }
        Err(_) => {
            abort.abort();
            vec![Row::new(
                bench.name,
                format!("timed out after {:?}", bench.limit),
                "",
                Some(false),
            )]
        }
    };
    eprintln!(
        "bench {} done in {:.1} s",
        bench.name,
        started.elapsed().as_secs_f64()
    );
    for r in &rows {
        eprintln!("  {} | {} | {}", r.figure, r.measured, ok_text(r.ok));
    }
    rows
}

fn ok_text(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "ok",
        Some(false) => "not ok",
        None => "—",
    }
}

/// The table, as Markdown (it goes into the README as printed).
fn print_table(rows: &[Row]) {
    println!("| figure | measured | target | ok |");
    println!("|---|---|---|---|");
    for r in rows {
        let cell = |s: &str| s.replace('|', "\\|");
        println!(
            "| {} | {} | {} | {} |",
            cell(&r.figure),
            cell(&r.measured),
            cell(&r.target),
            ok_text(r.ok)
        );
    }
}
