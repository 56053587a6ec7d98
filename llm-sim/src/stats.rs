//! Observability of the simulator: the lock-free counters the hot path bumps
//! ([`Counters`]), the serialisable snapshot handed to callers ([`SimStats`]),
//! and the RAII guard that keeps the `in_flight` gauge honest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A snapshot of the simulator's counters (`GET /sim/stats`, [`crate::SimServer::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Generation requests received (all endpoints except `/v1/models`, `/sim/*`
    /// and the health probes), including rejected and fault-injected ones.
    pub requests: u64,
    /// Responses fully sent: streams ended with `[DONE]` / `done: true`, or a
    /// whole non-streaming body (a `malformed` response counts: it was sent whole).
    pub completed: u64,
    /// Injected HTTP 500 responses.
    pub http_500: u64,
    /// Injected HTTP 429 responses.
    pub http_429: u64,
    /// Responses whose connection was cut half-way.
    pub cut: u64,
    /// Responses that carried one non-JSON chunk (or body).
    pub malformed: u64,
    /// Responses that paused for `stall_duration` half-way.
    pub stalled: u64,
    /// Prompt tokens of completed requests.
    pub input_tokens: u64,
    /// Completion tokens of completed requests (what `usage` said).
    pub output_tokens: u64,
    /// All completion tokens written, including those of cut streams (a cut
    /// non-streaming body counts none) and of the garbled `malformed` chunk.
    pub output_tokens_sent: u64,
    /// Sum of the intended TTFTs (queue wait + base + prefill + jitter), in µs.
    pub ttft_injected_sum_us: u64,
    /// Number of intended TTFTs summed in `ttft_injected_sum_us`.
    pub ttft_injected_count: u64,
    /// Generation requests being handled right now (a gauge; not reset).
    pub in_flight: u64,
    /// Highest `in_flight` seen since start or the last reset.
    pub max_in_flight: u64,
    /// How late the simulator woke for its streamed chunks (actual − intended,
    /// 50 µs resolution): the simulator's own share of any timing error a
    /// client measures. p50, p99 and max, in µs.
    #[serde(default)]
    pub emit_late_p50_us: u64,
    #[serde(default)]
    pub emit_late_p99_us: u64,
    #[serde(default)]
    pub emit_late_max_us: u64,
    /// The same for first chunks only (actual − intended TTFT, timed from
    /// when the simulator had parsed the request): its share of a client's
    /// TTFT error. p50, p99 and max, in µs.
    #[serde(default)]
    pub first_late_p50_us: u64,
    #[serde(default)]
    pub first_late_p99_us: u64,
    #[serde(default)]
    pub first_late_max_us: u64,
    /// Requests looked up in the prefix cache (all admitted generation
    /// requests while it is enabled).
    #[serde(default)]
    pub prefix_cache_lookups: u64,
    /// Lookups that found at least one block.
    #[serde(default)]
    pub prefix_cache_hits: u64,
    /// Prompt tokens of the looked-up requests.
    #[serde(default)]
    pub prefix_cache_query_tokens: u64,
    /// Prompt tokens found in the cache (what `cached_tokens` reported):
    /// `prefix_cache_hit_tokens / prefix_cache_query_tokens` is the hit rate.
    #[serde(default)]
    pub prefix_cache_hit_tokens: u64,
    /// Blocks evicted (least recently used) to make room.
    #[serde(default)]
    pub prefix_cache_evicted_blocks: u64,
}

/// Lateness histogram: 50 µs buckets up to 20 ms, then an overflow bucket.
pub(crate) const LATE_BUCKET_US: u64 = 50;
pub(crate) const LATE_BUCKETS: usize = 401;

#[derive(Debug)]
pub(crate) struct Lateness {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

impl Default for Lateness {
    fn default() -> Self {
        Self {
            buckets: (0..LATE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Lateness {
    pub(crate) fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let i = usize::try_from(us / LATE_BUCKET_US)
            .unwrap_or(usize::MAX)
            .min(LATE_BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// (p50, p99, max) in µs: each quantile is its bucket's upper edge.
    fn quantiles(&self, take: bool) -> (u64, u64, u64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                if take {
                    b.swap(0, Relaxed)
                } else {
                    b.load(Relaxed)
                }
            })
            .collect();
        let max = if take {
            self.max_us.swap(0, Relaxed)
        } else {
            self.max_us.load(Relaxed)
        };
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            if total == 0 {
                return 0;
            }
            let want = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return ((i as u64 + 1) * LATE_BUCKET_US).min(max);
                }
            }
            max
        };
        (at(0.5), at(0.99), max)
    }
}

/// The live counters behind [`SimStats`]; relaxed atomics, no locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub http_500: AtomicU64,
    pub http_429: AtomicU64,
    pub cut: AtomicU64,
    pub malformed: AtomicU64,
    pub stalled: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub output_tokens_sent: AtomicU64,
    pub ttft_injected_sum_us: AtomicU64,
    pub ttft_injected_count: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub prefix_cache_lookups: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_query_tokens: AtomicU64,
    pub prefix_cache_hit_tokens: AtomicU64,
    pub prefix_cache_evicted_blocks: AtomicU64,
    pub lateness: Lateness,
    pub first_lateness: Lateness,
}

/// Increments a counter by one.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    /// Reads every counter (each one atomically; the set is not a transaction).
    pub fn snapshot(&self) -> SimStats {
        let mut s = self.collect(|c| c.load(Relaxed));
        (s.emit_late_p50_us, s.emit_late_p99_us, s.emit_late_max_us) =
            self.lateness.quantiles(false);
        (
            s.first_late_p50_us,
            s.first_late_p99_us,
            s.first_late_max_us,
        ) = self.first_lateness.quantiles(false);
        s
    }

    /// Reads and zeroes every counter; `in_flight` is a live gauge and is kept,
    /// and `max_in_flight` restarts from it.
    pub fn reset(&self) -> SimStats {
        let in_flight = self.in_flight.load(Relaxed);
        let late = self.lateness.quantiles(true);
        let first_late = self.first_lateness.quantiles(true);
        let mut s = self.collect(|c| {
            if std::ptr::eq(c, &self.in_flight) {
                in_flight
            } else if std::ptr::eq(c, &self.max_in_flight) {
                c.swap(in_flight, Relaxed)
            } else {
                c.swap(0, Relaxed)
            }
        });
        (s.emit_late_p50_us, s.emit_late_p99_us, s.emit_late_max_us) = late;
        (
            s.first_late_p50_us,
            s.first_late_p99_us,
            s.first_late_max_us,
        ) = first_late;
        s
    }

    fn collect(&self, read: impl Fn(&AtomicU64) -> u64) -> SimStats {
        SimStats {
            requests: read(&self.requests),
            completed: read(&self.completed),
            http_500: read(&self.http_500),
            http_429: read(&self.http_429),
            cut: read(&self.cut),
            malformed: read(&self.malformed),
            stalled: read(&self.stalled),
            input_tokens: read(&self.input_tokens),
            output_tokens: read(&self.output_tokens),
            output_tokens_sent: read(&self.output_tokens_sent),
            ttft_injected_sum_us: read(&self.ttft_injected_sum_us),
            ttft_injected_count: read(&self.ttft_injected_count),
            in_flight: read(&self.in_flight),
            max_in_flight: read(&self.max_in_flight),
            prefix_cache_lookups: read(&self.prefix_cache_lookups),
            prefix_cache_hits: read(&self.prefix_cache_hits),
            prefix_cache_query_tokens: read(&self.prefix_cache_query_tokens),
            prefix_cache_hit_tokens: read(&self.prefix_cache_hit_tokens),
            prefix_cache_evicted_blocks: read(&self.prefix_cache_evicted_blocks),
            ..SimStats::default()
        }
    }

    /// Records the TTFT a request was scheduled with.
    pub fn record_ttft(&self, intended: Duration) {
        let us = u64::try_from(intended.as_micros()).unwrap_or(u64::MAX);
        self.ttft_injected_sum_us.fetch_add(us, Relaxed);
        bump(&self.ttft_injected_count);
    }

    /// Records a prefix cache lookup of a prompt of `tokens`, `cached` of them found.
    pub fn record_cache_lookup(&self, tokens: u64, cached: u64, evicted: u64) {
        bump(&self.prefix_cache_lookups);
        if cached > 0 {
            bump(&self.prefix_cache_hits);
        }
        self.prefix_cache_query_tokens.fetch_add(tokens, Relaxed);
        self.prefix_cache_hit_tokens.fetch_add(cached, Relaxed);
        self.record_cache_evictions(evicted);
    }

    pub fn record_cache_evictions(&self, evicted: u64) {
        self.prefix_cache_evicted_blocks.fetch_add(evicted, Relaxed);
    }

    /// Records a response that was sent whole.
    pub fn record_completed(&self, input_tokens: u64, output_tokens: u64) {
        bump(&self.completed);
        self.input_tokens.fetch_add(input_tokens, Relaxed);
        self.output_tokens.fetch_add(output_tokens, Relaxed);
    }
}

/// Counts one generation request and holds its place in the `in_flight`
/// gauge until dropped (the response ended, failed, or the client left).
#[derive(Debug)]
pub(crate) struct InFlight {
    counters: Arc<Counters>,
}

impl InFlight {
    pub fn begin(counters: Arc<Counters>) -> Self {
        bump(&counters.requests);
        let now = counters.in_flight.fetch_add(1, Relaxed) + 1;
        counters.max_in_flight.fetch_max(now, Relaxed);
        Self { counters }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Never underflows: a reset keeps the gauge as it is.
        self.counters.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_chunk_lateness_is_kept_apart_from_all_chunks() {
        let counters = Counters::default();
        counters.lateness.record(Duration::from_micros(120));
        counters.lateness.record(Duration::from_micros(3000));
        counters.first_lateness.record(Duration::from_micros(3000));
        let s = counters.snapshot();
        assert_eq!((s.emit_late_p50_us, s.emit_late_max_us), (150, 3000));
        assert_eq!((s.first_late_p50_us, s.first_late_max_us), (3000, 3000));
        let taken = counters.reset();
        assert_eq!(taken.first_late_max_us, 3000);
        assert_eq!(counters.snapshot().first_late_max_us, 0);
    }

    #[test]
    fn reset_keeps_the_gauge_and_returns_the_old_values() {
        let counters = Arc::new(Counters::default());
        let guard = InFlight::begin(Arc::clone(&counters));
        counters.record_completed(3, 5);
        let before = counters.reset();
        assert_eq!(
            (before.requests, before.completed, before.input_tokens),
            (1, 1, 3)
        );
        let after = counters.snapshot();
        assert_eq!(
            (after.requests, after.in_flight, after.max_in_flight),
            (0, 1, 1)
        );
        drop(guard);
        assert_eq!(counters.snapshot().in_flight, 0);
    }

    #[test]
    fn lateness_quantiles_use_bucket_edges() {
        let l = Lateness::default();
        for us in [10, 20, 30, 120, 5_000] {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.quantiles(false), (50, 5_000, 5_000));
        l.record(Duration::from_secs(1));
        assert_eq!(l.quantiles(true).2, 1_000_000);
        assert_eq!(l.quantiles(false), (0, 0, 0));
    }
}
