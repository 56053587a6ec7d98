//! Per-request measurement exactly as METRICS.md defines it: `ttft` stops on
//! the first chunk with output (role-only, empty and usage-only chunks do not
//! count), `ttfo` on the first non-reasoning output, every later output chunk
//! gives one `chunk_gap` and k `itl` samples of gap/k.
//!
//! Samples are buffered per request (in a buffer reused across a user's
//! requests) and recorded when the request ends, so a request cancelled at the
//! end of a run leaves no partial samples behind.

use std::time::{Duration, Instant};

use barrage_common::metrics::{CountSource, Counters, ErrorClass, Metric, MetricSet};
use barrage_proto::agent::v1::{self as pb, RequestSlo};

use crate::chunk::ChunkInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    micros: u64,
    tokens: u64,
    /// No usage on this chunk: `tokens` is 1, or the tokenizer's count later.
    assumed: bool,
}

/// A prompt's input-token count before the server says anything: the plan
/// tokenizer's (counted by the controller) or a word estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputCount {
    pub tokens: u64,
    pub source: CountSource,
}

impl InputCount {
    pub fn estimated(tokens: u64) -> Self {
        Self {
            tokens,
            source: CountSource::Estimated,
        }
    }
}

/// The timing state of one request; reuse it across requests with `begin`.
#[derive(Debug, Default)]
pub struct RequestMeasure {
    start: Option<Instant>,
    /// Open loop: when this request was meant to be sent.
    intended: Option<Instant>,
    /// Set by `intend` for the next `begin` only.
    next_intended: Option<Instant>,
    first_output: Option<Instant>,
    first_answer: Option<Instant>,
    last_output: Option<Instant>,
    gaps: Vec<Gap>,
    /// Per piece of response read: read time − arrival time (µs), the
    /// agent's own scheduling lag (0 where arrival is the read time).
    read_lags: Vec<u32>,
    /// When the latest piece of response arrived.
    last_arrival: Option<Instant>,
    /// On a reused kernel-stamped connection: when the write of the
    /// request's last bytes was issued. Latencies run from here instead of
    /// the hand-off, so a busy agent's delay between hand-off and write
    /// stays out of them (there is no connection setup to include).
    sent: Option<Instant>,
    /// Arrival times came from the kernel's receive timestamps.
    pub kernel_arrivals: bool,
    /// The last completion-token count the server reported in the stream,
    /// and the tokens given to output chunks since (usage may come on any
    /// chunk, or start late: each report covers the chunks before it).
    last_reported: u64,
    since_report: u64,
    chunk_tokens: u64,
    chunks_assumed: u64,
    chunks: u64,
    reasoning_chunks: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub response_bytes: u64,
    /// Ollama's own load / prompt-eval / eval durations (ns), when reported.
    pub server_ns: Option<[u64; 3]>,
    /// With a tokenizer: each output chunk's text (raw JSON strings) and where
    /// each ends, copied into buffers reused across requests.
    capture: bool,
    texts: Vec<u8>,
    text_ends: Vec<u32>,
    /// The whole output text counted with the tokenizer (see `count_with`).
    text_tokens: Option<u64>,
    pub saw_done: bool,
    pub malformed: bool,
    /// Times this request was resent after a stale pooled connection.
    pub connection_retries: u64,
    /// The response came as one body (set after `begin`): the first token
    /// arrives with all the others, so `ttft` = `e2e` and nothing between
    /// tokens (`tpot`, `chunk_gap`, `itl`, `max_stall`) can be observed.
    pub unstreamed: bool,
    /// The response's HTTP status (0 until one arrives).
    pub http_status: u16,
}

/// Appends the function names and arguments of a raw `tool_calls` array
/// (arguments as sent: a string, or an object's JSON text for Ollama).
fn append_tool_text(out: &mut String, raw: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Call {
        #[serde(default)]
        function: Option<Function>,
    }
    #[derive(serde::Deserialize)]
    struct Function {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        arguments: Option<serde_json::Value>,
    }
    let Ok(calls) = serde_json::from_slice::<Vec<Call>>(raw) else {
        return;
    };
    for f in calls.into_iter().filter_map(|c| c.function) {
        out.push_str(f.name.as_deref().unwrap_or_default());
        match f.arguments {
            Some(serde_json::Value::String(a)) => out.push_str(&a),
            Some(serde_json::Value::Null) | None => {}
            Some(v) => out.push_str(&v.to_string()),
        }
    }
}

/// A count's source as the wire names it.
fn source_of(s: CountSource) -> pb::CountSource {
    match s {
        CountSource::Server => pb::CountSource::Server,
        CountSource::Tokenizer => pb::CountSource::Tokenizer,
        CountSource::Estimated => pb::CountSource::Estimated,
        CountSource::TokenizerChatTemplate => pb::CountSource::TokenizerChatTemplate,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RequestMeasure {
    /// Keep each output chunk's text so `count_with` can count it later.
    pub fn capture_text(&mut self, on: bool) {
        self.capture = on;
    }

    /// Copies an output chunk's text and tool calls (called right after
    /// `on_chunk` for the same event): raw JSON, one piece each, into reused
    /// buffers. A plain copy: no decoding or tokenizing here.
    pub fn keep_text(&mut self, data: &[u8], info: &ChunkInfo) {
        if !self.capture || !info.output {
            return;
        }
        for span in [info.text_span, info.tool_span] {
            if let Some((a, b)) = span
                && let Some(bytes) = data.get(a as usize..b as usize)
            {
                self.texts.extend_from_slice(bytes);
            }
            self.text_ends
                .push(u32::try_from(self.texts.len()).unwrap_or(u32::MAX));
        }
    }

    /// After the request, off the timed path: counts the output with the
    /// tokenizer. `output_tokens` (when the server reported none) is the
    /// count of the whole text, tokenized once: per-chunk counts differ at
    /// token boundaries. Per-chunk counts only spread `itl` over the chunks
    /// that carried no usage.
    pub fn count_with(&mut self, tok: &tokenizers::Tokenizer) {
        let chunks = self.text_ends.len() / 2;
        // No text located at all (a template API): nothing to count, the
        // per-chunk estimate stays.
        if self.texts.is_empty() || chunks as u64 != self.chunk_tokens_chunks() {
            return;
        }
        let count = |text: &str| {
            tok.encode_fast(text, false)
                .map(|e| e.len() as u64)
                .unwrap_or(0)
        };
        let mut whole = String::new();
        let mut counts = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let text = self.chunk_text(i);
            counts.push(count(&text));
            whole.push_str(&text);
        }
        for (g, n) in self.gaps.iter_mut().zip(counts.iter().skip(1)) {
            if g.assumed {
                g.tokens = (*n).max(1);
            }
        }
        self.chunks_assumed = 0;
        self.text_tokens = Some(count(&whole));
    }

    /// Output chunk `i`'s text: its generated text, then its tool calls'
    /// function names and arguments.
    fn chunk_text(&self, i: usize) -> String {
        let piece = |k: usize| {
            let from = if k == 0 {
                0
            } else {
                self.text_ends[k - 1] as usize
            };
            let to = self.text_ends[k] as usize;
            self.texts.get(from..to).unwrap_or_default()
        };
        let text_raw = piece(2 * i);
        let mut text: String = if text_raw.is_empty() {
            String::new()
        } else {
            serde_json::from_slice(text_raw).unwrap_or_default()
        };
        let tools_raw = piece(2 * i + 1);
        if !tools_raw.is_empty() {
            append_tool_text(&mut text, tools_raw);
        }
        text
    }

    /// Where this request's `output_tokens` come from, and the count.
    fn output_count(&self) -> (u64, CountSource) {
        match (self.completion_tokens, self.text_tokens) {
            (Some(n), _) => (n, CountSource::Server),
            (None, Some(n)) => (n, CountSource::Tokenizer),
            (None, None) => (self.chunk_tokens, CountSource::Estimated),
        }
    }

    /// Where this request's `input_tokens` come from, and the count.
    fn input_count(&self, prompt: InputCount) -> (u64, CountSource) {
        match self.prompt_tokens {
            Some(n) => (n, CountSource::Server),
            None => (prompt.tokens, prompt.source),
        }
    }

    /// The tokens an output chunk carried: the rise of the server's running
    /// count since its last report, less what chunks in between were given;
    /// 1 (assumed) without usage on the chunk.
    fn output_chunk_tokens(&mut self, reported: Option<u64>) -> (u64, bool) {
        match reported {
            Some(c) => {
                let k = c
                    .saturating_sub(self.last_reported.saturating_add(self.since_report))
                    .max(1);
                self.last_reported = c;
                self.since_report = 0;
                (k, false)
            }
            None => {
                self.since_report += 1;
                (1, true)
            }
        }
    }

    /// Output chunks seen (the first plus one per gap).
    fn chunk_tokens_chunks(&self) -> u64 {
        u64::from(self.first_output.is_some()) + self.gaps.len() as u64
    }

    /// Open loop: the next request's intended send time (kept by `begin`).
    pub fn intend(&mut self, at: Instant) {
        self.next_intended = Some(at);
    }

    /// Starts a request at its hand-off to the HTTP client.
    pub fn begin(&mut self, handoff: Instant) {
        let gaps = std::mem::take(&mut self.gaps);
        let mut read_lags = std::mem::take(&mut self.read_lags);
        read_lags.clear();
        let texts = std::mem::take(&mut self.texts);
        let text_ends = std::mem::take(&mut self.text_ends);
        let intended = self.next_intended.take();
        *self = Self {
            start: Some(handoff),
            intended,
            gaps,
            read_lags,
            capture: self.capture,
            texts,
            text_ends,
            ..Self::default()
        };
        self.gaps.clear();
        self.texts.clear();
        self.text_ends.clear();
    }

    /// A piece of response read: `at` stamps its chunks; the read lag is kept.
    pub fn on_piece(&mut self, a: crate::wire::Arrival) {
        if self.kernel_arrivals {
            let lag = micros(a.read.saturating_duration_since(a.at));
            self.read_lags.push(u32::try_from(lag).unwrap_or(u32::MAX));
        }
        self.last_arrival = Some(a.at);
    }

    /// The request went out at `at` on a reused connection (see `sent`).
    pub fn on_sent(&mut self, at: Instant) {
        if self.start.is_some_and(|s| at >= s) {
            self.sent = Some(at);
        }
    }

    /// Where latencies run from: the write on a reused connection, else the
    /// hand-off.
    fn latency_start(&self, start: Instant) -> Instant {
        self.sent.unwrap_or(start)
    }

    /// When the response ended: the arrival of its last piece, or `now`
    /// when none arrived (a failure).
    pub fn end_or(&self, now: Instant) -> Instant {
        self.last_arrival.map_or(now, |t| t.min(now))
    }

    /// One chunk, stamped with the time its bytes arrived.
    pub fn on_chunk(&mut self, at: Instant, info: &ChunkInfo) {
        self.chunks += 1;
        if info.done {
            self.saw_done = true;
        }
        if let Some(p) = info.prompt_tokens {
            self.prompt_tokens = Some(p);
        }
        if let Some(c) = info.completion_tokens {
            self.completion_tokens = Some(c);
        }
        if info.server_ns.is_some() {
            self.server_ns = info.server_ns;
        }
        if !info.output {
            // A running count before any output (on a role-only first
            // chunk) is the base the first output chunk rises from.
            if self.last_output.is_none()
                && let Some(c) = info.completion_tokens
            {
                self.last_reported = c;
            }
            return;
        }
        let (tokens, assumed) = self.output_chunk_tokens(info.completion_tokens);
        if assumed {
            self.chunks_assumed += 1;
        }
        self.chunk_tokens += tokens;
        match self.last_output {
            None => self.first_output = Some(at),
            Some(prev) => self.gaps.push(Gap {
                micros: micros(at.saturating_duration_since(prev)),
                tokens,
                assumed,
            }),
        }
        if !info.answer {
            self.reasoning_chunks += 1;
        }
        if info.answer && self.first_answer.is_none() {
            self.first_answer = Some(at);
        }
        self.last_output = Some(at);
    }

    /// Records the finished request. `prompt_input` is used when the server
    /// reported no prompt tokens; `slo` decides whether it counts towards
    /// goodput.
    pub fn record(
        &self,
        end: Instant,
        result: Result<(), ErrorClass>,
        prompt_input: InputCount,
        slo: &RequestSlo,
        metrics: &mut MetricSet,
        counters: &mut Counters,
    ) {
        let Some(start) = self.start else { return };
        let t0 = self.latency_start(start);
        let since = |t: Instant| micros(t.saturating_duration_since(t0));
        // Not streamed: the output arrived when the response ended.
        let (first_output, first_answer) = if self.unstreamed {
            (
                self.first_output.map(|_| end),
                self.first_answer.map(|_| end),
            )
        } else {
            (self.first_output, self.first_answer)
        };
        self.record_seen(start, first_output, first_answer, metrics, counters);
        let ttft = first_output.map(since);
        let intended = self
            .intended
            .map(|i| move |t: Instant| micros(t.saturating_duration_since(i)));
        let (output_tokens, output_source) = self.output_count();
        if let Err(class) = result {
            counters.requests_failed += 1;
            counters.count_error(class);
            counters.failed_output_tokens += output_tokens;
            return;
        }
        let e2e = since(end);
        let (input_tokens, input_source) = self.input_count(prompt_input);
        if let Some(server) = self.prompt_tokens
            && prompt_input.source != CountSource::Estimated
        {
            counters.input_check.compare(prompt_input.tokens, server);
        }
        counters.requests_ok += 1;
        counters.input_tokens += input_tokens;
        counters.output_tokens += output_tokens;
        counters.input_from.count(input_source);
        counters.output_from.count(output_source);
        metrics.record(Metric::E2e, e2e);
        if let Some(ns) = self.server_ns {
            for (m, v) in [
                Metric::ServerLoad,
                Metric::ServerPromptEval,
                Metric::ServerEval,
            ]
            .into_iter()
            .zip(ns)
            {
                metrics.record(m, v / 1000);
            }
        }
        if let Some(from_intended) = intended {
            metrics.record(Metric::E2eIntended, from_intended(end));
        }
        metrics.record(Metric::InputTokens, input_tokens);
        metrics.record(Metric::OutputTokens, output_tokens);
        let tpot = match (ttft, output_tokens >= 2 && !self.unstreamed) {
            (Some(t), true) => Some(e2e.saturating_sub(t) / (output_tokens - 1)),
            _ => None,
        };
        if let Some(t) = tpot {
            metrics.record(Metric::Tpot, t);
        }
        let max_gap = self.record_gaps(metrics);
        if let Some(m) = max_gap {
            metrics.record(Metric::MaxStall, m);
        }
        let within =
            |limit: Option<u64>, v: Option<u64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
        // tpot is undefined below 2 output tokens: its limit cannot fail then.
        let tpot_within = slo.tpot_us.is_none_or(|l| tpot.is_none_or(|v| v <= l));
        if within(slo.ttft_us, ttft)
            && within(slo.ttfo_us, first_answer.map(since))
            && tpot_within
            && within(slo.e2e_us, Some(e2e))
            && within(slo.max_stall_us, Some(max_gap.unwrap_or(0)))
        {
            counters.requests_good += 1;
        }
    }

    /// Records a request cut before its end (the drain ran out, or the run
    /// was stopped): it counts as incomplete. What was seen is kept (`ttft`,
    /// `ttfo`, schedule lag and `ttft_intended`, each `chunk_gap` and its
    /// `itl` samples); what needs the end is censored (`e2e`, `tpot`, token
    /// counts, `max_stall`, goodput).
    pub fn record_cut(&self, metrics: &mut MetricSet, counters: &mut Counters) {
        counters.requests_incomplete += 1;
        let Some(start) = self.start else { return };
        self.record_seen(
            start,
            self.first_output,
            self.first_answer,
            metrics,
            counters,
        );
        self.record_gaps(metrics);
    }

    /// What a request keeps however it ended (ok, failed or cut): its bytes
    /// and chunks, `ttft`, `ttfo`, and open loop the schedule lag and
    /// `ttft_intended` (coordinated omission made visible).
    fn record_seen(
        &self,
        start: Instant,
        first_output: Option<Instant>,
        first_answer: Option<Instant>,
        metrics: &mut MetricSet,
        counters: &mut Counters,
    ) {
        let t0 = self.latency_start(start);
        let since = |t: Instant| micros(t.saturating_duration_since(t0));
        counters.response_bytes += self.response_bytes;
        counters.chunks += self.chunks;
        counters.chunk_tokens_assumed += self.chunks_assumed;
        counters.reasoning_chunks += self.reasoning_chunks;
        if self.kernel_arrivals {
            counters.arrivals_kernel += 1;
        } else if self.start.is_some() && self.last_arrival.is_some() {
            counters.arrivals_read += 1;
        }
        for &lag in &self.read_lags {
            metrics.record(Metric::ReadLag, u64::from(lag));
        }
        if let Some(t) = first_output {
            metrics.record(Metric::Ttft, since(t));
        }
        if let Some(t) = first_answer {
            metrics.record(Metric::Ttfo, since(t));
        }
        if let Some(i) = self.intended {
            let from_intended = |t: Instant| micros(t.saturating_duration_since(i));
            metrics.record(Metric::ScheduleLag, from_intended(start));
            if let Some(f) = first_output {
                metrics.record(Metric::TtftIntended, from_intended(f));
            }
        }
    }

    /// A finished request's `ttft` and `e2e` (µs from the hand-off; `e2e`
    /// None when `end` is None) and input tokens, as its record gives them,
    /// without building the record (per-turn figures).
    pub fn ttft_e2e_input(
        &self,
        end: Option<Instant>,
        prompt_input: InputCount,
    ) -> (Option<u64>, Option<u64>, u64) {
        let Some(start) = self.start else {
            return (None, None, self.input_count(prompt_input).0);
        };
        let t0 = self.latency_start(start);
        let since = |t: Instant| micros(t.saturating_duration_since(t0));
        let first_output = match end {
            Some(end) if self.unstreamed => self.first_output.map(|_| end),
            _ => self.first_output,
        };
        (
            first_output.map(since),
            end.map(since),
            self.input_count(prompt_input).0,
        )
    }

    /// The timing and token fields of this request's record: offsets from
    /// `origin` (the agreed start), latencies from the hand-off, counts from
    /// the same sources the counters use. `end` is `None` for a cut request
    /// (its `e2e` is censored). Identity, outcome and text are the caller's.
    pub fn to_record(
        &self,
        end: Option<Instant>,
        prompt_input: InputCount,
        origin: Instant,
    ) -> pb::RequestRecord {
        let start = self.start.unwrap_or(origin);
        let t0 = self.latency_start(start);
        let since = |t: Instant| micros(t.saturating_duration_since(t0));
        let (first_output, first_answer) = match end {
            Some(end) if self.unstreamed => (
                self.first_output.map(|_| end),
                self.first_answer.map(|_| end),
            ),
            _ => (self.first_output, self.first_answer),
        };
        let (input_tokens, input_source) = self.input_count(prompt_input);
        let (output_tokens, output_source) = self.output_count();
        pb::RequestRecord {
            intended_offset_us: self
                .intended
                .map(|i| micros(i.saturating_duration_since(origin))),
            start_offset_us: micros(start.saturating_duration_since(origin)),
            ttft_us: first_output.map(since),
            ttfo_us: first_answer.map(since),
            e2e_us: end.map(since),
            chunk_gaps_us: self.gaps.iter().map(|g| g.micros).collect(),
            input_tokens,
            output_tokens,
            input_source: source_of(input_source) as i32,
            output_source: source_of(output_source) as i32,
            http_status: u32::from(self.http_status),
            ..pb::RequestRecord::default()
        }
    }

    /// The output text kept by `keep_text` (text, then tool calls, chunk by
    /// chunk), decoded: for a record that saves its text.
    pub fn response_text(&self) -> String {
        (0..self.text_ends.len() / 2)
            .map(|i| self.chunk_text(i))
            .collect()
    }

    /// Each `chunk_gap`, spread over its tokens as `itl`; the longest gap.
    fn record_gaps(&self, metrics: &mut MetricSet) -> Option<u64> {
        let mut max_gap = None;
        for g in &self.gaps {
            let tokens = g.tokens.max(1);
            metrics.record(Metric::ChunkGap, g.micros);
            metrics.record_n(Metric::Itl, g.micros / tokens, tokens);
            max_gap = max_gap.max(Some(g.micros));
        }
        max_gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::metrics::Layouts;

    fn out(tokens_so_far: Option<u64>) -> ChunkInfo {
        ChunkInfo {
            output: true,
            answer: true,
            completion_tokens: tokens_so_far,
            ..ChunkInfo::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A measure begun now, and that moment.
    fn begun() -> (Instant, RequestMeasure) {
        let t0 = Instant::now();
        let mut m = RequestMeasure::default();
        m.begin(t0);
        (t0, m)
    }

    /// Records of requests with `input` estimated input tokens each.
    struct Tally {
        set: MetricSet,
        c: Counters,
        input: InputCount,
    }

    impl Tally {
        fn new(input_tokens: u64) -> Self {
            Self {
                set: MetricSet::new(Layouts::default()).expect("layout"),
                c: Counters::default(),
                input: InputCount::estimated(input_tokens),
            }
        }

        fn record(
            &mut self,
            m: &RequestMeasure,
            end: Instant,
            result: Result<(), ErrorClass>,
            slo: &RequestSlo,
        ) {
            m.record(end, result, self.input, slo, &mut self.set, &mut self.c);
        }
    }

    /// One request recorded alone (3 input tokens, no limits).
    fn recorded(
        m: &RequestMeasure,
        end: Instant,
        result: Result<(), ErrorClass>,
    ) -> (MetricSet, Counters) {
        let mut t = Tally::new(3);
        t.record(m, end, result, &RequestSlo::default());
        (t.set, t.c)
    }

    #[test]
    fn role_only_first_chunk_does_not_stop_ttft() {
        let (t0, mut m) = begun();
        m.on_chunk(t0 + ms(1), &ChunkInfo::default()); // role-only
        m.on_chunk(t0 + ms(50), &out(None));
        m.on_chunk(t0 + ms(60), &out(None));
        let (set, c) = recorded(&m, t0 + ms(61), Ok(()));
        assert_eq!(set.get(Metric::Ttft).exact_min(), Some(50_000));
        assert_eq!(set.get(Metric::ChunkGap).count, 1);
        assert_eq!(c.chunk_tokens_assumed, 2);
        assert_eq!((c.input_from.estimated, c.output_from.estimated), (1, 1));
        assert_eq!(set.get(Metric::OutputTokens).exact_min(), Some(2));
    }

    #[test]
    fn reasoning_stops_ttft_but_not_ttfo() {
        let (t0, mut m) = begun();
        let reasoning = ChunkInfo {
            output: true,
            answer: false,
            ..ChunkInfo::default()
        };
        m.on_chunk(t0 + ms(20), &reasoning);
        m.on_chunk(t0 + ms(30), &reasoning);
        m.on_chunk(t0 + ms(40), &out(None));
        let (set, _) = recorded(&m, t0 + ms(41), Ok(()));
        assert_eq!(set.get(Metric::Ttft).exact_min(), Some(20_000));
        assert_eq!(set.get(Metric::Ttfo).exact_min(), Some(40_000));
    }

    #[test]
    fn a_four_token_chunk_gives_four_itl_samples_and_one_chunk_gap() {
        let (t0, mut m) = begun();
        m.on_chunk(t0 + ms(10), &out(Some(1)));
        m.on_chunk(t0 + ms(50), &out(Some(5)));
        let usage = ChunkInfo {
            prompt_tokens: Some(9),
            completion_tokens: Some(5),
            ..ChunkInfo::default()
        };
        m.on_chunk(t0 + ms(51), &usage);
        let (set, c) = recorded(&m, t0 + ms(52), Ok(()));
        let itl = set.get(Metric::Itl);
        assert_eq!((itl.count, itl.min, itl.max), (4, 10_000, 10_000));
        assert_eq!(set.get(Metric::ChunkGap).count, 1);
        assert_eq!(set.get(Metric::ChunkGap).max, 40_000);
        assert_eq!(set.get(Metric::MaxStall).max, 40_000);
        assert_eq!(c.chunk_tokens_assumed, 0);
        assert_eq!(
            (c.input_tokens, c.output_tokens, c.input_from.server),
            (9, 5, 1)
        );
        assert_eq!(c.output_from.server, 1);
        // tpot = (52 - 10) / (5 - 1) ms
        assert_eq!(set.get(Metric::Tpot).max, 10_500);
    }

    #[test]
    fn failed_request_keeps_ttft_and_counts_as_failed() {
        let (t0, mut m) = begun();
        m.on_chunk(t0 + ms(5), &out(None));
        let (set, c) = recorded(&m, t0 + ms(9), Err(ErrorClass::Stream));
        assert_eq!(set.get(Metric::Ttft).count, 1);
        assert_eq!(set.get(Metric::E2e).count, 0);
        assert_eq!(
            (
                c.requests_ok,
                c.requests_failed,
                c.error(ErrorClass::Stream)
            ),
            (0, 1, 1)
        );
        assert_eq!(c.failed_output_tokens, 1);
    }

    #[test]
    fn on_a_reused_connection_latencies_run_from_the_write_and_lag_is_kept() {
        let (t0, mut m) = begun();
        let ms = |n: u64| t0 + ms(n);
        m.kernel_arrivals = true;
        // The busy agent wrote the request 5 ms after its hand-off, and read
        // the first chunk 7 ms after the kernel received it.
        m.on_sent(ms(5));
        let first = crate::wire::Arrival {
            at: ms(55),
            read: ms(62),
        };
        m.on_piece(first);
        m.on_chunk(first.at, &out(None));
        let end = crate::wire::Arrival {
            at: ms(75),
            read: ms(76),
        };
        m.on_piece(end);
        m.on_chunk(end.at, &out(None));
        assert_eq!(m.end_or(ms(80)), ms(75));
        let (set, c) = recorded(&m, m.end_or(ms(80)), Ok(()));
        assert_eq!(set.get(Metric::Ttft).max, 50_000);
        assert_eq!(set.get(Metric::E2e).max, 70_000);
        assert_eq!(set.get(Metric::ChunkGap).max, 20_000);
        let lag = set.get(Metric::ReadLag);
        assert_eq!((lag.count, lag.min, lag.max), (2, 1_000, 7_000));
        assert_eq!(c.arrivals_kernel, 1);
        // A write stamped before the hand-off (a stale stamp) is ignored.
        let mut m2 = RequestMeasure::default();
        m2.begin(ms(10));
        m2.on_sent(ms(5));
        m2.on_chunk(ms(30), &out(None));
        assert_eq!(
            m2.ttft_e2e_input(None, InputCount::estimated(1)).0,
            Some(20_000)
        );
    }

    #[test]
    fn intended_time_gives_schedule_lag_and_intended_latencies() {
        let t0 = Instant::now();
        let mut m = RequestMeasure::default();
        m.intend(t0);
        m.begin(t0 + ms(7));
        m.on_chunk(t0 + ms(57), &out(None));
        let (set, _) = recorded(&m, t0 + ms(107), Ok(()));
        assert_eq!(set.get(Metric::ScheduleLag).max, 7_000);
        assert_eq!(set.get(Metric::Ttft).max, 50_000);
        assert_eq!(set.get(Metric::TtftIntended).max, 57_000);
        assert_eq!(set.get(Metric::E2eIntended).max, 107_000);
        // Closed loop: none of them.
        m.begin(t0);
        m.on_chunk(t0 + ms(1), &out(None));
        let (set, _) = recorded(&m, t0 + ms(2), Ok(()));
        assert_eq!(set.get(Metric::ScheduleLag).count, 0);
    }

    #[test]
    fn goodput_counts_requests_within_every_limit() {
        let (t0, mut m) = begun();
        m.on_chunk(t0 + ms(30), &out(None));
        m.on_chunk(t0 + ms(40), &out(None));
        let mut t = Tally::new(1);
        let ok = RequestSlo {
            ttft_us: Some(50_000),
            e2e_us: Some(100_000),
            ..RequestSlo::default()
        };
        t.record(&m, t0 + ms(41), Ok(()), &ok);
        assert_eq!(t.c.requests_good, 1);
        let strict = RequestSlo {
            ttft_us: Some(20_000),
            ..RequestSlo::default()
        };
        t.record(&m, t0 + ms(41), Ok(()), &strict);
        assert_eq!(t.c.requests_good, 1, "ttft 30 ms > 20 ms: not good");
        t.record(&m, t0 + ms(41), Err(ErrorClass::Stream), &ok);
        assert_eq!(t.c.requests_good, 1, "failed requests are never good");
    }

    #[test]
    fn unstreamed_response_gives_ttft_equal_to_e2e_and_no_tpot() {
        let (t0, mut m) = begun();
        m.unstreamed = true;
        m.on_chunk(t0 + ms(40), &out(Some(8)));
        let (set, _) = recorded(&m, t0 + ms(41), Ok(()));
        assert_eq!(set.get(Metric::Ttft).max, set.get(Metric::E2e).max);
        assert_eq!(set.get(Metric::Ttft).max, 41_000);
        for unseen in [
            Metric::Tpot,
            Metric::ChunkGap,
            Metric::Itl,
            Metric::MaxStall,
        ] {
            assert_eq!(set.get(unseen).count, 0, "{unseen}");
        }
    }

    #[test]
    fn usage_starting_on_a_later_chunk_still_spreads_itl() {
        let (t0, mut m) = begun();
        // Role-only first chunk with usage, first output chunk without.
        m.on_chunk(
            t0 + ms(1),
            &ChunkInfo {
                completion_tokens: Some(0),
                ..ChunkInfo::default()
            },
        );
        m.on_chunk(t0 + ms(10), &out(None));
        m.on_chunk(t0 + ms(40), &out(Some(4)));
        m.on_chunk(t0 + ms(60), &out(Some(6)));
        let (set, c) = recorded(&m, t0 + ms(61), Ok(()));
        let itl = set.get(Metric::Itl);
        assert_eq!((itl.count, itl.min, itl.max), (5, 10_000, 10_000));
        assert_eq!(c.chunk_tokens_assumed, 1);
        assert_eq!((c.output_tokens, c.output_from.server), (6, 1));
        // Only the prompt's count was not reported: each count its own label.
        assert_eq!((c.input_tokens, c.input_from.estimated), (3, 1));
    }

    #[test]
    fn a_tpot_limit_does_not_fail_a_one_token_request() {
        let slo = RequestSlo {
            tpot_us: Some(1),
            ..RequestSlo::default()
        };
        let mut t = Tally::new(1);
        let (t0, mut m) = begun();
        m.on_chunk(t0 + ms(5), &out(Some(1)));
        t.record(&m, t0 + ms(9), Ok(()), &slo);
        assert_eq!((t.c.requests_good, t.set.get(Metric::Tpot).count), (1, 0));
        m.begin(t0);
        m.on_chunk(t0 + ms(5), &out(Some(1)));
        m.on_chunk(t0 + ms(8), &out(Some(2)));
        t.record(&m, t0 + ms(9), Ok(()), &slo);
        assert_eq!(t.c.requests_good, 1, "two tokens: tpot 4 ms > 1 us");
    }

    #[test]
    fn a_record_keeps_offsets_latencies_gaps_and_the_counters_sources() {
        let origin = Instant::now();
        let mut m = RequestMeasure::default();
        m.intend(origin + ms(3));
        m.begin(origin + ms(5));
        m.http_status = 200;
        m.on_chunk(origin + ms(25), &out(Some(1)));
        m.on_chunk(origin + ms(35), &out(Some(3)));
        m.on_chunk(origin + ms(40), &out(Some(4)));
        let r = m.to_record(Some(origin + ms(45)), InputCount::estimated(7), origin);
        assert_eq!(
            (r.intended_offset_us, r.start_offset_us),
            (Some(3_000), 5_000)
        );
        assert_eq!(
            (r.ttft_us, r.ttfo_us, r.e2e_us),
            (Some(20_000), Some(20_000), Some(40_000))
        );
        assert_eq!(r.chunk_gaps_us, vec![10_000, 5_000]);
        assert_eq!((r.input_tokens, r.output_tokens), (7, 4));
        assert_eq!(r.input_source, pb::CountSource::Estimated as i32);
        assert_eq!(r.output_source, pb::CountSource::Server as i32);
        assert_eq!(r.http_status, 200);
        let cut = m.to_record(None, InputCount::estimated(7), origin);
        assert_eq!(
            (cut.e2e_us, cut.ttft_us),
            (None, Some(20_000)),
            "cut: e2e censored"
        );
    }

    #[test]
    fn the_kept_response_text_is_the_decoded_output() {
        let (t0, mut m) = begun();
        m.capture_text(true);
        for (i, data) in [r#"{"t":"Hel"}"#, r#"{"t":"lo\n"}"#]
            .into_iter()
            .enumerate()
        {
            let info = ChunkInfo {
                text_span: Some((5, data.len() as u32 - 1)),
                ..out(None)
            };
            m.on_chunk(t0 + ms(i as u64), &info);
            m.keep_text(data.as_bytes(), &info);
        }
        assert_eq!(m.response_text(), "Hello\n");
    }

    #[test]
    fn begin_resets_but_keeps_buffer_capacity() {
        let (t0, mut m) = begun();
        for i in 0..10 {
            m.on_chunk(t0 + ms(i), &out(None));
        }
        let cap = m.gaps.capacity();
        m.begin(t0);
        assert!(m.gaps.is_empty() && m.first_output.is_none());
        assert_eq!(m.gaps.capacity(), cap);
    }
}
