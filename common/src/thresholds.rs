//! Pass/fail limits on a run's results: `[thresholds]` (the CI verdict) and
//! `[slo]` (what a sweep's SLO search must keep). Keys name a metric and a
//! statistic (`ttft_p99 = "2s"`, `itl_mean = "50ms"`, `output_tokens_p50 = 100`)
//! or a run figure (`error_rate = 0.01`, `request_throughput = 5`,
//! `achieved_rate_ratio = 0.95`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// The raw table: every key but `abort_on_breach` is a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ThresholdsSection {
    /// Stop the run early, on every agent, once a limit is clearly lost.
    #[serde(default)]
    pub abort_on_breach: bool,
    #[serde(flatten)]
    pub limits: BTreeMap<String, toml::Value>,
}

/// A statistic of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Stat {
    Quantile(f64),
    Mean,
    Max,
}

impl Stat {
    fn parse(s: &str) -> Option<Stat> {
        match s {
            "mean" | "avg" => Some(Stat::Mean),
            "max" => Some(Stat::Max),
            "p999" | "p99.9" => Some(Stat::Quantile(0.999)),
            _ => {
                let n: f64 = s.strip_prefix('p')?.parse().ok()?;
                (n > 0.0 && n < 100.0).then_some(Stat::Quantile(n / 100.0))
            }
        }
    }
}

/// What a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Subject {
    /// A distribution statistic must be at most the limit (ms or tokens).
    Metric(Metric, Stat),
    /// Failed / total must be at most the limit.
    ErrorRate,
    /// Completed requests per second must be at least the limit.
    RequestThroughput,
    /// Output tokens per second must be at least the limit.
    OutputThroughput,
    /// Achieved / offered arrival rate must be at least the limit.
    AchievedRateRatio,
}

impl Subject {
    /// True when the value must stay at or below the limit.
    pub fn is_upper_bound(self) -> bool {
        matches!(self, Subject::Metric(..) | Subject::ErrorRate)
    }
}

/// One parsed limit. Latency limits are held in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub key: String,
    pub subject: Subject,
    pub limit: f64,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.subject.is_upper_bound() {
            "<="
        } else {
            ">="
        };
        write!(f, "{} {op} {}", self.key, self.limit)
    }
}

/// `thresholds.<key>: <problem>` (or `slo.<key>`; the caller adds the table name).
pub type CheckError = (String, String);

fn number(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// Parses one `key = value` limit.
pub fn parse_check(key: &str, value: &toml::Value) -> Result<Check, CheckError> {
    let err = |p: &str| Err((key.to_owned(), p.to_owned()));
    let fraction = |v: &toml::Value| number(v).filter(|x| (0.0..=1.0).contains(x));
    let positive = |v: &toml::Value| number(v).filter(|x| x.is_finite() && *x >= 0.0);
    let (subject, limit) = match key {
        "error_rate" => match fraction(value) {
            Some(x) => (Subject::ErrorRate, x),
            None => return err("must be a fraction between 0 and 1"),
        },
        "achieved_rate_ratio" => match fraction(value) {
            Some(x) => (Subject::AchievedRateRatio, x),
            None => return err("must be a fraction between 0 and 1"),
        },
        "request_throughput" | "output_throughput" => match positive(value) {
            Some(x) if key == "request_throughput" => (Subject::RequestThroughput, x),
            Some(x) => (Subject::OutputThroughput, x),
            None => return err("must be a number >= 0 (per second)"),
        },
        _ => {
            let Some((name, stat)) = key.rsplit_once('_') else {
                return err(
                    "unknown limit: use <metric>_<p50|p90|p99|p99.9|mean|max>, error_rate, request_throughput, output_throughput or achieved_rate_ratio",
                );
            };
            let (Some(metric), Some(stat)) = (Metric::from_name(name), Stat::parse(stat)) else {
                return err(
                    "unknown limit: use <metric>_<p50|p90|p99|p99.9|mean|max> with a metric of METRICS.md, error_rate, request_throughput, output_throughput or achieved_rate_ratio",
                );
            };
            let limit = if metric.is_latency() {
                match value.as_str().map(humantime::parse_duration) {
                    Some(Ok(d)) => d.as_secs_f64() * 1000.0,
                    _ => return err("a latency limit is a duration such as \"2s\" or \"150ms\""),
                }
            } else {
                match positive(value) {
                    Some(x) => x,
                    None => return err("a token limit is a number >= 0"),
                }
            };
            (Subject::Metric(metric, stat), limit)
        }
    };
    Ok(Check {
        key: key.to_owned(),
        subject,
        limit,
    })
}

impl ThresholdsSection {
    pub fn checks(&self) -> Result<Vec<Check>, CheckError> {
        self.limits.iter().map(|(k, v)| parse_check(k, v)).collect()
    }
}

/// The outcome of one check on one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub key: String,
    pub limit: f64,
    /// `None` when the run produced no value (e.g. no successful request).
    pub actual: Option<f64>,
    pub passed: bool,
}

impl Check {
    /// Judges `actual`; a missing value fails (nothing proves the limit held).
    pub fn judge(&self, actual: Option<f64>) -> CheckResult {
        let passed = match actual {
            Some(v) if self.subject.is_upper_bound() => v <= self.limit,
            Some(v) => v >= self.limit,
            None => false,
        };
        CheckResult {
            key: self.key.clone(),
            limit: self.limit,
            actual,
            passed,
        }
    }
}

/// A duration limit in milliseconds (for messages).
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metric_and_run_limits() {
        let t: ThresholdsSection = toml::from_str(
            "abort_on_breach = true\nttft_p99 = \"2s\"\n\"itl_p99.9\" = \"100ms\"\noutput_tokens_mean = 64\nerror_rate = 0.01\nrequest_throughput = 5",
        )
        .expect("toml");
        assert!(t.abort_on_breach);
        let checks = t.checks().expect("valid");
        let by = |k: &str| checks.iter().find(|c| c.key == k).expect(k).clone();
        assert_eq!(
            by("ttft_p99").subject,
            Subject::Metric(Metric::Ttft, Stat::Quantile(0.99))
        );
        assert_eq!(by("ttft_p99").limit, 2000.0);
        assert_eq!(
            by("itl_p99.9").subject,
            Subject::Metric(Metric::Itl, Stat::Quantile(0.999))
        );
        assert_eq!(by("output_tokens_mean").limit, 64.0);
        assert_eq!(by("error_rate").subject, Subject::ErrorRate);
    }

    #[test]
    fn bad_limits_name_the_key() {
        assert_eq!(
            parse_check("ttft_p99", &toml::Value::Integer(2)).map_err(|e| e.0),
            Err("ttft_p99".into())
        );
        assert!(parse_check("tft_p99", &toml::Value::String("1s".into())).is_err());
        assert!(parse_check("error_rate", &toml::Value::Float(1.5)).is_err());
        assert!(parse_check("ttft_p100", &toml::Value::String("1s".into())).is_err());
    }

    #[test]
    fn judging_upper_and_lower_bounds() {
        let c = parse_check("e2e_p50", &toml::Value::String("1s".into())).expect("valid");
        assert!(c.judge(Some(999.0)).passed);
        assert!(!c.judge(Some(1001.0)).passed);
        assert!(!c.judge(None).passed);
        let t = parse_check("request_throughput", &toml::Value::Float(2.0)).expect("valid");
        assert!(t.judge(Some(2.5)).passed && !t.judge(Some(1.5)).passed);
    }
}
