//! The metric definitions and the alias table (a copy of METRICS.md).

use super::markdown;
use super::page::Page;

const METRICS_MD: &str = include_str!("../../assets/metrics.md");

pub fn section(p: &mut Page) {
    p.push("<section id=\"definitions\" class=\"defs\"><h2>What each number means</h2><details open><summary>Metric definitions and what vLLM, AIPerf, GuideLLM, EvalScope and inference-perf call each number</summary>");
    // The file's own title is replaced by the section's.
    let body = METRICS_MD
        .split_once('\n')
        .map_or(METRICS_MD, |(_, rest)| rest);
    p.push(&markdown::to_html(body, 1));
    p.push("</details></section>");
}
