//! Benchmark: 4 `agent` processes × 2500 users = 10,000 concurrent streams
//! against an `llm-sim` process (ITL 500 ms, 64 tokens: ~20k chunks/s), all
//! over real gRPC and HTTP on loopback, driven by the controller library.
//!
//! ```text
//! cargo build --release -p barrage-agent -p barrage-llm-sim
//! cargo run --release -p barrage-controller --example cluster_bench [-- AGENTS USERS_PER_AGENT]
//! ```
//!
//! Prints achieved chunks/s, controller CPU and peak RSS, interval bytes per
//! agent per second, start skew, and measured-minus-injected ttft and
//! chunk_gap at p50/p99.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::process::Child;
use std::time::Duration;

use anyhow::Result;
use barrage_agent::health::process_cpu_time;
use barrage_common::auth::Token;
use barrage_controller::run::{RunOptions, execute};
use tokio_util::sync::CancellationToken;

const TTFT_MS: f64 = 100.0;
const ITL_MS: f64 = 500.0;
const TOKEN: &str = "cluster-bench-token";

/// Starts a release binary beside this example and reads its address.
fn spawn(bin: &str, args: &[&str]) -> Result<(Child, String)> {
    bench_support::spawn_listening(
        bench_support::sibling(bin)?,
        args,
        &[("BENCH_TOKEN", TOKEN)],
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let agents_n = args.first().copied().unwrap_or(4);
    let per_agent = args.get(1).copied().unwrap_or(2500);
    let users = agents_n * per_agent;
    let (mut sim, sim_addr) = spawn(
        "llm-sim",
        &[
            "--listen",
            "127.0.0.1:0",
            "--ttft",
            "100ms",
            "--itl",
            "500ms",
        ],
    )?;
    let mut agents = Vec::new();
    for i in 0..agents_n {
        let id = format!("bench-{i}");
        agents.push(bench_support::spawn_agent(&id, TOKEN)?);
    }
    let list: Vec<String> = agents.iter().map(|(_, a)| format!("\"{a}\"")).collect();
    // Ramp over 5 s (no SYN storm), then two full requests per user.
    let per_request_s = (TTFT_MS + 63.0 * ITL_MS) / 1000.0;
    let duration_s = 5.0 + 2.0 * per_request_s + 2.0;
    let plan = format!(
        r#"
        name = "cluster-bench"
        [target]
        url = "http://{sim_addr}"
        [request]
        max_tokens = 64
        [dataset]
        input_tokens = 32
        prompts = 64
        [load]
        users = {users}
        spawn_rate = {spawn}
        duration = "{duration_ms}ms"
        [cluster]
        agents = [{agents}]
        [output]
        dir = "{out}"
        "#,
        spawn = users as f64 / 5.0,
        duration_ms = (duration_s * 1000.0) as u64,
        agents = list.join(", "),
        out = std::env::temp_dir().join("barrage-bench").display(),
    );
    let plan = bench_support::plan(&plan)?;
    let rss = bench_support::PeakRss::start(Duration::from_millis(100));
    let cpu0 = process_cpu_time(100.0).unwrap_or_default();
    let opts = RunOptions {
        agent_token: Some(Token::new(TOKEN)),
        ..RunOptions::default()
    };
    let outcome = execute(plan, opts, CancellationToken::new()).await?;
    let cpu = process_cpu_time(100.0)
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    let (peak_rss, _) = rss.finish();
    for (mut c, _) in agents {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = sim.kill();
    let _ = sim.wait();

    let s = &outcome.summary;
    let q = |m: &str, p: &str| s.metrics[m].percentiles.get(p).copied().unwrap_or(f64::NAN);
    let chunks = s.metrics["ttft"].count + s.metrics["chunk_gap"].count;
    let bytes_per_agent_s: Vec<String> = s
        .agents
        .iter()
        .map(|a| format!("{:.0}", a.delta_bytes as f64 / s.duration_s))
        .collect();
    println!(
        "| agents × users | completed | output chunks/s | controller CPU % | controller peak RSS MiB | interval bytes/s per agent | start skew ms | ttft err p50 / p99 ms | chunk_gap err p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {agents_n} × {per_agent} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {:+.2} / {:+.2} | {:+.2} / {:+.2} |",
        s.requests_ok,
        chunks as f64 / s.duration_s,
        100.0 * cpu / s.duration_s,
        peak_rss as f64 / 1048576.0,
        bytes_per_agent_s.join(" / "),
        s.max_start_skew_ms
            .map_or("-".into(), |v| format!("{v:.2}")),
        q("ttft", "p50") - TTFT_MS,
        q("ttft", "p99") - TTFT_MS,
        q("chunk_gap", "p50") - ITL_MS,
        q("chunk_gap", "p99") - ITL_MS,
    );
    if s.requests_failed > 0 || !s.notes.is_empty() {
        println!(
            "  failed {} {:?}; notes {:?}",
            s.requests_failed, s.errors, s.notes
        );
    }
    Ok(())
}
