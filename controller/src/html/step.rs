//! The page of one run (or one step of a sweep), built from its summary as
//! JSON (a `Summary` serialized, or a summary.json read back), so the same
//! code serves a live run and a rebuild from stored results.

use std::fmt::Write as _;

use serde_json::Value;

use super::page::{Page, esc, num, series, spec, table};
use super::{accuracy, definitions, get_f, get_str, get_u, timeline, turns};

/// Distributions in the percentile table (open-loop and server rows only
/// when they have samples).
const TABLE_METRICS: [&str; 13] = [
    "ttft",
    "ttfo",
    "chunk_gap",
    "itl",
    "tpot",
    "e2e",
    "output_tokens",
    "schedule_lag",
    "ttft_intended",
    "e2e_intended",
    "server_load",
    "server_prompt_eval",
    "server_eval",
];

/// The percentile-curve charts, with their titles.
const CURVES: [(&str, &str); 6] = [
    ("ttft", "TTFT"),
    ("ttfo", "TTFO (first non-reasoning output)"),
    ("itl", "ITL (per token)"),
    ("chunk_gap", "Chunk gap"),
    ("tpot", "TPOT"),
    ("e2e", "End-to-end latency"),
];

pub(crate) fn unobservable(s: &Value, metric: &str) -> bool {
    s["not_observable"]
        .as_array()
        .is_some_and(|a| a.iter().any(|m| m.as_str() == Some(metric)))
}

/// The value of percentile `p` of `metric` ("–" when unobservable).
pub(crate) fn pct(s: &Value, metric: &str, p: &str) -> Option<f64> {
    if unobservable(s, metric) {
        return None;
    }
    get_f(&s["metrics"][metric]["percentiles"], p)
}

/// The whole page of one step.
pub fn page(s: &Value, plan_toml: Option<&str>) -> String {
    let mut p = Page::new();
    header(&mut p, s);
    banners(&mut p, s);
    headline(&mut p, s);
    thresholds(&mut p, s);
    p.push("<section id=\"timeline\"><h2>Over time</h2>");
    timeline::charts(&mut p, s);
    p.push("</section>");
    distributions(&mut p, s);
    turns::section(&mut p, s);
    errors(&mut p, s);
    agents(&mut p, s);
    monitor(&mut p, s);
    accuracy::section(&mut p, s);
    definitions::section(&mut p);
    if let Some(t) = plan_toml {
        p.push(&format!(
            "<section id=\"plan\"><h2>Plan</h2><details><summary>plan.toml as run</summary><pre>{}</pre></details></section>",
            esc(t)
        ));
    }
    let title = format!("barrage: {}", get_str(s, "name"));
    p.finish(&title)
}

fn header(p: &mut Page, s: &Value) {
    let status = get_str(s, "status");
    let mut h = format!(
        "<header class=\"top\"><h1>{} <span class=\"badge status-{}\" id=\"status\">{}</span></h1><div class=\"meta\">",
        esc(get_str(s, "name")),
        esc(status),
        esc(status)
    );
    for (k, v) in [
        ("run", get_str(s, "run_id").to_owned()),
        ("started", get_str(s, "started_at").to_owned()),
        (
            "target",
            format!("{} ({})", get_str(s, "target"), get_str(s, "api")),
        ),
        ("time taken", format!("{} s", num(get_f(s, "duration_s")))),
        ("users", num(get_f(s, "users"))),
        (
            "agents",
            s["agents"].as_array().map_or(0, Vec::len).to_string(),
        ),
    ] {
        let _ = write!(h, "<span>{k} {}</span>", esc(&v));
    }
    h.push_str("</div><nav class=\"toc\"><a href=\"#summary\">Summary</a><a href=\"#timeline\">Over time</a><a href=\"#distributions\">Latency distributions</a><a href=\"#errors\">Errors</a><a href=\"#agents\">Agents</a><a href=\"#accuracy\">Accuracy budget</a><a href=\"#definitions\">Definitions</a></nav></header>");
    p.push(&h);
}

/// What a reader must know before trusting the figures.
fn banners(p: &mut Page, s: &Value) {
    let ok = get_u(s, "requests_ok").unwrap_or(0);
    let failed = get_u(s, "requests_failed").unwrap_or(0);
    let total = get_u(s, "requests_total").unwrap_or(0);
    if failed > 0 && ok == 0 {
        p.push(&format!(
            "<div class=\"banner bad\">FAILED: all {failed} requests failed (see <a href=\"#errors\">why</a>).</div>"
        ));
    } else if failed > 0 {
        p.push(&format!(
            "<div class=\"banner\">{:.1} % of requests failed ({failed} of {total}).</div>",
            failed as f64 * 100.0 / total.max(1) as f64
        ));
    }
    if total == 0 && get_u(s, "requests_incomplete").unwrap_or(0) == 0 {
        p.push("<div class=\"banner bad\">No request ended in this run.</div>");
    }
    for a in s["agents"].as_array().into_iter().flatten() {
        if let Some(why) = a["lost"].as_str() {
            p.push(&format!(
                "<div class=\"banner bad\">Lost agent {} ({}), carrying {} users: {}</div>",
                esc(get_str(a, "id")),
                esc(get_str(a, "addr")),
                get_u(a, "users").unwrap_or(0),
                esc(why)
            ));
        }
    }
    let notes: Vec<String> = s["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|n| format!("<li>{}</li>", esc(n)))
        .collect();
    if !notes.is_empty() {
        p.push(&format!(
            "<div class=\"banner\"><b>Notes</b><ul>{}</ul></div>",
            notes.concat()
        ));
    }
}

fn card(k: &str, v: String, unit: &str) -> String {
    format!(
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}<span class=\"u\">{}</span></div></div>",
        esc(k),
        esc(&v),
        esc(unit)
    )
}

fn headline(p: &mut Page, s: &Value) {
    let f = |k: &str| get_f(s, k);
    let mut c = String::from("<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">");
    let success = f("success_rate").map(|x| x * 100.0);
    let pct_card = |m: &str, q: &str, label: &str| card(label, num(pct(s, m, q)), "ms");
    for html in [
        card("Status", get_str(s, "status").to_owned(), ""),
        card("Succeeded", num(f("requests_ok")), "requests"),
        card("Failed", num(f("requests_failed")), "requests"),
        card(
            "Incomplete at stop",
            num(f("requests_incomplete")),
            "requests",
        ),
        card("Success rate", num(success), "%"),
        card("Request throughput", num(f("request_throughput")), "req/s"),
        card("Output throughput", num(f("output_throughput")), "tok/s"),
        card(
            "Total token throughput",
            num(f("total_token_throughput")),
            "tok/s",
        ),
        card("Goodput", num(f("goodput")), "req/s"),
        pct_card("ttft", "p50", "TTFT p50"),
        pct_card("ttft", "p99", "TTFT p99"),
        pct_card("itl", "p50", "ITL p50"),
        pct_card("itl", "p99", "ITL p99"),
        pct_card("tpot", "p50", "TPOT p50"),
        pct_card("e2e", "p50", "E2E p50"),
        pct_card("e2e", "p99", "E2E p99"),
    ] {
        c.push_str(&html);
    }
    c.push_str("</div>");
    let ts = &s["token_source"];
    let src = |k: &str| {
        let o = &ts[k];
        // Older summaries have no tokenizer_chat_template: nothing to add.
        let templated = get_f(o, "tokenizer_chat_template")
            .filter(|n| *n > 0.0)
            .map_or(String::new(), |n| {
                format!(" ({} with the chat template)", num(Some(n)))
            });
        format!(
            "server {} / tokenizer {}{templated} / estimated {}",
            num(get_f(o, "server")),
            num(get_f(o, "tokenizer")),
            num(get_f(o, "estimated"))
        )
    };
    let counting = ts["input_counting"].as_str().map_or(String::new(), |how| {
        format!("<dt>Input tokens counted</dt><dd>{}</dd>", esc(how))
    });
    let _ = write!(
        c,
        "<dl class=\"kv\"><dt>Input / output tokens</dt><dd>{} / {}</dd><dt>Avg input / output tokens per request</dt><dd>{} / {}</dd><dt>Input tokens from</dt><dd>{}</dd><dt>Output tokens from</dt><dd>{}; {} chunks assumed 1 token</dd>{counting}<dt>Connection retries</dt><dd>{}</dd></dl></section>",
        num(f("input_tokens")),
        num(f("output_tokens")),
        num(f("avg_input_tokens")),
        num(f("avg_output_tokens")),
        src("input"),
        src("output"),
        num(get_f(ts, "chunk_tokens_assumed")),
        num(f("connection_retries")),
    );
    p.push(&c);
}

fn thresholds(p: &mut Page, s: &Value) {
    let Some(list) = s["thresholds"].as_array().filter(|a| !a.is_empty()) else {
        return;
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            let passed = t["passed"].as_bool().unwrap_or(false);
            vec![
                if passed {
                    "<span class=\"pass\">pass</span>".to_owned()
                } else {
                    "<span class=\"fail\">FAIL</span>".to_owned()
                },
                format!("<code>{}</code>", esc(get_str(t, "key"))),
                num(get_f(t, "limit")),
                num(get_f(t, "actual")),
            ]
        })
        .collect();
    p.push("<section id=\"thresholds\"><h2>Thresholds</h2>");
    p.push(&table(&["result", "limit on", "limit", "actual"], &rows));
    p.push("</section>");
}

/// The curve of `metric`: its stored points, else the percentile table's.
pub(crate) fn curve(s: &Value, metric: &str) -> Vec<(f64, Option<f64>)> {
    if let Some(points) = s["percentile_curves"][metric].as_array() {
        return points
            .iter()
            .filter_map(|pt| Some((pt[0].as_f64()?, pt[1].as_f64())))
            .collect();
    }
    let d = &s["metrics"][metric];
    let mut out: Vec<(f64, Option<f64>)> = d["percentiles"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.trim_start_matches('p').parse::<f64>().ok()?, v.as_f64())))
        .collect();
    if get_u(d, "count").unwrap_or(0) > 0 {
        out.push((100.0, get_f(d, "max")));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn distributions(p: &mut Page, s: &Value) {
    p.push("<section id=\"distributions\"><h2>Latency distributions</h2><p class=\"meta\">Percentile curves from the merged histograms: the x axis spreads the tail (p90, p99, p99.9, p99.99 equally spaced); \"max\" is the exact maximum.</p><div class=\"charts\">");
    let ttft = curve(s, "ttft");
    let itl = curve(s, "itl");
    let unstreamed = unobservable(s, "itl");
    for (metric, title) in CURVES {
        let title = if metric == "ttft" && unstreamed {
            "TTFT (= e2e: not streamed) (ms)".to_owned()
        } else {
            format!("{title} (ms)")
        };
        if unobservable(s, metric) {
            p.no_chart(&title, "– not observable: responses were not streamed");
            continue;
        }
        let c = curve(s, metric);
        // Identical to its sibling (no reasoning; one token per chunk): said once.
        if (metric == "ttfo" && c == ttft) || (metric == "chunk_gap" && c == itl) {
            continue;
        }
        if c.is_empty() {
            p.no_chart(&title, "no samples in this run");
            continue;
        }
        p.chart(
            &title,
            spec("percentile", "nines", "ms", "ms", vec![series(metric, c)]),
        );
    }
    p.push("</div>");
    percentile_table(p, s);
    p.push("</section>");
}

fn percentile_table(p: &mut Page, s: &Value) {
    let mut rows = Vec::new();
    for m in TABLE_METRICS {
        let d = &s["metrics"][m];
        let count = get_u(d, "count").unwrap_or(0);
        let core = matches!(
            m,
            "ttft" | "ttfo" | "chunk_gap" | "itl" | "tpot" | "e2e" | "output_tokens"
        );
        if d.is_null() || (count == 0 && !core) {
            continue;
        }
        let unit = d["unit"].as_str().unwrap_or("ms");
        let mut row = vec![format!("<code>{m}</code> ({})", esc(unit))];
        let gone = unobservable(s, m);
        for q in ["p50", "p90", "p95", "p99", "p99.9"] {
            row.push(if gone {
                "–".into()
            } else {
                num(get_f(&d["percentiles"], q))
            });
        }
        for k in ["min", "mean", "max"] {
            row.push(if gone { "–".into() } else { num(get_f(d, k)) });
        }
        row.push(if gone {
            "–".into()
        } else {
            count.to_string()
        });
        rows.push(row);
    }
    p.push(&table(
        &[
            "metric", "p50", "p90", "p95", "p99", "p99.9", "min", "mean", "max", "count",
        ],
        &rows,
    ));
}

fn errors(p: &mut Page, s: &Value) {
    p.push("<section id=\"errors\"><h2>Errors</h2>");
    let by_class = s["errors"].as_object().filter(|m| !m.is_empty());
    let Some(by_class) = by_class else {
        p.push("<p>No request failed.</p></section>");
        return;
    };
    let rows: Vec<Vec<String>> = by_class
        .iter()
        .map(|(k, v)| vec![format!("<code>{}</code>", esc(k)), num(v.as_f64())])
        .collect();
    p.push(&table(&["class", "requests"], &rows));
    for (class, d) in s["error_details"].as_object().into_iter().flatten() {
        let mut h = format!("<h3><code>{}</code></h3><dl class=\"kv\">", esc(class));
        let statuses: Vec<String> = d["statuses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(code, n)| format!("{} ×{}", esc(code), num(n.as_f64())))
            .collect();
        if !statuses.is_empty() {
            let _ = write!(h, "<dt>HTTP status</dt><dd>{}</dd>", statuses.join(", "));
        }
        for (cause, n) in d["causes"].as_object().into_iter().flatten() {
            let _ = write!(
                h,
                "<dt>cause ×{}</dt><dd>{}</dd>",
                num(n.as_f64()),
                esc(cause)
            );
        }
        h.push_str("</dl>");
        for e in d["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let _ = write!(h, "<pre class=\"example\">{}</pre>", esc(e));
        }
        p.push(&h);
    }
    p.push("</section>");
}

fn agents(p: &mut Page, s: &Value) {
    let Some(list) = s["agents"].as_array().filter(|a| !a.is_empty()) else {
        return;
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let problem = [("lost", "lost"), ("totals_mismatch", "totals mismatch")]
                .iter()
                .filter_map(|(k, label)| a[*k].as_str().map(|w| format!("{label}: {}", esc(w))))
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                esc(get_str(a, "id")),
                esc(get_str(a, "addr")),
                num(get_f(a, "users")),
                num(get_f(a, "share").map(|x| x * 100.0)),
                num(get_f(a, "requests_ok")),
                num(get_f(a, "requests_failed")),
                num(get_f(a, "max_cpu_percent")),
                num(get_f(a, "start_late_ms")),
                num(get_f(a, "clock_uncertainty_ms")),
                esc(a["stop_reason"].as_str().unwrap_or("–")),
                if problem.is_empty() {
                    "ok".into()
                } else {
                    format!("<span class=\"fail\">{problem}</span>")
                },
            ]
        })
        .collect();
    p.push("<section id=\"agents\"><h2>Agents</h2>");
    p.push(&table(
        &[
            "id",
            "address",
            "users",
            "share %",
            "ok",
            "failed",
            "max CPU %",
            "start late ms",
            "clock ± ms",
            "stopped",
            "problems",
        ],
        &rows,
    ));
    p.push("</section>");
}

fn monitor(p: &mut Page, s: &Value) {
    let m = &s["monitor"];
    if m.is_null() {
        return;
    }
    p.push("<section id=\"monitor\"><h2>GPUs, hosts and server metrics</h2>");
    let stat = |v: &Value| {
        if v.is_null() {
            "–".to_owned()
        } else {
            format!(
                "{} / {} / {}",
                num(get_f(v, "avg")),
                num(get_f(v, "p95")),
                num(get_f(v, "max"))
            )
        }
    };
    let mut rows = Vec::new();
    for e in m["exporters"].as_array().into_iter().flatten() {
        let sum = &e["summary"];
        for g in sum["gpus"].as_array().into_iter().flatten() {
            rows.push(vec![
                esc(get_str(e, "addr")),
                format!("gpu {} {}", num(get_f(g, "index")), esc(get_str(g, "name"))),
                stat(&g["utilization_gpu_pct"]),
                stat(&g["memory_used_pct"]),
                stat(&g["power_w"]),
                num(get_f(g, "energy_j")),
            ]);
        }
        let h = &sum["host"];
        if !h.is_null() {
            rows.push(vec![
                esc(get_str(e, "addr")),
                format!("host {} (CPU % / memory %)", esc(get_str(h, "hostname"))),
                stat(&h["cpu_percent"]),
                stat(&h["memory_used_pct"]),
                "–".into(),
                "–".into(),
            ]);
        }
    }
    if !rows.is_empty() {
        p.push("<p class=\"meta\">avg / p95 / max over the run</p>");
        p.push(&table(
            &[
                "exporter",
                "device",
                "utilisation %",
                "memory %",
                "power W",
                "energy J",
            ],
            &rows,
        ));
    }
    let server: Vec<Vec<String>> = m["server_metrics"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| {
            vec![
                format!("<code>{}</code>", esc(name)),
                num(get_f(v, "avg")),
                num(get_f(v, "max")),
                num(get_f(v, "last")),
                num(get_f(v, "samples")),
            ]
        })
        .collect();
    if !server.is_empty() {
        p.push(&table(
            &["server metric", "avg", "max", "last", "scrapes"],
            &server,
        ));
    }
    if let Some(t) = get_f(m, "output_tokens_per_joule") {
        p.push(&format!("<p>Output tokens per joule: {}</p>", num(Some(t))));
    }
    p.push("</section>");
}
