//! Where user tasks record finished requests: mutex-guarded shards (users
//! spread over them, one per load thread) so recording stays uncontended,
//! and `cut`, which swaps out one interval's worth of histograms and
//! counters.

use std::sync::{Mutex, PoisonError};

use barrage_common::metrics::{Counters, Layouts, MetricError, MetricSet};
use barrage_proto::agent::v1::RequestRecord;

pub struct Shard {
    pub metrics: MetricSet,
    pub counters: Counters,
    /// Cuts taken of this shard so far: the index of the interval what is
    /// recorded now lands in (read under the same lock, so exact).
    pub interval: u64,
    /// Records of requests that ended, not yet taken by the session (empty
    /// with records off).
    pub records: Vec<RequestRecord>,
}

pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    /// Swapped in for a shard's histograms at a cut (empty, its histograms
    /// kept), so the shard's lock is held for the swap only: the merge and
    /// the clearing happen outside it, off the load threads.
    spare: Mutex<MetricSet>,
    layouts: Layouts,
}

impl Recorder {
    /// Shards for a load runtime of `load_threads` workers. A shard is taken
    /// twice per request, for a counter and for recording the finished
    /// request, and the cut holds it for a swap only, so one per worker
    /// keeps recording uncontended; each shard costs its histograms (~188 KB
    /// per metric seen at 1 µs–1 h).
    pub fn shards_for(load_threads: usize) -> usize {
        load_threads.max(1)
    }

    pub fn new(layouts: Layouts, shards: usize) -> Result<Self, MetricError> {
        let shards = (0..shards.max(1))
            .map(|_| {
                Ok(Mutex::new(Shard {
                    metrics: MetricSet::new(layouts)?,
                    counters: Counters::default(),
                    interval: 0,
                    records: Vec::new(),
                }))
            })
            .collect::<Result<_, MetricError>>()?;
        Ok(Self {
            shards,
            spare: Mutex::new(MetricSet::new(layouts)?),
            layouts,
        })
    }

    pub fn layouts(&self) -> Layouts {
        self.layouts
    }

    /// Runs `f` on the shard of user `user`.
    #[inline]
    pub fn with_shard<R>(&self, user: usize, f: impl FnOnce(&mut Shard) -> R) -> R {
        let shard = &self.shards[user % self.shards.len()];
        // A panic while recording leaves plain numbers behind; keep using them.
        let mut guard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Takes everything recorded since the last cut.
    pub fn cut(&self) -> Result<(MetricSet, Counters), MetricError> {
        let mut metrics = MetricSet::new(self.layouts)?;
        let mut counters = Counters::default();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        for shard in &self.shards {
            {
                let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::swap(&mut s.metrics, &mut *spare);
                counters.add(&std::mem::take(&mut s.counters));
                s.interval += 1;
            }
            // `spare` now holds the shard's interval; emptied again for the
            // next shard whatever the merge gives.
            let added = metrics.add(&spare);
            spare.reset();
            added?;
        }
        Ok((metrics, counters))
    }

    /// Takes every record waiting in the shards. Taken after a `cut`, it
    /// holds every record of the intervals cut so far (and maybe some of the
    /// next): records never arrive later than their interval.
    pub fn take_records(&self) -> Vec<RequestRecord> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if out.is_empty() {
                out = std::mem::take(&mut s.records);
            } else {
                out.append(&mut s.records);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::metrics::Metric;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn cut_takes_everything_once() {
        let r = Recorder::new(Layouts::default(), 3).expect("layouts");
        for user in 0..10 {
            r.with_shard(user, |s| {
                s.metrics.record(Metric::E2e, 100 + user as u64);
                s.counters.requests_ok += 1;
            });
        }
        let (m, c) = r.cut().expect("cut");
        assert_eq!(m.get(Metric::E2e).count, 10);
        assert_eq!(m.get(Metric::E2e).max, 109);
        assert_eq!(c.requests_ok, 10);
        let (m, c) = r.cut().expect("cut");
        assert!(m.is_empty());
        assert_eq!(c, Counters::default());
    }

    /// Every interval's cut equals one set of that interval's samples (same
    /// bytes on the wire), though shards see different metrics each interval
    /// and the cut hands each shard's histograms on to the next.
    #[test]
    fn cuts_equal_one_set_of_each_intervals_samples() {
        let mut rng = StdRng::seed_from_u64(3);
        let r = Recorder::new(Layouts::default(), 3).expect("layouts");
        let mut all = MetricSet::new(Layouts::default()).expect("layouts");
        let mut summed = MetricSet::new(Layouts::default()).expect("layouts");
        for interval in 0..6u64 {
            let mut want = MetricSet::new(Layouts::default()).expect("layouts");
            for _ in 0..400 {
                let user = rng.random_range(0..10usize);
                // Shard and interval decide which metrics are fed, so some
                // series are touched in one interval and idle in the next.
                let m = Metric::ALL[(user + interval as usize) % 4];
                let v = rng.random_range(1..10_000_000);
                r.with_shard(user, |s| s.metrics.record(m, v));
                want.record(m, v);
                all.record(m, v);
            }
            let (got, _) = r.cut().expect("cut");
            assert_eq!(
                got.encode().expect("encode"),
                want.encode().expect("encode")
            );
            for m in Metric::ALL {
                let (g, w) = (got.get(m), want.get(m));
                assert_eq!(g.hist, w.hist, "{m} in interval {interval}");
                assert_eq!(
                    (g.count, g.sum, g.min, g.max),
                    (w.count, w.sum, w.min, w.max)
                );
            }
            summed.add(&got).expect("same layouts");
        }
        assert_eq!(
            summed.encode().expect("encode"),
            all.encode().expect("encode")
        );
        assert!(r.cut().expect("cut").0.is_empty());
    }
}
