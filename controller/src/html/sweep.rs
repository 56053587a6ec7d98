//! The page of a sweep or SLO search: one point per step (throughput vs
//! latency, latency vs the load, goodput), the steps' percentile curves
//! overlaid, and links to each step's own report.

use std::path::Path;

use serde_json::{Value, json};

use super::page::{Page, esc, num, series, spec, table};
use super::step::{curve, unobservable};
use super::{REPORT_HTML, definitions, get_f, get_str};

/// The load a sweep varied: its key in a sweep row and its axis label.
pub(crate) fn load_axis(steps: &[Value]) -> (&'static str, &'static str) {
    let distinct = |k: &str| {
        let mut v: Vec<String> = steps.iter().map(|s| s[k].to_string()).collect();
        v.sort();
        v.dedup();
        v.len() > 1 && steps.iter().all(|s| s[k].is_number())
    };
    for (k, label) in [
        ("rate", "offered rate (req/s)"),
        ("users", "users (concurrency)"),
        ("input_tokens", "input tokens"),
        ("output_tokens", "output tokens"),
    ] {
        if distinct(k) {
            return (k, label);
        }
    }
    ("step", "step")
}

/// The rows sorted by the load they were run at.
pub(crate) fn by_load<'a>(steps: &'a [Value], key: &str) -> Vec<&'a Value> {
    let mut rows: Vec<&Value> = steps.iter().collect();
    rows.sort_by(|a, b| {
        let x = |r: &Value| get_f(r, key).unwrap_or(f64::MAX);
        x(a).total_cmp(&x(b))
    });
    rows
}

pub fn page(dir: &Path, report: &Value, steps: &[(u64, Value)]) -> String {
    let rows: Vec<Value> = report["steps"].as_array().cloned().unwrap_or_default();
    let mut p = Page::new();
    let status = get_str(report, "status");
    p.push(&format!(
        "<header class=\"top\"><h1>{} <span class=\"badge status-{}\" id=\"status\">{}</span></h1><div class=\"meta\"><span>sweep of {} steps</span></div></header>",
        esc(get_str(report, "name")),
        esc(status),
        esc(status),
        rows.len()
    ));
    search(&mut p, report);
    step_table(&mut p, dir, &rows);
    let (key, label) = load_axis(&rows);
    let sorted = by_load(&rows, key);
    p.push("<section id=\"knee\"><h2>Throughput vs latency</h2><p class=\"meta\">One point per step, joined in order of load: where latency turns up while throughput stops growing is the knee.</p><div class=\"charts\">");
    vs(
        &mut p,
        &sorted,
        ("request_throughput", "request throughput (req/s)"),
        "ttft",
        "TTFT",
    );
    vs(
        &mut p,
        &sorted,
        ("output_throughput", "output throughput (tok/s)"),
        "itl",
        "ITL",
    );
    vs(
        &mut p,
        &sorted,
        ("request_throughput", "request throughput (req/s)"),
        "e2e",
        "E2E",
    );
    p.push("</div></section>");
    p.push(&format!(
        "<section id=\"by-load\"><h2>By {}</h2><div class=\"charts\">",
        esc(label)
    ));
    for (m, t) in [("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E")] {
        vs(&mut p, &sorted, (key, label), m, t);
    }
    let mut thr = vec![pts(
        "request throughput",
        &sorted,
        key,
        "request_throughput",
    )];
    if sorted.iter().any(|r| get_f(r, "goodput").is_some()) {
        thr.push(pts("goodput", &sorted, key, "goodput"));
    }
    p.chart(
        &format!("Throughput and goodput by {label}"),
        spec(label, "linear", "req/s", "req/s", thr),
    );
    p.chart(
        &format!("Success rate by {label}"),
        spec(
            label,
            "linear",
            "%",
            "%",
            vec![series(
                "success %",
                sorted
                    .iter()
                    .filter_map(|r| {
                        Some((get_f(r, key)?, get_f(r, "success_rate").map(|x| x * 100.0)))
                    })
                    .collect(),
            )],
        ),
    );
    p.push("</div></section>");
    curves(&mut p, &rows, steps);
    definitions::section(&mut p);
    p.finish(&format!("barrage sweep: {}", get_str(report, "name")))
}

/// Points of `y` against `x` over the sorted steps.
fn pts(name: &str, rows: &[&Value], x: &str, y: &str) -> Value {
    series(
        name,
        rows.iter()
            .filter_map(|r| Some((get_f(r, x)?, get_f(r, y))))
            .collect(),
    )
}

fn vs(p: &mut Page, rows: &[&Value], x: (&str, &str), metric: &str, label: &str) {
    let title = format!("{label} p50 / p99 (ms) by {}", x.1);
    let (k50, k99) = (format!("{metric}_p50_ms"), format!("{metric}_p99_ms"));
    if rows.iter().all(|r| get_f(r, &k50).is_none()) {
        p.no_chart(&title, "– no step observed it");
        return;
    }
    let mut s99 = pts("p99", rows, x.0, &k99);
    s99["dashed"] = json!(true);
    p.chart(
        &title,
        spec(
            x.1,
            "linear",
            "ms",
            "ms",
            vec![pts("p50", rows, x.0, &k50), s99],
        ),
    );
}

fn search(p: &mut Page, report: &Value) {
    let s = &report["search"];
    if s.is_null() {
        return;
    }
    p.push(&format!(
        "<section id=\"search\"><h2>SLO search</h2><dl class=\"kv\"><dt>over</dt><dd>{}</dd><dt>highest passing</dt><dd>{}</dd><dt>first failing</dt><dd>{}</dd><dt>goodput there</dt><dd>{} req/s</dd></dl></section>",
        esc(&s["over"].to_string().replace('"', "")),
        num(get_f(s, "best")),
        num(get_f(s, "first_failing")),
        num(get_f(s, "goodput_at_best"))
    ));
}

/// A link to a step's report, relative to the sweep's folder when below it.
fn link(dir: &Path, step_dir: &str) -> String {
    let d = Path::new(step_dir);
    let rel = d
        .strip_prefix(dir)
        .ok()
        .map(Path::to_path_buf)
        .or_else(|| d.file_name().map(Into::into));
    rel.map_or_else(String::new, |r| {
        let href = r.join(REPORT_HTML).to_string_lossy().replace('\\', "/");
        format!("<a href=\"{}\">report</a>", esc(&href))
    })
}

fn step_table(p: &mut Page, dir: &Path, rows: &[Value]) {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let held = r["limits_held"].as_bool().unwrap_or(false);
            vec![
                num(get_f(r, "step")),
                esc(get_str(r, "label")),
                format!(
                    "<span class=\"status-{0}\">{0}</span>",
                    esc(get_str(r, "status"))
                ),
                num(get_f(r, "requests_ok")),
                num(get_f(r, "success_rate").map(|x| x * 100.0)),
                num(get_f(r, "request_throughput")),
                num(get_f(r, "output_throughput")),
                num(get_f(r, "goodput")),
                num(get_f(r, "ttft_p50_ms")),
                num(get_f(r, "ttft_p99_ms")),
                num(get_f(r, "itl_p50_ms")),
                num(get_f(r, "itl_p99_ms")),
                num(get_f(r, "e2e_p50_ms")),
                num(get_f(r, "e2e_p99_ms")),
                if held {
                    "<span class=\"pass\">ok</span>".into()
                } else {
                    "<span class=\"fail\">FAIL</span>".into()
                },
                link(dir, get_str(r, "dir")),
            ]
        })
        .collect();
    p.push("<section id=\"steps\"><h2>Steps</h2>");
    p.push(&table(
        &[
            "step",
            "label",
            "status",
            "ok",
            "success %",
            "req/s",
            "out tok/s",
            "goodput",
            "ttft p50",
            "ttft p99",
            "itl p50",
            "itl p99",
            "e2e p50",
            "e2e p99",
            "limits",
            "report",
        ],
        &body,
    ));
    p.push("</section>");
}

/// Each step's percentile curve, overlaid per metric.
fn curves(p: &mut Page, rows: &[Value], steps: &[(u64, Value)]) {
    if steps.is_empty() {
        return;
    }
    let label = |n: u64| {
        rows.iter()
            .find(|r| r["step"].as_u64() == Some(n))
            .map_or_else(|| format!("step {n}"), |r| get_str(r, "label").to_owned())
    };
    p.push(
        "<section id=\"step-curves\"><h2>Latency distributions by step</h2><div class=\"charts\">",
    );
    for (m, t) in [("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E")] {
        let s: Vec<Value> = steps
            .iter()
            .filter(|(_, s)| !unobservable(s, m))
            .map(|(n, s)| series(&label(*n), curve(s, m)))
            .collect();
        if s.is_empty() {
            p.no_chart(&format!("{t} (ms)"), "– not observable in any step");
            continue;
        }
        p.chart(
            &format!("{t} (ms) by step"),
            spec("percentile", "nines", "ms", "ms", s),
        );
    }
    p.push("</div></section>");
}
