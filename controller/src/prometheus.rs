//! The Prometheus text exposition format (0.0.4, as vLLM, SGLang and TGI
//! serve it; OpenMetrics' `# EOF`, `# UNIT` and exemplars are tolerated),
//! parsed into typed families and labelled series, then each metric the plan
//! names reduced to one number per scrape according to its type: counters
//! (and histogram / summary `_sum`, `_count`, `_bucket` series) are summed
//! over their label sets, gauges (and untyped metrics, and summary
//! quantiles) averaged — two GPUs at 55 % read 55 %, not 110 %.
//!
//! Written here because the maintained crates do not fit: `prometheus-parse`
//! 0.2 matches metric names with `\w+` (vLLM's `vllm:` names never match)
//! and splits labels on `,` and `=` (values holding them break), and
//! `openmetrics-parser` is LGPL-3.0.

use std::collections::BTreeMap;

/// A metric family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    fn parse(s: &str) -> Self {
        match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" | "gaugehistogram" => Self::Histogram,
            "summary" => Self::Summary,
            _ => Self::Untyped,
        }
    }
}

/// One line of a metric: its name, its label pairs (sorted by name) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A scraped page: types by family name, the samples, and the lines that
/// could not be read (line number from 1, reason).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub types: BTreeMap<String, MetricType>,
    pub samples: Vec<Sample>,
    pub malformed: Vec<(usize, String)>,
}

/// How the series of one metric became one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Sum,
    Mean,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Mean => "mean",
        }
    }
}

/// One metric of one scrape: the value over `series` label sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reduced {
    pub value: f64,
    pub series: usize,
    pub how: Aggregation,
}

/// Parses a whole page; a bad line is recorded and skipped, never fatal.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                out.types.insert(name.to_owned(), MetricType::parse(kind));
            }
            continue;
        }
        match sample(line) {
            Ok(s) => out.samples.push(s),
            Err(why) => out.malformed.push((i + 1, why)),
        }
    }
    out
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

/// Splits a leading metric or label name off `s`.
fn name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|(i, c)| !is_name_char(*c, *i == 0))
        .map_or(s.len(), |(i, _)| i);
    (end > 0).then(|| s.split_at(end))
}

/// `name{labels} value [timestamp]` (an OpenMetrics exemplar after ` # ` is dropped).
fn sample(line: &str) -> Result<Sample, String> {
    let (metric, rest) = name(line).ok_or("no metric name")?;
    let (mut labels, rest) = match rest.strip_prefix('{') {
        Some(inside) => label_set(inside)?,
        None => (Vec::new(), rest),
    };
    let rest = rest.split(" # ").next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = number(value).ok_or_else(|| format!("value {value:?} is not a number"))?;
    if let Some(ts) = fields.next()
        && ts.parse::<f64>().is_err()
    {
        return Err(format!("timestamp {ts:?} is not a number"));
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    labels.sort();
    Ok(Sample {
        name: metric.to_owned(),
        labels,
        value,
    })
}

/// Go's float syntax as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, `1e-05`.
fn number(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

type Labels = Vec<(String, String)>;

/// The inside of `{...}` and what follows the closing brace.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, rest) = name(s).ok_or("a label without a name")?;
        let rest = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(|| format!("label {key}: no ="))?;
        let rest = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: value not quoted"))?;
        let (value, rest) = quoted(rest).ok_or_else(|| format!("label {key}: no closing quote"))?;
        labels.push((key.to_owned(), value));
        s = rest.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n` undone.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

impl Exposition {
    /// The type of the family `sample_name` belongs to (`x_total` → `x`, ...).
    fn type_of(&self, sample_name: &str) -> (MetricType, bool) {
        if let Some(t) = self.types.get(sample_name) {
            return (*t, false);
        }
        for suffix in ["_total", "_sum", "_count", "_bucket", "_created"] {
            if let Some(t) = sample_name
                .strip_suffix(suffix)
                .and_then(|base| self.types.get(base))
            {
                return (*t, true);
            }
        }
        (MetricType::Untyped, false)
    }

    /// Counters add up over label sets; levels are averaged.
    fn aggregation(&self, sample_name: &str) -> Aggregation {
        match self.type_of(sample_name) {
            // Buckets, sums and counts of histograms and summaries count too.
            (MetricType::Counter | MetricType::Histogram, _) | (MetricType::Summary, true) => {
                Aggregation::Sum
            }
            // A summary's own lines are quantiles: levels.
            (MetricType::Summary | MetricType::Gauge, _) => Aggregation::Mean,
            // No TYPE: the naming convention says `_total` is a counter.
            (MetricType::Untyped, _) if sample_name.ends_with("_total") => Aggregation::Sum,
            (MetricType::Untyped, _) => Aggregation::Mean,
        }
    }

    /// One number per named metric present; NaN and infinite values are
    /// left out (a series that is not a number yet, not a zero).
    pub fn reduce(&self, names: &[String]) -> BTreeMap<String, Reduced> {
        let mut per_series: BTreeMap<&str, BTreeMap<&Labels, f64>> = BTreeMap::new();
        for s in &self.samples {
            if s.value.is_finite() && names.contains(&s.name) {
                // A label set seen twice keeps its last value.
                per_series
                    .entry(s.name.as_str())
                    .or_default()
                    .insert(&s.labels, s.value);
            }
        }
        per_series
            .into_iter()
            .map(|(name, series)| {
                let how = self.aggregation(name);
                let sum: f64 = series.values().sum();
                let value = match how {
                    Aggregation::Sum => sum,
                    Aggregation::Mean => sum / series.len() as f64,
                };
                let reduced = Reduced {
                    value,
                    series: series.len(),
                    how,
                };
                (name.to_owned(), reduced)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As vLLM 0.6+ serves it (prometheus_client): colons in names, several
    /// engines, a histogram and a counter with `_total` and `_created`.
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.55
vllm:gpu_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.55
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1024.0
vllm:prompt_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2048.0
vllm:prompt_tokens_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7123456789e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.84
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 8.0
"#;

    /// As TGI serves it (metrics-exporter-prometheus): no HELP, summaries
    /// with quantiles, an untyped-looking counter name.
    const TGI: &str = "# TYPE tgi_queue_size gauge\ntgi_queue_size 4\n\
        # TYPE tgi_request_count counter\ntgi_request_count 120\n\
        # TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 7\n\
        # TYPE tgi_request_duration summary\n\
        tgi_request_duration{quantile=\"0.5\"} 0.25\ntgi_request_duration{quantile=\"0.99\"} 1.75\n\
        tgi_request_duration_sum 30.5\ntgi_request_duration_count 120\n";

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn vllm_gauges_average_and_counters_add_over_engines() {
        let e = parse(VLLM);
        assert!(e.malformed.is_empty(), "{:?}", e.malformed);
        let r = e.reduce(&names(&[
            "vllm:gpu_cache_usage_perc",
            "vllm:num_requests_running",
            "vllm:prompt_tokens_total",
            "vllm:time_to_first_token_seconds_count",
        ]));
        let cache = r["vllm:gpu_cache_usage_perc"];
        assert_eq!(
            (cache.value, cache.series, cache.how),
            (0.55, 2, Aggregation::Mean)
        );
        assert_eq!(r["vllm:num_requests_running"].value, 4.0);
        let tokens = r["vllm:prompt_tokens_total"];
        assert_eq!((tokens.value, tokens.how), (3072.0, Aggregation::Sum));
        assert_eq!(r["vllm:time_to_first_token_seconds_count"].value, 20.0);
    }

    #[test]
    fn tgi_summaries_counters_and_gauges() {
        let e = parse(TGI);
        assert!(e.malformed.is_empty(), "{:?}", e.malformed);
        let r = e.reduce(&names(&[
            "tgi_queue_size",
            "tgi_request_count",
            "tgi_request_duration_count",
            "tgi_request_duration_sum",
        ]));
        assert_eq!(r["tgi_queue_size"].value, 4.0);
        assert_eq!(r["tgi_request_count"].how, Aggregation::Sum);
        assert_eq!(r["tgi_request_duration_count"].value, 120.0);
        assert_eq!(r["tgi_request_duration_sum"].how, Aggregation::Sum);
    }

    #[test]
    fn escaped_labels_special_values_and_timestamps() {
        let text = "# TYPE g gauge\n\
            g{path=\"C:\\\\DIR\\\\F.TXT\",error=\"Cannot find file:\\n\\\"F.TXT\\\"\",x=\"a,b=c}\"} 2 1395066363000\n\
            g{path=\"other\"} 4\n\
            g{path=\"nan\"} NaN\n\
            g{path=\"inf\"} +Inf\n\
            h_total -Inf\n\
            bad{x=\"unterminated} 1\n\
            also_bad 1 2 3\n\
            # EOF\n";
        let e = parse(text);
        assert_eq!(e.samples.len(), 5);
        let first = &e.samples[0];
        assert_eq!(first.value, 2.0);
        assert!(
            first
                .labels
                .contains(&("path".into(), "C:\\DIR\\F.TXT".into()))
        );
        assert!(
            first
                .labels
                .contains(&("error".into(), "Cannot find file:\n\"F.TXT\"".into()))
        );
        assert!(first.labels.contains(&("x".into(), "a,b=c}".into())));
        assert!(e.samples[2].value.is_nan());
        assert_eq!(e.samples[3].value, f64::INFINITY);
        assert_eq!(e.malformed.len(), 2, "{:?}", e.malformed);
        assert_eq!(e.malformed[0].0, 7);
        // NaN and Inf are not numbers to average: two series remain.
        let g = e.reduce(&names(&["g"]))["g"];
        assert_eq!((g.value, g.series), (3.0, 2));
    }
}
