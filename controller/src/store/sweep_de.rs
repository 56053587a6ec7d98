//! Reading a stored `SweepReport` back. `crate::sweep`'s types only
//! serialize; these mirror them field for field (a field added there fails
//! to compile here until it is added too).

use std::path::PathBuf;

use barrage_common::sweep::SearchOver;
use serde::Deserialize;

use crate::sweep::{SearchResult, SweepReport, SweepRow};

#[derive(Deserialize)]
struct Report {
    name: String,
    status: String,
    steps: Vec<Row>,
    search: Option<Search>,
}

#[derive(Deserialize)]
struct Row {
    step: usize,
    label: String,
    users: Option<u64>,
    rate: Option<f64>,
    requests: Option<u64>,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    status: String,
    limits_held: bool,
    requests_ok: u64,
    success_rate: f64,
    request_throughput: f64,
    output_throughput: f64,
    goodput: Option<f64>,
    ttft_p50_ms: Option<f64>,
    ttft_p99_ms: Option<f64>,
    itl_p50_ms: Option<f64>,
    itl_p99_ms: Option<f64>,
    tpot_p50_ms: Option<f64>,
    e2e_p50_ms: Option<f64>,
    e2e_p99_ms: Option<f64>,
    dir: PathBuf,
}

#[derive(Deserialize)]
struct Search {
    over: SearchOver,
    best: Option<f64>,
    first_failing: Option<f64>,
    goodput_at_best: Option<f64>,
}

/// A sweep report from its JSON.
pub fn from_json(text: &str) -> Result<SweepReport, serde_json::Error> {
    let r: Report = serde_json::from_str(text)?;
    Ok(SweepReport {
        name: r.name,
        status: r.status,
        steps: r.steps.into_iter().map(row).collect(),
        search: r.search.map(|s| SearchResult {
            over: s.over,
            best: s.best,
            first_failing: s.first_failing,
            goodput_at_best: s.goodput_at_best,
        }),
    })
}

fn row(r: Row) -> SweepRow {
    SweepRow {
        step: r.step,
        label: r.label,
        users: r.users,
        rate: r.rate,
        requests: r.requests,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        status: r.status,
        limits_held: r.limits_held,
        requests_ok: r.requests_ok,
        success_rate: r.success_rate,
        request_throughput: r.request_throughput,
        output_throughput: r.output_throughput,
        goodput: r.goodput,
        ttft_p50_ms: r.ttft_p50_ms,
        ttft_p99_ms: r.ttft_p99_ms,
        itl_p50_ms: r.itl_p50_ms,
        itl_p99_ms: r.itl_p99_ms,
        tpot_p50_ms: r.tpot_p50_ms,
        e2e_p50_ms: r.e2e_p50_ms,
        e2e_p99_ms: r.e2e_p99_ms,
        dir: r.dir,
    }
}
