//! The service's Prometheus `/metrics` (controller/src/service/metrics.rs):
//! synthetic events through the run consumer, a real run through it, a run
//! submitted to `controller serve` on loopback and scraped over HTTP, the
//! page read back with the project's own exposition parser, and the Grafana
//! dashboard checked against what the page holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use barrage_common::metrics::{Counters, ErrorClass, Layouts, Metric, MetricSet};
use barrage_common::simulator::SimConfig;
use barrage_controller::events::{Consumer, IntervalEvent, PlanEnd, PlanStart, RunEvent};
use barrage_controller::merge::IntervalRow;
use barrage_controller::monitor::IntervalMonitor;
use barrage_controller::prometheus::{self, Exposition, MetricType};
use barrage_controller::run::{RunOptions, Verdict};
use barrage_controller::service::metrics::{KEEP_FINISHED, ServiceMetrics};
use barrage_controller::sweep::{PlanOutcome, execute_plan_with};
use tokio_util::sync::CancellationToken;

use crate::support::service::{Api, TestService, sim_plan};
use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch, sim_with};

// ---------------------------------------------------------------------------
// Reading the page back

/// Parses a page; a line the parser cannot read fails the test.
fn parse(text: &str) -> Exposition {
    let exp = prometheus::parse(text);
    assert!(exp.malformed.is_empty(), "{:?}\n{text}", exp.malformed);
    exp
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = exp
        .samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .collect();
    assert!(hits.len() <= 1, "{name} {labels:?}: {} samples", hits.len());
    hits.first().copied()
}

type Labels = Vec<(String, String)>;

fn labels_without_le(labels: &[(String, String)]) -> Labels {
    labels.iter().filter(|(k, _)| k != "le").cloned().collect()
}

/// Exposition rules every page must keep: each sample belongs to a typed
/// family; per histogram series the buckets are cumulative in `le` order,
/// end with `+Inf` equal to `_count`, and `_sum` is there.
fn check_valid(exp: &Exposition) {
    for s in &exp.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| s.name.strip_suffix(suffix))
            .filter(|f| exp.types.get(*f) == Some(&MetricType::Histogram))
            .unwrap_or(&s.name);
        assert!(exp.types.contains_key(family), "{} has no # TYPE", s.name);
    }
    for (family, kind) in &exp.types {
        if *kind != MetricType::Histogram {
            continue;
        }
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone())
                .expect("a bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            series
                .entry(labels_without_le(&s.labels))
                .or_default()
                .push((le, s.value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            for w in buckets.windows(2) {
                assert!(w[0].1 <= w[1].1, "{family} {labels:?}: not cumulative");
            }
            let last = buckets.last().expect("buckets");
            assert_eq!(last.0, f64::INFINITY, "{family} {labels:?} ends at +Inf");
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = value(exp, &format!("{family}_count"), &pairs);
            assert_eq!(count, Some(last.1), "{family} {labels:?}: +Inf = _count");
            assert!(value(exp, &format!("{family}_sum"), &pairs).is_some());
        }
    }
}

/// The cumulative count of bucket `le` of a histogram series.
fn bucket(exp: &Exposition, family: &str, labels: &[(&str, &str)], le: &str) -> f64 {
    let mut l = labels.to_vec();
    l.push(("le", le));
    value(exp, &format!("{family}_bucket"), &l).unwrap_or_else(|| panic!("{family} le={le}"))
}

// ---------------------------------------------------------------------------
// Synthetic events

fn row(index: u64, warmup: bool, in_flight: u64) -> IntervalRow {
    IntervalRow {
        index,
        warmup,
        t_s: index as f64,
        agents_reporting: 1,
        requests_ok: 0,
        requests_failed: 0,
        output_tokens: 0,
        ttft_p50_ms: None,
        ttft_p99_ms: None,
        itl_p50_ms: None,
        itl_p99_ms: None,
        e2e_p50_ms: None,
        e2e_p99_ms: None,
        max_agent_cpu_percent: 0.0,
        max_agent_cpu_share: 0.0,
        max_scheduler_lag_ms: 0.0,
        read_lag_p99_ms: None,
        in_flight,
        monitor: IntervalMonitor::default(),
    }
}

fn interval(index: u64, warmup: bool, in_flight: u64, metrics: MetricSet, c: Counters) -> RunEvent {
    RunEvent::Interval(IntervalEvent {
        step: 0,
        row: row(index, warmup, in_flight),
        metrics,
        counters: c.clone(),
        totals: c,
    })
}

fn plan_start(name: &str) -> RunEvent {
    RunEvent::PlanStarted(PlanStart {
        name: name.to_owned(),
        dir: PathBuf::from("unused"),
        plan_toml: String::new(),
        started_at: "2026-12-03T07:00:00Z".into(),
        sweep: false,
    })
}

fn plan_end() -> RunEvent {
    RunEvent::PlanFinished(PlanEnd {
        verdict: Verdict::Completed,
        dir: PathBuf::from("unused"),
        sweep: None,
    })
}

fn set() -> MetricSet {
    MetricSet::new(Layouts::default()).expect("layouts")
}

/// A warmup interval (left out of counters and histograms) then a measured
/// one with latencies on and around bucket edges.
fn feed(c: &mut dyn Consumer) {
    c.event(&plan_start("quickstart")).expect("event");
    let mut warm = set();
    warm.record(Metric::Ttft, 5_000);
    let warm_c = Counters {
        requests_ok: 5,
        ..Counters::default()
    };
    c.event(&interval(0, true, 2, warm, warm_c)).expect("event");
    let mut m = set();
    // 50 ms, exactly 150 ms (an edge: counted at le=0.15), 2 s.
    for us in [50_000, 150_000, 2_000_000] {
        m.record(Metric::Ttft, us);
    }
    // 400 s: above the top bound, only in +Inf.
    for us in [300_000, 900_000, 400_000_000] {
        m.record(Metric::E2e, us);
    }
    m.record_n(Metric::Itl, 4_000, 10);
    m.record(Metric::InputTokens, 100);
    m.record(Metric::InputTokens, 1000);
    m.record(Metric::OutputTokens, 10);
    let mut counters = Counters {
        requests_ok: 3,
        requests_incomplete: 1,
        requests_good: 2,
        input_tokens: 1100,
        output_tokens: 10,
        ..Counters::default()
    };
    counters.requests_failed = 2;
    counters.count_error(ErrorClass::Http5xx);
    counters.count_error(ErrorClass::Timeout);
    c.event(&interval(1, false, 7, m, counters)).expect("event");
}

#[test]
fn counters_and_histograms_leave_out_the_warmup_and_buckets_are_cumulative() {
    let metrics = Arc::new(ServiceMetrics::new());
    let mut c = metrics.consumer("r-1");
    feed(c.as_mut());
    let exp = parse(&metrics.render(&BTreeMap::new()));
    check_valid(&exp);
    let run = [("run", "r-1")];
    let outcome = |o: &str| {
        value(
            &exp,
            "barrage_requests_total",
            &[("run", "r-1"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("ok"), Some(3.0), "the warmup's 5 are left out");
    assert_eq!(outcome("failed"), Some(2.0));
    assert_eq!(outcome("incomplete"), Some(1.0));
    let errors = |e: &str| {
        value(
            &exp,
            "barrage_request_errors_total",
            &[("run", "r-1"), ("error_type", e)],
        )
    };
    assert_eq!(errors("http_5xx"), Some(1.0));
    assert_eq!(errors("timeout"), Some(1.0));
    assert_eq!(errors("connect"), None, "classes never seen have no series");
    assert_eq!(value(&exp, "barrage_requests_good_total", &run), Some(2.0));
    assert_eq!(value(&exp, "barrage_in_flight_requests", &run), Some(7.0));
    assert_eq!(
        value(
            &exp,
            "barrage_run_active",
            &[("run", "r-1"), ("name", "quickstart")]
        ),
        Some(1.0)
    );

    let ttft = "gen_ai_client_operation_time_to_first_chunk_seconds";
    assert_eq!(bucket(&exp, ttft, &run, "0.04"), 0.0);
    assert_eq!(bucket(&exp, ttft, &run, "0.1"), 1.0);
    assert_eq!(
        bucket(&exp, ttft, &run, "0.15"),
        2.0,
        "a value on an edge is in it"
    );
    assert_eq!(bucket(&exp, ttft, &run, "1.5"), 2.0);
    assert_eq!(bucket(&exp, ttft, &run, "2"), 3.0);
    assert_eq!(
        value(&exp, &format!("{ttft}_count"), &run),
        Some(3.0),
        "warmup left out"
    );
    let sum = value(&exp, &format!("{ttft}_sum"), &run).expect("sum");
    assert!((sum - 2.2).abs() < 1e-9, "exact sum in seconds: {sum}");

    let e2e = "gen_ai_client_operation_duration_seconds";
    assert_eq!(bucket(&exp, e2e, &run, "320"), 2.0);
    assert_eq!(bucket(&exp, e2e, &run, "+Inf"), 3.0);

    let itl = "barrage_itl_seconds";
    assert_eq!(bucket(&exp, itl, &run, "0.003"), 0.0);
    assert_eq!(bucket(&exp, itl, &run, "0.005"), 10.0);
    let itl_sum = value(&exp, &format!("{itl}_sum"), &run).expect("sum");
    assert!((itl_sum - 0.04).abs() < 1e-9, "{itl_sum}");

    let tokens = "gen_ai_client_token_usage";
    let input = [("run", "r-1"), ("gen_ai_token_type", "input")];
    let output = [("run", "r-1"), ("gen_ai_token_type", "output")];
    assert_eq!(value(&exp, &format!("{tokens}_sum"), &input), Some(1100.0));
    assert_eq!(value(&exp, &format!("{tokens}_sum"), &output), Some(10.0));
    assert_eq!(bucket(&exp, tokens, &input, "256"), 1.0);
    assert_eq!(bucket(&exp, tokens, &input, "1024"), 2.0);
    assert_eq!(
        value(&exp, "barrage_tpot_seconds_count", &run),
        Some(0.0),
        "a histogram with no samples still has its series"
    );
}

#[test]
fn a_run_that_ended_shows_inactive_with_nothing_in_flight_and_keeps_its_counts() {
    let metrics = Arc::new(ServiceMetrics::new());
    let mut c = metrics.consumer("r-1");
    feed(c.as_mut());
    c.event(&plan_end()).expect("event");
    let exp = parse(&metrics.render(&BTreeMap::new()));
    let run = [("run", "r-1")];
    assert_eq!(value(&exp, "barrage_run_active", &run), Some(0.0));
    assert_eq!(value(&exp, "barrage_in_flight_requests", &run), Some(0.0));
    assert_eq!(
        value(
            &exp,
            "barrage_requests_total",
            &[("run", "r-1"), ("outcome", "ok")]
        ),
        Some(3.0)
    );
}

#[test]
fn a_consumer_dropped_before_its_run_began_ends_the_run() {
    let metrics = Arc::new(ServiceMetrics::new());
    let c = metrics.consumer("r-never");
    let exp = parse(&metrics.render(&BTreeMap::new()));
    assert_eq!(
        value(&exp, "barrage_run_active", &[("run", "r-never")]),
        Some(1.0)
    );
    drop(c);
    let exp = parse(&metrics.render(&BTreeMap::new()));
    assert_eq!(
        value(&exp, "barrage_run_active", &[("run", "r-never")]),
        Some(0.0)
    );
}

#[test]
fn label_values_are_escaped_and_read_back_unchanged() {
    let metrics = Arc::new(ServiceMetrics::new());
    let odd_id = "r-\"quoted\"\\back\nline";
    let odd_name = "name with \"quotes\", = signs, {braces} and \\";
    let mut c = metrics.consumer(odd_id);
    c.event(&plan_start(odd_name)).expect("event");
    let statuses = BTreeMap::from([("odd\"state".to_owned(), 2)]);
    let exp = parse(&metrics.render(&statuses));
    check_valid(&exp);
    assert_eq!(
        value(
            &exp,
            "barrage_run_active",
            &[("run", odd_id), ("name", odd_name)]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&exp, "barrage_runs", &[("status", "odd\"state")]),
        Some(2.0)
    );
}

#[test]
fn runs_by_status_come_from_the_argument() {
    let metrics = ServiceMetrics::new();
    let statuses = BTreeMap::from([
        ("completed".to_owned(), 4),
        ("queued".to_owned(), 1),
        ("running".to_owned(), 2),
    ]);
    let exp = parse(&metrics.render(&statuses));
    assert_eq!(exp.types.get("barrage_runs"), Some(&MetricType::Gauge));
    for (status, n) in &statuses {
        assert_eq!(
            value(&exp, "barrage_runs", &[("status", status)]),
            Some(*n as f64)
        );
    }
}

#[test]
fn series_are_kept_for_active_runs_and_the_most_recent_finished_ones_only() {
    let metrics = Arc::new(ServiceMetrics::new());
    let mut active = metrics.consumer("r-active");
    active.event(&plan_start("long")).expect("event");
    let extra = 5;
    for i in 0..KEEP_FINISHED + extra {
        let mut c = metrics.consumer(&format!("r-done-{i:03}"));
        c.event(&plan_end()).expect("event");
    }
    let exp = parse(&metrics.render(&BTreeMap::new()));
    check_valid(&exp);
    let runs: BTreeSet<String> = exp
        .samples
        .iter()
        .flat_map(|s| {
            s.labels
                .iter()
                .filter(|(k, _)| k == "run")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(runs.len(), KEEP_FINISHED + 1, "{runs:?}");
    assert!(runs.contains("r-active"), "an active run is never dropped");
    for i in 0..extra {
        assert!(
            !runs.contains(&format!("r-done-{i:03}")),
            "the oldest go first"
        );
    }
    assert!(runs.contains(&format!("r-done-{:03}", KEEP_FINISHED + extra - 1)));
}

// ---------------------------------------------------------------------------
// A real run through the consumer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_ends_with_series_equal_to_its_summary_and_is_live_while_it_runs() {
    let _serial = LOAD.lock().await;
    let dir = scratch("service-metrics-run");
    let text = format!(
        r#"
        name = "metrics"
        [request]
        max_tokens = 8
        [load]
        users = 4
        duration = "3s"
        warmup = "1s"
        [metrics]
        interval = "500ms"
        [cluster]
        embedded_agents = 2
        [output]
        dir = "{}"
        [simulator]
        ttft = "20ms"
        itl = "5ms"
        "#,
        dir.display()
    );
    let metrics = Arc::new(ServiceMetrics::new());
    let opts = RunOptions::default();
    let mut outputs = barrage_controller::outputs::defaults(&opts);
    outputs.push(metrics.consumer("r-real"));
    let ok = |exp: &Exposition| {
        value(
            exp,
            "barrage_requests_total",
            &[("run", "r-real"), ("outcome", "ok")],
        )
    };
    // Scrape while it runs: the run is active and its counts only grow.
    let scraper = {
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let exp = parse(&metrics.render(&BTreeMap::new()));
                check_valid(&exp);
                let active = value(&exp, "barrage_run_active", &[("run", "r-real")]);
                if active == Some(0.0) {
                    break;
                }
                seen.push(ok(&exp).unwrap_or(0.0));
            }
            seen
        })
    };
    let run = execute_plan_with(plan_from(&text), opts, CancellationToken::new(), outputs);
    let out = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("bounded")
        .expect("run");
    let live = scraper.await.expect("scraper");
    let PlanOutcome::Single(o) = out else {
        panic!("a single run")
    };
    assert!(
        live.windows(2).all(|w| w[0] <= w[1]),
        "counters only grow: {live:?}"
    );
    assert!(
        live.iter()
            .any(|v| *v > 0.0 && *v < o.summary.requests_ok as f64),
        "counts seen mid-run: {live:?} of {}",
        o.summary.requests_ok
    );

    let exp = parse(&metrics.render(&BTreeMap::new()));
    check_valid(&exp);
    let s = &o.summary;
    let run = [("run", "r-real")];
    let outcome = |o: &str| {
        value(
            &exp,
            "barrage_requests_total",
            &[("run", "r-real"), ("outcome", o)],
        )
    };
    assert!(s.requests_ok > 0);
    assert_eq!(ok(&exp), Some(s.requests_ok as f64));
    assert_eq!(outcome("failed"), Some(s.requests_failed as f64));
    assert_eq!(outcome("incomplete"), Some(s.requests_incomplete as f64));
    assert_eq!(value(&exp, "barrage_run_active", &run), Some(0.0));
    for (family, metric) in [
        (
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "ttft",
        ),
        (
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "chunk_gap",
        ),
        ("barrage_itl_seconds", "itl"),
        ("barrage_tpot_seconds", "tpot"),
        ("gen_ai_client_operation_duration_seconds", "e2e"),
    ] {
        let want = s.metrics.get(metric).map_or(0, |d| d.count) as f64;
        assert_eq!(
            value(&exp, &format!("{family}_count"), &run),
            Some(want),
            "{family} counts every {metric} sample the summary measured"
        );
    }
    let e2e_count = value(&exp, "gen_ai_client_operation_duration_seconds_count", &run);
    assert_eq!(
        e2e_count,
        Some(s.requests_ok as f64),
        "e2e: one per completed request"
    );
    let tokens = |t: &str| {
        value(
            &exp,
            "gen_ai_client_token_usage_sum",
            &[("run", "r-real"), ("gen_ai_token_type", t)],
        )
    };
    assert_eq!(tokens("output"), Some(s.output_tokens as f64));
    assert_eq!(tokens("input"), Some(s.input_tokens as f64));
    // The simulator's TTFT is 20 ms (plus loopback): above 0.01 s, and all
    // but a stray one (this machine is shared) below 0.1 s.
    let ttft = "gen_ai_client_operation_time_to_first_chunk_seconds";
    let ttft_count = value(&exp, &format!("{ttft}_count"), &run).expect("count");
    assert_eq!(bucket(&exp, ttft, &run, "0.01"), 0.0);
    assert!(bucket(&exp, ttft, &run, "0.1") >= ttft_count * 0.9);
}

// ---------------------------------------------------------------------------
// The Grafana dashboard

const DASHBOARD: &str = include_str!("../../deploy/grafana/barrage-controller.json");

/// Words of PromQL that are not metric names (aggregations may be followed
/// by `by (...)` before their parenthesis, so they are listed too).
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// Metric names a PromQL expression reads: identifiers outside strings,
/// label matchers `{...}`, ranges `[...]` and `by (...)` / `without (...)`
/// lists, that are not function calls or keywords. Grafana variables
/// (`$run`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut depth_skip: Vec<char> = Vec::new();
    let mut grouping_next = false;
    while i < chars.len() {
        let c = chars[i];
        if let Some(close) = depth_skip.last() {
            if c == *close {
                depth_skip.pop();
            } else if c == '"' {
                i = skip_string(&chars, i);
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i) + 1,
            '{' => {
                depth_skip.push('}');
                i += 1;
            }
            '[' => {
                depth_skip.push(']');
                i += 1;
            }
            '(' if grouping_next => {
                depth_skip.push(')');
                grouping_next = false;
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    grouping_next = true;
                } else if !call && !PROMQL_WORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The PromQL in a query: Grafana's `label_values(METRIC, LABEL)` reads
/// METRIC (its second argument is a label name).
fn promql_of(query: &str) -> &str {
    let q = query.trim();
    q.strip_prefix("label_values(")
        .and_then(|inner| inner.rsplit_once(','))
        .map_or(q, |(metric, _)| metric)
}

/// The index of the quote that closes the string opened at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Every `expr` of every panel (rows nest panels) and every query variable.
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::String(s)) if s.contains("label_values") => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(d, &mut out);
    out
}

/// The sample names a page can hold: every family, with `_bucket`, `_sum`
/// and `_count` for histograms.
fn rendered_names(exp: &Exposition) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (family, kind) in &exp.types {
        names.insert(family.clone());
        if *kind == MetricType::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{family}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn promql_names_are_found_outside_matchers_groupings_and_calls() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, run) (rate(gen_ai_x_bucket{run=~"$run", a="b{c}"}[$__rate_interval]))) / on(run) barrage_y"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["gen_ai_x_bucket".to_owned(), "barrage_y".to_owned()])
    );
    let names = metric_names(promql_of("label_values(barrage_run_active, run)"));
    assert_eq!(names, BTreeSet::from(["barrage_run_active".to_owned()]));
}

#[test]
fn the_grafana_dashboard_reads_only_metrics_that_render_produces() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    // Datasource and run are variables, so the dashboard imports anywhere.
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    assert_eq!(
        var("datasource").expect("datasource var")["type"],
        "datasource"
    );
    let run_var = var("run").expect("run var");
    assert_eq!(run_var["type"], "query");

    let metrics = Arc::new(ServiceMetrics::new());
    let mut c = metrics.consumer("r-1");
    feed(c.as_mut());
    let exp = parse(&metrics.render(&BTreeMap::from([("running".to_owned(), 1)])));
    let known = rendered_names(&exp);

    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 6, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(promql_of(q));
        assert!(!names.is_empty(), "{q}: names no metric");
        for n in names {
            assert!(known.contains(&n), "{q}: {n} is not on the /metrics page");
            used.insert(n);
        }
    }
    // The panels the dashboard promises.
    for family in [
        "barrage_runs",
        "barrage_in_flight_requests",
        "barrage_requests_total",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "barrage_itl_seconds_bucket",
    ] {
        assert!(used.contains(family), "no panel reads {family}");
    }
    // Every panel query uses the datasource variable.
    let text = DASHBOARD.replace(' ', "");
    assert!(
        !text.contains("\"uid\":\"prometheus\""),
        "a hard-coded datasource"
    );
}

// ---------------------------------------------------------------------------
// End to end: `controller serve` on loopback, a plan against llm-sim

/// Scrapes `/metrics` with the service's token; the page is valid.
async fn scrape(api: &Api) -> Exposition {
    let resp = api
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let exp = parse(&resp.text().await.expect("body"));
    check_valid(&exp);
    exp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_run_is_scraped_live_and_ends_with_its_summary_counts() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let token = "metrics-test-token";
    let svc = TestService::start(&scratch("svc-metrics"), Some(token)).await;
    let api = &svc.api;

    // Bearer auth: no token, no metrics.
    let anon = Api::new(api.base.clone(), None);
    let refused = anon
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), 401);

    // A warmup too: left out of the counters, as in the summary.
    let plan = sim_plan("scraped", sim.addr(), 4, "4s")
        .replace("drain = \"1s\"", "drain = \"1s\"\nwarmup = \"1s\"");
    let id = api.submit(&plan).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let run = [("run", id.as_str())];
    let ok_of = |exp: &Exposition| {
        value(
            exp,
            "barrage_requests_total",
            &[("run", id.as_str()), ("outcome", "ok")],
        )
    };

    // While it runs: active, counted in `running`, counts that only grow.
    let start = std::time::Instant::now();
    let mut live = Vec::new();
    loop {
        let exp = scrape(api).await;
        let active = value(&exp, "barrage_run_active", &run);
        if active == Some(1.0) {
            assert_eq!(
                value(&exp, "barrage_runs", &[("status", "running")]),
                Some(1.0)
            );
            live.push(ok_of(&exp).unwrap_or(0.0));
        }
        if api.run(&id).await["status"] != "running" && !live.is_empty() {
            break;
        }
        assert!(start.elapsed() < TEST_LIMIT, "run {id} never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = api.wait_end(&id, TEST_LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        live.windows(2).all(|w| w[0] <= w[1]),
        "only grows: {live:?}"
    );
    let (status, summary) = api
        .json(&format!("/api/runs/{id}/files/summary.json"))
        .await;
    assert_eq!(status, 200);
    let field = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    assert!(
        live.iter()
            .any(|v| *v > 0.0 && *v < field("requests_ok") as f64),
        "figures seen mid-run: {live:?}"
    );

    // After: the series equal the run's summary.
    let exp = scrape(api).await;
    assert_eq!(value(&exp, "barrage_run_active", &run), Some(0.0));
    assert_eq!(value(&exp, "barrage_in_flight_requests", &run), Some(0.0));
    assert_eq!(
        value(&exp, "barrage_runs", &[("status", "completed")]),
        Some(1.0)
    );
    let outcome = |o: &str| {
        value(
            &exp,
            "barrage_requests_total",
            &[("run", id.as_str()), ("outcome", o)],
        )
    };
    assert!(field("requests_ok") > 0);
    assert_eq!(outcome("ok"), Some(field("requests_ok") as f64));
    assert_eq!(outcome("failed"), Some(field("requests_failed") as f64));
    assert_eq!(
        outcome("incomplete"),
        Some(field("requests_incomplete") as f64)
    );
    for (family, metric) in [
        (
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "ttft",
        ),
        (
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "chunk_gap",
        ),
        ("barrage_itl_seconds", "itl"),
        ("gen_ai_client_operation_duration_seconds", "e2e"),
    ] {
        let measured = summary["metrics"][metric]["count"].as_u64();
        assert_eq!(
            value(&exp, &format!("{family}_count"), &run),
            measured.map(|n| n as f64),
            "{family}: one sample per {metric} measured"
        );
    }
    let e2e = value(&exp, "gen_ai_client_operation_duration_seconds_count", &run);
    assert_eq!(e2e, Some(field("requests_ok") as f64));
    let tokens = |t: &str| {
        value(
            &exp,
            "gen_ai_client_token_usage_sum",
            &[("run", id.as_str()), ("gen_ai_token_type", t)],
        )
    };
    assert_eq!(tokens("output"), Some(field("output_tokens") as f64));
    assert_eq!(tokens("input"), Some(field("input_tokens") as f64));
    svc.stop().await;
    sim.shutdown().await;
}
