//! Per-request measurement exactly as METRICS.md defines it: `ttft` stops on
//! the first chunk with output (role-only, empty and usage-only chunks do not
//! count), `ttfo` on the first non-reasoning output, every later output chunk
//! gives one `chunk_gap` and k `itl` samples of gap/k.
//!
//! Samples are buffered per request (in a buffer reused across a user's
//! requests) and recorded when the request ends, so a request cancelled at the
//! end of a run leaves no partial samples behind.

use std::time::{Duration, Instant};

use barrage_common::metrics::{Counters, ErrorClass, Metric, MetricSet};
use barrage_proto::agent::v1::RequestSlo;

use crate::chunk::ChunkInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    micros: u64,
    tokens: u64,
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
    /// Set at the first output chunk: the server sends usage in every chunk.
    continuous_usage: Option<bool>,
    last_completion: u64,
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
    /// Output was counted with the tokenizer (see `count_with`).
    tokenized: bool,
    pub saw_done: bool,
    pub malformed: bool,
    /// Times this request was resent after a stale pooled connection.
    pub connection_retries: u64,
    /// The response came as one body (set after `begin`): the first token
    /// arrives with all the others, so `ttft` = `e2e` and nothing between
    /// tokens (`tpot`, `chunk_gap`, `itl`, `max_stall`) can be observed.
    pub unstreamed: bool,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RequestMeasure {
    /// Keep each output chunk's text so `count_with` can count it later.
    pub fn capture_text(&mut self, on: bool) {
        self.capture = on;
    }

    /// Copies an output chunk's text (called right after `on_chunk` for the
    /// same event). A plain copy into a reused buffer: no tokenizing here.
    pub fn keep_text(&mut self, data: &[u8], info: &ChunkInfo) {
        if !self.capture || !info.output {
            return;
        }
        if let Some((a, b)) = info.text_span
            && let Some(bytes) = data.get(a as usize..b as usize)
        {
            self.texts.extend_from_slice(bytes);
        }
        self.text_ends
            .push(u32::try_from(self.texts.len()).unwrap_or(u32::MAX));
    }

    /// After the request, off the timed path: counts each chunk's text with
    /// the tokenizer. The counts replace "1 per chunk" for `itl` (unless the
    /// server sent continuous usage) and give `output_tokens` when the server
    /// reported none.
    pub fn count_with(&mut self, tok: &tokenizers::Tokenizer) {
        if self.text_ends.is_empty() || self.text_ends.len() as u64 != self.chunk_tokens_chunks() {
            return;
        }
        let mut counts = Vec::with_capacity(self.text_ends.len());
        let mut from = 0usize;
        for end in &self.text_ends {
            let raw = self.texts.get(from..*end as usize).unwrap_or_default();
            from = *end as usize;
            let text: String = serde_json::from_slice(raw).unwrap_or_default();
            let n = tok
                .encode_fast(text, false)
                .map(|e| e.len() as u64)
                .unwrap_or(0);
            counts.push(n);
        }
        if self.continuous_usage != Some(true) {
            for (g, n) in self.gaps.iter_mut().zip(counts.iter().skip(1)) {
                g.tokens = (*n).max(1);
            }
            self.chunks_assumed = 0;
        }
        self.chunk_tokens = counts.iter().sum();
        self.tokenized = true;
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
        let texts = std::mem::take(&mut self.texts);
        let text_ends = std::mem::take(&mut self.text_ends);
        let intended = self.next_intended.take();
        *self = Self {
            start: Some(handoff),
            intended,
            gaps,
            capture: self.capture,
            texts,
            text_ends,
            ..Self::default()
        };
        self.gaps.clear();
        self.texts.clear();
        self.text_ends.clear();
    }

    /// One chunk, stamped with the time its bytes were read.
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
            return;
        }
        let continuous = *self
            .continuous_usage
            .get_or_insert(info.completion_tokens.is_some());
        let tokens = match (continuous, info.completion_tokens) {
            (true, Some(c)) => {
                let k = c.saturating_sub(self.last_completion).max(1);
                self.last_completion = c;
                k
            }
            _ => {
                self.chunks_assumed += 1;
                1
            }
        };
        self.chunk_tokens += tokens;
        match self.last_output {
            None => self.first_output = Some(at),
            Some(prev) => self.gaps.push(Gap {
                micros: micros(at.saturating_duration_since(prev)),
                tokens,
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

    /// Records the finished request. `estimated_input` is used when the
    /// server reported no prompt tokens; `slo` decides whether it counts
    /// towards goodput.
    pub fn record(
        &self,
        end: Instant,
        result: Result<(), ErrorClass>,
        estimated_input: u64,
        slo: &RequestSlo,
        metrics: &mut MetricSet,
        counters: &mut Counters,
    ) {
        let Some(start) = self.start else { return };
        let since = |t: Instant| micros(t.saturating_duration_since(start));
        // Not streamed: the output arrived when the response ended.
        let (first_output, first_answer) = if self.unstreamed {
            (
                self.first_output.map(|_| end),
                self.first_answer.map(|_| end),
            )
        } else {
            (self.first_output, self.first_answer)
        };
        counters.response_bytes += self.response_bytes;
        counters.chunks += self.chunks;
        counters.chunk_tokens_assumed += self.chunks_assumed;
        counters.reasoning_chunks += self.reasoning_chunks;
        let ttft = first_output.map(since);
        if let Some(t) = ttft {
            metrics.record(Metric::Ttft, t);
        }
        // Open loop: the same ends seen from the intended send time
        // (coordinated omission made visible).
        let intended = self
            .intended
            .map(|i| move |t: Instant| micros(t.saturating_duration_since(i)));
        if let Some(from_intended) = intended {
            metrics.record(Metric::ScheduleLag, from_intended(start));
            if let Some(f) = first_output {
                metrics.record(Metric::TtftIntended, from_intended(f));
            }
        }
        if let Some(t) = first_answer.map(since) {
            metrics.record(Metric::Ttfo, t);
        }
        let output_tokens = self.completion_tokens.unwrap_or(self.chunk_tokens);
        if let Err(class) = result {
            counters.requests_failed += 1;
            counters.count_error(class);
            counters.failed_output_tokens += output_tokens;
            return;
        }
        let e2e = since(end);
        let input_tokens = self.prompt_tokens.unwrap_or(estimated_input);
        counters.requests_ok += 1;
        counters.input_tokens += input_tokens;
        counters.output_tokens += output_tokens;
        if self.prompt_tokens.is_some() && self.completion_tokens.is_some() {
            counters.usage_from_server += 1;
        } else if self.completion_tokens.is_none() && self.tokenized {
            counters.usage_tokenizer += 1;
        } else {
            counters.usage_estimated += 1;
        }
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
        let mut max_gap = None;
        for g in &self.gaps {
            metrics.record(Metric::ChunkGap, g.micros);
            metrics.record_n(Metric::Itl, g.micros / g.tokens, g.tokens);
            max_gap = max_gap.max(Some(g.micros));
        }
        if let Some(m) = max_gap {
            metrics.record(Metric::MaxStall, m);
        }
        let within =
            |limit: Option<u64>, v: Option<u64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
        if within(slo.ttft_us, ttft)
            && within(slo.ttfo_us, first_answer.map(since))
            && within(slo.tpot_us, tpot)
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
        let since = |t: Instant| micros(t.saturating_duration_since(start));
        counters.response_bytes += self.response_bytes;
        counters.chunks += self.chunks;
        counters.chunk_tokens_assumed += self.chunks_assumed;
        counters.reasoning_chunks += self.reasoning_chunks;
        if let Some(t) = self.first_output {
            metrics.record(Metric::Ttft, since(t));
        }
        if let Some(t) = self.first_answer {
            metrics.record(Metric::Ttfo, since(t));
        }
        if let Some(i) = self.intended {
            metrics.record(
                Metric::ScheduleLag,
                micros(start.saturating_duration_since(i)),
            );
            if let Some(f) = self.first_output {
                metrics.record(Metric::TtftIntended, micros(f.saturating_duration_since(i)));
            }
        }
        for g in &self.gaps {
            metrics.record(Metric::ChunkGap, g.micros);
            metrics.record_n(Metric::Itl, g.micros / g.tokens.max(1), g.tokens.max(1));
        }
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

    fn recorded(
        m: &RequestMeasure,
        end: Instant,
        result: Result<(), ErrorClass>,
    ) -> (MetricSet, Counters) {
        let mut set = MetricSet::new(Layouts::default()).expect("layout");
        let mut c = Counters::default();
        m.record(end, result, 3, &RequestSlo::default(), &mut set, &mut c);
        (set, c)
    }

    #[test]
    fn role_only_first_chunk_does_not_stop_ttft() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = RequestMeasure::default();
        m.begin(t0);
        m.on_chunk(t0 + ms(1), &ChunkInfo::default()); // role-only
        m.on_chunk(t0 + ms(50), &out(None));
        m.on_chunk(t0 + ms(60), &out(None));
        let (set, c) = recorded(&m, t0 + ms(61), Ok(()));
        assert_eq!(set.get(Metric::Ttft).exact_min(), Some(50_000));
        assert_eq!(set.get(Metric::ChunkGap).count, 1);
        assert_eq!(c.chunk_tokens_assumed, 2);
        assert_eq!(c.usage_estimated, 1);
        assert_eq!(set.get(Metric::OutputTokens).exact_min(), Some(2));
    }

    #[test]
    fn reasoning_stops_ttft_but_not_ttfo() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = RequestMeasure::default();
        m.begin(t0);
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
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = RequestMeasure::default();
        m.begin(t0);
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
            (c.input_tokens, c.output_tokens, c.usage_from_server),
            (9, 5, 1)
        );
        // tpot = (52 - 10) / (5 - 1) ms
        assert_eq!(set.get(Metric::Tpot).max, 10_500);
    }

    #[test]
    fn failed_request_keeps_ttft_and_counts_as_failed() {
        let t0 = Instant::now();
        let mut m = RequestMeasure::default();
        m.begin(t0);
        m.on_chunk(t0 + Duration::from_millis(5), &out(None));
        let (set, c) = recorded(&m, t0 + Duration::from_millis(9), Err(ErrorClass::Stream));
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
    fn intended_time_gives_schedule_lag_and_intended_latencies() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
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
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = RequestMeasure::default();
        m.begin(t0);
        m.on_chunk(t0 + ms(30), &out(None));
        m.on_chunk(t0 + ms(40), &out(None));
        let mut set = MetricSet::new(Layouts::default()).expect("layout");
        let mut c = Counters::default();
        let ok = RequestSlo {
            ttft_us: Some(50_000),
            e2e_us: Some(100_000),
            ..RequestSlo::default()
        };
        m.record(t0 + ms(41), Ok(()), 1, &ok, &mut set, &mut c);
        assert_eq!(c.requests_good, 1);
        let strict = RequestSlo {
            ttft_us: Some(20_000),
            ..RequestSlo::default()
        };
        m.record(t0 + ms(41), Ok(()), 1, &strict, &mut set, &mut c);
        assert_eq!(c.requests_good, 1, "ttft 30 ms > 20 ms: not good");
        m.record(
            t0 + ms(41),
            Err(ErrorClass::Stream),
            1,
            &ok,
            &mut set,
            &mut c,
        );
        assert_eq!(c.requests_good, 1, "failed requests are never good");
    }

    #[test]
    fn unstreamed_response_gives_ttft_equal_to_e2e_and_no_tpot() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = RequestMeasure::default();
        m.begin(t0);
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
    fn begin_resets_but_keeps_buffer_capacity() {
        let t0 = Instant::now();
        let mut m = RequestMeasure::default();
        m.begin(t0);
        for i in 0..10 {
            m.on_chunk(t0 + Duration::from_millis(i), &out(None));
        }
        let cap = m.gaps.capacity();
        m.begin(t0);
        assert!(m.gaps.is_empty() && m.first_output.is_none());
        assert_eq!(m.gaps.capacity(), cap);
    }
}
