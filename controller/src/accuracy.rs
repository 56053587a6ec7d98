//! The accuracy budget: how far a run's numbers can be trusted, from what the
//! run itself measured (summary.json `accuracy`, and the "Accuracy budget"
//! section of the console summary).
//!
//! Each part names a way the figures can be wrong: a generator too busy to
//! send and time requests on schedule, agents that started apart or whose
//! clocks are uncertain, the histograms' own resolution, token counts that
//! were estimated, and requests cut by the stop. The verdict names the worst.

use barrage_common::metrics::{Counters, Layout, Series, SourceCounts};
use serde::{Deserialize, Serialize};

use crate::merge::IntervalRow;

/// An agent using more than this share of its machine's cores in an interval
/// makes that interval generator-bound (the same bound as the saturation
/// note: requests queue in the client, and the latencies it times grow).
pub const CPU_BOUND_SHARE: f64 = 0.9;
/// An agent whose load runtime woke this much later than asked in an
/// interval makes it generator-bound: its timestamps, and its sends, were
/// that late. One period of the agent's lag probe (50 ms).
pub const LAG_BOUND_MS: f64 = 50.0;
/// An agent reading its responses more than this after the kernel received
/// them (`read_lag` p99 of an interval) makes the interval generator-bound:
/// kernel timestamps keep each chunk's time, but an agent this far behind
/// gets several chunks in one read and sends its next requests late.
pub const READ_LAG_BOUND_MS: f64 = 10.0;
/// Start skew or clock uncertainty above this is worth a warning (the same
/// bound as the late-start note).
pub const TIMING_BOUND_MS: f64 = 50.0;
/// Cut requests above this share of those started are worth a warning.
pub const CUT_BOUND_SHARE: f64 = 0.01;
/// A histogram relative error above this is worth a warning (`sigfig` 1).
pub const PRECISION_BOUND: f64 = 0.01;

/// How far the run's numbers can be trusted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accuracy {
    /// "trustworthy", or "read with care: " and the worst concern.
    pub verdict: String,
    /// Every concern found, worst first (empty when trustworthy).
    pub concerns: Vec<String>,
    pub generator: GeneratorLoad,
    /// Where response arrival times came from, and the agents' read lag.
    #[serde(default)]
    pub arrivals: Arrivals,
    pub timing: Timing,
    pub histograms: Precision,
    pub token_counts: TokenCounts,
    pub cut_at_stop: CutAtStop,
}

/// The load generators' own load, per interval after the warmup (the
/// timeline holds every interval's values: `max_agent_cpu_percent`,
/// `max_agent_cpu_share`, `max_scheduler_lag_ms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GeneratorLoad {
    /// Intervals assessed (the timeline's rows after the warmup).
    pub intervals: u64,
    /// The busiest agent's CPU per interval (100 = one core): median and
    /// worst over the intervals.
    pub cpu_percent_p50: Option<f64>,
    pub cpu_percent_max: Option<f64>,
    /// The same as a share of that agent's cores (1.0 = all busy).
    pub cpu_share_p50: Option<f64>,
    pub cpu_share_max: Option<f64>,
    /// The latest wake-up of any agent's load runtime per interval (ms):
    /// median and worst over the intervals.
    pub scheduler_lag_ms_p50: Option<f64>,
    pub scheduler_lag_ms_max: Option<f64>,
    /// When an interval counts as generator-bound.
    pub rule: String,
    /// Indexes (timeline `index`) of the generator-bound intervals.
    pub bound_intervals: Vec<u64>,
    pub bound_count: u64,
    /// Generator-bound intervals / intervals assessed (0 when none).
    pub bound_share: f64,
}

/// Where the times of response bytes came from. With kernel receive
/// timestamps a chunk is timed when it reached the agent's socket, however
/// late the busy agent read it; with read times that wait is inside TTFT,
/// ITL and e2e.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Arrivals {
    /// Requests timed by the kernel's receive timestamps (plain http://
    /// targets on Linux).
    pub kernel_requests: u64,
    /// Requests timed by the agent's read time (TLS, HTTP/2, other systems).
    pub read_requests: u64,
    /// The agents' own scheduling lag over the step (ms): read time −
    /// kernel receive time, per piece of response read (`read_lag`).
    pub read_lag_ms_p50: Option<f64>,
    pub read_lag_ms_p99: Option<f64>,
    pub read_lag_ms_max: Option<f64>,
    pub note: String,
}

impl Arrivals {
    fn of(c: &Counters, read_lag: &Series) -> Self {
        let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
        let (k, r) = (c.arrivals_kernel, c.arrivals_read);
        let note = match (k, r) {
            (0, 0) => "no response arrived".to_owned(),
            (_, 0) => "every response timed by the kernel's receive timestamps: a chunk that \
                       waited for a busy agent counts when it arrived, not when it was read"
                .to_owned(),
            (0, _) => "every response timed when the agent read it (no kernel receive \
                       timestamps: TLS, HTTP/2 or not Linux): a busy agent's own delay is \
                       inside the latencies"
                .to_owned(),
            _ => format!(
                "{k} responses timed by the kernel's receive timestamps, {r} when the agent \
                 read them (TLS, HTTP/2 or not Linux)"
            ),
        };
        Self {
            kernel_requests: k,
            read_requests: r,
            read_lag_ms_p50: ms(read_lag.quantile(0.5)),
            read_lag_ms_p99: ms(read_lag.quantile(0.99)),
            read_lag_ms_max: ms((!read_lag.is_empty()).then_some(read_lag.max)),
            note,
        }
    }
}

/// How well the agents' timing lines up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    /// Latest agent start after the agreed moment (ms); `max_start_skew_ms`.
    pub max_start_skew_ms: Option<f64>,
    /// Worst clock-offset uncertainty (ms); `max_clock_uncertainty_ms`.
    pub max_clock_uncertainty_ms: Option<f64>,
}

/// The histograms' resolution (HdrHistogram, `[metrics] sigfig`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Precision {
    /// Significant digits every histogram keeps.
    pub sigfig: u8,
    /// Largest relative error of a recorded value, and so of every
    /// percentile (they are reported at the top of their bucket): 1 / the
    /// half sub-bucket count, at most 10^-sigfig.
    pub relative_error: f64,
    /// Latencies below this are not told apart (ms).
    pub latency_lowest_discernible_ms: f64,
    /// Latencies above this are clamped in the histograms (ms); max and
    /// mean stay exact.
    pub latency_highest_trackable_ms: f64,
    /// Token counts below this are not told apart.
    pub tokens_lowest_discernible: u64,
}

/// Where the token counts came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenCounts {
    pub input: SourceShares,
    pub output: SourceShares,
    /// Stream chunks whose token count was assumed to be 1.
    pub chunk_tokens_assumed: u64,
    /// Client count vs server usage on the same request.
    pub client_server_mismatch: Mismatch,
}

/// Completed requests by the source of one token count, as shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceShares {
    /// Completed requests counted.
    pub requests: u64,
    /// Counted by the server's usage report.
    pub server: f64,
    /// Counted with the plan's tokenizer.
    pub tokenizer: f64,
    /// Estimated (input: words; output: one token per chunk).
    pub estimated: f64,
}

/// The client's input count against the server's usage, on the completed
/// requests that had both (the server reported usage and the plan's
/// tokenizer counted the prompt).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mismatch {
    /// Whether any request was counted both ways.
    pub measured: bool,
    pub note: String,
    /// Requests counted both ways, and those whose counts differed.
    #[serde(default)]
    pub requests_compared: u64,
    #[serde(default)]
    pub requests_mismatched: u64,
    /// Input tokens over the compared requests, by each count.
    #[serde(default)]
    pub client_input_tokens: u64,
    #[serde(default)]
    pub server_input_tokens: u64,
}

impl Mismatch {
    fn of(c: &barrage_common::metrics::InputCheck) -> Self {
        let note = if c.compared == 0 {
            MISMATCH_NOTE.to_owned()
        } else if c.mismatched == 0 {
            format!(
                "the tokenizer's input count equalled the server's on all {} requests counted \
                 both ways",
                c.compared
            )
        } else {
            format!(
                "the tokenizer's input count differed from the server's on {} of {} requests \
                 counted both ways ({} vs {} tokens): the figures use the server's",
                c.mismatched, c.compared, c.client_tokens, c.server_tokens
            )
        };
        Self {
            measured: c.compared > 0,
            note,
            requests_compared: c.compared,
            requests_mismatched: c.mismatched,
            client_input_tokens: c.client_tokens,
            server_input_tokens: c.server_tokens,
        }
    }
}

/// Requests the stop cut short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CutAtStop {
    pub requests_started: u64,
    /// Started but cut before they ended (e2e censored, neither ok nor failed).
    pub requests_incomplete: u64,
    /// requests_incomplete / requests_started (0 when none started).
    pub incomplete_share: f64,
    /// Open loop: planned arrivals never sent because the run ended first.
    pub arrivals_unsent: u64,
}

const MISMATCH_NOTE: &str =
    "not measured: no request was counted both ways (the server's usage and the plan's tokenizer)";

/// The budget of a step from what the merge measured: its timeline, the
/// agents' timing, its counters (`c`) and its histograms' layouts.
pub fn assess(
    timeline: &[IntervalRow],
    timing: Timing,
    c: &Counters,
    read_lag: &Series,
    latency: Layout,
    tokens: Layout,
) -> Accuracy {
    let generator = generator_load(timeline);
    let arrivals = Arrivals::of(c, read_lag);
    let histograms = Precision {
        sigfig: latency.sigfig,
        relative_error: relative_error(latency.sigfig),
        latency_lowest_discernible_ms: latency.lowest as f64 / 1000.0,
        latency_highest_trackable_ms: latency.highest as f64 / 1000.0,
        tokens_lowest_discernible: tokens.lowest,
    };
    let token_counts = TokenCounts {
        input: shares(&c.input_from),
        output: shares(&c.output_from),
        chunk_tokens_assumed: c.chunk_tokens_assumed,
        client_server_mismatch: Mismatch::of(&c.input_check),
    };
    // As summary.requests_started: each of these ends ok, failed or cut.
    let started = c.requests_started.saturating_add(c.requests_from_warmup);
    let cut_at_stop = CutAtStop {
        requests_started: started,
        requests_incomplete: c.requests_incomplete,
        incomplete_share: ratio(c.requests_incomplete, started),
        arrivals_unsent: c.arrivals_unsent,
    };
    let mut a = Accuracy {
        verdict: String::new(),
        concerns: Vec::new(),
        generator,
        arrivals,
        timing,
        histograms,
        token_counts,
        cut_at_stop,
    };
    a.concerns = concerns(&a);
    a.verdict = match a.concerns.first() {
        None => "trustworthy".to_owned(),
        Some(worst) if a.concerns.len() == 1 => format!("read with care: {worst}"),
        Some(worst) => format!(
            "read with care: {worst} (and {} more below)",
            a.concerns.len() - 1
        ),
    };
    a
}

/// True when the interval's generator could not keep up (see the bounds).
pub fn generator_bound(r: &IntervalRow) -> bool {
    r.max_agent_cpu_share > CPU_BOUND_SHARE
        || r.max_scheduler_lag_ms > LAG_BOUND_MS
        || r.read_lag_p99_ms.is_some_and(|ms| ms > READ_LAG_BOUND_MS)
}

fn generator_load(timeline: &[IntervalRow]) -> GeneratorLoad {
    let rows: Vec<&IntervalRow> = timeline.iter().filter(|r| !r.warmup).collect();
    let col = |f: fn(&IntervalRow) -> f64| rows.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let cpu = col(|r| r.max_agent_cpu_percent);
    let share = col(|r| r.max_agent_cpu_share);
    let lag = col(|r| r.max_scheduler_lag_ms);
    let bound_intervals: Vec<u64> = rows
        .iter()
        .filter(|r| generator_bound(r))
        .map(|r| r.index)
        .collect();
    let bound_count = bound_intervals.len() as u64;
    GeneratorLoad {
        intervals: rows.len() as u64,
        cpu_percent_p50: median(&cpu),
        cpu_percent_max: max(&cpu),
        cpu_share_p50: median(&share),
        cpu_share_max: max(&share),
        scheduler_lag_ms_p50: median(&lag),
        scheduler_lag_ms_max: max(&lag),
        rule: format!(
            "an agent above {:.0} % of its cores, its load runtime waking more than \
             {LAG_BOUND_MS:.0} ms late, or its reads trailing the kernel's receive time by more \
             than {READ_LAG_BOUND_MS:.0} ms at p99",
            CPU_BOUND_SHARE * 100.0
        ),
        bound_intervals,
        bound_count,
        bound_share: ratio(bound_count, rows.len() as u64),
    }
}

/// The largest relative bucket width of an HdrHistogram with `sigfig`
/// significant digits: 1 / 2^(ceil(log2(2 * 10^sigfig)) - 1).
pub fn relative_error(sigfig: u8) -> f64 {
    let single_unit = 2.0 * 10f64.powi(i32::from(sigfig));
    let magnitude = single_unit.log2().ceil() - 1.0;
    1.0 / 2f64.powf(magnitude.max(0.0))
}

fn shares(c: &SourceCounts) -> SourceShares {
    let n = c.server + c.tokenizer + c.estimated;
    SourceShares {
        requests: n,
        server: ratio(c.server, n),
        tokenizer: ratio(c.tokenizer, n),
        estimated: ratio(c.estimated, n),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b > 0 { a as f64 / b as f64 } else { 0.0 }
}

/// Nearest-rank median (the lower middle of an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().filter(|x| x.is_finite()).reduce(f64::max)
}

fn percent(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// Every concern, worst first: a busy generator inflates latencies, an
/// estimated count skews throughput, timing shifts intervals, cut requests
/// censor e2e, a coarse histogram blurs every percentile.
fn concerns(a: &Accuracy) -> Vec<String> {
    let mut out = Vec::new();
    let g = &a.generator;
    if g.bound_count > 0 {
        out.push(format!(
            "generator-bound in {} of {} intervals ({}): latencies there include the client's own delay",
            g.bound_count,
            g.intervals,
            percent(g.bound_share)
        ));
    }
    for (what, s) in [
        ("output", &a.token_counts.output),
        ("input", &a.token_counts.input),
    ] {
        if s.estimated > 0.0 {
            out.push(format!(
                "{what} tokens of {} of requests were estimated, not counted",
                percent(s.estimated)
            ));
        }
    }
    let t = &a.timing;
    if let Some(ms) = t.max_start_skew_ms.filter(|ms| *ms > TIMING_BOUND_MS) {
        out.push(format!(
            "agents started up to {ms:.0} ms apart: intervals do not line up"
        ));
    }
    if let Some(ms) = t
        .max_clock_uncertainty_ms
        .filter(|ms| *ms > TIMING_BOUND_MS)
    {
        out.push(format!("agent clocks uncertain by up to {ms:.0} ms"));
    }
    let cut = &a.cut_at_stop;
    if cut.incomplete_share > CUT_BOUND_SHARE {
        out.push(format!(
            "{} of started requests ({}) were cut at stop: their e2e is censored",
            percent(cut.incomplete_share),
            cut.requests_incomplete
        ));
    }
    if cut.arrivals_unsent > 0 {
        out.push(format!(
            "{} planned arrivals were never sent: the offered rate was not fully delivered",
            cut.arrivals_unsent
        ));
    }
    if a.histograms.relative_error > PRECISION_BOUND {
        out.push(format!(
            "histograms keep {} significant digit(s): percentiles are within {:.1} %",
            a.histograms.sigfig,
            a.histograms.relative_error * 100.0
        ));
    }
    out
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{:.digits$}", x * scale))
}

/// Interval indexes, the first 20 of them.
fn index_list(v: &[u64]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = v.iter().take(SHOWN).map(u64::to_string).collect();
    if v.len() > SHOWN {
        s.push(format!("… {} more", v.len() - SHOWN));
    }
    s.join(", ")
}

fn source_line(s: &SourceShares) -> String {
    if s.requests == 0 {
        return "no completed request".to_owned();
    }
    format!(
        "server {} / tokenizer {} / estimated {}",
        percent(s.server),
        percent(s.tokenizer),
        percent(s.estimated)
    )
}

/// The "Accuracy budget" section of the console summary.
pub fn render(out: &mut String, a: &Accuracy) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\nAccuracy budget: {}", a.verdict);
    let g = &a.generator;
    let bound = if g.bound_count == 0 {
        format!("none of {}", g.intervals)
    } else {
        format!(
            "{} of {} ({}): {}",
            g.bound_count,
            g.intervals,
            percent(g.bound_share),
            index_list(&g.bound_intervals)
        )
    };
    let _ = writeln!(
        out,
        "  {:<13} busiest agent CPU p50 {} / max {} % of its cores; schedule lag p50 {} / max {} ms; generator-bound intervals: {bound}",
        "generator",
        opt(g.cpu_share_p50, 100.0, 0),
        opt(g.cpu_share_max, 100.0, 0),
        opt(g.scheduler_lag_ms_p50, 1.0, 1),
        opt(g.scheduler_lag_ms_max, 1.0, 1),
    );
    let ar = &a.arrivals;
    let _ = writeln!(
        out,
        "  {:<13} {}; agent read lag p50 {} / p99 {} / max {} ms",
        "arrivals",
        ar.note,
        opt(ar.read_lag_ms_p50, 1.0, 2),
        opt(ar.read_lag_ms_p99, 1.0, 2),
        opt(ar.read_lag_ms_max, 1.0, 2),
    );
    let _ = writeln!(
        out,
        "  {:<13} start skew max {} ms, clock uncertainty max {} ms",
        "timing",
        opt(a.timing.max_start_skew_ms, 1.0, 2),
        opt(a.timing.max_clock_uncertainty_ms, 1.0, 3)
    );
    let h = &a.histograms;
    let _ = writeln!(
        out,
        "  {:<13} {} significant digits: values within {:.2} %; latencies below {} ms not told apart",
        "histograms",
        h.sigfig,
        h.relative_error * 100.0,
        h.latency_lowest_discernible_ms
    );
    let t = &a.token_counts;
    let m = &t.client_server_mismatch;
    let _ = writeln!(
        out,
        "  {:<13} input {}; output {}; client/server input mismatch {}",
        "token counts",
        source_line(&t.input),
        source_line(&t.output),
        if m.measured {
            format!(
                "{} of {} requests ({} vs {} tokens)",
                m.requests_mismatched,
                m.requests_compared,
                m.client_input_tokens,
                m.server_input_tokens
            )
        } else {
            "not measured".to_owned()
        }
    );
    let c = &a.cut_at_stop;
    let _ = writeln!(
        out,
        "  {:<13} {} of {} started requests ({:.1} %); {} planned arrivals unsent",
        "cut at stop",
        c.requests_incomplete,
        c.requests_started,
        c.incomplete_share * 100.0,
        c.arrivals_unsent
    );
    for more in a.concerns.iter().skip(1) {
        let _ = writeln!(out, "  also: {more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::metrics::{Layouts, Series};

    fn row(index: u64, cpu_share: f64, lag_ms: f64) -> IntervalRow {
        IntervalRow {
            max_agent_cpu_percent: cpu_share * 200.0,
            max_agent_cpu_share: cpu_share,
            max_scheduler_lag_ms: lag_ms,
            ..IntervalRow::sample(index)
        }
    }

    fn counted(ok: u64) -> Counters {
        let mut c = Counters {
            requests_started: ok,
            requests_ok: ok,
            ..Counters::default()
        };
        c.input_from.server = ok;
        c.output_from.server = ok;
        c
    }

    fn budget(timeline: &[IntervalRow], c: &Counters) -> Accuracy {
        let l = Layouts::default();
        assess(
            timeline,
            Timing {
                max_start_skew_ms: Some(0.4),
                max_clock_uncertainty_ms: Some(0.02),
            },
            c,
            &Series::new(l.latency).expect("layout"),
            l.latency,
            l.tokens,
        )
    }

    #[test]
    fn a_calm_run_is_trustworthy() {
        let rows: Vec<IntervalRow> = (0..5).map(|i| row(i, 0.2, 1.0)).collect();
        let a = budget(&rows, &counted(50));
        assert_eq!(a.verdict, "trustworthy");
        assert!(a.concerns.is_empty());
        assert_eq!(a.generator.intervals, 5);
        assert_eq!(a.generator.bound_count, 0);
        assert_eq!(a.generator.cpu_share_p50, Some(0.2));
        assert_eq!(a.token_counts.output.server, 1.0);
        assert!(!a.token_counts.client_server_mismatch.measured);
    }

    #[test]
    fn reads_trailing_the_kernel_flag_their_interval_and_arrivals_say_where_times_came_from() {
        let mut rows: Vec<IntervalRow> = (0..4).map(|i| row(i, 0.2, 1.0)).collect();
        rows[2].read_lag_p99_ms = Some(READ_LAG_BOUND_MS + 5.0);
        let mut c = counted(40);
        c.arrivals_kernel = 30;
        c.arrivals_read = 10;
        let l = Layouts::default();
        let mut lag = Series::new(l.latency).expect("layout");
        for us in [100, 200, 300, 15_000] {
            lag.record(us);
        }
        let a = assess(
            &rows,
            Timing {
                max_start_skew_ms: None,
                max_clock_uncertainty_ms: None,
            },
            &c,
            &lag,
            l.latency,
            l.tokens,
        );
        assert_eq!(a.generator.bound_intervals, vec![2]);
        assert!(a.generator.rule.contains("kernel's receive time"));
        assert_eq!(a.arrivals.kernel_requests, 30);
        assert_eq!(a.arrivals.read_requests, 10);
        assert!(a.arrivals.note.contains("30 responses timed by the kernel"));
        assert_eq!(a.arrivals.read_lag_ms_max, Some(15.0));
        let mut out = String::new();
        render(&mut out, &a);
        assert!(out.contains("agent read lag p50 0.20"), "{out}");
    }

    #[test]
    fn a_saturated_agent_flags_its_intervals_and_the_verdict() {
        // Intervals 2 and 3: one agent above 90 % of its cores; interval 5:
        // its runtime woke 80 ms late. The warmup interval 0 is not judged.
        let mut rows = vec![row(0, 0.99, 0.0)];
        rows[0].warmup = true;
        rows.extend([
            row(1, 0.3, 1.0),
            row(2, 0.97, 4.0),
            row(3, 0.95, 2.0),
            row(4, 0.5, 1.0),
            row(5, 0.4, 80.0),
        ]);
        let a = budget(&rows, &counted(50));
        let g = &a.generator;
        assert_eq!(g.bound_intervals, vec![2, 3, 5]);
        assert_eq!((g.bound_count, g.intervals), (3, 5));
        assert!((g.bound_share - 0.6).abs() < 1e-9);
        assert_eq!(g.cpu_share_max, Some(0.97));
        assert_eq!(g.scheduler_lag_ms_max, Some(80.0));
        assert_eq!(g.scheduler_lag_ms_p50, Some(2.0));
        assert!(
            a.verdict
                .starts_with("read with care: generator-bound in 3 of 5"),
            "{}",
            a.verdict
        );
        let mut text = String::new();
        render(&mut text, &a);
        assert!(
            text.contains("generator-bound intervals: 3 of 5 (60 %): 2, 3, 5"),
            "{text}"
        );
    }

    #[test]
    fn cut_requests_unsent_arrivals_and_estimates_are_concerns() {
        let mut c = counted(90);
        c.requests_started = 100;
        c.requests_incomplete = 10;
        c.arrivals_unsent = 7;
        c.output_from.server = 60;
        c.output_from.estimated = 30;
        let a = budget(&[row(0, 0.1, 1.0)], &c);
        assert_eq!(a.cut_at_stop.requests_incomplete, 10);
        assert!((a.cut_at_stop.incomplete_share - 0.1).abs() < 1e-9);
        assert_eq!(a.cut_at_stop.arrivals_unsent, 7);
        assert!((a.token_counts.output.estimated - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(a.concerns.len(), 3, "{:?}", a.concerns);
        assert!(a.verdict.contains("output tokens of 33 %"), "{}", a.verdict);
        assert!(a.verdict.ends_with("(and 2 more below)"), "{}", a.verdict);
        assert!(a.concerns[1].contains("were cut at stop"));
        assert!(a.concerns[2].contains("7 planned arrivals"));
    }

    #[test]
    fn relative_error_is_the_histograms_widest_bucket() {
        for sigfig in 1..=5u8 {
            let layout = Layout {
                sigfig,
                ..Layout::LATENCY_US
            };
            let h = Series::new(layout).expect("layout").hist;
            // Small values are kept exactly (one value per bucket)...
            assert_eq!(h.equivalent_range(2 * 10u64.pow(u32::from(sigfig)) - 1), 1);
            // ...and past that region every bucket is at most this wide,
            // relative to its lowest value, and some bucket is exactly so.
            let widest = (20..40)
                .map(|k| {
                    let v = (1u64 << k) + 1;
                    h.equivalent_range(v) as f64 / h.lowest_equivalent(v) as f64
                })
                .fold(0.0, f64::max);
            assert_eq!(widest, relative_error(sigfig), "sigfig {sigfig}");
            assert!(relative_error(sigfig) <= 10f64.powi(-i32::from(sigfig)));
        }
        let coarse = Layout {
            sigfig: 1,
            ..Layout::LATENCY_US
        };
        let l = Layouts::default();
        let a = assess(
            &[],
            Timing {
                max_start_skew_ms: None,
                max_clock_uncertainty_ms: None,
            },
            &counted(1),
            &Series::new(l.latency).expect("layout"),
            coarse,
            l.tokens,
        );
        assert!(a.verdict.contains("1 significant digit"), "{}", a.verdict);
        assert_eq!(a.histograms.latency_lowest_discernible_ms, 0.001);
    }
}
