//! End to end: controller + embedded agents + the built-in simulator.

use barrage_common::metrics::Metric;
use barrage_controller::run::{RunOptions, Verdict, execute};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch};

fn plan(extra_sim: &str, out: &std::path::Path) -> String {
    format!(
        r#"
        name = "e2e"
        [request]
        max_tokens = 16
        [dataset]
        kind = "random"
        input_words = 32
        prompts = 50
        [load]
        users = 64
        requests = 640
        [cluster]
        embedded_agents = 2
        [output]
        dir = "{}"
        [simulator]
        ttft = "50ms"
        itl = "10ms"
        {extra_sim}
        "#,
        out.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_timing_match_the_simulator() {
    let _serial = LOAD.lock().await;
    let out = scratch("e2e-timing");
    let p = plan_from(&plan("", &out));
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        execute(p, RunOptions::default(), CancellationToken::new()),
    )
    .await
    .expect("bounded")
    .expect("run");
    let s = &outcome.summary;
    let sim = s.simulator.clone().expect("simulator stats");
    assert_eq!(outcome.verdict, Verdict::Completed);
    assert_eq!(s.requests_ok, 640);
    assert_eq!(s.api, "openai-chat", "the API as the plan names it");
    assert_eq!(
        s.requests_total, sim.requests,
        "client and server count the same requests"
    );
    assert_eq!(s.requests_ok, sim.completed);
    assert_eq!(
        s.output_tokens, sim.output_tokens,
        "output tokens equal the simulator's"
    );
    assert_eq!(s.output_tokens, 640 * 16);
    assert_eq!(s.input_tokens, sim.input_tokens);
    assert_eq!(s.token_source.input.server, 640);
    assert_eq!(s.token_source.output.server, 640);

    let p50 = |m: Metric| s.metrics[m.name()].percentiles["p50"];
    let ttft = p50(Metric::Ttft);
    let itl = p50(Metric::Itl);
    assert!(
        (ttft - 50.0).abs() < 3.0,
        "p50 ttft {ttft} ms vs injected 50 ms"
    );
    assert!(
        (itl - 10.0).abs() < 3.0,
        "p50 itl {itl} ms vs injected 10 ms"
    );
    // Every user of the slice split took part.
    assert_eq!(s.agents.len(), 2);
    assert_eq!(s.agents.iter().map(|a| a.users).sum::<u64>(), 64);
    assert!(
        s.agents
            .iter()
            .all(|a| a.requests_ok > 0 && a.totals_mismatch.is_none())
    );

    // The files exist and say the same.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outcome.dir.join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    assert_eq!(json["requests_ok"], 640);
    assert!(json["metrics"]["ttft"]["percentiles"]["p99.9"].is_number());
    let csv = std::fs::read_to_string(outcome.dir.join("timeline.csv")).expect("timeline.csv");
    let rows_ok: u64 = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(3)
                .and_then(|v| v.parse::<u64>().ok())
                .expect("requests_ok column")
        })
        .sum();
    assert_eq!(rows_ok, 640, "the timeline adds up to the totals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_500s_are_counted_as_failed() {
    let _serial = LOAD.lock().await;
    let out = scratch("e2e-faults");
    let p = plan_from(&plan("[simulator.faults]\nhttp_500 = 0.1", &out));
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        execute(p, RunOptions::default(), CancellationToken::new()),
    )
    .await
    .expect("bounded")
    .expect("run");
    let s = &outcome.summary;
    let sim = s.simulator.clone().expect("simulator stats");
    assert!(
        sim.http_500 > 20 && sim.http_500 < 120,
        "about 10 % of 640: {}",
        sim.http_500
    );
    assert_eq!(s.requests_failed, sim.http_500);
    assert_eq!(s.errors.get("http_5xx").copied(), Some(sim.http_500));
    assert_eq!(s.requests_total, sim.requests);
    assert_eq!(s.requests_ok, sim.completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_streams_and_malformed_chunks_are_stream_errors() {
    let _serial = LOAD.lock().await;
    // One fault kind per run: a request drawn for both fails once but the
    // simulator counts it under each.
    for fault in ["cut", "malformed"] {
        let out = scratch("e2e-stream-faults");
        let p = plan_from(&plan(&format!("[simulator.faults]\n{fault} = 0.1"), &out));
        let outcome = tokio::time::timeout(
            TEST_LIMIT,
            execute(p, RunOptions::default(), CancellationToken::new()),
        )
        .await
        .expect("bounded")
        .expect("run");
        let s = &outcome.summary;
        let sim = s.simulator.clone().expect("simulator stats");
        let injected = if fault == "cut" {
            sim.cut
        } else {
            sim.malformed
        };
        assert!(injected > 20, "{fault}: about 10 % of 640: {injected}");
        assert_eq!(s.errors.get("stream").copied(), Some(injected), "{fault}");
        assert_eq!(s.requests_failed, injected, "{fault}");
        assert_eq!(s.requests_total, sim.requests, "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_the_run_and_keeps_what_was_measured() {
    let _serial = LOAD.lock().await;
    let out = scratch("e2e-interrupt");
    let text = plan("", &out).replace("requests = 640", "duration = \"60s\"");
    let p = plan_from(&text);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        c.cancel();
    });
    let began = std::time::Instant::now();
    let outcome = tokio::time::timeout(TEST_LIMIT, execute(p, RunOptions::default(), cancel))
        .await
        .expect("bounded")
        .expect("run");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(8),
        "stopped promptly"
    );
    assert_eq!(outcome.verdict, Verdict::Interrupted);
    let s = &outcome.summary;
    assert!(
        s.requests_ok > 64,
        "measured before the interrupt: {}",
        s.requests_ok
    );
    assert_eq!(s.status, "interrupted");
    assert!(outcome.dir.join("summary.json").is_file());
    let sim = s.simulator.clone().expect("simulator stats");
    // A request counts as started at its hand-off to the HTTP client, and
    // then ends as exactly one of ok, failed or incomplete (cut by the stop).
    assert_eq!(
        s.requests_started,
        s.requests_total + s.requests_incomplete,
        "every started request is accounted for exactly once"
    );
    // The stop can cut a request before its bytes reached the server (it
    // was still connecting), or after the server finished it but before the
    // client read the end: both are incomplete on the client. So the server
    // saw at most what was started, and the difference was cut...
    assert!(
        sim.requests <= s.requests_started
            && s.requests_started - sim.requests <= s.requests_incomplete,
        "started {} received {} incomplete {}",
        s.requests_started,
        sim.requests,
        s.requests_incomplete
    );
    // ...and nothing is lost or double counted: ok <= served <= ok + incomplete.
    assert!(
        s.requests_ok <= sim.completed && sim.completed <= s.requests_ok + s.requests_incomplete,
        "ok {} served {} incomplete {}",
        s.requests_ok,
        sim.completed,
        s.requests_incomplete
    );
    assert_eq!(s.requests_failed, 0);
}
