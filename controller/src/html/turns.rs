//! The "Conversations" section of a multi-turn run's report: how the
//! conversations ended, and TTFT, e2e and input tokens by turn index, as a
//! chart (p50 per turn: later turns get faster with a prefix cache) and a
//! table.

use serde_json::Value;

use super::get_f;
use super::page::{Page, esc, num, series, spec, table};

fn pct(d: &Value, p: &str) -> Option<f64> {
    d["percentiles"][p].as_f64()
}

fn label(t: &Value) -> String {
    let n = t["turn"].as_u64().unwrap_or(0);
    if t["last_bucket"].as_bool().unwrap_or(false) {
        format!("{n}+")
    } else {
        n.to_string()
    }
}

/// Nothing for a run without `[conversation]`.
pub fn section(p: &mut Page, s: &Value) {
    let c = &s["conversations"];
    if !c.is_object() {
        return;
    }
    let count = |k: &str| num(get_f(c, k));
    p.push(&format!(
        "<section id=\"conversations\"><h2>Conversations</h2><p class=\"meta\">Replayed turn by turn: each turn carries the server's replies to the earlier turns. {} started, {} completed, {} abandoned (a turn failed), {} cut (the run ended first).</p>",
        count("started"),
        count("completed"),
        count("abandoned"),
        count("cut")
    ));
    let turns = c["turns"].as_array().cloned().unwrap_or_default();
    if turns.is_empty() {
        p.push("<p>No turn ended after the warmup.</p></section>");
        return;
    }
    let by_turn = |metric: &str, q: &str| -> Vec<(f64, Option<f64>)> {
        turns
            .iter()
            .map(|t| (t["turn"].as_f64().unwrap_or(0.0), pct(&t[metric], q)))
            .collect()
    };
    p.push("<div class=\"charts\">");
    for (title, metric) in [("TTFT by turn (ms)", "ttft"), ("e2e by turn (ms)", "e2e")] {
        p.chart(
            title,
            spec(
                "turn",
                "linear",
                "ms",
                "ms",
                vec![
                    series(&format!("{metric} p50"), by_turn(metric, "p50")),
                    series(&format!("{metric} p99"), by_turn(metric, "p99")),
                ],
            ),
        );
    }
    p.push("</div>");
    let rows: Vec<Vec<String>> = turns
        .iter()
        .map(|t| {
            vec![
                esc(&label(t)),
                num(get_f(t, "requests_ok")),
                num(get_f(t, "requests_failed")),
                num(pct(&t["ttft"], "p50")),
                num(pct(&t["ttft"], "p99")),
                num(pct(&t["e2e"], "p50")),
                num(pct(&t["e2e"], "p99")),
                num(t["input_tokens"]["mean"].as_f64()),
            ]
        })
        .collect();
    p.push(&table(
        &[
            "turn",
            "ok",
            "failed",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "e2e p50 ms",
            "e2e p99 ms",
            "input tokens (mean)",
        ],
        &rows,
    ));
    p.push("</section>");
}
