//! `controller compare DIR_A DIR_B ...`: the headline figures and
//! percentiles of several results folders side by side (absolute, and the
//! change against the first), and compare.html with their curves overlaid.
//!
//! A folder is a run's (summary.json) or a sweep's (sweep.json, whose steps'
//! folders each hold a summary.json). Sweeps are compared step by step,
//! matched by the step's label; runs of one step each are compared directly.
//!
//! # Noise: when is a difference real?
//!
//! Each run measures its own noise from its timeline. For a figure with a
//! per-interval counterpart (request and output throughput, and the p50 and
//! p99 of ttft, itl and e2e), take that value in every interval after the
//! warmup that has one (x_1..x_n, n ≥ 3); the run's noise is the standard
//! error of their mean, σ = stdev(x) / √n. A difference between runs A and B
//! is *within noise* when |B − A| ≤ 2·√(σ_A² + σ_B²) (about a 95 % band if
//! intervals were independent). It is marked `≈`; a figure with no
//! per-interval counterpart, or a run with fewer than 3 such intervals, is
//! marked `?` (noise unknown). This judges variation over time within each
//! run, not run-to-run variation of the service: repeat runs for that.

pub mod page;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::html::{get_f, step};

/// The compare page's file name.
pub const COMPARE_HTML: &str = "compare.html";

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}: no such folder")]
    Missing(PathBuf),
    #[error("{0}: not a results folder (it holds neither summary.json nor sweep.json)")]
    NotResults(PathBuf),
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One step of a compared folder (a plain run has one).
#[derive(Debug, Clone)]
pub struct Step {
    pub label: String,
    pub summary: Value,
}

/// One compared results folder.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub name: String,
    pub status: String,
    pub steps: Vec<Step>,
    /// sweep.json, for a sweep.
    pub sweep: Option<Value>,
}

fn read_json(path: &Path) -> Result<Value, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|e| CompareError::Bad {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| CompareError::Bad {
        path: path.to_owned(),
        reason: format!("not valid JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(CompareError::Bad {
            path: path.to_owned(),
            reason: "not a JSON object".into(),
        });
    }
    Ok(v)
}

/// Reads a results folder: a run's or a sweep's.
pub fn load(dir: &Path) -> Result<Run, CompareError> {
    if !dir.is_dir() {
        return Err(CompareError::Missing(dir.to_owned()));
    }
    let summary = dir.join("summary.json");
    if summary.is_file() {
        let s = read_json(&summary)?;
        if s.get("requests_ok").is_none() || s.get("metrics").is_none() {
            return Err(CompareError::Bad {
                path: summary,
                reason: "not a barrage summary (no requests_ok / metrics)".into(),
            });
        }
        let name = s["name"].as_str().unwrap_or("").to_owned();
        return Ok(Run {
            dir: dir.to_owned(),
            status: s["status"].as_str().unwrap_or("").to_owned(),
            steps: vec![Step {
                label: name.clone(),
                summary: s,
            }],
            name,
            sweep: None,
        });
    }
    let sweep = dir.join("sweep.json");
    if !sweep.is_file() {
        return Err(CompareError::NotResults(dir.to_owned()));
    }
    let r = read_json(&sweep)?;
    let mut steps = Vec::new();
    for row in r["steps"].as_array().into_iter().flatten() {
        let step_dir = step_folder(dir, row["dir"].as_str().unwrap_or(""));
        let s = read_json(&step_dir.join("summary.json"))?;
        steps.push(Step {
            label: row["label"].as_str().unwrap_or("").to_owned(),
            summary: s,
        });
    }
    Ok(Run {
        dir: dir.to_owned(),
        name: r["name"].as_str().unwrap_or("").to_owned(),
        status: r["status"].as_str().unwrap_or("").to_owned(),
        steps,
        sweep: Some(r),
    })
}

/// A step's folder as sweep.json names it, or the folder of that name
/// inside the sweep's (the sweep was moved, or run from another directory).
fn step_folder(sweep_dir: &Path, named: &str) -> PathBuf {
    let p = PathBuf::from(named);
    if p.join("summary.json").is_file() {
        return p;
    }
    p.file_name()
        .map_or_else(|| sweep_dir.to_owned(), |f| sweep_dir.join(f))
}

/// A compared figure: its label, how to read it from a summary, and its
/// per-interval counterpart in the timeline (for the noise rule).
pub struct Figure {
    pub label: &'static str,
    pub value: fn(&Value) -> Option<f64>,
    pub per_interval: Option<PerInterval>,
}

/// How a timeline row gives the figure's per-interval value.
#[derive(Clone, Copy)]
pub enum PerInterval {
    /// A count per interval, divided by the interval's length.
    Rate(&'static str),
    /// A value as it is.
    Value(&'static str),
}

macro_rules! pct {
    ($m:literal, $p:literal) => {
        |s: &Value| step::pct(s, $m, $p)
    };
}

/// The figures of the table, in order.
pub fn figures() -> Vec<Figure> {
    use PerInterval::{Rate, Value as V};
    let f = |label, value: fn(&Value) -> Option<f64>, per_interval| Figure {
        label,
        value,
        per_interval,
    };
    vec![
        f("requests ok", |s| get_f(s, "requests_ok"), None),
        f("requests failed", |s| get_f(s, "requests_failed"), None),
        f(
            "success rate (%)",
            |s| get_f(s, "success_rate").map(|x| x * 100.0),
            None,
        ),
        f(
            "request throughput (req/s)",
            |s| get_f(s, "request_throughput"),
            Some(Rate("requests_ok")),
        ),
        f(
            "output throughput (tok/s)",
            |s| get_f(s, "output_throughput"),
            Some(Rate("output_tokens")),
        ),
        f(
            "total token throughput (tok/s)",
            |s| get_f(s, "total_token_throughput"),
            None,
        ),
        f("goodput (req/s)", |s| get_f(s, "goodput"), None),
        f("ttft p50 (ms)", pct!("ttft", "p50"), Some(V("ttft_p50_ms"))),
        f("ttft p90 (ms)", pct!("ttft", "p90"), None),
        f("ttft p99 (ms)", pct!("ttft", "p99"), Some(V("ttft_p99_ms"))),
        f("itl p50 (ms)", pct!("itl", "p50"), Some(V("itl_p50_ms"))),
        f("itl p99 (ms)", pct!("itl", "p99"), Some(V("itl_p99_ms"))),
        f("tpot p50 (ms)", pct!("tpot", "p50"), None),
        f("tpot p99 (ms)", pct!("tpot", "p99"), None),
        f("e2e p50 (ms)", pct!("e2e", "p50"), Some(V("e2e_p50_ms"))),
        f("e2e p90 (ms)", pct!("e2e", "p90"), None),
        f("e2e p99 (ms)", pct!("e2e", "p99"), Some(V("e2e_p99_ms"))),
    ]
}

/// The smallest positive step between timeline rows (the interval length).
fn interval_s(rows: &[Value]) -> Option<f64> {
    let ts: Vec<f64> = rows.iter().filter_map(|r| get_f(r, "t_s")).collect();
    ts.windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0.0)
        .reduce(f64::min)
}

/// The standard error of a run's figure from its per-interval values
/// (None: fewer than 3 intervals after the warmup carry one).
pub fn noise(summary: &Value, per: PerInterval) -> Option<f64> {
    let rows: Vec<Value> = summary["timeline"].as_array().cloned().unwrap_or_default();
    let dt = interval_s(&rows);
    let xs: Vec<f64> = rows
        .iter()
        .filter(|r| r["warmup"].as_bool() != Some(true))
        .filter_map(|r| match per {
            PerInterval::Rate(k) => Some(get_f(r, k)? / dt?),
            PerInterval::Value(k) => get_f(r, k),
        })
        .collect();
    if xs.len() < 3 {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some(var.sqrt() / n.sqrt())
}

/// How a difference compares with the two runs' noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Beyond 2·√(σ_A² + σ_B²).
    Beyond,
    /// Within it: not a real difference by this rule.
    WithinNoise,
    /// No noise estimate for one of the runs.
    Unknown,
}

pub fn judge(a: f64, b: f64, noise_a: Option<f64>, noise_b: Option<f64>) -> Verdict {
    match (noise_a, noise_b) {
        (Some(na), Some(nb)) => {
            if (b - a).abs() <= 2.0 * (na * na + nb * nb).sqrt() {
                Verdict::WithinNoise
            } else {
                Verdict::Beyond
            }
        }
        _ => Verdict::Unknown,
    }
}

impl Verdict {
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Beyond => "",
            Verdict::WithinNoise => "≈",
            Verdict::Unknown => "?",
        }
    }
}

/// One cell of the table: a run's value and, after the first run, its
/// change against the first.
#[derive(Debug, Clone)]
pub struct Cell {
    pub value: Option<f64>,
    /// (B − A, % change, verdict) against the first run.
    pub change: Option<(f64, Option<f64>, Verdict)>,
}

/// A group of rows: all runs at one step (a step label, or "" for runs of
/// one step each).
pub struct Group {
    pub step: String,
    pub rows: Vec<(&'static str, Vec<Cell>)>,
}

/// The steps to compare: each run's only step when every run has one,
/// else the first run's step labels (then the others' new ones).
fn step_labels(runs: &[Run]) -> Option<Vec<String>> {
    if runs.iter().all(|r| r.steps.len() == 1) {
        return None;
    }
    let mut labels: Vec<String> = Vec::new();
    for s in runs.iter().flat_map(|r| &r.steps) {
        if !labels.contains(&s.label) {
            labels.push(s.label.clone());
        }
    }
    Some(labels)
}

fn cells(fig: &Figure, steps: &[Option<&Value>]) -> Vec<Cell> {
    let base = steps.first().copied().flatten();
    let a = base.and_then(fig.value);
    let na = base.zip(fig.per_interval).and_then(|(s, p)| noise(s, p));
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let value = s.and_then(fig.value);
            let change = (i > 0).then_some(()).and(a.zip(value)).map(|(a, b)| {
                let nb = s.zip(fig.per_interval).and_then(|(s, p)| noise(s, p));
                let pct = (a != 0.0).then(|| (b - a) / a.abs() * 100.0);
                let v = match fig.per_interval {
                    Some(_) => judge(a, b, na, nb),
                    None => Verdict::Unknown,
                };
                (b - a, pct, v)
            });
            Cell { value, change }
        })
        .collect()
}

/// The comparison, grouped by step.
pub fn compare(runs: &[Run]) -> Vec<Group> {
    let figs = figures();
    let group = |step: String, steps: Vec<Option<&Value>>| Group {
        step,
        rows: figs.iter().map(|f| (f.label, cells(f, &steps))).collect(),
    };
    match step_labels(runs) {
        None => vec![group(
            String::new(),
            runs.iter()
                .map(|r| r.steps.first().map(|s| &s.summary))
                .collect(),
        )],
        Some(labels) => labels
            .into_iter()
            .map(|l| {
                let steps = runs
                    .iter()
                    .map(|r| r.steps.iter().find(|s| s.label == l).map(|s| &s.summary))
                    .collect();
                group(l, steps)
            })
            .collect(),
    }
}

/// Letters naming the runs in tables and legends: A, B, ...
pub fn letter(i: usize) -> String {
    let l = (b'A' + (i % 26) as u8) as char;
    if i < 26 {
        l.to_string()
    } else {
        format!("{l}{}", i / 26)
    }
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    crate::html::page::num(v)
}

pub(crate) fn fmt_change(c: &Cell) -> String {
    match c.change {
        None => "–".into(),
        // The same value: no change to judge.
        Some((0.0, _, _)) => "0".into(),
        Some((d, pct, v)) => {
            let sign = if d > 0.0 { "+" } else { "-" };
            let pct = pct.map_or_else(String::new, |p| format!(" {p:+.1}%"));
            format!("{sign}{}{pct} {}", fmt(Some(d.abs())), v.mark())
                .trim_end()
                .to_owned()
        }
    }
}

/// The table as printed on the console.
pub fn render(runs: &[Run], groups: &[Group]) -> String {
    let mut out = String::from("\nCompare\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {} = {} ({}, {})",
            letter(i),
            r.dir.display(),
            r.name,
            r.status
        );
    }
    let w = 30;
    for g in groups {
        if !g.step.is_empty() {
            let _ = writeln!(out, "\n  step {}", g.step);
        }
        let _ = write!(out, "\n  {:<w$}", "figure");
        for i in 0..runs.len() {
            let _ = write!(out, "{:>12}", letter(i));
            if i > 0 {
                let _ = write!(out, "{:>24}", format!("{} vs A", letter(i)));
            }
        }
        out.push('\n');
        for (label, cells) in &g.rows {
            let _ = write!(out, "  {label:<w$}");
            for (i, c) in cells.iter().enumerate() {
                let _ = write!(out, "{:>12}", fmt(c.value));
                if i > 0 {
                    let _ = write!(out, "{:>24}", fmt_change(c));
                }
            }
            out.push('\n');
        }
    }
    out.push_str("\n  ≈ within the runs' own noise (|B−A| ≤ 2·√(σA²+σB²), σ = stdev of the per-interval values / √n);\n  ? no per-interval estimate of noise for this figure; blank: beyond the noise.\n");
    out
}

/// Reads every folder, prints the table, writes compare.html to `html`.
pub fn run(dirs: &[PathBuf], html: &Path) -> Result<String, CompareError> {
    let runs = dirs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let groups = compare(&runs);
    let text = render(&runs, &groups);
    let page = page::page(&runs, &groups);
    if let Some(parent) = html.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| CompareError::Write {
            path: parent.to_owned(),
            source: e,
        })?;
    }
    std::fs::write(html, page).map_err(|e| CompareError::Write {
        path: html.to_owned(),
        source: e,
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_timeline(rates: &[u64]) -> Value {
        let rows: Vec<Value> = rates
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"t_s": i as f64, "warmup": false, "requests_ok": n}))
            .collect();
        json!({"timeline": rows})
    }

    #[test]
    fn noise_is_the_standard_error_of_the_interval_values() {
        let s = with_timeline(&[9, 11, 9, 11]);
        let sigma = noise(&s, PerInterval::Rate("requests_ok")).expect("4 intervals");
        // stdev of 9,11,9,11 (n-1) = 1.1547; / √4
        assert!((sigma - 0.57735).abs() < 1e-4, "{sigma}");
        assert_eq!(
            noise(&with_timeline(&[1, 2]), PerInterval::Rate("requests_ok")),
            None
        );
    }

    #[test]
    fn a_difference_inside_twice_the_combined_noise_is_not_real() {
        assert_eq!(
            judge(10.0, 11.0, Some(0.5), Some(0.5)),
            Verdict::WithinNoise
        );
        assert_eq!(judge(10.0, 12.0, Some(0.5), Some(0.5)), Verdict::Beyond);
        assert_eq!(judge(10.0, 10.0, None, Some(0.5)), Verdict::Unknown);
    }
}
