//! Where user tasks record finished requests: a few mutex-guarded shards
//! (users spread over them) so recording stays uncontended, and `cut`, which
//! swaps out one interval's worth of histograms and counters.

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
    layouts: Layouts,
}

impl Recorder {
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
        Ok(Self { shards, layouts })
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
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            metrics.add(&s.metrics)?;
            s.metrics.reset();
            counters.add(&std::mem::take(&mut s.counters));
            s.interval += 1;
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
}
