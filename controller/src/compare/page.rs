//! compare.html: the table, and the runs' curves overlaid (latency
//! percentile curves; throughput and latency over time; sweep curves).

use serde_json::Value;

use super::{Group, Run, fmt, fmt_change, letter};
use crate::html::get_f;
use crate::html::page::{Page, esc, series, spec, table};
use crate::html::step::{curve, unobservable};
use crate::html::sweep::{by_load, load_axis};

/// More lines than this in one chart are unreadable: sweeps then show
/// only each run's last (heaviest) step.
const MAX_LINES: usize = 12;

pub fn page(runs: &[Run], groups: &[Group]) -> String {
    let mut p = Page::new();
    p.push("<header class=\"top\"><h1>barrage: compare</h1><div class=\"meta\">");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                format!("<b>{}</b>", letter(i)),
                esc(&r.name),
                format!("<span class=\"status-{0}\">{0}</span>", esc(&r.status)),
                r.steps.len().to_string(),
                format!("<code>{}</code>", esc(&r.dir.display().to_string())),
            ]
        })
        .collect();
    p.push("</div></header><section id=\"runs\"><h2>Runs</h2>");
    p.push(&table(&["", "name", "status", "steps", "folder"], &rows));
    p.push("</section>");
    figures(&mut p, runs, groups);
    curves(&mut p, runs);
    over_time(&mut p, runs);
    sweeps(&mut p, runs);
    p.finish("barrage: compare")
}

fn figures(p: &mut Page, runs: &[Run], groups: &[Group]) {
    p.push("<section id=\"figures\"><h2>Figures</h2><p class=\"meta\">Change against A. ≈: within the runs' own noise (|B−A| ≤ 2·√(σA²+σB²), σ the standard error of the per-interval values); ?: no per-interval estimate of noise for this figure.</p>");
    let mut head = vec!["figure".to_owned()];
    for i in 0..runs.len() {
        head.push(letter(i));
        if i > 0 {
            head.push(format!("{} vs A", letter(i)));
        }
    }
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    for g in groups {
        if !g.step.is_empty() {
            p.push(&format!("<h3>step {}</h3>", esc(&g.step)));
        }
        let rows: Vec<Vec<String>> = g
            .rows
            .iter()
            .map(|(label, cells)| {
                let mut r = vec![esc(label)];
                for (i, c) in cells.iter().enumerate() {
                    r.push(fmt(c.value));
                    if i > 0 {
                        r.push(esc(&fmt_change(c)));
                    }
                }
                r
            })
            .collect();
        p.push(&table(&head, &rows));
    }
    p.push("</section>");
}

/// (series name, summary) of every run's steps, or each run's last step
/// when that would be too many lines.
fn lines(runs: &[Run]) -> Vec<(String, &Value)> {
    let all: usize = runs.iter().map(|r| r.steps.len()).sum();
    runs.iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let one = r.steps.len() == 1;
            let steps: Vec<_> = if all > MAX_LINES {
                r.steps.last().into_iter().collect()
            } else {
                r.steps.iter().collect()
            };
            steps.into_iter().map(move |s| {
                let name = if one {
                    format!("{} {}", letter(i), r.name)
                } else {
                    format!("{} {}", letter(i), s.label)
                };
                (name, &s.summary)
            })
        })
        .collect()
}

fn curves(p: &mut Page, runs: &[Run]) {
    p.push("<section id=\"distributions\"><h2>Latency distributions</h2><div class=\"charts\">");
    let lines = lines(runs);
    for (m, t) in [
        ("ttft", "TTFT"),
        ("itl", "ITL"),
        ("tpot", "TPOT"),
        ("e2e", "E2E"),
    ] {
        let s: Vec<Value> = lines
            .iter()
            .filter(|(_, s)| !unobservable(s, m))
            .map(|(n, s)| series(n, curve(s, m)))
            .filter(|s| s["points"].as_array().is_some_and(|a| !a.is_empty()))
            .collect();
        let title = format!("{t} (ms)");
        if s.is_empty() {
            p.no_chart(&title, "– no run observed it");
            continue;
        }
        p.chart(&title, spec("percentile", "nines", "ms", "ms", s));
    }
    p.push("</div></section>");
}

/// Per-interval throughput and TTFT p50 of runs of one step, overlaid.
fn over_time(p: &mut Page, runs: &[Run]) {
    if runs.iter().any(|r| r.steps.len() != 1) {
        return;
    }
    p.push("<section id=\"timeline\"><h2>Over time</h2><div class=\"charts\">");
    let per_run = |f: &dyn Fn(&Value, f64) -> Option<f64>| -> Vec<Value> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| {
                let s = &r.steps[0].summary;
                let rows: Vec<&Value> = s["timeline"].as_array().into_iter().flatten().collect();
                let dt = rows
                    .windows(2)
                    .filter_map(|w| Some(get_f(w[1], "t_s")? - get_f(w[0], "t_s")?))
                    .filter(|d| *d > 0.0)
                    .reduce(f64::min)
                    .unwrap_or(1.0);
                series(
                    &format!("{} {}", letter(i), r.name),
                    rows.iter()
                        .filter_map(|row| Some((get_f(row, "t_s")?, f(row, dt))))
                        .collect(),
                )
            })
            .collect()
    };
    p.chart(
        "Requests per second",
        spec(
            "time (s)",
            "linear",
            "req/s",
            "req/s",
            per_run(&|r, dt| get_f(r, "requests_ok").map(|n| n / dt)),
        ),
    );
    p.chart(
        "Output tokens per second",
        spec(
            "time (s)",
            "linear",
            "tok/s",
            "tok/s",
            per_run(&|r, dt| get_f(r, "output_tokens").map(|n| n / dt)),
        ),
    );
    p.chart(
        "TTFT p50 (ms)",
        spec(
            "time (s)",
            "linear",
            "ms",
            "ms",
            per_run(&|r, _| get_f(r, "ttft_p50_ms")),
        ),
    );
    p.push("</div></section>");
}

/// Sweep curves of every run that is a sweep, overlaid.
fn sweeps(p: &mut Page, runs: &[Run]) {
    let sw: Vec<(usize, Vec<Value>)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.sweep.as_ref()?["steps"].as_array()?.clone())))
        .collect();
    if sw.is_empty() {
        return;
    }
    let all: Vec<Value> = sw.iter().flat_map(|(_, s)| s.clone()).collect();
    let (key, label) = load_axis(&all);
    p.push("<section id=\"sweeps\"><h2>Sweeps</h2><div class=\"charts\">");
    let mk = |x: &str, y: &str| -> Vec<Value> {
        sw.iter()
            .map(|(i, steps)| {
                let rows = by_load(steps, key);
                series(
                    &format!("{} {}", letter(*i), runs[*i].name),
                    rows.iter()
                        .filter_map(|r| Some((get_f(r, x)?, get_f(r, y))))
                        .collect(),
                )
            })
            .collect()
    };
    for (y, t) in [
        ("ttft_p50_ms", "TTFT p50"),
        ("ttft_p99_ms", "TTFT p99"),
        ("e2e_p50_ms", "E2E p50"),
    ] {
        p.chart(
            &format!("{t} (ms) by request throughput"),
            spec(
                "request throughput (req/s)",
                "linear",
                "ms",
                "ms",
                mk("request_throughput", y),
            ),
        );
    }
    p.chart(
        &format!("Request throughput by {label}"),
        spec(
            label,
            "linear",
            "req/s",
            "req/s",
            mk(key, "request_throughput"),
        ),
    );
    p.chart(
        &format!("TTFT p99 (ms) by {label}"),
        spec(label, "linear", "ms", "ms", mk(key, "ttft_p99_ms")),
    );
    p.push("</div></section>");
}
