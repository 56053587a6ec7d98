//! Judging a run against `[thresholds]`: exact checks on the merged totals at
//! the end, and the early "clearly lost" test behind `abort_on_breach`.

use barrage_common::metrics::{Counters, MetricSet};
use barrage_common::thresholds::{Check, CheckResult, Stat, Subject};

/// Run figures a check may need beside the histograms.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFigures {
    pub duration_s: f64,
    /// Open loop: planned arrivals per second (None: closed loop or "inf").
    pub offered_rate: Option<f64>,
    /// Open loop: started per second over the arrivals' span (None: over
    /// `duration_s`).
    pub achieved_rate: Option<f64>,
}

fn per_s(n: u64, s: f64) -> Option<f64> {
    (s > 0.0).then(|| n as f64 / s)
}

/// The value a check looks at (latencies in ms).
pub fn actual(check: &Check, totals: &MetricSet, c: &Counters, f: RunFigures) -> Option<f64> {
    match check.subject {
        Subject::Metric(m, stat) => {
            let s = totals.get(m);
            let scale = if m.is_latency() { 1000.0 } else { 1.0 };
            let v = match stat {
                Stat::Quantile(q) => s.quantile(q).map(|v| v as f64),
                Stat::Mean => s.mean(),
                Stat::Max => (s.count > 0).then_some(s.max as f64),
            };
            v.map(|v| v / scale)
        }
        Subject::ErrorRate => {
            let total = c.requests_ok + c.requests_failed;
            (total > 0).then(|| c.requests_failed as f64 / total as f64)
        }
        Subject::RequestThroughput => per_s(c.requests_ok, f.duration_s),
        Subject::OutputThroughput => per_s(c.output_tokens, f.duration_s),
        Subject::AchievedRateRatio => {
            let achieved = f
                .achieved_rate
                .or_else(|| per_s(c.requests_started, f.duration_s))?;
            f.offered_rate.filter(|o| *o > 0.0).map(|o| achieved / o)
        }
    }
}

pub fn evaluate(
    checks: &[Check],
    totals: &MetricSet,
    c: &Counters,
    f: RunFigures,
) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|k| k.judge(actual(k, totals, c, f)))
        .collect()
}

/// Samples needed before a rate-free judgement is trusted mid-run.
const MIN_SAMPLES: u64 = 200;

/// True when the limit cannot be met any more (requests-bounded runs: more
/// samples already beyond the limit than the quantile allows of the planned
/// total), or is missed by half again with enough samples (duration runs).
pub fn clearly_lost(
    check: &Check,
    totals: &MetricSet,
    c: &Counters,
    planned_requests: Option<u64>,
) -> bool {
    match check.subject {
        Subject::Metric(m, Stat::Quantile(q)) => {
            let s = totals.get(m);
            let scale = if m.is_latency() { 1000.0 } else { 1.0 };
            let limit = (check.limit * scale).round() as u64;
            if let Some(n) = planned_requests {
                let above = s.hist.count_between(limit.saturating_add(1), s.hist.high());
                // The epsilon keeps (1 − 0.9) × 100 at 10, not 9.999….
                let allowed = ((1.0 - q) * n as f64 + 1e-9).floor() as u64;
                return above > allowed;
            }
            s.count >= MIN_SAMPLES
                && s.quantile(q)
                    .is_some_and(|v| v as f64 > 1.5 * check.limit * scale)
        }
        Subject::ErrorRate => {
            if let Some(n) = planned_requests {
                return c.requests_failed as f64 > check.limit * n as f64;
            }
            let total = c.requests_ok + c.requests_failed;
            total >= MIN_SAMPLES
                && c.requests_failed as f64 / total as f64 > 2.0 * check.limit.max(0.01)
        }
        // Throughputs and means can recover until the end: never abort on them.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::metrics::{Layouts, Metric};
    use barrage_common::thresholds::parse_check;

    fn check(k: &str, v: toml::Value) -> Check {
        parse_check(k, &v).expect("valid")
    }

    #[test]
    fn evaluates_quantiles_and_rates() {
        let mut set = MetricSet::new(Layouts::default()).expect("set");
        for v in 1..=100u64 {
            set.record(Metric::Ttft, v * 1000); // 1..100 ms
        }
        let c = Counters {
            requests_ok: 99,
            requests_failed: 1,
            output_tokens: 1000,
            ..Counters::default()
        };
        let f = RunFigures {
            duration_s: 10.0,
            offered_rate: None,
            achieved_rate: None,
        };
        let r = evaluate(
            &[
                check("ttft_p50", toml::Value::String("60ms".into())),
                check("ttft_p99", toml::Value::String("50ms".into())),
                check("error_rate", toml::Value::Float(0.02)),
                check("output_throughput", toml::Value::Integer(200)),
            ],
            &set,
            &c,
            f,
        );
        assert_eq!(
            r.iter().map(|x| x.passed).collect::<Vec<_>>(),
            vec![true, false, true, false]
        );
        assert!((r[0].actual.unwrap_or(0.0) - 50.0).abs() < 0.1);
    }

    #[test]
    fn bounded_runs_are_lost_once_too_many_samples_exceed() {
        let mut set = MetricSet::new(Layouts::default()).expect("set");
        let p90 = check("e2e_p90", toml::Value::String("10ms".into()));
        for _ in 0..10 {
            set.record(Metric::E2e, 50_000);
        }
        let c = Counters::default();
        // 10 slow of 100 planned: p90 can still hold.
        assert!(!clearly_lost(&p90, &set, &c, Some(100)));
        set.record(Metric::E2e, 50_000);
        assert!(clearly_lost(&p90, &set, &c, Some(100)));
        let errors = check("error_rate", toml::Value::Float(0.05));
        let c = Counters {
            requests_failed: 6,
            ..Counters::default()
        };
        assert!(clearly_lost(&errors, &set, &c, Some(100)));
    }
}
