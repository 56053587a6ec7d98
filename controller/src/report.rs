//! The run's results: the `Summary` (the stable fields of summary.json), the
//! console tables, and the files of the result folder. Model (Summary) is
//! built from the merger; presentation (tables, files) only reads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use barrage_common::error_detail::ErrorDetails;
use barrage_common::metrics::{ErrorClass, Metric, MetricSet, Series, SourceCounts};
use serde::{Deserialize, Serialize};

use crate::merge::IntervalRow;

/// Percentiles printed and stored for every distribution.
pub const PERCENTILES: [(&str, f64); 11] = [
    ("p10", 0.10),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p66", 0.66),
    ("p75", 0.75),
    ("p80", 0.80),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p98", 0.98),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// Distributions in the percentile table, in order.
pub const TABLE_METRICS: [Metric; 13] = [
    Metric::Ttft,
    Metric::Ttfo,
    Metric::ChunkGap,
    Metric::Itl,
    Metric::Tpot,
    Metric::E2e,
    Metric::OutputTokens,
    Metric::ScheduleLag,
    Metric::TtftIntended,
    Metric::E2eIntended,
    Metric::ServerLoad,
    Metric::ServerPromptEval,
    Metric::ServerEval,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Distribution {
    /// "ms" for latencies, "tokens" for counts.
    pub unit: String,
    pub count: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub percentiles: BTreeMap<String, f64>,
}

impl Distribution {
    pub fn of(m: Metric, s: &Series) -> Self {
        let scale = if m.is_latency() { 1000.0 } else { 1.0 };
        let v = |x: u64| x as f64 / scale;
        Self {
            unit: if m.is_latency() { "ms" } else { "tokens" }.to_owned(),
            count: s.count,
            mean: s.mean().map(|x| x / scale),
            min: s.exact_min().map(v),
            max: (s.count > 0).then(|| v(s.max)),
            percentiles: PERCENTILES
                .iter()
                .filter_map(|(name, q)| s.quantile(*q).map(|x| ((*name).to_owned(), v(x))))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentReport {
    pub id: String,
    pub addr: String,
    pub users: u64,
    /// Fraction of the step's load (users, or arrival rate) this agent carried.
    pub share: f64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub max_cpu_percent: f64,
    /// Bytes of interval and final messages this agent sent (encoded protobuf).
    pub delta_bytes: u64,
    pub start_late_ms: Option<f64>,
    pub clock_uncertainty_ms: Option<f64>,
    /// Why the agent was lost, if it was.
    pub lost: Option<String>,
    /// Its final totals disagreed with the sum of its intervals.
    pub totals_mismatch: Option<String>,
    /// Intervals received twice (resent after a reconnect) and merged once.
    pub intervals_duplicated: u64,
    /// Intervals it sent (by sequence number) that never arrived.
    pub intervals_missing: u64,
    /// Times its session was resumed after the connection dropped.
    pub reconnects: u64,
    /// Why it stopped its load, from its final totals: "completed",
    /// "duration", "controller", or one the plan did not ask for
    /// ("lease_expired", "hard_deadline", "shutdown": the run is degraded).
    /// None when its final totals never arrived.
    pub stop_reason: Option<String>,
    /// Requests it resent after finding a pooled connection closed.
    pub connection_retries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub run_id: String,
    /// Wall-clock label only; all timing is monotonic.
    pub started_at: String,
    pub target: String,
    pub api: String,
    /// "completed", "interrupted", "degraded", "breached" or "failed" (no
    /// request succeeded).
    pub status: String,
    pub duration_s: f64,
    pub users: u64,
    /// Handed to the HTTP client after the warmup, plus those started in
    /// the warmup that ended after it: each ends as exactly one of ok,
    /// failed or incomplete.
    pub requests_started: u64,
    pub requests_total: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Started but cut before they ended (still open after the drain, or at
    /// an interrupt): neither ok nor failed; their e2e is censored.
    pub requests_incomplete: u64,
    pub success_rate: f64,
    /// Failed / (succeeded + failed).
    pub failure_rate: f64,
    pub errors: BTreeMap<String, u64>,
    /// Why requests failed, per error class: HTTP statuses and underlying
    /// causes (OS error, DNS failure...) with counts, and a few distinct
    /// example messages (status, `Location`, the body's first bytes, the
    /// error chain).
    pub error_details: ErrorDetails,
    /// Requests resent once on a new connection because the pooled one had
    /// been closed by the server before any response byte.
    pub connection_retries: u64,
    pub request_throughput: f64,
    /// Completed requests per second within every per-request `[slo]` limit
    /// (`None` when the plan has no per-request SLO).
    pub goodput: Option<f64>,
    pub requests_per_minute: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub avg_e2e_ms: Option<f64>,
    pub avg_ttft_ms: Option<f64>,
    pub avg_tpot_ms: Option<f64>,
    pub avg_itl_ms: Option<f64>,
    pub avg_input_tokens: Option<f64>,
    pub avg_output_tokens: Option<f64>,
    /// Where token counts came from: completed requests per source of their
    /// input count and of their output count, and chunks whose token count
    /// was assumed to be 1.
    pub token_source: TokenSource,
    pub metrics: BTreeMap<String, Distribution>,
    /// Latency distributions as curves for plots: per metric, [percentile,
    /// ms] points from the merged histograms (`CURVE_PERCENTILES`); a metric
    /// with no samples has no curve.
    pub percentile_curves: BTreeMap<String, Vec<[f64; 2]>>,
    /// Metrics this run could not observe (responses not streamed: the gaps
    /// between chunks); shown as "–", never as 0.
    pub not_observable: Vec<String>,
    pub agents: Vec<AgentReport>,
    pub max_start_skew_ms: Option<f64>,
    /// Worst clock-offset uncertainty (half the best probe round trip).
    pub max_clock_uncertainty_ms: Option<f64>,
    /// Seconds at the start left out of every figure (still in the timeline):
    /// the warmup rounded up to whole intervals.
    pub warmup_s: f64,
    /// Duration runs: how long requests in flight could still finish after
    /// the end before being cut (0: cut at once).
    pub drain_s: Option<f64>,
    /// Open-loop figures: offered vs achieved rate and how far behind the
    /// schedule the client fell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopReport>,
    /// GPU exporters and scraped server metrics, when `[monitor]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<crate::monitor::MonitorReport>,
    /// `[thresholds]` results; any failure makes the exit status 4.
    pub thresholds: Vec<barrage_common::thresholds::CheckResult>,
    pub notes: Vec<String>,
    pub timeline: Vec<IntervalRow>,
    /// Counts of the built-in simulator, when the run used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulator: Option<barrage_llm_sim::SimStats>,
    /// How far these numbers can be trusted (crate::accuracy).
    pub accuracy: crate::accuracy::Accuracy,
    /// Multi-turn runs (`[conversation]`): conversations and per-turn figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversations: Option<crate::turns::ConversationsReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenLoopReport {
    /// Planned arrivals per second (None for "inf").
    pub offered_rate: Option<f64>,
    /// Requests started per second.
    pub achieved_rate: f64,
    /// Planned arrivals never sent because the run ended first.
    pub arrivals_unsent: u64,
    pub schedule_lag_p50_ms: Option<f64>,
    pub schedule_lag_p99_ms: Option<f64>,
    pub schedule_lag_max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenSource {
    /// `input_tokens` per source: the server's usage, the prompt counted
    /// with the plan's tokenizer, or a word estimate.
    pub input: SourceCounts,
    /// `output_tokens` per source: the server's usage, the whole output text
    /// tokenized once with the plan's tokenizer, or one token per chunk.
    pub output: SourceCounts,
    pub chunk_tokens_assumed: u64,
    /// Chunks that carried reasoning text (counted as output too).
    pub reasoning_chunks: u64,
    /// How the controller counted input tokens with the plan's tokenizer
    /// (absent without one): on the chat template's rendering, the raw text
    /// (and why), or the prompt text as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_counting: Option<String>,
    /// The chat template file the input counts were rendered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl TokenSource {
    /// Records how the controller counted the prompts' input tokens.
    pub fn set_counting(&mut self, c: &crate::dataset::CountInfo) {
        self.input_counting = Some(c.how.clone());
        self.chat_template = c.chat_template.as_ref().map(|p| p.display().to_string());
    }
}

/// Inputs of a summary that do not come from the merge.
pub struct RunFacts {
    pub name: String,
    pub run_id: String,
    pub started_at: String,
    pub target: String,
    pub api: String,
    pub status: String,
    pub duration_s: f64,
    pub users: u64,
    /// Responses came as streams of chunks (see `PlanFile::streams`).
    pub streamed: bool,
}

/// The note of a run whose responses were not streamed.
pub const UNSTREAMED_NOTE: &str = "responses were not streamed: ttft = e2e (the first token arrives with all the others); chunk_gap, itl, tpot and max_stall cannot be observed and are not recorded";

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

impl Summary {
    pub fn build(
        facts: RunFacts,
        totals: &MetricSet,
        c: &barrage_common::metrics::Counters,
        agents: Vec<AgentReport>,
        timeline: Vec<IntervalRow>,
        notes: Vec<String>,
    ) -> Self {
        let d = facts.duration_s;
        let total = c.requests_ok + c.requests_failed;
        let mean_ms = |m: Metric| totals.get(m).mean().map(|v| v / 1000.0);
        let max_skew = agents
            .iter()
            .filter_map(|a| a.start_late_ms)
            .reduce(f64::max);
        let max_uncertainty = agents
            .iter()
            .filter_map(|a| a.clock_uncertainty_ms)
            .reduce(f64::max);
        let accuracy = crate::accuracy::assess(
            &timeline,
            crate::accuracy::Timing {
                max_start_skew_ms: max_skew,
                max_clock_uncertainty_ms: max_uncertainty,
            },
            c,
            totals.get(Metric::ReadLag),
            totals.get(Metric::Ttft).layout(),
            totals.get(Metric::OutputTokens).layout(),
        );
        Summary {
            name: facts.name,
            run_id: facts.run_id,
            started_at: facts.started_at,
            target: facts.target,
            api: facts.api,
            status: facts.status,
            duration_s: d,
            users: facts.users,
            requests_started: c.requests_started + c.requests_from_warmup,
            requests_total: total,
            requests_ok: c.requests_ok,
            requests_failed: c.requests_failed,
            requests_incomplete: c.requests_incomplete,
            success_rate: if total > 0 {
                c.requests_ok as f64 / total as f64
            } else {
                0.0
            },
            failure_rate: if total > 0 {
                c.requests_failed as f64 / total as f64
            } else {
                0.0
            },
            errors: ErrorClass::ALL
                .iter()
                .filter(|e| c.error(**e) > 0)
                .map(|e| (e.name().to_owned(), c.error(*e)))
                .collect(),
            error_details: c.error_details.clone(),
            connection_retries: c.connection_retries,
            request_throughput: per_s(c.requests_ok, d),
            goodput: None,
            requests_per_minute: per_s(c.requests_ok, d) * 60.0,
            output_throughput: per_s(c.output_tokens, d),
            total_token_throughput: per_s(c.input_tokens + c.output_tokens, d),
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            avg_e2e_ms: mean_ms(Metric::E2e),
            avg_ttft_ms: mean_ms(Metric::Ttft),
            avg_tpot_ms: mean_ms(Metric::Tpot),
            avg_itl_ms: mean_ms(Metric::Itl),
            avg_input_tokens: totals.get(Metric::InputTokens).mean(),
            avg_output_tokens: totals.get(Metric::OutputTokens).mean(),
            token_source: TokenSource {
                input: c.input_from,
                output: c.output_from,
                chunk_tokens_assumed: c.chunk_tokens_assumed,
                reasoning_chunks: c.reasoning_chunks,
                input_counting: None,
                chat_template: None,
            },
            metrics: Metric::ALL
                .iter()
                .map(|m| (m.name().to_owned(), Distribution::of(*m, totals.get(*m))))
                .collect(),
            percentile_curves: percentile_curves(totals),
            not_observable: Metric::ALL
                .iter()
                .filter(|m| !facts.streamed && !m.observable_unstreamed())
                .map(|m| m.name().to_owned())
                .collect(),
            agents,
            max_start_skew_ms: max_skew,
            max_clock_uncertainty_ms: max_uncertainty,
            warmup_s: 0.0,
            drain_s: None,
            open_loop: None,
            monitor: None,
            thresholds: Vec::new(),
            notes: unstreamed_note(facts.streamed)
                .into_iter()
                .chain(notes)
                .collect(),
            timeline,
            simulator: None,
            accuracy,
            conversations: None,
        }
    }
}

/// Metrics drawn as percentile curves.
pub const CURVE_METRICS: [Metric; 6] = [
    Metric::Ttft,
    Metric::Ttfo,
    Metric::ChunkGap,
    Metric::Itl,
    Metric::Tpot,
    Metric::E2e,
];

/// Percentiles of a curve: every 5 up to p90, then 8 per decade of nines
/// (log-spaced in 1/(1-q)) up to p99.99, then the exact max as p100.
pub fn curve_percentiles() -> Vec<f64> {
    let linear = (0..18).map(|i| f64::from(i) * 5.0);
    let nines = (8..=32).map(|k| 100.0 * (1.0 - 10f64.powf(-f64::from(k) / 8.0)));
    linear.chain(nines).chain(std::iter::once(100.0)).collect()
}

fn percentile_curves(totals: &MetricSet) -> BTreeMap<String, Vec<[f64; 2]>> {
    let qs = curve_percentiles();
    CURVE_METRICS
        .iter()
        .filter(|m| !totals.get(**m).is_empty())
        .map(|m| {
            let s = totals.get(*m);
            // Past 1 - 1/count every percentile is the max: the tail beyond
            // what the samples can resolve is left to the max point.
            let resolved = 1.0 - 1.0 / s.count as f64;
            let points = qs
                .iter()
                .filter(|p| **p >= 100.0 || **p / 100.0 <= resolved)
                .filter_map(|p| {
                    s.quantile(p / 100.0)
                        .map(|us| [round4(*p), us as f64 / 1000.0])
                })
                .collect();
            (m.name().to_owned(), points)
        })
        .collect()
}

/// Four decimals: p99.99 stays exact in JSON, float noise does not show.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn unstreamed_note(streamed: bool) -> Option<String> {
    (!streamed).then(|| UNSTREAMED_NOTE.to_owned())
}

/// What the console shows for a value that cannot exist in this run.
const UNOBSERVABLE: &str = "–";

/// Requests per source, each count on its own line.
fn render_token_sources(out: &mut String, t: &TokenSource, w: usize) {
    let line = |c: &SourceCounts, tokenizer: &str| {
        format!(
            "server usage {} / {tokenizer} {} / estimated {} requests",
            c.server, c.tokenizer, c.estimated
        )
    };
    let i = &t.input;
    let _ = writeln!(
        out,
        "  {:<w$}  server usage {} / tokenizer with chat template {} / tokenizer on raw text {} \
         / estimated {} requests",
        "Input tokens from",
        i.server,
        i.tokenizer_chat_template,
        i.tokenizer.saturating_sub(i.tokenizer_chat_template),
        i.estimated
    );
    let _ = writeln!(
        out,
        "  {:<w$}  {}; {} chunks assumed 1 token",
        "Output tokens from",
        line(&t.output, "tokenizer (whole text)"),
        t.chunk_tokens_assumed
    );
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The summary table and the percentile table, as printed on the console.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    render_headline(&mut out, s);
    render_percentiles(&mut out, s);
    render_error_details(&mut out, s);
    render_schedule(&mut out, s);
    if let Some(m) = &s.monitor {
        render_monitor(&mut out, m);
    }
    render_thresholds(&mut out, s);
    render_agent_problems(&mut out, s);
    if let Some(c) = &s.conversations {
        crate::turns::render(&mut out, c);
    }
    crate::accuracy::render(&mut out, &s.accuracy);
    for n in &s.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// The summary table: status, counts, throughputs, averages, errors, sources.
fn render_headline(out: &mut String, s: &Summary) {
    let rows: Vec<(&str, String)> = vec![
        ("Status", s.status.clone()),
        ("Target", format!("{} ({})", s.target, s.api)),
        ("Time taken (s)", format!("{:.2}", s.duration_s)),
        ("Concurrency (users)", s.users.to_string()),
        ("Agents", s.agents.len().to_string()),
        ("Total requests", s.requests_total.to_string()),
        ("Succeeded requests", s.requests_ok.to_string()),
        ("Failed requests", s.requests_failed.to_string()),
        ("Incomplete at stop", s.requests_incomplete.to_string()),
        ("Success rate (%)", format!("{:.2}", s.success_rate * 100.0)),
        (
            "Request throughput (req/s)",
            format!("{:.3}", s.request_throughput),
        ),
        (
            "Requests per minute",
            format!("{:.1}", s.requests_per_minute),
        ),
        (
            "Output throughput (tok/s)",
            format!("{:.2}", s.output_throughput),
        ),
        (
            "Total token throughput (tok/s)",
            format!("{:.2}", s.total_token_throughput),
        ),
        ("Avg e2e (ms)", opt(s.avg_e2e_ms, 2)),
        ("Avg ttft (ms)", opt(s.avg_ttft_ms, 2)),
        (
            "Avg tpot (ms)",
            observed(s, Metric::Tpot, opt(s.avg_tpot_ms, 3)),
        ),
        (
            "Avg itl (ms)",
            observed(s, Metric::Itl, opt(s.avg_itl_ms, 3)),
        ),
        ("Avg input tokens/request", opt(s.avg_input_tokens, 1)),
        ("Avg output tokens/request", opt(s.avg_output_tokens, 1)),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let _ = writeln!(out, "\nSummary: {}  (run {})", s.name, s.run_id);
    if let Some(line) = failure_headline(s) {
        let _ = writeln!(out, "  {line}");
    }
    for (k, v) in &rows {
        let _ = writeln!(out, "  {k:<w$}  {v}");
    }
    if !s.errors.is_empty() {
        let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "  {:<w$}  {}", "Errors by class", errs.join(" "));
    }
    if s.connection_retries > 0 {
        let _ = writeln!(
            out,
            "  {:<w$}  {} (resent once on a new connection: the server had closed the pooled one)",
            "Connection retries", s.connection_retries
        );
    }
    render_token_sources(out, &s.token_source, w);
}

/// One row per metric, one column per percentile ("–" where unobservable).
fn render_percentiles(out: &mut String, s: &Summary) {
    let _ = write!(
        out,
        "\nPercentiles (ms; output_tokens in tokens)\n  {:<14}",
        "metric"
    );
    for (name, _) in PERCENTILES {
        let _ = write!(out, "{name:>10}");
    }
    let _ = writeln!(out, "{:>10}", "count");
    for m in TABLE_METRICS {
        let Some(d) = s.metrics.get(m.name()) else {
            continue;
        };
        // Open-loop rows only when the run was open loop.
        if d.count == 0
            && matches!(
                m,
                Metric::ScheduleLag
                    | Metric::TtftIntended
                    | Metric::E2eIntended
                    | Metric::ServerLoad
                    | Metric::ServerPromptEval
                    | Metric::ServerEval
            )
        {
            continue;
        }
        let _ = write!(out, "  {:<14}", row_label(s, m));
        if s.not_observable.iter().any(|n| n == m.name()) {
            for _ in PERCENTILES {
                let _ = write!(out, "{UNOBSERVABLE:>10}");
            }
            let _ = writeln!(out, "{UNOBSERVABLE:>10}");
            continue;
        }
        for (name, _) in PERCENTILES {
            let _ = write!(
                out,
                "{:>10}",
                opt(
                    d.percentiles.get(name).copied(),
                    if m.is_latency() { 2 } else { 0 }
                )
            );
        }
        let _ = writeln!(out, "{:>10}", d.count);
    }
}

/// Open-loop delivery, start skew and the warmup left out.
fn render_schedule(out: &mut String, s: &Summary) {
    if let Some(o) = &s.open_loop {
        let _ = writeln!(
            out,
            "\nOpen loop: offered {} req/s, achieved {:.3} req/s, unsent arrivals {}, schedule lag p50 {} / p99 {} / max {} ms",
            opt(o.offered_rate, 3),
            o.achieved_rate,
            o.arrivals_unsent,
            opt(o.schedule_lag_p50_ms, 2),
            opt(o.schedule_lag_p99_ms, 2),
            opt(o.schedule_lag_max_ms, 2)
        );
    }
    let _ = writeln!(
        out,
        "  start skew max {} ms, clock uncertainty max {} ms{}",
        opt(s.max_start_skew_ms, 2),
        opt(s.max_clock_uncertainty_ms, 3),
        if s.warmup_s > 0.0 {
            format!(", warmup {:.1} s excluded", s.warmup_s)
        } else {
            String::new()
        }
    );
}

/// Each `[thresholds]` limit with its verdict.
fn render_thresholds(out: &mut String, s: &Summary) {
    if !s.thresholds.is_empty() {
        let _ = writeln!(out, "\nThresholds");
        for t in &s.thresholds {
            let _ = writeln!(
                out,
                "  {:<4} {:<24} limit {:<10} actual {}",
                if t.passed { "ok" } else { "FAIL" },
                t.key,
                t.limit,
                opt(t.actual, 3)
            );
        }
    }
}

/// Lost agents and agents whose totals did not add up.
fn render_agent_problems(out: &mut String, s: &Summary) {
    for a in s
        .agents
        .iter()
        .filter(|a| a.lost.is_some() || a.totals_mismatch.is_some())
    {
        if let Some(why) = &a.lost {
            let _ = writeln!(
                out,
                "\n  LOST agent {} ({}), carrying {} users: {why}",
                a.id, a.addr, a.users
            );
        }
        if let Some(why) = &a.totals_mismatch {
            let _ = writeln!(out, "\n  MISMATCH agent {} ({}): {why}", a.id, a.addr);
        }
    }
}

/// `shown`, or "–" when this run could not observe `m`.
fn observed(s: &Summary, m: Metric, shown: String) -> String {
    if s.not_observable.iter().any(|n| n == m.name()) {
        UNOBSERVABLE.to_owned()
    } else {
        shown
    }
}

/// The metric's name; `ttft` says when it is the e2e of one body.
fn row_label(s: &Summary, m: Metric) -> String {
    if m == Metric::Ttft && !s.not_observable.is_empty() {
        "ttft (= e2e)".to_owned()
    } else {
        m.name().to_owned()
    }
}

/// The line at the top of the summary when any request failed.
fn failure_headline(s: &Summary) -> Option<String> {
    if s.requests_failed == 0 {
        return None;
    }
    if s.requests_ok == 0 {
        return Some(format!(
            "FAILED: all {} requests failed (see \"Why requests failed\" below)",
            s.requests_failed
        ));
    }
    Some(format!(
        "{:.1} % of requests failed ({} of {})",
        s.failure_rate * 100.0,
        s.requests_failed,
        s.requests_total
    ))
}

/// Per error class: the statuses and causes seen, with counts, and a few
/// example messages.
fn render_error_details(out: &mut String, s: &Summary) {
    if s.error_details.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nWhy requests failed");
    for (class, d) in &s.error_details.0 {
        let _ = writeln!(
            out,
            "  {} ({} requests)",
            class.name(),
            s.errors.get(class.name()).copied().unwrap_or(0)
        );
        if !d.statuses.is_empty() {
            let seen: Vec<String> = d
                .statuses
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            let _ = writeln!(out, "    HTTP status: {}", seen.join(", "));
        }
        for (cause, n) in &d.causes {
            let _ = writeln!(out, "    cause ×{n}: {cause}");
        }
        for e in &d.examples {
            let _ = writeln!(out, "    e.g. {e}");
        }
    }
}

fn stat(s: Option<&barrage_gpu_exporter::summary::Stat>, digits: usize) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| {
            format!(
                "{:.digits$} / {:.digits$} / {:.digits$}",
                s.avg, s.p95, s.max
            )
        },
    )
}

fn render_monitor(out: &mut String, m: &crate::monitor::MonitorReport) {
    for e in &m.exporters {
        let _ = writeln!(
            out,
            "\nGPUs of {} (avg / p95 / max over {} samples)",
            e.addr, e.summary.samples
        );
        for g in &e.summary.gpus {
            let _ = writeln!(
                out,
                "  gpu {} {:<20} util % {:<18} mem % {:<18} power W {:<20} energy {} J",
                g.index,
                g.name,
                stat(g.utilization_gpu_pct.as_ref(), 1),
                stat(g.memory_used_pct.as_ref(), 1),
                stat(g.power_w.as_ref(), 0),
                opt(g.energy_j, 0)
            );
        }
        if let Some(h) = &e.summary.host {
            let _ = writeln!(
                out,
                "  host {:<24} cpu % {:<18} mem % {}",
                h.hostname,
                stat(Some(&h.cpu_percent), 1),
                stat(h.memory_used_pct.as_ref(), 1)
            );
        }
    }
    if let Some(t) = m.output_tokens_per_joule {
        let _ = writeln!(
            out,
            "  output tokens per joule: {t:.3} ({} J in all)",
            opt(m.gpu_energy_j, 0)
        );
    }
    for (name, v) in &m.server_metrics {
        let _ = writeln!(
            out,
            "  server {name}: avg {:.3} max {:.3} last {:.3} ({} scrapes; {} of {} series)",
            v.avg,
            v.max,
            v.last,
            v.samples,
            v.aggregation.name(),
            v.series
        );
    }
}

/// Writes summary.json, timeline.csv and the plan as run into `dir`.
pub fn write(dir: &Path, s: &Summary, plan_toml: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(s).map_err(std::io::Error::other)?;
    let summary = dir.join("summary.json");
    write_atomic(&summary, json.as_bytes())?;
    let mut csv = String::from(
        "index,t_s,agents_reporting,requests_ok,requests_failed,output_tokens,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,e2e_p50_ms,e2e_p99_ms,max_agent_cpu_percent,max_scheduler_lag_ms,in_flight,gpu_util_pct,gpu_mem_pct,gpu_power_w\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
    for r in &s.timeline {
        let _ = writeln!(
            csv,
            "{},{:.3},{},{},{},{},{},{},{},{},{},{},{:.1},{:.3},{},{},{},{}",
            r.index,
            r.t_s,
            r.agents_reporting,
            r.requests_ok,
            r.requests_failed,
            r.output_tokens,
            f(r.ttft_p50_ms),
            f(r.ttft_p99_ms),
            f(r.itl_p50_ms),
            f(r.itl_p99_ms),
            f(r.e2e_p50_ms),
            f(r.e2e_p99_ms),
            r.max_agent_cpu_percent,
            r.max_scheduler_lag_ms,
            r.in_flight,
            f(r.monitor.gpu_util_pct),
            f(r.monitor.gpu_mem_pct),
            f(r.monitor.gpu_power_w)
        );
    }
    let timeline = dir.join("timeline.csv");
    write_atomic(&timeline, csv.as_bytes())?;
    let plan = dir.join("plan.toml");
    write_atomic(&plan, plan_toml.as_bytes())?;
    Ok(vec![summary, timeline, plan])
}

/// Write-then-rename, so a crash never leaves a half-written summary.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
