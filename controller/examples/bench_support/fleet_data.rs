//! Realistic interval deltas for simulated agents, and the exact totals of
//! any mix of them.
//!
//! Recording 300k samples per agent per second for hundreds of agents would
//! load the machine the controller is measured on, so a small pool of
//! intervals is generated once (each from its own random draw) and every fake
//! agent cycles through it from its own offset. Because each pool entry's
//! histograms and counters are known, the totals of whatever an agent sent
//! are `Σ n_v × entry_v`: the reference the merged summary must equal.

#![allow(dead_code)] // the test uses a subset

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use barrage_common::metrics::{Counters, ErrorClass, Layouts, Metric, MetricSet, Series};
use barrage_proto::agent::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shape of the simulated traffic behind each interval of one agent.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// Concurrent streams on the agent.
    pub streams: u64,
    /// Median time to first token, µs.
    pub ttft_us: f64,
    /// Median gap between tokens, µs (one token per chunk).
    pub itl_us: f64,
    /// Median output and input tokens of a request.
    pub output_tokens: f64,
    pub input_tokens: f64,
    /// Share of requests that fail.
    pub failure_rate: f64,
}

impl Traffic {
    /// A chat service under load: TTFT ~300 ms, ITL ~30 ms, 250 tokens out,
    /// 1,000 in, 0.5 % failures; a request lasts ~8 s.
    pub fn chat(streams: u64) -> Self {
        Self {
            streams,
            ttft_us: 300_000.0,
            itl_us: 30_000.0,
            output_tokens: 250.0,
            input_tokens: 1_000.0,
            failure_rate: 0.005,
        }
    }

    /// Mean length of one request, seconds (lognormal means, not medians).
    fn request_s(&self) -> f64 {
        let mean = |median: f64, sigma: f64| median * (sigma * sigma / 2.0).exp();
        (mean(self.ttft_us, 0.8) + mean(self.output_tokens, 0.6) * mean(self.itl_us, 0.3)) / 1e6
    }
}

/// One interval as an agent sends it, and as the reference sums it.
pub struct Entry {
    pub metrics: MetricSet,
    pub counters: Counters,
    pub wire: Vec<pb::MetricHistogram>,
    pub counters_pb: pb::Counters,
    /// Samples in all its histograms.
    pub samples: u64,
}

/// The generated intervals plus a cache of final totals by mix.
pub struct Pool {
    pub entries: Vec<Entry>,
    pub layouts: Layouts,
    finals: Mutex<HashMap<Vec<u64>, Arc<pb::Final>>>,
}

/// exp(N(ln median, sigma)) by Box-Muller (no extra dependency).
fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    median * (sigma * z).exp()
}

/// Completed requests of one interval: per-request latencies and counts.
fn record_requests(set: &mut MetricSet, c: &mut Counters, rng: &mut StdRng, t: &Traffic, n: u64) {
    for _ in 0..n {
        let ttft = lognormal(rng, t.ttft_us, 0.8).max(1_000.0) as u64;
        let out = lognormal(rng, t.output_tokens, 0.6).clamp(1.0, 8_000.0) as u64;
        let input = lognormal(rng, t.input_tokens, 0.7).clamp(1.0, 64_000.0) as u64;
        let itl = lognormal(rng, t.itl_us, 0.3);
        let tpot = (itl * lognormal(rng, 1.0, 0.05)) as u64;
        let e2e = ttft + out.saturating_sub(1) * tpot;
        set.record(Metric::Ttft, ttft);
        set.record(Metric::Ttfo, ttft);
        set.record(Metric::E2e, e2e);
        if out > 1 {
            set.record(Metric::Tpot, tpot);
            set.record(Metric::MaxStall, (itl * lognormal(rng, 2.5, 0.4)) as u64);
        }
        set.record(Metric::InputTokens, input);
        set.record(Metric::OutputTokens, out);
        c.input_tokens += input;
        c.output_tokens += out;
        c.requests_good += u64::from(ttft < 2_000_000);
    }
    c.requests_ok += n;
    c.input_from.server += n;
    c.output_from.server += n;
}

/// Gaps between chunks streamed in one interval (one token each, so `itl`
/// equals `chunk_gap`), with a rare stall.
fn record_chunks(set: &mut MetricSet, rng: &mut StdRng, t: &Traffic, n: u64) {
    for _ in 0..n {
        let mut gap = lognormal(rng, t.itl_us, 0.45);
        if rng.random::<f64>() < 0.002 {
            gap *= 10.0;
        }
        let gap = gap.max(1.0) as u64;
        set.record(Metric::ChunkGap, gap);
        set.record(Metric::Itl, gap);
    }
}

/// One interval of `t` (1 s long: a steady closed loop ends and starts
/// about streams / request_s requests a second).
fn entry(seed: u64, t: &Traffic, layouts: Layouts, interval_s: f64) -> Entry {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = MetricSet::new(layouts).unwrap_or_else(|e| panic!("layouts: {e}"));
    let mut c = Counters::default();
    let per_s = t.streams as f64 / t.request_s();
    let done = (per_s * interval_s * (0.95 + 0.1 * rng.random::<f64>())).round() as u64;
    let failed = (done as f64 * t.failure_rate + rng.random::<f64>()).floor() as u64;
    let chunks = (t.streams as f64 * interval_s * 1e6 / t.itl_us).round() as u64;
    record_requests(&mut set, &mut c, &mut rng, t, done - failed);
    record_chunks(&mut set, &mut rng, t, chunks);
    c.requests_started = done;
    c.requests_failed = failed;
    for i in 0..failed {
        let class = [ErrorClass::Http5xx, ErrorClass::Timeout][(i % 2) as usize];
        c.count_error(class);
    }
    c.chunks = chunks + (done - failed);
    c.response_bytes = c.chunks * 180;
    let samples = Metric::ALL.iter().map(|m| set.get(*m).count).sum();
    let wire = set.encode().unwrap_or_else(|e| panic!("encode: {e}"));
    Entry {
        counters_pb: c.to_proto(),
        metrics: set,
        counters: c,
        wire,
        samples,
    }
}

/// `dst += n × src`, bucket for bucket (the histogram's recorded buckets
/// scaled, exact count/sum/min/max beside them).
pub fn add_scaled(dst: &mut Series, src: &Series, n: u64) {
    if n == 0 || src.count == 0 {
        return;
    }
    for v in src.hist.iter_recorded() {
        dst.hist
            .saturating_record_n(v.value_iterated_to(), v.count_at_value() * n);
    }
    dst.count += src.count * n;
    dst.sum += src.sum * n;
    dst.min = dst.min.min(src.min);
    dst.max = dst.max.max(src.max);
}

impl Pool {
    /// `size` intervals of `t`, generated on the available cores.
    pub fn generate(t: Traffic, size: usize, interval_s: f64) -> Self {
        let layouts = Layouts::default();
        let entries = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..size)
                .map(|i| s.spawn(move || entry(0xF1EE7 + i as u64, &t, layouts, interval_s)))
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|_| panic!("generating interval")))
                .collect()
        });
        Self {
            entries,
            layouts,
            finals: Mutex::new(HashMap::new()),
        }
    }

    /// Which entry agent `agent` sends as its interval `index`.
    pub fn pick(&self, agent: usize, index: u64) -> usize {
        (agent * 7 + index as usize) % self.entries.len()
    }

    /// The totals of a mix: `tally[v]` copies of entry `v`.
    pub fn totals(&self, tally: &[u64]) -> (MetricSet, Counters) {
        let mut set = MetricSet::new(self.layouts).unwrap_or_else(|e| panic!("layouts: {e}"));
        let mut c = Counters::default();
        for (e, &n) in self.entries.iter().zip(tally) {
            for m in Metric::ALL.into_iter().filter(|_| n > 0) {
                let mut s = Series::new(self.layouts.for_metric(m))
                    .unwrap_or_else(|e| panic!("layouts: {e}"));
                add_scaled(&mut s, e.metrics.get(m), n);
                set.add_series(m, &s)
                    .unwrap_or_else(|e| panic!("same layout: {e}"));
            }
            for _ in 0..n {
                c.add(&e.counters);
            }
        }
        (set, c)
    }

    /// The `Final` of an agent that sent `tally` (cached: agents that sent
    /// the same mix share it).
    pub fn final_of(&self, tally: &[u64], last_seq: u64) -> Arc<pb::Final> {
        let mut cache = self.finals.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<u64> = tally.iter().copied().chain([last_seq]).collect();
        if let Some(f) = cache.get(&key) {
            return f.clone();
        }
        let (set, c) = self.totals(tally);
        let fin = Arc::new(pb::Final {
            last_seq,
            intervals: tally.iter().sum(),
            metrics: set.encode().unwrap_or_else(|e| panic!("encode: {e}")),
            counters: Some(c.to_proto()),
            reason: pb::StopReason::Duration as i32,
            last_arrival_us: None,
        });
        cache.insert(key, fin.clone());
        fin
    }
}
