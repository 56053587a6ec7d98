//! Benchmark: how many per-request records a second results.sqlite takes
//! (the `Store` consumer on its own, fed synthetic records in batches as
//! agents send them, committing as it does in a run), and its size per
//! 100k requests, with and without chunk gaps.
//!
//! ```text
//! cargo run --release -p barrage-controller --example store_bench [-- RECORDS]
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use barrage_common::metrics::{Counters, Layouts, MetricSet};
use barrage_controller::events::{
    AgentStart, Consumer, IntervalEvent, PlanEnd, PlanStart, RequestsEvent, RunEvent, StepStart,
};
use barrage_controller::merge::IntervalRow;
use barrage_controller::run::Verdict;
use barrage_controller::store::Store;
use barrage_proto::agent::v1 as pb;

/// Records per batch (what one agent sends at a time).
const BATCH: usize = 256;
/// Records between two interval events (a 1 s interval at ~1000 req/s).
const PER_INTERVAL: usize = 1000;

fn record(seq: u64, gaps: usize) -> pb::RequestRecord {
    pb::RequestRecord {
        seq,
        user: (seq % 1000) as u32,
        prompt_index: seq % 500,
        intended_offset_us: None,
        start_offset_us: seq * 997,
        ttft_us: Some(50_000 + seq % 7_919),
        ttfo_us: Some(50_000 + seq % 7_919),
        e2e_us: Some(50_000 + seq % 7_919 + gaps as u64 * 10_000),
        chunk_gaps_us: (0..gaps as u64)
            .map(|i| 9_500 + (seq * 31 + i * 17) % 1_000)
            .collect(),
        input_tokens: 256,
        output_tokens: gaps as u64 + 1,
        input_source: pb::CountSource::Server as i32,
        output_source: pb::CountSource::Server as i32,
        outcome: pb::RecordOutcome::Ok as i32,
        ..pb::RequestRecord::default()
    }
}

fn run_case(n: u64, gaps: usize) -> Result<(f64, u64)> {
    let dir = std::env::temp_dir().join(format!("barrage-store-bench-{gaps}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::new();
    let ev = |e: RunEvent, s: &mut Store| s.event(&e).map_err(|e| anyhow::anyhow!("{e}"));
    ev(
        RunEvent::PlanStarted(PlanStart {
            name: "bench".into(),
            dir: dir.clone(),
            plan_toml: String::new(),
            started_at: "2026-01-01T00:00:00Z".into(),
            sweep: false,
        }),
        &mut store,
    )?;
    ev(
        RunEvent::StepStarted(StepStart {
            step: 0,
            name: "bench".into(),
            run_id: "bench".into(),
            dir: dir.clone(),
            plan_toml: String::new(),
            started_at: String::new(),
            interval_s: 1.0,
            duration_s: None,
            requests: Some(n),
            users: 1000,
            rate: None,
            agents: vec![AgentStart {
                id: "a".into(),
                addr: "embedded".into(),
                users: 1000,
                share: 1.0,
            }],
        }),
        &mut store,
    )?;
    // Built before the clock starts: only the store's work is timed.
    let batches: Vec<Vec<pb::RequestRecord>> = (0..n)
        .map(|s| record(s, gaps))
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[_]>::to_vec)
        .collect();
    let empty = MetricSet::new(Layouts::default())?;
    let t = Instant::now();
    let mut since_interval = 0;
    for (i, records) in batches.into_iter().enumerate() {
        since_interval += records.len();
        ev(
            RunEvent::Requests(RequestsEvent {
                step: 0,
                agent: 0,
                records,
            }),
            &mut store,
        )?;
        if since_interval >= PER_INTERVAL {
            since_interval = 0;
            ev(RunEvent::Interval(interval(i as u64, &empty)), &mut store)?;
        }
    }
    ev(
        RunEvent::PlanFinished(PlanEnd {
            verdict: Verdict::Completed,
            dir: dir.clone(),
            sweep: None,
        }),
        &mut store,
    )?;
    store.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(dir.join("results.sqlite"))
        .context("store size")?
        .len();
    Ok((n as f64 / secs, size))
}

fn interval(index: u64, empty: &MetricSet) -> IntervalEvent {
    IntervalEvent {
        step: 0,
        row: IntervalRow {
            index,
            warmup: false,
            t_s: index as f64,
            agents_reporting: 1,
            requests_ok: 0,
            requests_failed: 0,
            output_tokens: 0,
            ttft_p50_ms: None,
            ttft_p99_ms: None,
            itl_p50_ms: None,
            itl_p99_ms: None,
            e2e_p50_ms: None,
            e2e_p99_ms: None,
            max_agent_cpu_percent: 0.0,
            max_agent_cpu_share: 0.0,
            max_scheduler_lag_ms: 0.0,
            read_lag_p99_ms: None,
            in_flight: 0,
            monitor: Default::default(),
        },
        metrics: empty.clone(),
        counters: Counters::default(),
        totals: Counters::default(),
    }
}

fn main() -> Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("RECORDS must be a number")?
        .unwrap_or(100_000);
    println!("records  chunk_gaps/request  records/s  bytes  MB per 100k requests");
    for gaps in [0, 63, 255] {
        let (rate, size) = run_case(n, gaps)?;
        println!(
            "{n:>7}  {gaps:>18}  {rate:>9.0}  {size:>5}  {:.1}",
            size as f64 / n as f64 * 100_000.0 / 1e6
        );
    }
    Ok(())
}
