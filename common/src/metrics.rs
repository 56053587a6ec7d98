//! The metric model: one HdrHistogram per metric name of METRICS.md, with
//! exact count/sum/min/max beside it (V2 encoding restates min/max to bucket
//! edges), counters by error class, and their exact merge and wire encoding.

use std::fmt;
use std::sync::OnceLock;

use barrage_proto::agent::v1 as pb;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::{CreationError, Histogram};
use serde::{Deserialize, Serialize};

use crate::error_detail::{ErrorDetails, RequestError};

/// Every histogram metric an agent records. Latencies are in microseconds,
/// token counts in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Ttft,
    Ttfo,
    ChunkGap,
    Itl,
    Tpot,
    E2e,
    MaxStall,
    InputTokens,
    OutputTokens,
    ScheduleLag,
    TtftIntended,
    E2eIntended,
    /// Server-reported (Ollama `load_duration`): a cold model load shows here.
    ServerLoad,
    /// Server-reported (Ollama `prompt_eval_duration`).
    ServerPromptEval,
    /// Server-reported (Ollama `eval_duration`).
    ServerEval,
    /// The agent's own scheduling lag: per piece of response, the time it
    /// was read − the time the kernel received it (kernel-stamped only).
    ReadLag,
}

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::Ttft,
        Metric::Ttfo,
        Metric::ChunkGap,
        Metric::Itl,
        Metric::Tpot,
        Metric::E2e,
        Metric::MaxStall,
        Metric::InputTokens,
        Metric::OutputTokens,
        Metric::ScheduleLag,
        Metric::TtftIntended,
        Metric::E2eIntended,
        Metric::ServerLoad,
        Metric::ServerPromptEval,
        Metric::ServerEval,
        Metric::ReadLag,
    ];

    /// The one name used in proto fields, JSON keys and report labels.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::Ttfo => "ttfo",
            Metric::ChunkGap => "chunk_gap",
            Metric::Itl => "itl",
            Metric::Tpot => "tpot",
            Metric::E2e => "e2e",
            Metric::MaxStall => "max_stall",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::ScheduleLag => "schedule_lag",
            Metric::TtftIntended => "ttft_intended",
            Metric::E2eIntended => "e2e_intended",
            Metric::ServerLoad => "server_load",
            Metric::ServerPromptEval => "server_prompt_eval",
            Metric::ServerEval => "server_eval",
            Metric::ReadLag => "read_lag",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// False for the metrics made of gaps between chunks (`chunk_gap`,
    /// `itl`, `tpot`, `max_stall`): a response that is not streamed has none.
    pub fn observable_unstreamed(self) -> bool {
        !matches!(
            self,
            Metric::ChunkGap | Metric::Itl | Metric::Tpot | Metric::MaxStall
        )
    }

    pub fn is_latency(self) -> bool {
        !matches!(self, Metric::InputTokens | Metric::OutputTokens)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Histogram bounds; one layout per run, set by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub lowest: u64,
    pub highest: u64,
    pub sigfig: u8,
}

impl Layout {
    /// Latencies: 1 µs to 1 h at 3 significant digits (~0.1 % value error).
    pub const LATENCY_US: Layout = Layout {
        lowest: 1,
        highest: 3_600_000_000,
        sigfig: 3,
    };
    /// Token counts: 1 to 10 million.
    pub const TOKENS: Layout = Layout {
        lowest: 1,
        highest: 10_000_000,
        sigfig: 3,
    };

    pub fn to_proto(self) -> pb::HistogramLayout {
        pb::HistogramLayout {
            lowest: self.lowest,
            highest: self.highest,
            sigfig: u32::from(self.sigfig),
        }
    }

    pub fn from_proto(p: &pb::HistogramLayout) -> Self {
        Self {
            lowest: p.lowest,
            highest: p.highest,
            sigfig: u8::try_from(p.sigfig).unwrap_or(u8::MAX),
        }
    }
}

/// The layouts of a run: one for latencies, one for token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layouts {
    pub latency: Layout,
    pub tokens: Layout,
}

impl Default for Layouts {
    fn default() -> Self {
        Self {
            latency: Layout::LATENCY_US,
            tokens: Layout::TOKENS,
        }
    }
}

impl Layouts {
    pub fn for_metric(&self, m: Metric) -> Layout {
        if m.is_latency() {
            self.latency
        } else {
            self.tokens
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("invalid histogram layout {0:?}: {1:?}")]
    Layout(Layout, CreationError),
    #[error("metric {metric}: histogram layout {got:?} differs from the run's {want:?}")]
    LayoutMismatch {
        metric: String,
        got: Layout,
        want: Layout,
    },
    #[error("metric {0}: unknown metric name")]
    UnknownMetric(String),
    #[error("metric {metric}: cannot decode histogram: {reason}")]
    Decode { metric: String, reason: String },
    #[error("metric {metric}: cannot encode histogram: {reason}")]
    Encode { metric: String, reason: String },
    #[error("metric {metric}: adding histograms failed: {reason}")]
    Add { metric: String, reason: String },
}

/// One metric: histogram plus exact count, sum, min and max.
#[derive(Clone)]
pub struct Series {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Series {
    pub fn new(layout: Layout) -> Result<Self, MetricError> {
        let hist = Histogram::new_with_bounds(layout.lowest, layout.highest, layout.sigfig)
            .map_err(|e| MetricError::Layout(layout, e))?;
        Ok(Self {
            hist,
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        })
    }

    pub fn layout(&self) -> Layout {
        Layout {
            lowest: self.hist.low(),
            highest: self.hist.high(),
            sigfig: self.hist.sigfig(),
        }
    }

    /// Records one value; values above the layout's top are clamped in the
    /// histogram but kept exact in sum and max.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.hist.saturating_record(v);
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Records `n` copies of one value (a chunk of n tokens gives n `itl` samples).
    #[inline]
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.hist.saturating_record_n(v, n);
        self.count += n;
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    pub fn exact_min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// Value at quantile q (0..=1) from the histogram; the exact max at q = 1.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        Some(self.hist.value_at_quantile(q).min(self.max).max(self.min))
    }

    /// Exact merge; refuses histograms of another layout (adding across
    /// layouts silently shifts values).
    pub fn add(&mut self, other: &Series, metric: Metric) -> Result<(), MetricError> {
        if other.count == 0 {
            return Ok(());
        }
        if other.layout() != self.layout() {
            return Err(MetricError::LayoutMismatch {
                metric: metric.name().to_owned(),
                got: other.layout(),
                want: self.layout(),
            });
        }
        self.hist.add(&other.hist).map_err(|e| MetricError::Add {
            metric: metric.name().to_owned(),
            reason: format!("{e:?}"),
        })?;
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    pub fn reset(&mut self) {
        self.hist.reset();
        self.count = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }

    pub fn encode(&self, metric: Metric) -> Result<pb::MetricHistogram, MetricError> {
        let mut buf = Vec::with_capacity(1024);
        V2DeflateSerializer::new()
            .serialize(&self.hist, &mut buf)
            .map_err(|e| MetricError::Encode {
                metric: metric.name().to_owned(),
                reason: format!("{e:?}"),
            })?;
        Ok(pb::MetricHistogram {
            metric: metric.name().to_owned(),
            v2_deflate: buf,
            count: self.count,
            sum: self.sum,
            min: if self.count == 0 { 0 } else { self.min },
            max: self.max,
        })
    }

    /// Decodes a wire histogram and checks it against the run's layout.
    pub fn decode(
        msg: &pb::MetricHistogram,
        want: Layout,
    ) -> Result<(Metric, Series), MetricError> {
        let metric = Metric::from_name(&msg.metric)
            .ok_or_else(|| MetricError::UnknownMetric(msg.metric.clone()))?;
        let hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut msg.v2_deflate.as_slice())
            .map_err(|e| MetricError::Decode {
                metric: msg.metric.clone(),
                reason: format!("{e:?}"),
            })?;
        let series = Series {
            hist,
            count: msg.count,
            sum: msg.sum,
            min: if msg.count == 0 { u64::MAX } else { msg.min },
            max: msg.max,
        };
        if series.layout() != want {
            return Err(MetricError::LayoutMismatch {
                metric: msg.metric.clone(),
                got: series.layout(),
                want,
            });
        }
        if series.hist.len() != series.count {
            return Err(MetricError::Decode {
                metric: msg.metric.clone(),
                reason: format!(
                    "histogram holds {} samples but count says {}",
                    series.hist.len(),
                    series.count
                ),
            });
        }
        Ok((metric, series))
    }
}

/// One `Series` per `Metric`, indexed without hashing (hot path). A series
/// gets its histogram at its first sample or merge: a histogram is ~188 KB
/// at 1 µs–1 h, every counter written when made, and most sets see a few
/// metrics only (an agent's shards, each interval's cut, the controller's
/// per-interval sums).
pub struct MetricSet {
    layouts: Layouts,
    series: Vec<Option<Series>>,
    /// What `get` shows for a metric never seen, one per layout (latency,
    /// tokens): made on the first such `get`, never written to.
    unseen: [OnceLock<Series>; 2],
}

impl Clone for MetricSet {
    fn clone(&self) -> Self {
        Self {
            layouts: self.layouts,
            series: self.series.clone(),
            unseen: Default::default(),
        }
    }
}

impl fmt::Debug for MetricSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = Metric::ALL
            .iter()
            .filter_map(|m| self.seen(*m).map(|s| (m.name(), s)));
        f.debug_map().entries(seen).finish()
    }
}

/// Checks a layout as `Histogram::new_with_bounds` does, without making the
/// full counts array. Of its checks only `highest >= 2 * lowest` looks at
/// `highest` (the array's length always fits a 64-bit usize), so a probe
/// capped at `2 * lowest` (16 KB at 3 digits) gives the same verdict.
fn check_layout(l: Layout) -> Result<(), MetricError> {
    let probe_high = l.highest.min(l.lowest.saturating_mul(2));
    Histogram::<u64>::new_with_bounds(l.lowest, probe_high, l.sigfig)
        .map(drop)
        .map_err(|e| MetricError::Layout(l, e))
}

/// An empty series of a layout `MetricSet::new` has checked.
fn checked_series(layout: Layout) -> Series {
    Series::new(layout).expect("MetricSet::new checked this layout")
}

impl MetricSet {
    /// An empty set of these layouts, checked now; no histogram is made yet.
    pub fn new(layouts: Layouts) -> Result<Self, MetricError> {
        check_layout(layouts.latency)?;
        check_layout(layouts.tokens)?;
        Ok(Self {
            layouts,
            series: Metric::ALL.iter().map(|_| None).collect(),
            unseen: Default::default(),
        })
    }

    /// The series of `m` if it has a histogram (it may be empty after a reset).
    fn seen(&self, m: Metric) -> Option<&Series> {
        self.series[m.slot()].as_ref()
    }

    #[inline]
    fn series_mut(&mut self, m: Metric) -> &mut Series {
        let layout = self.layouts.for_metric(m);
        self.series[m.slot()].get_or_insert_with(|| checked_series(layout))
    }

    #[inline]
    pub fn record(&mut self, m: Metric, v: u64) {
        self.series_mut(m).record(v);
    }

    #[inline]
    pub fn record_n(&mut self, m: Metric, v: u64, n: u64) {
        if n > 0 {
            self.series_mut(m).record_n(v, n);
        }
    }

    pub fn get(&self, m: Metric) -> &Series {
        if let Some(s) = self.seen(m) {
            return s;
        }
        let layout = self.layouts.for_metric(m);
        let i = usize::from(layout != self.layouts.latency);
        self.unseen[i].get_or_init(|| checked_series(layout))
    }

    pub fn add(&mut self, other: &MetricSet) -> Result<(), MetricError> {
        for m in Metric::ALL {
            if let Some(s) = other.seen(m) {
                self.add_series(m, s)?;
            }
        }
        Ok(())
    }

    /// Exact merge of one series; an unseen metric takes a copy (what adding
    /// into an empty histogram gives), checked against the set's layout.
    pub fn add_series(&mut self, m: Metric, s: &Series) -> Result<(), MetricError> {
        if s.is_empty() {
            return Ok(());
        }
        if let Some(mine) = &mut self.series[m.slot()] {
            return mine.add(s, m);
        }
        self.check_fits(m, s)?;
        self.series[m.slot()] = Some(s.clone());
        Ok(())
    }

    /// As `add_series`, moving a series into an unseen metric.
    fn add_owned(&mut self, m: Metric, s: Series) -> Result<(), MetricError> {
        if s.is_empty() || self.series[m.slot()].is_some() {
            return self.add_series(m, &s);
        }
        self.check_fits(m, &s)?;
        self.series[m.slot()] = Some(s);
        Ok(())
    }

    fn check_fits(&self, m: Metric, s: &Series) -> Result<(), MetricError> {
        let want = self.layouts.for_metric(m);
        if s.layout() == want {
            return Ok(());
        }
        Err(MetricError::LayoutMismatch {
            metric: m.name().to_owned(),
            got: s.layout(),
            want,
        })
    }

    /// Empties the set. Only series that hold samples are cleared (clearing
    /// writes every counter); their histograms are kept for the next samples.
    pub fn reset(&mut self) {
        for s in self.series.iter_mut().flatten() {
            if !s.is_empty() || !s.hist.is_empty() {
                s.reset();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.iter().flatten().all(Series::is_empty)
    }

    /// Metrics that hold a histogram now (each costs its full counts array).
    pub fn allocated(&self) -> usize {
        self.series.iter().flatten().count()
    }

    /// Encodes the non-empty metrics (empty histograms are omitted on the wire).
    pub fn encode(&self) -> Result<Vec<pb::MetricHistogram>, MetricError> {
        Metric::ALL
            .iter()
            .filter_map(|m| self.seen(*m).filter(|s| !s.is_empty()).map(|s| (m, s)))
            .map(|(m, s)| s.encode(*m))
            .collect()
    }

    /// Decodes wire histograms into a fresh set of the run's layouts.
    pub fn decode(msgs: &[pb::MetricHistogram], layouts: Layouts) -> Result<Self, MetricError> {
        let mut set = MetricSet::new(layouts)?;
        for (m, s) in Self::decode_each(msgs, layouts)? {
            set.add_owned(m, s)?;
        }
        Ok(set)
    }

    /// Decodes each wire histogram on its own, every one checked against
    /// the run's layouts before any is returned. The controller adds these
    /// straight into its sums: a set per interval would copy each decoded
    /// histogram (~184 KB at 1 µs–1 h) into it, a third of the merge's time
    /// at 200 agents.
    pub fn decode_each(
        msgs: &[pb::MetricHistogram],
        layouts: Layouts,
    ) -> Result<Vec<(Metric, Series)>, MetricError> {
        msgs.iter()
            .map(|msg| {
                let want = Metric::from_name(&msg.metric)
                    .map(|m| layouts.for_metric(m))
                    .ok_or_else(|| MetricError::UnknownMetric(msg.metric.clone()))?;
                Series::decode(msg, want)
            })
            .collect()
    }
}

/// Error classes of METRICS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Connect,
    Timeout,
    /// A redirect: never followed (it would bypass the agent's allow-list and
    /// hide the hops inside the latency).
    Http3xx,
    Http4xx,
    Http429,
    Http5xx,
    Stream,
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::Connect,
        ErrorClass::Timeout,
        ErrorClass::Http3xx,
        ErrorClass::Http4xx,
        ErrorClass::Http429,
        ErrorClass::Http5xx,
        ErrorClass::Stream,
        ErrorClass::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Http3xx => "http_3xx",
            ErrorClass::Http4xx => "http_4xx",
            ErrorClass::Http429 => "http_429",
            ErrorClass::Http5xx => "http_5xx",
            ErrorClass::Stream => "stream",
            ErrorClass::Other => "other",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Classifies an HTTP status that is not a success.
    pub fn from_status(status: u16) -> Self {
        match status {
            429 => ErrorClass::Http429,
            300..=399 => ErrorClass::Http3xx,
            400..=499 => ErrorClass::Http4xx,
            500..=599 => ErrorClass::Http5xx,
            _ => ErrorClass::Other,
        }
    }
}

/// Where one token count of a request came from (METRICS.md "counts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountSource {
    /// The server's `usage` (or Ollama's `prompt_eval_count` / `eval_count`).
    Server,
    /// The plan's tokenizer: the prompt counted by the controller, or the
    /// whole output text counted by the agent.
    Tokenizer,
    /// A heuristic: prompt words, or one token per output chunk.
    Estimated,
    /// The plan's tokenizer on the messages rendered with the model's chat
    /// template, counted by the controller (input only).
    TokenizerChatTemplate,
}

/// Completed requests per source of one count (input or output).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    pub server: u64,
    /// Every count made with the plan's tokenizer, chat template or not.
    pub tokenizer: u64,
    pub estimated: u64,
    /// Of `tokenizer`: counted on the messages rendered with the model's chat
    /// template (the rest: on the raw text). Absent in older summaries.
    #[serde(default)]
    pub tokenizer_chat_template: u64,
}

impl SourceCounts {
    pub fn count(&mut self, source: CountSource) {
        match source {
            CountSource::Server => self.server += 1,
            CountSource::Tokenizer => self.tokenizer += 1,
            CountSource::Estimated => self.estimated += 1,
            CountSource::TokenizerChatTemplate => {
                self.tokenizer += 1;
                self.tokenizer_chat_template += 1;
            }
        }
    }

    fn add(&mut self, o: &SourceCounts) {
        self.server = self.server.saturating_add(o.server);
        self.tokenizer = self.tokenizer.saturating_add(o.tokenizer);
        self.estimated = self.estimated.saturating_add(o.estimated);
        self.tokenizer_chat_template = self
            .tokenizer_chat_template
            .saturating_add(o.tokenizer_chat_template);
    }
}

/// The client's input count beside the server's, on the completed requests
/// that had both (the server reported usage and the plan's tokenizer counted
/// the prompt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputCheck {
    pub compared: u64,
    /// Of `compared`: the two counts differed.
    pub mismatched: u64,
    /// Sums over the compared requests.
    pub client_tokens: u64,
    pub server_tokens: u64,
}

impl InputCheck {
    /// One request counted both ways.
    pub fn compare(&mut self, client: u64, server: u64) {
        self.compared += 1;
        self.mismatched += u64::from(client != server);
        self.client_tokens = self.client_tokens.saturating_add(client);
        self.server_tokens = self.server_tokens.saturating_add(server);
    }

    fn add(&mut self, o: &InputCheck) {
        self.compared = self.compared.saturating_add(o.compared);
        self.mismatched = self.mismatched.saturating_add(o.mismatched);
        self.client_tokens = self.client_tokens.saturating_add(o.client_tokens);
        self.server_tokens = self.server_tokens.saturating_add(o.server_tokens);
    }
}

/// Stale-connection retries after which an agent treats the target as one
/// that closes connections it announced as keep-alive, and stops pooling.
pub const STALE_RETRIES_BEFORE_NO_POOL: u64 = 3;

/// Plain counters of an interval or a total; addition is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests_started: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub errors: [u64; ErrorClass::ALL.len()],
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub failed_output_tokens: u64,
    pub response_bytes: u64,
    pub chunks: u64,
    pub chunk_tokens_assumed: u64,
    /// Open loop: planned arrivals never sent (still waiting when the run ended).
    pub arrivals_unsent: u64,
    /// Completed requests within every per-request SLO (goodput).
    pub requests_good: u64,
    /// Chunks that carried reasoning text.
    pub reasoning_chunks: u64,
    /// Started requests cut by the end of the drain or a stop (e2e censored).
    pub requests_incomplete: u64,
    /// Requests started in the warmup that ended after it.
    pub requests_from_warmup: u64,
    /// Why requests failed: statuses, causes and examples per class.
    pub error_details: ErrorDetails,
    /// Requests resent once after a reused connection was found closed.
    pub connection_retries: u64,
    /// Sources of `input_tokens`, of `output_tokens` (each count its own).
    pub input_from: SourceCounts,
    pub output_from: SourceCounts,
    /// The tokenizer's input count against the server's, where both exist.
    #[serde(default)]
    pub input_check: InputCheck,
    /// Per-request records put on the session stream (a resend counts once).
    #[serde(default)]
    pub records_sent: u64,
    /// Per-request records that could not be delivered.
    #[serde(default)]
    pub records_dropped: u64,
    /// Multi-turn conversations by how they ended.
    #[serde(default)]
    pub conversations: ConversationCounts,
    /// Requests whose arrival times came from kernel receive timestamps.
    #[serde(default)]
    pub arrivals_kernel: u64,
    /// Requests whose arrival times are the agent's read times.
    #[serde(default)]
    pub arrivals_read: u64,
}

/// Multi-turn conversations: started, and how each ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationCounts {
    pub started: u64,
    /// Every turn answered.
    pub completed: u64,
    /// A turn failed, which ends its conversation.
    pub abandoned: u64,
    /// The run ended (duration, stop, request budget) before its last turn.
    pub cut: u64,
}

impl ConversationCounts {
    fn add(&mut self, o: &ConversationCounts) {
        self.started = self.started.saturating_add(o.started);
        self.completed = self.completed.saturating_add(o.completed);
        self.abandoned = self.abandoned.saturating_add(o.abandoned);
        self.cut = self.cut.saturating_add(o.cut);
    }
}

impl Counters {
    /// Saturating: counters arrive from agents over the network, and a
    /// wrong or hostile value must not wrap (or panic) the run's totals.
    pub fn add(&mut self, o: &Counters) {
        self.requests_started = self.requests_started.saturating_add(o.requests_started);
        self.requests_ok = self.requests_ok.saturating_add(o.requests_ok);
        self.requests_failed = self.requests_failed.saturating_add(o.requests_failed);
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a = a.saturating_add(b);
        }
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.failed_output_tokens = self
            .failed_output_tokens
            .saturating_add(o.failed_output_tokens);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
        self.chunks = self.chunks.saturating_add(o.chunks);
        self.chunk_tokens_assumed = self
            .chunk_tokens_assumed
            .saturating_add(o.chunk_tokens_assumed);
        self.arrivals_unsent = self.arrivals_unsent.saturating_add(o.arrivals_unsent);
        self.requests_good = self.requests_good.saturating_add(o.requests_good);
        self.reasoning_chunks = self.reasoning_chunks.saturating_add(o.reasoning_chunks);
        self.requests_incomplete = self
            .requests_incomplete
            .saturating_add(o.requests_incomplete);
        self.requests_from_warmup = self
            .requests_from_warmup
            .saturating_add(o.requests_from_warmup);
        self.connection_retries = self.connection_retries.saturating_add(o.connection_retries);
        self.error_details.add(&o.error_details);
        self.input_from.add(&o.input_from);
        self.output_from.add(&o.output_from);
        self.input_check.add(&o.input_check);
        self.records_sent = self.records_sent.saturating_add(o.records_sent);
        self.records_dropped = self.records_dropped.saturating_add(o.records_dropped);
        self.conversations.add(&o.conversations);
        self.arrivals_kernel = self.arrivals_kernel.saturating_add(o.arrivals_kernel);
        self.arrivals_read = self.arrivals_read.saturating_add(o.arrivals_read);
    }

    pub fn error(&self, c: ErrorClass) -> u64 {
        self.errors[c as usize]
    }

    pub fn count_error(&mut self, c: ErrorClass) {
        self.errors[c as usize] = self.errors[c as usize].saturating_add(1);
    }

    /// Keeps a failed request's detail (its class is counted by `record`).
    pub fn note_error(&mut self, e: &RequestError) {
        self.error_details.note(e);
    }

    pub fn to_proto(&self) -> pb::Counters {
        pb::Counters {
            requests_started: self.requests_started,
            requests_ok: self.requests_ok,
            requests_failed: self.requests_failed,
            errors: ErrorClass::ALL
                .iter()
                .filter(|c| self.error(**c) > 0)
                .map(|c| pb::ErrorCount {
                    class: c.name().to_owned(),
                    count: self.error(*c),
                })
                .collect(),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            failed_output_tokens: self.failed_output_tokens,
            response_bytes: self.response_bytes,
            chunks: self.chunks,
            chunk_tokens_assumed: self.chunk_tokens_assumed,
            arrivals_unsent: self.arrivals_unsent,
            requests_good: self.requests_good,
            reasoning_chunks: self.reasoning_chunks,
            requests_incomplete: self.requests_incomplete,
            requests_from_warmup: self.requests_from_warmup,
            error_details: self.error_details.to_proto(),
            connection_retries: self.connection_retries,
            input_from_server: self.input_from.server,
            input_from_tokenizer: self.input_from.tokenizer,
            input_estimated: self.input_from.estimated,
            input_from_chat_template: self.input_from.tokenizer_chat_template,
            input_compared: self.input_check.compared,
            input_mismatched: self.input_check.mismatched,
            input_compared_client_tokens: self.input_check.client_tokens,
            input_compared_server_tokens: self.input_check.server_tokens,
            output_from_server: self.output_from.server,
            output_from_tokenizer: self.output_from.tokenizer,
            output_estimated: self.output_from.estimated,
            records_sent: self.records_sent,
            records_dropped: self.records_dropped,
            conversations_started: self.conversations.started,
            conversations_completed: self.conversations.completed,
            conversations_abandoned: self.conversations.abandoned,
            conversations_cut: self.conversations.cut,
            arrivals_kernel: self.arrivals_kernel,
            arrivals_read: self.arrivals_read,
        }
    }

    /// Unknown error classes from a newer peer are counted as `other`.
    pub fn from_proto(p: &pb::Counters) -> Self {
        let mut c = Counters {
            requests_started: p.requests_started,
            requests_ok: p.requests_ok,
            requests_failed: p.requests_failed,
            errors: [0; ErrorClass::ALL.len()],
            input_tokens: p.input_tokens,
            output_tokens: p.output_tokens,
            failed_output_tokens: p.failed_output_tokens,
            response_bytes: p.response_bytes,
            chunks: p.chunks,
            chunk_tokens_assumed: p.chunk_tokens_assumed,
            arrivals_unsent: p.arrivals_unsent,
            requests_good: p.requests_good,
            reasoning_chunks: p.reasoning_chunks,
            requests_incomplete: p.requests_incomplete,
            requests_from_warmup: p.requests_from_warmup,
            error_details: ErrorDetails::from_proto(&p.error_details),
            connection_retries: p.connection_retries,
            input_from: SourceCounts {
                server: p.input_from_server,
                tokenizer: p.input_from_tokenizer,
                estimated: p.input_estimated,
                tokenizer_chat_template: p.input_from_chat_template,
            },
            output_from: SourceCounts {
                server: p.output_from_server,
                tokenizer: p.output_from_tokenizer,
                estimated: p.output_estimated,
                tokenizer_chat_template: 0,
            },
            input_check: InputCheck {
                compared: p.input_compared,
                mismatched: p.input_mismatched,
                client_tokens: p.input_compared_client_tokens,
                server_tokens: p.input_compared_server_tokens,
            },
            records_sent: p.records_sent,
            records_dropped: p.records_dropped,
            conversations: ConversationCounts {
                started: p.conversations_started,
                completed: p.conversations_completed,
                abandoned: p.conversations_abandoned,
                cut: p.conversations_cut,
            },
            arrivals_kernel: p.arrivals_kernel,
            arrivals_read: p.arrivals_read,
        };
        for e in &p.errors {
            let class = ErrorClass::from_name(&e.class).unwrap_or(ErrorClass::Other);
            c.errors[class as usize] = c.errors[class as usize].saturating_add(e.count);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn merge_of_split_samples_equals_one_histogram_of_all() {
        let mut rng = StdRng::seed_from_u64(7);
        let samples: Vec<u64> = (0..50_000)
            .map(|_| rng.random_range(1..5_000_000))
            .collect();
        let mut whole = Series::new(Layout::LATENCY_US).expect("layout");
        let mut parts: Vec<Series> = (0..4)
            .map(|_| Series::new(Layout::LATENCY_US).expect("layout"))
            .collect();
        for (i, v) in samples.iter().enumerate() {
            whole.record(*v);
            parts[i % 4].record(*v);
        }
        // Through the wire, as agents send them.
        let mut merged = Series::new(Layout::LATENCY_US).expect("layout");
        for p in &parts {
            let msg = p.encode(Metric::Ttft).expect("encode");
            let (_, back) = Series::decode(&msg, Layout::LATENCY_US).expect("decode");
            merged.add(&back, Metric::Ttft).expect("same layout");
        }
        assert_eq!(merged.hist, whole.hist, "bucket-for-bucket equal");
        assert_eq!(
            (merged.count, merged.sum, merged.min, merged.max),
            (whole.count, whole.sum, whole.min, whole.max)
        );
        for q in [0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.quantile(q), whole.quantile(q));
        }
    }

    #[test]
    fn a_set_makes_histograms_only_for_metrics_it_sees() {
        let mut set = MetricSet::new(Layouts::default()).expect("layouts");
        assert_eq!(set.allocated(), 0, "a new set holds no histogram");
        assert!(set.get(Metric::Ttft).is_empty());
        assert_eq!(set.allocated(), 0, "reading an unseen metric makes none");
        set.record_n(Metric::Itl, 5, 0);
        assert_eq!(set.allocated(), 0, "zero samples make none");
        set.record(Metric::Ttft, 1_000);
        set.record(Metric::OutputTokens, 7);
        assert_eq!(set.allocated(), 2);
        let mut sum = MetricSet::new(Layouts::default()).expect("layouts");
        sum.add(&set).expect("same layouts");
        sum.add(&MetricSet::new(Layouts::default()).expect("layouts"))
            .expect("empty");
        assert_eq!(sum.allocated(), 2);
        set.reset();
        assert!(set.is_empty());
        assert_eq!(set.allocated(), 2, "kept for the next interval");
        assert!(set.encode().expect("encode").is_empty());
    }

    #[test]
    fn reset_then_record_equals_a_fresh_series() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut set = MetricSet::new(Layouts::default()).expect("layouts");
        for _ in 0..1000 {
            set.record(Metric::E2e, rng.random_range(1..3_600_000_000));
        }
        set.reset();
        let e2e = set.get(Metric::E2e);
        assert_eq!((e2e.count, e2e.sum, e2e.hist.len()), (0, 0, 0));
        assert_eq!((e2e.exact_min(), e2e.quantile(0.5)), (None, None));
        let mut fresh = Series::new(Layout::LATENCY_US).expect("layout");
        for v in [3, 70_000, 70_001, 2_000_000] {
            set.record(Metric::E2e, v);
            fresh.record(v);
        }
        let e2e = set.get(Metric::E2e);
        assert_eq!(e2e.hist, fresh.hist, "bucket-for-bucket equal");
        assert_eq!(
            (e2e.count, e2e.sum, e2e.min, e2e.max),
            (fresh.count, fresh.sum, fresh.min, fresh.max)
        );
        let wire = set.encode().expect("encode");
        assert_eq!(wire, vec![fresh.encode(Metric::E2e).expect("encode")]);
    }

    #[test]
    fn unseen_metrics_show_the_sets_layouts() {
        let layouts = Layouts {
            latency: Layout {
                lowest: 10,
                highest: 60_000_000,
                sigfig: 2,
            },
            tokens: Layout {
                lowest: 1,
                highest: 1_000,
                sigfig: 3,
            },
        };
        let set = MetricSet::new(layouts).expect("layouts");
        assert_eq!(set.get(Metric::Ttft).layout(), layouts.latency);
        assert_eq!(set.get(Metric::InputTokens).layout(), layouts.tokens);
        let mut other = Series::new(Layout::LATENCY_US).expect("layout");
        other.record(5);
        let mut set = set;
        let err = set.add_series(Metric::Ttft, &other).expect_err("layout");
        assert!(matches!(err, MetricError::LayoutMismatch { .. }), "{err}");
        assert_eq!(set.allocated(), 0, "nothing half-added");
    }

    #[test]
    fn bad_layouts_are_refused_as_histograms_refuse_them() {
        let bad = [
            (0, 100, 3),
            (10, 15, 3),
            (1, 100, 6),
            (1 << 60, u64::MAX, 5),
        ];
        for (lowest, highest, sigfig) in bad {
            let l = Layout {
                lowest,
                highest,
                sigfig,
            };
            assert!(Series::new(l).is_err(), "{l:?}");
            let set = MetricSet::new(Layouts {
                latency: l,
                tokens: Layout::TOKENS,
            });
            assert!(
                matches!(set, Err(MetricError::Layout(got, _)) if got == l),
                "{l:?}"
            );
        }
        let odd = Layout {
            lowest: 1000,
            highest: 2000,
            sigfig: 5,
        };
        let mut set = MetricSet::new(Layouts {
            latency: odd,
            tokens: odd,
        })
        .expect("valid");
        set.record(Metric::Ttft, 1500);
        set.record(Metric::OutputTokens, 9_999);
        assert_eq!(set.get(Metric::Ttft).layout(), odd);
        assert_eq!(set.get(Metric::OutputTokens).max, 9_999);
    }

    #[test]
    fn decode_restores_the_encoded_set() {
        let mut set = MetricSet::new(Layouts::default()).expect("layouts");
        set.record(Metric::Ttft, 50_000);
        set.record_n(Metric::Itl, 20_000, 4);
        set.record(Metric::InputTokens, 32);
        let wire = set.encode().expect("encode");
        let back = MetricSet::decode(&wire, Layouts::default()).expect("decode");
        assert_eq!(back.allocated(), 3);
        assert_eq!(back.encode().expect("encode"), wire);
        for m in Metric::ALL {
            assert_eq!(back.get(m).hist, set.get(m).hist, "{m}");
        }
    }

    #[test]
    fn other_layout_is_rejected() {
        let mut coarse = Series::new(Layout {
            lowest: 1,
            highest: 3_600_000_000,
            sigfig: 2,
        })
        .expect("layout");
        coarse.record(1234);
        let msg = coarse.encode(Metric::E2e).expect("encode");
        let err = Series::decode(&msg, Layout::LATENCY_US).expect_err("mismatch");
        assert!(matches!(err, MetricError::LayoutMismatch { .. }), "{err}");
        let mut fine = Series::new(Layout::LATENCY_US).expect("layout");
        assert!(fine.add(&coarse, Metric::E2e).is_err());
    }

    #[test]
    fn exact_min_max_survive_encoding() {
        let mut s = Series::new(Layout::LATENCY_US).expect("layout");
        s.record(1_234_567);
        s.record(17);
        let msg = s.encode(Metric::E2e).expect("encode");
        let (_, back) = Series::decode(&msg, Layout::LATENCY_US).expect("decode");
        assert_eq!(back.quantile(1.0), Some(1_234_567));
        assert_eq!(back.exact_min(), Some(17));
        assert_eq!(back.mean(), Some((1_234_567.0 + 17.0) / 2.0));
    }

    #[test]
    fn tampered_count_is_detected() {
        let mut s = Series::new(Layout::TOKENS).expect("layout");
        s.record(5);
        let mut msg = s.encode(Metric::OutputTokens).expect("encode");
        msg.count = 2;
        assert!(Series::decode(&msg, Layout::TOKENS).is_err());
    }

    #[test]
    fn counters_round_trip_and_add() {
        let mut c = Counters {
            requests_ok: 3,
            output_tokens: 30,
            records_sent: 3,
            records_dropped: 1,
            ..Counters::default()
        };
        c.count_error(ErrorClass::Http5xx);
        c.count_error(ErrorClass::Http5xx);
        let back = Counters::from_proto(&c.to_proto());
        assert_eq!(back, c);
        let mut sum = back.clone();
        sum.add(&c);
        assert_eq!(sum.error(ErrorClass::Http5xx), 4);
        assert_eq!(sum.output_tokens, 60);
        assert_eq!((sum.records_sent, sum.records_dropped), (6, 2));
        let mut huge = c.clone();
        huge.records_sent = u64::MAX;
        huge.add(&c);
        assert_eq!(huge.records_sent, u64::MAX, "saturates");
    }
}
