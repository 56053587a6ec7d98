//! Exact merging of the agents' interval deltas: run totals are the sum of
//! every interval histogram (so final percentiles are exact whatever the
//! timing), a per-interval timeline for the report, and per-agent sums that
//! must equal each agent's final totals.

use std::collections::{BTreeMap, BTreeSet};

use barrage_common::metrics::{Counters, Layouts, Metric, MetricError, MetricSet, Series};
use barrage_common::turns::TurnSets;
use barrage_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};

/// One row of the time series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntervalRow {
    pub index: u64,
    /// Inside the warmup: shown here, left out of the totals.
    pub warmup: bool,
    /// Seconds from the agreed start to the interval's start.
    pub t_s: f64,
    pub agents_reporting: usize,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub output_tokens: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub max_agent_cpu_percent: f64,
    /// The busiest agent's CPU as a share of its machine's cores (1.0: every
    /// core busy); `max_agent_cpu_percent` counts 100 per core.
    pub max_agent_cpu_share: f64,
    pub max_scheduler_lag_ms: f64,
    /// The agents' own scheduling lag at p99 (`read_lag`: read time −
    /// kernel receive time of each piece of response), when kernel-stamped.
    #[serde(default)]
    pub read_lag_p99_ms: Option<f64>,
    pub in_flight: u64,
    /// GPU and server-metric averages of the interval (when monitored).
    #[serde(flatten)]
    pub monitor: crate::monitor::IntervalMonitor,
}

#[cfg(test)]
impl IntervalRow {
    /// A calm row for tests: 10 ok, 100 output tokens, one agent at 10 % of
    /// its cores, 1 ms of scheduler lag.
    pub(crate) fn sample(index: u64) -> Self {
        Self {
            index,
            warmup: false,
            t_s: index as f64,
            agents_reporting: 1,
            requests_ok: 10,
            requests_failed: 0,
            output_tokens: 100,
            ttft_p50_ms: Some(10.0),
            ttft_p99_ms: Some(20.0),
            itl_p50_ms: Some(1.0),
            itl_p99_ms: Some(2.0),
            e2e_p50_ms: Some(50.0),
            e2e_p99_ms: Some(90.0),
            max_agent_cpu_percent: 20.0,
            max_agent_cpu_share: 0.1,
            max_scheduler_lag_ms: 1.0,
            read_lag_p99_ms: Some(0.1),
            in_flight: 4,
            monitor: crate::monitor::IntervalMonitor::default(),
        }
    }
}

struct Pending {
    metrics: MetricSet,
    counters: Counters,
    reporters: usize,
    max_cpu: f64,
    max_cpu_share: f64,
    max_lag_us: u64,
    in_flight: u64,
}

/// What one agent contributed.
pub struct AgentTally {
    pub metrics: MetricSet,
    pub counters: Counters,
    pub intervals: u64,
    pub last_index: Option<u64>,
    pub max_cpu: f64,
    /// Cores of the agent's machine (CPU percent is per core: 100 = one).
    pub cores: f64,
    /// Intervals in which the agent's process used > 90 % of its cores.
    pub hot_intervals: u64,
    /// Encoded size of the interval and final messages received (wire cost).
    pub delta_bytes: u64,
    pub finished: bool,
    /// Final totals differ from the sum of intervals (described).
    pub mismatch: Option<String>,
    /// Interval sequence numbers received (resends are dropped by these).
    pub seqs: BTreeSet<u64>,
    /// Intervals received twice (resent after a resume) and dropped.
    pub duplicates: u64,
    /// Highest sequence number the agent says it sent (its final's last_seq).
    pub last_seq: u64,
    /// Times its session was resumed after a dropped connection.
    pub resumes: u64,
}

impl AgentTally {
    /// Sequence numbers up to the last one sent that never arrived.
    pub fn missing(&self) -> u64 {
        let last = self.seqs.last().copied().unwrap_or(0).max(self.last_seq);
        last - self.seqs.range(1..=last).count() as u64
    }
}

pub struct Merger {
    layouts: Layouts,
    interval_s: f64,
    /// Intervals below this index are warmup.
    pub warmup_intervals: u64,
    /// Histograms of the rows settled so far (every row after `finish`):
    /// added once per row, not once per agent-interval, which saves a pass
    /// over every histogram's counts per agent and interval.
    pub totals: MetricSet,
    pub counters: Counters,
    /// Multi-turn: per-turn figures after the warmup (empty otherwise).
    pub turns: TurnSets,
    pub agents: Vec<AgentTally>,
    pending: BTreeMap<u64, Pending>,
    pub timeline: Vec<IntervalRow>,
    /// Open loop: the latest intended arrival any agent sent (µs after start).
    pub last_arrival_us: Option<u64>,
    /// Rows settled since the last `take_settled`, with their histograms.
    settled: Vec<SettledInterval>,
}

/// A timeline row as it settles, with the interval's merged histograms and
/// counters (what the run's outputs receive).
pub struct SettledInterval {
    pub row: IntervalRow,
    pub metrics: MetricSet,
    pub counters: Counters,
}

/// Adds decoded series (of the set's layouts: decode_each checked them).
fn add_each(set: &mut MetricSet, decoded: &[(Metric, Series)]) -> Result<(), MetricError> {
    decoded.iter().try_for_each(|(m, s)| set.add_series(*m, s))
}

fn ms(v: Option<u64>) -> Option<f64> {
    v.map(|us| us as f64 / 1000.0)
}

impl Merger {
    pub fn new(layouts: Layouts, agents: usize, interval_s: f64) -> Result<Self, MetricError> {
        let agents = (0..agents)
            .map(|_| {
                Ok(AgentTally {
                    metrics: MetricSet::new(layouts)?,
                    counters: Counters::default(),
                    intervals: 0,
                    last_index: None,
                    max_cpu: 0.0,
                    cores: 1.0,
                    hot_intervals: 0,
                    delta_bytes: 0,
                    finished: false,
                    mismatch: None,
                    seqs: BTreeSet::new(),
                    duplicates: 0,
                    last_seq: 0,
                    resumes: 0,
                })
            })
            .collect::<Result<_, MetricError>>()?;
        Ok(Self {
            layouts,
            interval_s,
            warmup_intervals: 0,
            totals: MetricSet::new(layouts)?,
            counters: Counters::default(),
            turns: TurnSets::new(layouts),
            agents,
            pending: BTreeMap::new(),
            timeline: Vec::new(),
            last_arrival_us: None,
            settled: Vec::new(),
        })
    }

    /// Adds one interval delta of one agent. A histogram of another layout is
    /// refused (the whole interval is then rejected, nothing half-added).
    /// An interval already merged (same agent and seq, resent after a
    /// resume) is dropped: merging is idempotent.
    pub fn add_interval(&mut self, agent: usize, iv: &pb::Interval) -> Result<(), MetricError> {
        if self.is_duplicate(agent, iv.seq) {
            return Ok(());
        }
        // Each histogram decoded and checked before any is added; then added
        // where it belongs (no whole set per interval: see decode_each).
        let metrics = MetricSet::decode_each(&iv.metrics, self.layouts)?;
        let mut turns = TurnSets::new(self.layouts);
        turns.add_proto(&iv.turns)?;
        let counters = iv
            .counters
            .as_ref()
            .map(Counters::from_proto)
            .unwrap_or_default();
        if iv.index >= self.warmup_intervals {
            self.counters.add(&counters);
            self.turns.add(&turns)?;
        }
        let health = iv.health.unwrap_or_default();
        let cores = self.agents.get(agent).map_or(1.0, |a| a.cores.max(1.0));
        if let Some(a) = self.agents.get_mut(agent) {
            if iv.seq > 0 {
                a.seqs.insert(iv.seq);
            }
            add_each(&mut a.metrics, &metrics)?;
            a.counters.add(&counters);
            a.intervals += 1;
            a.last_index = a.last_index.max(Some(iv.index));
            a.max_cpu = a.max_cpu.max(health.cpu_percent);
            a.delta_bytes = a
                .delta_bytes
                .saturating_add(prost::Message::encoded_len(iv) as u64);
            if health.cpu_percent > 90.0 * a.cores.max(1.0) {
                a.hot_intervals += 1;
            }
        }
        let slot = match self.pending.entry(iv.index) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(Pending {
                metrics: MetricSet::new(self.layouts)?,
                counters: Counters::default(),
                reporters: 0,
                max_cpu: 0.0,
                max_cpu_share: 0.0,
                max_lag_us: 0,
                in_flight: 0,
            }),
        };
        add_each(&mut slot.metrics, &metrics)?;
        slot.counters.add(&counters);
        slot.reporters += 1;
        slot.max_cpu = slot.max_cpu.max(health.cpu_percent);
        slot.max_cpu_share = slot.max_cpu_share.max(health.cpu_percent / 100.0 / cores);
        slot.max_lag_us = slot.max_lag_us.max(health.scheduler_lag_us);
        slot.in_flight = slot.in_flight.saturating_add(health.in_flight);
        self.flush_settled();
        Ok(())
    }

    /// Checks an agent's final totals against the sum of its intervals.
    pub fn add_final(&mut self, agent: usize, fin: &pb::Final) -> Result<(), MetricError> {
        let totals = MetricSet::decode(&fin.metrics, self.layouts)?;
        let counters = fin
            .counters
            .as_ref()
            .map(Counters::from_proto)
            .unwrap_or_default();
        self.last_arrival_us = self.last_arrival_us.max(fin.last_arrival_us);
        if let Some(a) = self.agents.get_mut(agent) {
            a.finished = true;
            a.last_seq = fin.last_seq;
            a.delta_bytes = a
                .delta_bytes
                .saturating_add(prost::Message::encoded_len(fin) as u64);
            let mut problems = Vec::new();
            if a.counters != counters {
                problems.push(format!(
                    "counters differ (intervals: {} ok / {} failed, final: {} ok / {} failed)",
                    a.counters.requests_ok,
                    a.counters.requests_failed,
                    counters.requests_ok,
                    counters.requests_failed
                ));
            }
            for m in Metric::ALL {
                let (x, y) = (a.metrics.get(m), totals.get(m));
                if x.count != y.count || x.sum != y.sum || x.hist != y.hist {
                    problems.push(format!(
                        "{m}: intervals hold {} samples, final {}",
                        x.count, y.count
                    ));
                }
            }
            if fin.intervals != a.intervals {
                problems.push(format!(
                    "final says {} intervals, {} arrived",
                    fin.intervals, a.intervals
                ));
            }
            a.mismatch = (!problems.is_empty()).then(|| problems.join("; "));
        }
        self.flush_settled();
        Ok(())
    }

    /// True (and counted) when this agent's interval `seq` was merged already.
    fn is_duplicate(&mut self, agent: usize, seq: u64) -> bool {
        let Some(a) = self.agents.get_mut(agent) else {
            return false;
        };
        let dup = seq > 0 && a.seqs.contains(&seq);
        if dup {
            a.duplicates += 1;
        }
        dup
    }

    /// Counts a session resumed after a dropped connection.
    pub fn agent_resumed(&mut self, agent: usize) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.resumes += 1;
        }
    }

    /// Marks an agent as gone so the timeline does not wait for it.
    pub fn agent_gone(&mut self, agent: usize) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.finished = true;
        }
        self.flush_settled();
    }

    /// Turns intervals every live agent has moved past into timeline rows.
    fn flush_settled(&mut self) {
        let settled_below = self
            .agents
            .iter()
            .filter(|a| !a.finished)
            .map(|a| a.last_index.unwrap_or(0))
            .min();
        let keys: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|k| settled_below.is_none_or(|s| *k < s))
            .collect();
        for k in keys {
            if let Some(p) = self.pending.remove(&k) {
                self.push_row(k, p);
            }
        }
    }

    fn push_row(&mut self, index: u64, p: Pending) {
        // Same layouts throughout (each series was checked on decode).
        if index >= self.warmup_intervals
            && let Err(e) = self.totals.add(&p.metrics)
        {
            tracing::error!(index, "interval left out of the totals: {e}");
        }
        let q = |m: Metric, q: f64| ms(p.metrics.get(m).quantile(q));
        let row = IntervalRow {
            index,
            warmup: index < self.warmup_intervals,
            t_s: index as f64 * self.interval_s,
            agents_reporting: p.reporters,
            requests_ok: p.counters.requests_ok,
            requests_failed: p.counters.requests_failed,
            output_tokens: p.counters.output_tokens,
            ttft_p50_ms: q(Metric::Ttft, 0.5),
            ttft_p99_ms: q(Metric::Ttft, 0.99),
            itl_p50_ms: q(Metric::Itl, 0.5),
            itl_p99_ms: q(Metric::Itl, 0.99),
            e2e_p50_ms: q(Metric::E2e, 0.5),
            e2e_p99_ms: q(Metric::E2e, 0.99),
            max_agent_cpu_percent: p.max_cpu,
            max_agent_cpu_share: p.max_cpu_share,
            max_scheduler_lag_ms: p.max_lag_us as f64 / 1000.0,
            read_lag_p99_ms: q(Metric::ReadLag, 0.99),
            in_flight: p.in_flight,
            monitor: crate::monitor::IntervalMonitor::default(),
        };
        self.timeline.push(row.clone());
        self.settled.push(SettledInterval {
            row,
            metrics: p.metrics,
            counters: p.counters,
        });
    }

    /// The rows settled since the last call, in the order they settled.
    pub fn take_settled(&mut self) -> Vec<SettledInterval> {
        std::mem::take(&mut self.settled)
    }

    /// Settles everything still pending (end of the step).
    pub fn finish(&mut self) -> &[IntervalRow] {
        for (k, p) in std::mem::take(&mut self.pending) {
            self.push_row(k, p);
        }
        self.timeline.sort_by_key(|r| r.index);
        &self.timeline
    }

    /// The most recent settled row (live progress).
    pub fn last_row(&self) -> Option<&IntervalRow> {
        self.timeline.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(index: u64, values: &[u64], ok: u64) -> pb::Interval {
        let mut set = MetricSet::new(Layouts::default()).expect("layouts");
        for v in values {
            set.record(Metric::Ttft, *v);
        }
        let counters = Counters {
            requests_ok: ok,
            ..Counters::default()
        };
        pb::Interval {
            seq: index + 1,
            index,
            metrics: set.encode().expect("encode"),
            counters: Some(counters.to_proto()),
            health: None,
            turns: Vec::new(),
        }
    }

    #[test]
    fn totals_timeline_and_final_check() {
        let mut m = Merger::new(Layouts::default(), 2, 1.0).expect("merger");
        m.add_interval(0, &interval(0, &[1000, 2000], 2))
            .expect("add");
        m.add_interval(1, &interval(0, &[3000], 1)).expect("add");
        m.add_interval(0, &interval(1, &[4000], 1)).expect("add");
        // Interval 0 settles only once both agents moved past it.
        assert!(m.timeline.is_empty());
        m.add_interval(1, &interval(1, &[], 0)).expect("add");
        assert_eq!(m.timeline.len(), 1);
        assert_eq!(m.timeline[0].requests_ok, 3);
        // Histogram totals follow the settled rows; counters every interval.
        assert_eq!(m.totals.get(Metric::Ttft).count, 3);
        assert_eq!(m.counters.requests_ok, 4);

        let mut good = MetricSet::new(Layouts::default()).expect("set");
        for v in [1000, 2000, 4000] {
            good.record(Metric::Ttft, v);
        }
        let fin = pb::Final {
            intervals: 2,
            metrics: good.encode().expect("encode"),
            counters: Some(
                Counters {
                    requests_ok: 3,
                    ..Counters::default()
                }
                .to_proto(),
            ),
            ..pb::Final::default()
        };
        m.add_final(0, &fin).expect("final");
        assert_eq!(m.agents[0].mismatch, None);
        let bad = pb::Final {
            intervals: 2,
            counters: Some(
                Counters {
                    requests_ok: 5,
                    ..Counters::default()
                }
                .to_proto(),
            ),
            ..pb::Final::default()
        };
        m.add_final(1, &bad).expect("final");
        let why = m.agents[1].mismatch.clone().expect("mismatch reported");
        assert!(
            why.contains("counters differ") && why.contains("ttft"),
            "{why}"
        );
        assert_eq!(m.finish().len(), 2);
        assert_eq!(
            m.totals.get(Metric::Ttft).count,
            4,
            "every row in the totals"
        );
    }

    #[test]
    fn a_resent_interval_is_dropped_and_a_gap_is_counted() {
        let mut m = Merger::new(Layouts::default(), 1, 1.0).expect("merger");
        m.add_interval(0, &interval(0, &[1000], 1)).expect("add");
        m.add_interval(0, &interval(0, &[1000], 1)).expect("resent");
        // seq 3 arrives, seq 2 never does.
        m.add_interval(0, &interval(2, &[2000], 1)).expect("add");
        assert_eq!(m.counters.requests_ok, 2, "the resend is not counted twice");
        m.finish();
        assert_eq!(m.totals.get(Metric::Ttft).count, 2);
        assert_eq!(m.agents[0].duplicates, 1);
        assert_eq!(m.agents[0].missing(), 1);
        // The final says four were sent: seq 4 is missing too.
        let fin = pb::Final {
            last_seq: 4,
            ..pb::Final::default()
        };
        m.add_final(0, &fin).expect("final");
        assert_eq!(m.agents[0].missing(), 2);
    }

    #[test]
    fn cpu_share_is_per_agent_cores() {
        let mut m = Merger::new(Layouts::default(), 2, 1.0).expect("merger");
        m.agents[0].cores = 4.0;
        m.agents[1].cores = 2.0;
        let with_cpu = |index: u64, cpu_percent: f64| pb::Interval {
            health: Some(pb::GeneratorHealth {
                cpu_percent,
                ..pb::GeneratorHealth::default()
            }),
            ..interval(index, &[1000], 1)
        };
        // The 4-core agent uses more CPU, the 2-core one more of its cores.
        m.add_interval(0, &with_cpu(0, 250.0)).expect("add");
        m.add_interval(1, &with_cpu(0, 190.0)).expect("add");
        let rows = m.finish();
        assert_eq!(rows[0].max_agent_cpu_percent, 250.0);
        assert!((rows[0].max_agent_cpu_share - 0.95).abs() < 1e-9);
        assert!(crate::accuracy::generator_bound(&rows[0]));
    }

    #[test]
    fn foreign_layout_interval_is_rejected_whole() {
        let mut m = Merger::new(Layouts::default(), 1, 1.0).expect("merger");
        let other = Layouts {
            latency: barrage_common::metrics::Layout {
                lowest: 1,
                highest: 1_000_000,
                sigfig: 2,
            },
            ..Layouts::default()
        };
        let mut set = MetricSet::new(other).expect("set");
        set.record(Metric::Ttft, 5);
        let iv = pb::Interval {
            index: 0,
            metrics: set.encode().expect("encode"),
            ..pb::Interval::default()
        };
        assert!(m.add_interval(0, &iv).is_err());
        assert_eq!(m.totals.get(Metric::Ttft).count, 0);
    }

    #[test]
    fn an_interval_with_one_foreign_histogram_adds_nothing() {
        let mut m = Merger::new(Layouts::default(), 1, 1.0).expect("merger");
        let mut iv = interval(0, &[1000], 1);
        let other = barrage_common::metrics::Layout {
            lowest: 1,
            highest: 1_000_000,
            sigfig: 2,
        };
        let mut foreign = Series::new(other).expect("series");
        foreign.record(5);
        iv.metrics
            .push(foreign.encode(Metric::Itl).expect("encode"));
        assert!(m.add_interval(0, &iv).is_err());
        assert!(m.agents[0].metrics.is_empty(), "agent tally untouched");
        assert_eq!(m.agents[0].intervals, 0);
        assert_eq!(m.finish().len(), 0, "no row half-added");
        assert!(m.totals.is_empty());
    }

    #[test]
    fn totals_are_the_settled_rows_after_the_warmup() {
        let mut m = Merger::new(Layouts::default(), 2, 1.0).expect("merger");
        m.warmup_intervals = 1;
        for agent in 0..2 {
            m.add_interval(agent, &interval(0, &[1000], 1))
                .expect("add");
            m.add_interval(agent, &interval(1, &[2000, 3000], 2))
                .expect("add");
            m.add_interval(agent, &interval(2, &[4000], 1))
                .expect("add");
        }
        // Rows 0 and 1 settled: the warmup row is left out.
        assert_eq!(m.totals.get(Metric::Ttft).count, 4);
        m.finish();
        let t = m.totals.get(Metric::Ttft);
        assert_eq!((t.count, t.sum, t.min, t.max), (6, 18_000, 2000, 4000));
        // Each agent's own sum still holds every interval (the final check).
        assert_eq!(m.agents[0].metrics.get(Metric::Ttft).count, 4);
        assert_eq!(m.counters.requests_ok, 6);
    }

    #[test]
    fn counters_from_agents_saturate_instead_of_wrapping() {
        let mut m = Merger::new(Layouts::default(), 2, 1.0).expect("merger");
        let huge = Counters {
            requests_ok: u64::MAX,
            response_bytes: u64::MAX - 1,
            ..Counters::default()
        };
        for agent in 0..2 {
            let mut iv = interval(0, &[1000], 0);
            iv.counters = Some(huge.to_proto());
            m.add_interval(agent, &iv).expect("add");
        }
        assert_eq!(m.counters.requests_ok, u64::MAX);
        assert_eq!(m.counters.response_bytes, u64::MAX);
    }
}
