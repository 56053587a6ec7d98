//! Benchmark: the whole client path (controller + embedded agents over gRPC)
//! against an `llm-sim` process on loopback, at 100, 1000 and 5000 streams.
//!
//! ```text
//! cargo build --release -p barrage-llm-sim
//! cargo run --release -p barrage-controller --example engine_bench [-- 100 1000 5000]
//! cargo run --release -p barrage-controller --example engine_bench -- open   # open-loop schedule lag
//! target/release/examples/engine_bench floor [streams]  # bare reqwest streaming vs the client path
//! target/release/examples/engine_bench hold [streams]   # one agent, ITL 1 s (default 20,000 streams)
//! cargo build --release -p barrage-agent
//! cargo run --release -p barrage-controller --example engine_bench -- records [runs]  # per-request records: agent CPU
//! ```
//!
//! `BENCH_RECORDS=off` turns per-request records off (they are on by
//! default, as in a user's run).
//!
//! Prints achieved vs ideal completed requests, output chunks/s, client and
//! simulator CPU seconds per million chunks, measured-minus-injected `ttft`
//! and `chunk_gap` at p50/p99, and peak client RSS growth per stream.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result};
use barrage_agent::health::process_cpu_time;
use barrage_controller::run::{RunOptions, execute};
use tokio_util::sync::CancellationToken;

const TOKENS: u64 = 64;
const TTFT_MS: u64 = 50;

struct Case {
    streams: u64,
    itl_ms: u64,
    /// Full request rounds each user should complete.
    rounds: u64,
    /// Output tokens per request.
    tokens: u64,
    /// How long all users take to start.
    ramp_ms: u64,
    /// Embedded agents (None: the default, one per core).
    agents: Option<usize>,
}

impl Case {
    fn new(streams: u64, itl_ms: u64, rounds: u64) -> Self {
        Self {
            streams,
            itl_ms,
            rounds,
            tokens: TOKENS,
            ramp_ms: 2000,
            agents: None,
        }
    }
}

fn start_sim(itl_ms: u64) -> Result<(Child, String)> {
    let bin = match std::env::var("LLM_SIM_BIN") {
        Ok(p) => p.into(),
        Err(_) => bench_support::sibling("llm-sim")?,
    };
    let (ttft, itl) = (format!("{TTFT_MS}ms"), format!("{itl_ms}ms"));
    let (child, addr) = bench_support::spawn_listening(
        bin,
        &["--listen", "127.0.0.1:0", "--ttft", &ttft, "--itl", &itl],
        &[],
    )?;
    Ok((child, format!("http://{addr}")))
}

fn child_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn run_case(c: &Case) -> Result<()> {
    let (mut sim, url) = start_sim(c.itl_ms)?;
    let r = run_case_on(c, &mut sim, &url).await;
    let _ = sim.kill();
    let _ = sim.wait();
    r
}

/// One case against a running simulator.
async fn run_case_on(c: &Case, sim: &mut Child, url: &str) -> Result<()> {
    let per_request_ms = TTFT_MS + (c.tokens - 1) * c.itl_ms;
    // Ramp, then `rounds` full requests, and half a request to spare.
    let spawn_rate = c.streams as f64 * 1000.0 / c.ramp_ms as f64;
    let duration_ms = c.ramp_ms + c.rounds * per_request_ms + per_request_ms / 2;
    let cluster = match c.agents {
        Some(n) => format!("[cluster]\n        embedded_agents = {n}"),
        None => String::new(),
    };
    let ideal: u64 = (0..c.streams)
        .map(|i| {
            let start_ms = i as f64 * 1000.0 / spawn_rate;
            ((duration_ms as f64 - start_ms) / per_request_ms as f64).floor() as u64
        })
        .sum();
    let plan = format!(
        r#"
        name = "bench-{streams}"
        [target]
        url = "{url}"
        [request]
        max_tokens = {tokens}
        [dataset]
        kind = "random"
        input_words = 32
        prompts = 64
        {cluster}
        [load]
        users = {streams}
        spawn_rate = {spawn_rate}
        duration = "{duration_ms}ms"
        drain = "0s"
        [output]
        dir = "{out}"
        requests = {records}
        "#,
        records = std::env::var("BENCH_RECORDS").map_or(true, |v| v != "off"),
        streams = c.streams,
        tokens = c.tokens,
        out = std::env::temp_dir().join("barrage-bench").display(),
    );
    let plan = bench_support::plan(&plan)?;

    let rss = bench_support::PeakRss::start(Duration::from_millis(50));
    let cpu0 = process_cpu_time(100.0).unwrap_or_default();
    let sim0 = child_cpu_secs(sim.id());
    let outcome = execute(plan, RunOptions::default(), CancellationToken::new()).await?;
    let sim_stats = sim_stats(url).await;
    let client_cpu = process_cpu_time(100.0)
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    let sim_cpu = child_cpu_secs(sim.id()) - sim0;
    let (_, rss_growth) = rss.finish();

    let s = &outcome.summary;
    let q = |m: &str, p: &str| s.metrics[m].percentiles.get(p).copied().unwrap_or(f64::NAN);
    let chunks = s.metrics["ttft"].count + s.metrics["chunk_gap"].count;
    let per_m = |cpu: f64| cpu / (chunks as f64 / 1e6);
    println!(
        "| {} | {} ms | {} / {} ({:.1} %) | {:.0} | {:.2} | {:.2} | {:+.2} / {:+.2} | {:+.2} / {:+.2} | {:.1} | {:.2} / {:.2} |",
        c.streams,
        c.itl_ms,
        s.requests_ok,
        ideal,
        100.0 * s.requests_ok as f64 / ideal as f64,
        chunks as f64 / s.duration_s,
        per_m(client_cpu),
        per_m(sim_cpu),
        q("ttft", "p50") - TTFT_MS as f64,
        q("ttft", "p99") - TTFT_MS as f64,
        q("chunk_gap", "p50") - c.itl_ms as f64,
        q("chunk_gap", "p99") - c.itl_ms as f64,
        rss_growth as f64 / 1024.0 / c.streams as f64,
        sim_stats.0,
        sim_stats.1,
    );
    if s.requests_failed > 0 {
        println!("  (failed: {} {:?})", s.requests_failed, s.errors);
    }
    Ok(())
}

/// The simulator's own wake-up lateness (p50, p99) in ms, from /sim/stats.
async fn sim_stats(url: &str) -> (f64, f64) {
    let Ok(r) = reqwest::get(format!("{url}/sim/stats")).await else {
        return (f64::NAN, f64::NAN);
    };
    match r.json::<barrage_llm_sim::SimStats>().await {
        Ok(s) => (
            s.emit_late_p50_us as f64 / 1000.0,
            s.emit_late_p99_us as f64 / 1000.0,
        ),
        Err(_) => (f64::NAN, f64::NAN),
    }
}

/// Open loop: Poisson arrivals at a rate that keeps ~1000 requests in flight
/// (ITL 50 ms, 64 tokens: ~3.2 s each, so 312 req/s), 20 s.
async fn open_loop_case() -> Result<()> {
    let (mut sim, url) = start_sim(50)?;
    let rate = 1000.0 / ((TTFT_MS + 63 * 50) as f64 / 1000.0);
    let plan = format!(
        r#"
        name = "bench-open"
        [target]
        url = "{url}"
        [request]
        max_tokens = {TOKENS}
        [dataset]
        input_tokens = 32
        prompts = 64
        [load]
        rate = {rate}
        arrival = "poisson"
        duration = "20s"
        warmup = "5s"
        [output]
        dir = "{out}"
        "#,
        out = std::env::temp_dir().join("barrage-bench").display(),
    );
    let plan = bench_support::plan(&plan)?;
    let outcome = execute(plan, RunOptions::default(), CancellationToken::new()).await?;
    let late = sim_stats(&url).await;
    let _ = sim.kill();
    let _ = sim.wait();
    let s = &outcome.summary;
    let o = s.open_loop.clone().context("open-loop report")?;
    let peak_in_flight = s.timeline.iter().map(|r| r.in_flight).max().unwrap_or(0);
    let q = |m: &str, p: &str| s.metrics[m].percentiles.get(p).copied().unwrap_or(f64::NAN);
    println!(
        "| offered req/s | achieved req/s | peak in flight | schedule_lag p50 / p99 / max (ms) | unsent | ttft err p50 / p99 (ms) | sim wake lateness p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:.1} | {:.1} | {} | {:.3} / {:.3} / {:.3} | {} | {:+.2} / {:+.2} | {:.2} / {:.2} |",
        o.offered_rate.unwrap_or(f64::NAN),
        o.achieved_rate,
        peak_in_flight,
        o.schedule_lag_p50_ms.unwrap_or(f64::NAN),
        o.schedule_lag_p99_ms.unwrap_or(f64::NAN),
        o.schedule_lag_max_ms.unwrap_or(f64::NAN),
        o.arrivals_unsent,
        q("ttft", "p50") - TTFT_MS as f64,
        q("ttft", "p99") - TTFT_MS as f64,
        late.0,
        late.1,
    );
    Ok(())
}

/// Per-request records, their cost on the agent: one `agent` process (one
/// load thread) with 1000 users against llm-sim (TTFT 50 ms, ITL 50 ms, 16
/// tokens: ~0.8 s a request, ~1250 requests/s), 20 s, with `[output]
/// requests` off, on, and on with every text saved; agent CPU seconds per
/// request (its /proc figures) over `runs` rounds of the three.
async fn records_case(runs: usize) -> Result<()> {
    const MODES: [(&str, &str); 3] = [
        ("off", "requests = false"),
        ("on", "requests = true"),
        (
            "on, save_text = true",
            "requests = true\n        save_text = true",
        ),
    ];
    let mut per_request: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for run in 0..runs {
        for (m, (name, output)) in MODES.iter().enumerate() {
            let (requests, agent_cpu) = records_run(output).await?;
            let us = agent_cpu / requests as f64 * 1e6;
            println!(
                "run {run} {name}: {requests} requests, agent CPU {agent_cpu:.2} s, {us:.1} µs/request"
            );
            per_request[m].push(us);
        }
    }
    let (build, send, bytes) = records_micro(200_000, false);
    let (build_t, send_t, bytes_t) = records_micro(200_000, true);
    println!(
        "record alone (one thread, 16 chunks): build {build:.0} ns + batch and encode {send:.0} ns, \
         {bytes:.0} B on the wire; with text: {build_t:.0} + {send_t:.0} ns, {bytes_t:.0} B"
    );
    println!("| records | agent CPU µs / request (median of {runs}) | runs | vs off |");
    println!("|---|---|---|---|");
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(&per_request[0]);
    for ((name, _), v) in MODES.iter().zip(&per_request) {
        let runs: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "| {name} | {:.1} | {} | {:+.1} % |",
            median(v),
            runs.join(", "),
            100.0 * (median(v) / off - 1.0)
        );
    }
    Ok(())
}

/// The cost of one record alone, in ns: built from a request of 16 output
/// chunks as the engine does, then batched and encoded as the session does
/// (the clone kept for a resend included). Medians of 5 rounds of `n`.
fn records_micro(n: u64, text: bool) -> (f64, f64, f64) {
    use barrage_agent::chunk::ChunkInfo;
    use barrage_agent::measure::{InputCount, RequestMeasure};
    use barrage_agent::records::{End, Records, Sender};
    use barrage_proto::agent::v1 as pb;
    use prost::Message;
    use std::time::Instant;
    let prompt = pb::Prompt {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "word ".repeat(32),
        }],
        ..pb::Prompt::default()
    };
    let opts = pb::RecordOptions {
        enabled: true,
        save_text: if text { u64::MAX } else { 0 },
    };
    let Some(records) = Records::new(Some(&opts), &[prompt]) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let t0 = Instant::now();
    records.set_origin(t0);
    let data = br#"{"choices":[{"delta":{"content":"token"}}]}"#;
    let mut m = RequestMeasure::default();
    m.capture_text(text);
    m.begin(t0);
    for i in 0..16u64 {
        let info = ChunkInfo {
            output: true,
            answer: true,
            completion_tokens: Some(i + 1),
            text_span: Some((30, 37)),
            ..ChunkInfo::default()
        };
        m.on_chunk(t0 + Duration::from_millis(50 + 10 * i), &info);
        m.keep_text(data, &info);
    }
    let result = Ok(());
    let end = End::Done(t0 + Duration::from_millis(210), &result);
    let (mut builds, mut sends, mut wire) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..5 {
        let start = Instant::now();
        let mut all = Vec::with_capacity(n as usize);
        for i in 0..n {
            let who = Sender {
                claim: records.claim(),
                user: i % 1000,
                prompt_index: 0,
                warmup: false,
                input: InputCount::estimated(32),
                turn: None,
                prompt_text: None,
            };
            let (r, bytes) = records.build(who, &m, end);
            records.added(bytes);
            all.push(r);
        }
        let built = Instant::now();
        wire = 0;
        for (batch, _) in records.batches(all) {
            let kept = batch.clone();
            wire += batch.encode_to_vec().len();
            drop(kept);
        }
        let per = |d: Duration| d.as_nanos() as f64 / n as f64;
        builds.push(per(built - start));
        sends.push(per(built.elapsed()));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(builds), median(sends), wire as f64 / n as f64)
}

/// One records run: requests ended and the agent process's CPU seconds.
async fn records_run(output: &str) -> Result<(u64, f64)> {
    const TOKEN: &str = "records-bench-token";
    let (mut sim, url) = start_sim(50)?;
    let (mut agent, addr) = bench_support::spawn_listening(
        bench_support::sibling("agent")?,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-env",
            "BENCH_TOKEN",
            "--threads",
            "1",
        ],
        &[("BENCH_TOKEN", TOKEN)],
    )?;
    let plan = format!(
        r#"
        name = "bench-records"
        [target]
        url = "{url}"
        [request]
        max_tokens = 16
        [dataset]
        kind = "random"
        input_words = 32
        prompts = 64
        [load]
        users = 1000
        spawn_rate = 500
        duration = "20s"
        [cluster]
        agents = ["{addr}"]
        [output]
        dir = "{out}"
        {output}
        "#,
        out = std::env::temp_dir().join("barrage-bench").display(),
    );
    let plan = bench_support::plan(&plan)?;
    let cpu0 = child_cpu_secs(agent.id());
    let opts = RunOptions {
        agent_token: Some(barrage_common::auth::Token::new(TOKEN)),
        ..RunOptions::default()
    };
    let outcome = execute(plan, opts, CancellationToken::new()).await?;
    let agent_cpu = child_cpu_secs(agent.id()) - cpu0;
    for c in [&mut agent, &mut sim] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let s = &outcome.summary;
    Ok((
        s.requests_ok + s.requests_failed + s.requests_incomplete,
        agent_cpu,
    ))
}

/// llm-sim's count of completion tokens written so far.
async fn sim_tokens(url: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("{url}/sim/stats")).await else {
        return 0;
    };
    r.json::<barrage_llm_sim::SimStats>()
        .await
        .map_or(0, |s| s.output_tokens_sent)
}

/// The floor under the client path: `streams` users that only stream the
/// same requests with reqwest (same client settings as the agent's) and
/// stamp each read, nothing parsed or recorded; then the real client path at
/// the same load, in the same process. Both figures are process CPU per
/// token llm-sim wrote, so they compare directly.
async fn floor_case(streams: u64) -> Result<()> {
    let case = Case::new(streams, 50, 4);
    let per_request_ms = TTFT_MS + (case.tokens - 1) * case.itl_ms;
    let run_ms = case.ramp_ms + case.rounds * per_request_ms + per_request_ms / 2;
    let (mut sim, url) = start_sim(case.itl_ms)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(streams as usize)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let body = format!(
        r#"{{"model":"m","stream":true,"max_tokens":{},"messages":[{{"role":"user","content":"{}"}}],"stream_options":{{"include_usage":true}}}}"#,
        case.tokens,
        "word ".repeat(32).trim_end()
    );
    let endpoint = format!("{url}/v1/chat/completions");
    let t0 = std::time::Instant::now();
    let end = t0 + Duration::from_millis(run_ms);
    let (cpu0, tok0) = (
        process_cpu_time(100.0).unwrap_or_default(),
        sim_tokens(&url).await,
    );
    let mut users = tokio::task::JoinSet::new();
    for i in 0..streams {
        let (client, endpoint, body) = (client.clone(), endpoint.clone(), body.clone());
        let begin = t0 + Duration::from_millis(i * case.ramp_ms / streams);
        users.spawn(async move {
            tokio::time::sleep_until(begin.into()).await;
            let _ = tokio::time::timeout_at(end.into(), bare_user(client, endpoint, body)).await;
        });
    }
    while users.join_next().await.is_some() {}
    let cpu = process_cpu_time(100.0)
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    let tokens = sim_tokens(&url).await - tok0;
    let _ = sim.kill();
    let _ = sim.wait();
    println!(
        "bare reqwest, {streams} streams: {:.2} µs CPU / token ({tokens} tokens)",
        cpu / tokens as f64 * 1e6
    );
    let (mut sim, url) = start_sim(case.itl_ms)?;
    let tok0 = sim_tokens(&url).await;
    let cpu0 = process_cpu_time(100.0).unwrap_or_default();
    println!("{HEADER}\n|---|---|---|---|---|---|---|---|---|---|");
    run_case_on(&case, &mut sim, &url).await?;
    let cpu = process_cpu_time(100.0)
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    let tokens = sim_tokens(&url).await - tok0;
    let _ = sim.kill();
    let _ = sim.wait();
    println!(
        "barrage, {streams} streams: {:.2} µs CPU / token ({tokens} tokens)",
        cpu / tokens as f64 * 1e6
    );
    Ok(())
}

/// One user of `floor_case`: request after request, every read stamped.
async fn bare_user(client: reqwest::Client, endpoint: String, body: String) {
    use futures::StreamExt;
    loop {
        let Ok(resp) = client
            .post(&endpoint)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(60))
            .body(body.clone())
            .send()
            .await
        else {
            return;
        };
        let mut pieces = resp.bytes_stream();
        while let Some(Ok(piece)) = pieces.next().await {
            std::hint::black_box((std::time::Instant::now(), piece.len()));
        }
    }
}

/// The soft open-files limit, from /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One agent (one load thread) holding `streams` streams against llm-sim at
/// ITL 1 s (16 tokens), users started over 20 s, one full request each.
async fn hold_case(streams: u64) -> Result<()> {
    // One socket per stream, plus the process's own files, gRPC and the
    // results files (27 at 19,800 streams).
    let need = streams + 64;
    if let Some(limit) = open_files_limit()
        && limit < need
    {
        anyhow::bail!(
            "{streams} streams need about {need} open files, and `ulimit -n` is {limit} here: \
             raise it (`ulimit -n {need}`) or ask for fewer streams"
        );
    }
    let case = Case {
        tokens: 16,
        ramp_ms: 20_000,
        agents: Some(1),
        ..Case::new(streams, 1000, 1)
    };
    println!("{HEADER}\n|---|---|---|---|---|---|---|---|---|---|");
    run_case(&case).await
}

const HEADER: &str = "| streams | itl | completed / ideal | output chunks/s | client CPU s / M chunks | sim CPU s / M chunks | ttft err p50 / p99 (ms) | chunk_gap err p50 / p99 (ms) | peak RSS KiB / stream | sim wake lateness p50 / p99 (ms) |";

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("open") => return open_loop_case().await,
        Some("floor") => {
            let streams = std::env::args().nth(2).and_then(|r| r.parse().ok());
            return floor_case(streams.unwrap_or(1000)).await;
        }
        Some("hold") => {
            let streams = std::env::args().nth(2).and_then(|r| r.parse().ok());
            return hold_case(streams.unwrap_or(20_000)).await;
        }
        Some("records") => {
            let runs = std::env::args().nth(2).and_then(|r| r.parse().ok());
            return records_case(runs.unwrap_or(3)).await;
        }
        _ => {}
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let cases = [
        Case::new(100, 10, 15),
        Case::new(1000, 50, 4),
        Case::new(5000, 250, 1),
    ];
    println!("{HEADER}\n|---|---|---|---|---|---|---|---|---|---|");
    for c in cases
        .iter()
        .filter(|c| args.is_empty() || args.contains(&c.streams))
    {
        run_case(c).await?;
    }
    Ok(())
}
