//! Throughput soak (ignored by default; run it in release):
//! `cargo test --release -p barrage-llm-sim --test sim soak -- --ignored --nocapture`.
//! 5000 concurrent streams at 4 chunks/s each = 20k chunks/s, the server on
//! its own 2-thread runtime, the client on the test's runtime, both in this
//! process on the same machine. Reports throughput, TTFT and chunk-gap
//! lateness percentiles, and the process's CPU use.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::support::*;

const STREAMS: usize = 5000;
const TOKENS: u32 = 40;

/// User + system CPU seconds so far of this process's threads whose name
/// starts with `prefix` ("" = all), from /proc (Linux; 0 elsewhere).
fn cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0.0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // utime and stime are fields 14 and 15: 12 and 13 after the name.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        ticks += field(11) + field(12);
    }
    ticks / 100.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "a multi-second load test; run it in release"]
fn soak_5000_streams() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sim-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let cfg = SimConfig {
        ttft: ms(50),
        itl: ms(250),
        ..SimConfig::default()
    };
    let server = server_rt
        .block_on(SimServer::spawn(cfg, "127.0.0.1:0".parse().expect("addr")))
        .expect("server");
    let url = format!("http://{}/v1/chat/completions", server.addr());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let (cpu0, server0, wall0) = (
        cpu_seconds(""),
        cpu_seconds("sim-server"),
        std::time::Instant::now(),
    );
    let run = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let body = chat(TOKENS, true);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..STREAMS {
            // Ramp over a second or two so the listen backlog never overflows.
            if i % 5 == 0 {
                tokio::time::sleep(ms(1)).await;
            }
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .expect("response");
                let mut stream = response.bytes_stream();
                let mut arrivals = Vec::with_capacity(TOKENS as usize + 2);
                let mut frames = 0;
                while let Some(bytes) = stream.next().await {
                    let bytes = bytes.expect("body");
                    let n = bytes.windows(2).filter(|w| w == b"\n\n").count();
                    frames += n;
                    arrivals.extend(std::iter::repeat_n(as_ms(sent.elapsed()), n));
                }
                let ttft = arrivals.first().copied().unwrap_or(f64::NAN);
                let gaps: Vec<f64> = arrivals[..TOKENS as usize]
                    .windows(2)
                    .map(|w| w[1] - w[0] - 250.0)
                    .collect();
                (ttft, gaps, frames)
            });
        }
        tasks.join_all().await
    };
    let results: Vec<(f64, Vec<f64>, usize)> = client_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), run).await })
        .expect("soak finished in time");
    let (cpu, server_cpu) = (cpu_seconds("") - cpu0, cpu_seconds("sim-server") - server0);
    let wall = wall0.elapsed().as_secs_f64();
    let stats = server.stats();
    server_rt.block_on(server.shutdown());
    let chunks: usize = results.iter().map(|r| r.2).sum();
    let mut ttfts: Vec<f64> = results.iter().map(|r| r.0).collect();
    let mut gaps: Vec<f64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    println!(
        "{STREAMS} streams, {chunks} SSE events in {wall:.2} s; steady rate {:.0} chunks/s",
        STREAMS as f64 * 4.0
    );
    println!(
        "CPU: process {cpu:.2} s ({:.0}% of 2 cores), server threads {server_cpu:.2} s ({:.0}% of one core)",
        cpu / wall / 2.0 * 100.0,
        server_cpu / wall * 100.0
    );
    println!(
        "ttft (target 50 ms) p50 {:.2} p99 {:.2} max {:.2}; gap lateness (ms) p50 {:.2} p99 {:.2} min {:.2} max {:.2}",
        percentile(&mut ttfts, 0.5),
        percentile(&mut ttfts, 0.99),
        percentile(&mut ttfts, 1.0),
        percentile(&mut gaps, 0.5),
        percentile(&mut gaps, 0.99),
        percentile(&mut gaps, 0.0),
        percentile(&mut gaps, 1.0),
    );
    println!("server stats: {stats:?}");
    assert_eq!(stats.completed, STREAMS as u64);
    assert_eq!(
        chunks,
        STREAMS * (TOKENS as usize + 2),
        "tokens, usage, [DONE]"
    );
}
