//! Prometheus `/metrics` of the service (docs/service.md): a consumer per run
//! keeps that run's live figures; `render` writes the text exposition
//! (format 0.0.4) with the queue's run counts.
//!
//! Names follow Prometheus conventions (base units: seconds; `_total` for
//! counters) and the OpenTelemetry GenAI semantic conventions where a
//! *client* metric of the same meaning exists (its dots become underscores,
//! the unit `s` becomes `_seconds`, `{token}` adds nothing, as the OTel →
//! Prometheus mapping does). Every figure here is measured by barrage's
//! agents, i.e. on the client side: the `gen_ai.server.*` metrics (measured
//! inside a model server) are deliberately not used. Where no GenAI client
//! metric fits, the name is `barrage_`-prefixed. Meanings are METRICS.md's:
//!
//! | series | barrage metric | GenAI name |
//! |---|---|---|
//! | `gen_ai_client_operation_time_to_first_chunk_seconds` | `ttft` (first *output-bearing* chunk; `= e2e` for an unstreamed request) | `gen_ai.client.operation.time_to_first_chunk` |
//! | `gen_ai_client_operation_time_per_output_chunk_seconds` | `chunk_gap` | `gen_ai.client.operation.time_per_output_chunk` |
//! | `gen_ai_client_operation_duration_seconds` | `e2e` (completed requests only) | `gen_ai.client.operation.duration` |
//! | `gen_ai_client_token_usage{gen_ai_token_type}` | `input_tokens`, `output_tokens` per completed request | `gen_ai.client.token.usage` |
//! | `barrage_itl_seconds` | `itl` (per token) | – |
//! | `barrage_tpot_seconds` | `tpot` | – (`gen_ai.server.time_per_output_token` is server-side) |
//! | `barrage_requests_total{outcome}` | `requests_ok` / `requests_failed` / `requests_incomplete` | – |
//! | `barrage_request_errors_total{error_type}` | failed requests by class | – |
//! | `barrage_requests_good_total` | completed within every SLO (goodput) | – |
//! | `barrage_in_flight_requests` | requests open at the last interval | – |
//!
//! Counters and histograms are cumulative over the run (every step of a
//! sweep) and leave out the warmup intervals, exactly as the run's summary
//! does, so `barrage_requests_total` ends equal to the summary's counts.
//! Histogram buckets come from the merged HdrHistograms of each interval:
//! a bucket `le=b` counts the samples whose HdrHistogram bucket starts at or
//! below `b` (3 significant digits: ≤ 0.1 % off at an edge); `_count` and
//! `_sum` are exact.
//!
//! Label cardinality is bounded: series exist for the runs in progress plus
//! the `KEEP_FINISHED` most recently finished ones; older runs' series are
//! dropped (their figures stay in the API and the results folder).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use barrage_common::metrics::{Counters, ErrorClass, Metric, MetricSet, Series};

use crate::events::{Consumer, IntervalEvent, OutputError, RunEvent};

/// Finished runs whose series are still exposed (beside every active run).
pub const KEEP_FINISHED: usize = 20;

/// Latency from hand-off (TTFT, e2e), in seconds: the GenAI advice
/// (0.01 · 2^k up to 81.92 s) with finer steps where SLOs usually sit.
const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];
/// Gaps between tokens or chunks (ITL, chunk gap, TPOT), in seconds: today's
/// decoders sit at 2-50 ms per token, so the buckets are dense there (the
/// GenAI advice starts at 10 ms, which puts a fast model in one bucket).
const TOKEN_GAP_BOUNDS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
];
/// Tokens per request: the GenAI advice (powers of 4).
const TOKEN_BOUNDS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// Recorded latencies are in µs; the exposition's base unit is the second.
const MICROS: f64 = 1e6;

/// One histogram series of a run: a metric of the merged `MetricSet`.
struct HistSpec {
    family: &'static str,
    help: &'static str,
    metric: Metric,
    /// An extra label (`gen_ai_token_type`), or none.
    label: Option<(&'static str, &'static str)>,
    bounds: &'static [f64],
    /// Recorded units per exposed unit.
    scale: f64,
}

const HISTOGRAMS: &[HistSpec] = &[
    HistSpec {
        family: "gen_ai_client_operation_time_to_first_chunk_seconds",
        help: "barrage ttft (client-side): hand-off to the first output-bearing chunk (GenAI gen_ai.client.operation.time_to_first_chunk)",
        metric: Metric::Ttft,
        label: None,
        bounds: LATENCY_BOUNDS,
        scale: MICROS,
    },
    HistSpec {
        family: "gen_ai_client_operation_time_per_output_chunk_seconds",
        help: "barrage chunk_gap (client-side): gap between consecutive output-bearing chunks (GenAI gen_ai.client.operation.time_per_output_chunk)",
        metric: Metric::ChunkGap,
        label: None,
        bounds: TOKEN_GAP_BOUNDS,
        scale: MICROS,
    },
    HistSpec {
        family: "barrage_itl_seconds",
        help: "barrage itl (client-side): each chunk gap spread over the tokens of the chunk",
        metric: Metric::Itl,
        label: None,
        bounds: TOKEN_GAP_BOUNDS,
        scale: MICROS,
    },
    HistSpec {
        family: "barrage_tpot_seconds",
        help: "barrage tpot (client-side): (e2e - ttft) / (output_tokens - 1) per completed request",
        metric: Metric::Tpot,
        label: None,
        bounds: TOKEN_GAP_BOUNDS,
        scale: MICROS,
    },
    HistSpec {
        family: "gen_ai_client_operation_duration_seconds",
        help: "barrage e2e (client-side): hand-off to the end of the response, completed requests (GenAI gen_ai.client.operation.duration)",
        metric: Metric::E2e,
        label: None,
        bounds: LATENCY_BOUNDS,
        scale: MICROS,
    },
    HistSpec {
        family: "gen_ai_client_token_usage",
        help: "Input and output tokens per completed request (GenAI gen_ai.client.token.usage)",
        metric: Metric::InputTokens,
        label: Some(("gen_ai_token_type", "input")),
        bounds: TOKEN_BOUNDS,
        scale: 1.0,
    },
    HistSpec {
        family: "gen_ai_client_token_usage",
        help: "",
        metric: Metric::OutputTokens,
        label: Some(("gen_ai_token_type", "output")),
        bounds: TOKEN_BOUNDS,
        scale: 1.0,
    },
];

/// A cumulative Prometheus histogram: per-bucket (not yet cumulative)
/// counts, the samples above the last bound, the exact count and sum.
#[derive(Debug, Clone, Default)]
struct Hist {
    buckets: Vec<u64>,
    count: u64,
    /// In recorded units (µs or tokens): exact, converted when rendered.
    sum: u64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Self {
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0,
        }
    }

    /// Adds an interval's merged series.
    fn add(&mut self, s: &Series, spec: &HistSpec) {
        if s.count == 0 {
            return;
        }
        for v in s.hist.iter_recorded() {
            // The start of the HdrHistogram bucket: a value recorded exactly
            // on a bound lands in that bound's bucket.
            let low = s.hist.lowest_equivalent(v.value_iterated_to()) as f64 / spec.scale;
            if let Some(i) = spec.bounds.iter().position(|b| low <= *b) {
                self.buckets[i] = self.buckets[i].saturating_add(v.count_at_value());
            }
        }
        self.count = self.count.saturating_add(s.count);
        self.sum = self.sum.saturating_add(s.sum);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.saturating_add(*b);
        }
        self.count = self.count.saturating_add(o.count);
        self.sum = self.sum.saturating_add(o.sum);
    }
}

/// One run's figures.
#[derive(Debug)]
struct RunFigures {
    name: String,
    active: bool,
    in_flight: u64,
    /// After the warmup, every step.
    counters: Counters,
    hists: Vec<Hist>,
}

impl RunFigures {
    fn new() -> Self {
        Self {
            name: String::new(),
            active: true,
            in_flight: 0,
            counters: Counters::default(),
            hists: HISTOGRAMS.iter().map(|h| Hist::new(h.bounds)).collect(),
        }
    }

    /// Adds an interval; `delta`: its histograms (None in the warmup).
    fn interval(&mut self, iv: &IntervalEvent, delta: Option<Vec<Hist>>) {
        self.in_flight = iv.row.in_flight;
        let Some(delta) = delta else { return };
        self.counters.add(&iv.counters);
        for (h, d) in self.hists.iter_mut().zip(delta) {
            h.merge(&d);
        }
    }
}

/// An interval's histograms as Prometheus buckets (built outside the lock:
/// `/metrics` never waits on a histogram walk).
fn bucket_metrics(m: &MetricSet) -> Vec<Hist> {
    HISTOGRAMS
        .iter()
        .map(|spec| {
            let mut h = Hist::new(spec.bounds);
            h.add(m.get(spec.metric), spec);
            h
        })
        .collect()
}

#[derive(Debug, Default)]
struct Runs {
    by_id: BTreeMap<String, RunFigures>,
    /// Finished runs, oldest first.
    finished: VecDeque<String>,
}

impl Runs {
    fn finish(&mut self, run_id: &str) {
        let Some(r) = self.by_id.get_mut(run_id) else {
            return;
        };
        if !r.active {
            return;
        }
        r.active = false;
        r.in_flight = 0;
        self.finished.push_back(run_id.to_owned());
        while self.finished.len() > KEEP_FINISHED {
            if let Some(old) = self.finished.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

/// Every run's live figures, shared by the run consumers and `/metrics`.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    runs: Mutex<Runs>,
}

impl ServiceMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        // A panic elsewhere while holding the lock leaves plain numbers
        // behind: still fine to read and update.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The consumer that feeds run `run_id`'s figures (added to the run's
    /// outputs by the runner). The run counts as active from now until the
    /// consumer has seen the plan end, finished, or been dropped.
    pub fn consumer(self: &Arc<Self>, run_id: &str) -> Box<dyn Consumer> {
        let mut runs = self.lock();
        runs.finished.retain(|id| id != run_id);
        let r = runs
            .by_id
            .entry(run_id.to_owned())
            .or_insert_with(RunFigures::new);
        r.active = true;
        Box::new(RunMetrics {
            shared: Arc::clone(self),
            run_id: run_id.to_owned(),
        })
    }

    /// The text exposition (format 0.0.4); `runs_by_status`: the queue's
    /// count of runs per state.
    pub fn render(&self, runs_by_status: &BTreeMap<String, u64>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        family(
            &mut out,
            "barrage_runs",
            "gauge",
            "Runs in the service's queue by state",
        );
        for (status, n) in runs_by_status {
            sample(&mut out, "barrage_runs", &[("status", status)], *n as f64);
        }
        let runs = self.lock();
        render_runs(&mut out, &runs.by_id);
        out
    }
}

fn render_runs(out: &mut String, runs: &BTreeMap<String, RunFigures>) {
    let help = format!(
        "1 while the run is in progress, 0 once it ended (the last {KEEP_FINISHED} finished runs are kept)"
    );
    family(out, "barrage_run_active", "gauge", &help);
    for (id, r) in runs {
        let v = if r.active { 1.0 } else { 0.0 };
        sample(
            out,
            "barrage_run_active",
            &[("run", id), ("name", &r.name)],
            v,
        );
    }
    family(
        out,
        "barrage_in_flight_requests",
        "gauge",
        "Requests open at the end of the run's last merged interval (0 once it ended)",
    );
    for (id, r) in runs {
        let v = r.in_flight as f64;
        sample(out, "barrage_in_flight_requests", &[("run", id)], v);
    }
    render_counters(out, runs);
    for (i, spec) in HISTOGRAMS.iter().enumerate() {
        // A family is announced once (token usage spans two specs).
        if i == 0 || HISTOGRAMS[i - 1].family != spec.family {
            family(out, spec.family, "histogram", spec.help);
        }
        for (id, r) in runs {
            histogram(out, spec, id, &r.hists[i]);
        }
    }
}

fn render_counters(out: &mut String, runs: &BTreeMap<String, RunFigures>) {
    let name = "barrage_requests_total";
    family(
        out,
        name,
        "counter",
        "Requests ended, by outcome: ok (completed), failed, incomplete (cut by the end of the drain or a stop); warmup excluded",
    );
    for (id, r) in runs {
        let c = &r.counters;
        for (outcome, n) in [
            ("ok", c.requests_ok),
            ("failed", c.requests_failed),
            ("incomplete", c.requests_incomplete),
        ] {
            sample(out, name, &[("run", id), ("outcome", outcome)], n as f64);
        }
    }
    let name = "barrage_request_errors_total";
    family(
        out,
        name,
        "counter",
        "Failed requests by error class (connect, timeout, http_4xx, http_429, http_5xx, stream, ...)",
    );
    for (id, r) in runs {
        for class in ErrorClass::ALL {
            let n = r.counters.error(class);
            if n > 0 {
                let labels = [("run", id.as_str()), ("error_type", class.name())];
                sample(out, name, &labels, n as f64);
            }
        }
    }
    let name = "barrage_requests_good_total";
    family(
        out,
        name,
        "counter",
        "Completed requests within every per-request SLO of the plan (goodput)",
    );
    for (id, r) in runs {
        sample(out, name, &[("run", id)], r.counters.requests_good as f64);
    }
}

fn histogram(out: &mut String, spec: &HistSpec, run: &str, h: &Hist) {
    let mut labels: Vec<(&str, &str)> = vec![("run", run)];
    labels.extend(spec.label);
    let bucket = format!("{}_bucket", spec.family);
    let mut cumulative = 0u64;
    for (b, n) in spec.bounds.iter().zip(&h.buckets) {
        cumulative = cumulative.saturating_add(*n);
        let le = b.to_string();
        let mut l = labels.clone();
        l.push(("le", &le));
        sample(out, &bucket, &l, cumulative as f64);
    }
    let mut l = labels.clone();
    l.push(("le", "+Inf"));
    sample(out, &bucket, &l, h.count as f64);
    let sum = h.sum as f64 / spec.scale;
    sample(out, &format!("{}_sum", spec.family), &labels, sum);
    let count = h.count as f64;
    sample(out, &format!("{}_count", spec.family), &labels, count);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

pub use barrage_common::exposition::escape_label;

/// HELP text: `\` and newlines escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Feeds one run's events into the shared figures.
struct RunMetrics {
    shared: Arc<ServiceMetrics>,
    run_id: String,
}

impl RunMetrics {
    fn update(&self, f: impl FnOnce(&mut RunFigures)) {
        let mut runs = self.shared.lock();
        if let Some(r) = runs.by_id.get_mut(&self.run_id) {
            f(r);
        }
    }
}

impl Consumer for RunMetrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::PlanStarted(p) => self.update(|r| r.name.clone_from(&p.name)),
            RunEvent::Interval(iv) => {
                let delta = (!iv.row.warmup).then(|| bucket_metrics(&iv.metrics));
                self.update(|r| r.interval(iv, delta));
            }
            RunEvent::PlanFinished(_) => self.shared.lock().finish(&self.run_id),
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        self.shared.lock().finish(&self.run_id);
        Ok(Vec::new())
    }
}

impl Drop for RunMetrics {
    /// A consumer dropped unstarted (the run never began) ends its run too.
    fn drop(&mut self) {
        self.shared.lock().finish(&self.run_id);
    }
}
