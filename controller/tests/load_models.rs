//! Load models end to end against the built-in simulator: open-loop rates,
//! Poisson arrivals, concurrency caps, "inf", user stages, warmup and
//! threshold verdicts.

use barrage_controller::report::Summary;
use barrage_controller::run::{RunOptions, Verdict};

use crate::support::{LOAD, run_text, scratch};

async fn run(load: &str, extra: &str) -> (Summary, Verdict) {
    let text = format!(
        r#"
        name = "models"
        [request]
        max_tokens = 8
        [dataset]
        input_words = 8
        prompts = 20
        [load]
        {load}
        [cluster]
        embedded_agents = 2
        [output]
        dir = "{}"
        [simulator]
        ttft = "20ms"
        itl = "10ms"
        {extra}
        "#,
        scratch("models").display()
    );
    let outcome = run_text(&text, RunOptions::default()).await;
    (outcome.summary, outcome.verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_rate_is_delivered_on_schedule() {
    let _serial = LOAD.lock().await;
    let (s, v) = run("rate = 50.0\narrival = \"constant\"\nduration = \"4s\"", "").await;
    assert_eq!(v, Verdict::Completed);
    let o = s.open_loop.clone().expect("open-loop report");
    assert_eq!(o.offered_rate, Some(50.0));
    // 200 planned arrivals (the last ones may be cut off by the end).
    let sim = s.simulator.clone().expect("sim");
    assert!(
        (195..=200).contains(&sim.requests),
        "arrivals {}",
        sim.requests
    );
    assert!(
        (o.achieved_rate - 50.0).abs() < 2.5,
        "achieved {}",
        o.achieved_rate
    );
    // Precise on an idle machine (BENCHMARKS.md); loose here, CI shares cores.
    assert!(
        o.schedule_lag_p50_ms.is_some_and(|l| l < 3.0),
        "lag {:?}",
        o.schedule_lag_p50_ms
    );
    assert!(
        o.schedule_lag_p99_ms.is_some_and(|l| l < 25.0),
        "lag {:?}",
        o.schedule_lag_p99_ms
    );
    assert_eq!(o.arrivals_unsent, 0);
    assert!(s.metrics["ttft_intended"].count > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_arrivals_average_the_rate() {
    let _serial = LOAD.lock().await;
    let (s, _) = run("rate = 50.0\nduration = \"4s\"", "").await;
    let n = s.simulator.clone().expect("sim").requests;
    // Poisson(200): ±4σ ≈ ±57.
    assert!((143..=257).contains(&n), "arrivals {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_shows_as_schedule_lag_not_dropped_arrivals() {
    let _serial = LOAD.lock().await;
    // Each request takes ~90 ms; 2 in flight serve ~22/s of the offered 60/s.
    let (s, _) = run(
        "rate = 60.0\narrival = \"constant\"\nduration = \"3s\"\nmax_concurrency = 2",
        "",
    )
    .await;
    let sim = s.simulator.clone().expect("sim");
    assert!(sim.max_in_flight <= 2, "cap held: {}", sim.max_in_flight);
    let o = s.open_loop.clone().expect("open loop");
    assert!(o.achieved_rate < 35.0, "achieved {}", o.achieved_rate);
    assert!(
        o.schedule_lag_max_ms.is_some_and(|l| l > 500.0),
        "lag grows: {:?}",
        o.schedule_lag_max_ms
    );
    assert!(
        o.arrivals_unsent > 50,
        "unsent arrivals reported: {}",
        o.arrivals_unsent
    );
    // Started + unsent = planned (180), nothing silently dropped.
    assert!(
        (175..=180).contains(&(s.requests_total + s.requests_incomplete + o.arrivals_unsent)),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inf_rate_sends_everything_at_once() {
    let _serial = LOAD.lock().await;
    let (s, _) = run("rate = \"inf\"\nrequests = 60", "").await;
    let sim = s.simulator.clone().expect("sim");
    assert_eq!(s.requests_ok, 60);
    assert!(
        sim.max_in_flight >= 55,
        "all at once: {}",
        sim.max_in_flight
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_stages_ramp_up_and_down() {
    let _serial = LOAD.lock().await;
    let (s, _) = run("stages = [{duration = \"2s\", users = 20}, {duration = \"2s\", users = 20}, {duration = \"1s\", users = 0}]", "").await;
    let sim = s.simulator.clone().expect("sim");
    assert!(
        sim.max_in_flight <= 20 && sim.max_in_flight >= 15,
        "peak {}",
        sim.max_in_flight
    );
    let t = &s.timeline;
    assert!(t.len() >= 4);
    assert!(
        t[0].requests_ok < t[2].requests_ok,
        "ramping up: {:?}",
        t.iter().map(|r| r.requests_ok).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_left_out_of_the_totals_but_kept_in_the_timeline() {
    let _serial = LOAD.lock().await;
    // drain = 0: the run ends at 3 s sharp, so the measured time is known.
    let (s, _) = run(
        "users = 4\nduration = \"3s\"\nwarmup = \"1s\"\ndrain = \"0s\"",
        "",
    )
    .await;
    assert_eq!(s.warmup_s, 1.0);
    let in_timeline: u64 = s.timeline.iter().map(|r| r.requests_ok).sum();
    let warm: u64 = s
        .timeline
        .iter()
        .filter(|r| r.warmup)
        .map(|r| r.requests_ok)
        .sum();
    assert!(warm > 0);
    assert_eq!(s.requests_ok, in_timeline - warm);
    assert!(
        s.duration_s < 2.5,
        "throughput over the measured 2 s: {}",
        s.duration_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_decide_the_verdict() {
    let _serial = LOAD.lock().await;
    let (s, v) = run("users = 4\nrequests = 40", "").await;
    assert_eq!(v, Verdict::Completed);
    assert!(s.thresholds.is_empty());
    let plan_with = |limits: &str| format!("users = 4\nrequests = 40\n[thresholds]\n{limits}");
    // The simulator's TTFT is 20 ms: a 10 ms p99 limit fails, 100 ms passes.
    let (_, v) = run(&plan_with("ttft_p99 = \"10ms\""), "").await;
    assert_eq!(v, Verdict::Breached);
    assert_eq!(v.exit_code(), 4);
    let (s, v) = run(&plan_with("ttft_p99 = \"100ms\"\nerror_rate = 0.0"), "").await;
    assert_eq!(v, Verdict::Completed, "{:?}", s.thresholds);
    assert!(s.thresholds.iter().all(|t| t.passed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_breach_stops_a_lost_run_early() {
    let _serial = LOAD.lock().await;
    let (s, v) = run(
        "users = 16\nrequests = 3000\n[thresholds]\nabort_on_breach = true\nerror_rate = 0.05",
        "[simulator.faults]\nhttp_500 = 0.5",
    )
    .await;
    assert_eq!(v, Verdict::Breached);
    assert!(
        s.requests_total < 1000,
        "stopped early: {}",
        s.requests_total
    );
    assert!(
        s.notes.iter().any(|n| n.contains("error_rate")),
        "{:?}",
        s.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_replays_at_its_own_timing_and_lengths() {
    let _serial = LOAD.lock().await;
    let dir = scratch("trace");
    let trace = dir.join("trace.jsonl");
    // 40 requests, one every 50 ms (in ms), replayed at time_scale 0.5: one
    // every 25 ms, 975 ms in all; lengths from the trace.
    let lines: String = (0..40)
        .map(|i| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": {}}}\n",
                i * 50,
                10 + i,
                1 + i % 4
            )
        })
        .collect();
    std::fs::write(&trace, lines).expect("trace");
    let (s, v) = run(
        &format!("trace = \"{}\"\ntime_scale = 0.5", trace.display()),
        "",
    )
    .await;
    assert_eq!(v, Verdict::Completed);
    assert_eq!(s.requests_ok, 40);
    let sim = s.simulator.clone().expect("sim");
    let want_in: u64 = (0..40).map(|i| 10 + i).sum();
    let want_out: u64 = (0..40).map(|i| 1 + i % 4).sum();
    assert_eq!(
        sim.input_tokens, want_in,
        "each request carried its trace length"
    );
    assert_eq!(s.output_tokens, want_out);
    let o = s.open_loop.clone().expect("open loop");
    assert!(
        o.schedule_lag_p50_ms.is_some_and(|l| l < 3.0),
        "{:?}",
        o.schedule_lag_p50_ms
    );
    assert!(
        (s.duration_s - 1.05).abs() < 0.3,
        "replayed in ~1 s: {}",
        s.duration_s
    );
}
