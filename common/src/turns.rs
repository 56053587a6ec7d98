//! Per-turn figures of multi-turn conversations: TTFT, e2e and input tokens
//! by the turn's index in its conversation, so the effect of the server's
//! prefix cache (turn 1 against later turns) shows. Merged exactly like the
//! run's other histograms.

use std::collections::BTreeMap;

use barrage_proto::agent::v1 as pb;

use crate::metrics::{Layouts, Metric, MetricError, Series};

/// Turns beyond this index are counted in its bucket ("32+").
pub const LAST_TURN_BUCKET: u32 = 32;

/// The metrics kept per turn.
pub const TURN_METRICS: [Metric; 3] = [Metric::Ttft, Metric::E2e, Metric::InputTokens];

/// One turn index's histograms and outcome counts.
#[derive(Debug, Clone)]
pub struct TurnSeries {
    pub ttft: Series,
    pub e2e: Series,
    pub input_tokens: Series,
    pub requests_ok: u64,
    pub requests_failed: u64,
}

impl TurnSeries {
    fn new(layouts: Layouts) -> Result<Self, MetricError> {
        Ok(Self {
            ttft: Series::new(layouts.for_metric(Metric::Ttft))?,
            e2e: Series::new(layouts.for_metric(Metric::E2e))?,
            input_tokens: Series::new(layouts.for_metric(Metric::InputTokens))?,
            requests_ok: 0,
            requests_failed: 0,
        })
    }

    pub fn get(&self, m: Metric) -> Option<&Series> {
        match m {
            Metric::Ttft => Some(&self.ttft),
            Metric::E2e => Some(&self.e2e),
            Metric::InputTokens => Some(&self.input_tokens),
            _ => None,
        }
    }

    fn get_mut(&mut self, m: Metric) -> Option<&mut Series> {
        match m {
            Metric::Ttft => Some(&mut self.ttft),
            Metric::E2e => Some(&mut self.e2e),
            Metric::InputTokens => Some(&mut self.input_tokens),
            _ => None,
        }
    }

    fn add(&mut self, o: &TurnSeries) -> Result<(), MetricError> {
        for m in TURN_METRICS {
            if let (Some(a), Some(b)) = (self.get_mut(m), o.get(m)) {
                a.add(b, m)?;
            }
        }
        self.requests_ok = self.requests_ok.saturating_add(o.requests_ok);
        self.requests_failed = self.requests_failed.saturating_add(o.requests_failed);
        Ok(())
    }
}

/// What one finished turn contributes.
#[derive(Debug, Clone, Copy)]
pub struct TurnSample {
    /// 1-based index of the turn in its conversation.
    pub turn: u32,
    pub ok: bool,
    pub ttft_us: Option<u64>,
    pub e2e_us: Option<u64>,
    pub input_tokens: u64,
}

/// Histograms by turn bucket (1..=LAST_TURN_BUCKET), made as turns are seen.
#[derive(Debug, Clone)]
pub struct TurnSets {
    layouts: Layouts,
    turns: BTreeMap<u32, TurnSeries>,
}

/// The bucket a turn index falls in.
pub fn bucket(turn: u32) -> u32 {
    turn.clamp(1, LAST_TURN_BUCKET)
}

impl TurnSets {
    pub fn new(layouts: Layouts) -> Self {
        Self {
            layouts,
            turns: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Turn buckets in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &TurnSeries)> {
        self.turns.iter().map(|(k, v)| (*k, v))
    }

    fn entry(&mut self, turn: u32) -> Result<&mut TurnSeries, MetricError> {
        let key = bucket(turn);
        if !self.turns.contains_key(&key) {
            self.turns.insert(key, TurnSeries::new(self.layouts)?);
        }
        self.turns
            .get_mut(&key)
            .ok_or_else(|| MetricError::UnknownMetric(format!("turn {key}")))
    }

    /// Records one finished turn: ok turns give every metric, failed ones
    /// their input tokens and whatever latency they reached.
    pub fn record(&mut self, s: TurnSample) -> Result<(), MetricError> {
        let t = self.entry(s.turn)?;
        if s.ok {
            t.requests_ok += 1;
        } else {
            t.requests_failed += 1;
        }
        if let Some(v) = s.ttft_us {
            t.ttft.record(v);
        }
        if let Some(v) = s.e2e_us {
            t.e2e.record(v);
        }
        t.input_tokens.record(s.input_tokens);
        Ok(())
    }

    pub fn add(&mut self, o: &TurnSets) -> Result<(), MetricError> {
        for (k, v) in &o.turns {
            self.entry(*k)?.add(v)?;
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<pb::TurnMetrics>, MetricError> {
        self.turns
            .iter()
            .map(|(turn, t)| {
                let metrics = TURN_METRICS
                    .iter()
                    .filter_map(|m| t.get(*m).filter(|s| !s.is_empty()).map(|s| s.encode(*m)))
                    .collect::<Result<_, _>>()?;
                Ok(pb::TurnMetrics {
                    turn: *turn,
                    metrics,
                    requests_ok: t.requests_ok,
                    requests_failed: t.requests_failed,
                })
            })
            .collect()
    }

    /// Adds wire turn metrics (checked against the run's layouts).
    pub fn add_proto(&mut self, msgs: &[pb::TurnMetrics]) -> Result<(), MetricError> {
        let layouts = self.layouts;
        for msg in msgs {
            let t = self.entry(msg.turn)?;
            for h in &msg.metrics {
                let want = Metric::from_name(&h.metric)
                    .filter(|m| TURN_METRICS.contains(m))
                    .ok_or_else(|| MetricError::UnknownMetric(h.metric.clone()))?;
                let (m, s) = Series::decode(h, layouts.for_metric(want))?;
                if let Some(dst) = t.get_mut(m) {
                    dst.add(&s, m)?;
                }
            }
            t.requests_ok = t.requests_ok.saturating_add(msg.requests_ok);
            t.requests_failed = t.requests_failed.saturating_add(msg.requests_failed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Layout;

    fn layouts() -> Layouts {
        Layouts {
            latency: Layout::LATENCY_US,
            tokens: Layout::TOKENS,
        }
    }

    fn sample(turn: u32, ttft: u64) -> TurnSample {
        TurnSample {
            turn,
            ok: true,
            ttft_us: Some(ttft),
            e2e_us: Some(ttft * 2),
            input_tokens: 100 * u64::from(turn),
        }
    }

    #[test]
    fn turns_survive_the_wire_and_add_exactly() {
        let mut a = TurnSets::new(layouts());
        a.record(sample(1, 1000)).expect("record");
        a.record(sample(2, 300)).expect("record");
        let mut b = TurnSets::new(layouts());
        b.record(sample(2, 500)).expect("record");
        b.record(TurnSample {
            ok: false,
            ttft_us: None,
            e2e_us: None,
            ..sample(2, 0)
        })
        .expect("record");
        let mut merged = TurnSets::new(layouts());
        merged.add_proto(&a.encode().expect("encode")).expect("a");
        merged.add_proto(&b.encode().expect("encode")).expect("b");
        let turns: Vec<_> = merged.iter().collect();
        assert_eq!(turns.len(), 2);
        let (k, t2) = turns[1];
        assert_eq!(k, 2);
        assert_eq!((t2.requests_ok, t2.requests_failed), (2, 1));
        assert_eq!(t2.ttft.count, 2);
        assert_eq!(t2.ttft.sum, 800);
        assert_eq!(t2.input_tokens.count, 3);
        assert_eq!(turns[0].1.ttft.sum, 1000);
    }

    #[test]
    fn late_turns_share_the_last_bucket() {
        let mut a = TurnSets::new(layouts());
        a.record(sample(LAST_TURN_BUCKET + 5, 10)).expect("record");
        a.record(sample(LAST_TURN_BUCKET, 10)).expect("record");
        let turns: Vec<_> = a.iter().map(|(k, t)| (k, t.requests_ok)).collect();
        assert_eq!(turns, vec![(LAST_TURN_BUCKET, 2)]);
    }

    #[test]
    fn an_unknown_metric_in_a_turn_is_an_error() {
        let mut a = TurnSets::new(layouts());
        a.record(sample(1, 10)).expect("record");
        let mut wire = a.encode().expect("encode");
        wire[0].metrics[0].metric = "itl".into();
        assert!(TurnSets::new(layouts()).add_proto(&wire).is_err());
    }
}
