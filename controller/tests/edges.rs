//! The edges of a run (METRICS.md "At the edges"): the drain at the end of a
//! duration run, "inf" rate, the open-loop achieved rate, the warmup window,
//! and SIGTERM on the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use barrage_controller::run::RunOptions;
use barrage_controller::run::Verdict;

use crate::support::{LOAD, run_text, scratch};

/// A plan on the built-in simulator; `load` is the `[load]` table's body.
/// 16 tokens at `itl` after a 50 ms ttft.
fn plan(load: &str, itl_ms: u64, out: &std::path::Path) -> String {
    format!(
        r#"
        name = "edges"
        [request]
        max_tokens = 16
        [dataset]
        kind = "random"
        input_words = 8
        prompts = 10
        [load]
        {load}
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "50ms"
        itl = "{itl_ms}ms"
        "#,
        out.display()
    )
}

fn count(s: &barrage_controller::report::Summary, metric: &str) -> u64 {
    s.metrics.get(metric).map_or(0, |d| d.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_the_end_drain_and_count() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-drain");
    // Each request lasts ~1.55 s; the run 1 s: every user's first request
    // is in flight at the end, and none starts after it.
    let load = "users = 3\nduration = \"1s\"\ndrain = \"20s\"";
    let s = run_text(&plan(load, 100, &out), RunOptions::default())
        .await
        .summary;
    assert_eq!(s.requests_ok, 3, "{:?}", s.notes);
    assert_eq!(s.requests_incomplete, 0);
    assert_eq!(
        count(&s, "e2e"),
        s.requests_ok,
        "e2e of every drained request"
    );
    assert_eq!(s.drain_s, Some(20.0));
    let e2e_max = s.metrics["e2e"].max.expect("e2e");
    assert!(
        s.duration_s * 1000.0 >= e2e_max,
        "run time {} s spans the drained requests ({e2e_max} ms)",
        s.duration_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_zero_cuts_at_once_and_keeps_what_was_seen() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-drain0");
    let load = "users = 3\nduration = \"1s\"\ndrain = \"0s\"";
    let s = run_text(&plan(load, 100, &out), RunOptions::default())
        .await
        .summary;
    assert_eq!(s.requests_ok, 0);
    assert_eq!(s.requests_incomplete, 3);
    assert_eq!(s.requests_started, 3);
    assert_eq!(count(&s, "ttft"), 3, "ttft seen before the cut is kept");
    assert!(count(&s, "chunk_gap") >= 3, "chunk gaps seen are kept");
    assert_eq!(count(&s, "itl"), count(&s, "chunk_gap"));
    assert_eq!(count(&s, "e2e"), 0, "e2e is censored");
    assert_eq!(count(&s, "tpot"), 0);
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("drain = 0 s") && n.contains("(3)") && n.contains("censored")),
        "{:?}",
        s.notes
    );
    let written = std::fs::read_to_string(
        std::fs::read_dir(&out)
            .expect("results")
            .flatten()
            .next()
            .expect("run folder")
            .path()
            .join("summary.json"),
    )
    .expect("summary.json");
    assert!(written.contains("censored"), "summary.json says so");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_inf_run_time_spans_the_responses_and_intended_times_start_at_arrival() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-inf");
    let load = "rate = \"inf\"\nrequests = 8";
    let s = run_text(&plan(load, 20, &out), RunOptions::default())
        .await
        .summary;
    assert_eq!(s.requests_ok, 8);
    let e2e_max = s.metrics["e2e"].max.expect("e2e");
    assert!(
        s.duration_s * 1000.0 >= e2e_max,
        "run time {} s is never shorter than a request ({e2e_max} ms)",
        s.duration_s
    );
    // Every arrival is due at the start, so from the intended instant each
    // request's ttft is at least its own ttft.
    assert_eq!(count(&s, "ttft_intended"), 8);
    let ttft_min = s.metrics["ttft"].min.expect("ttft");
    let intended_min = s.metrics["ttft_intended"].min.expect("ttft_intended");
    assert!(
        intended_min >= ttft_min,
        "ttft_intended {intended_min} ms >= ttft {ttft_min} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_achieved_rate_spans_the_arrivals_not_the_drain() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-achieved");
    // 20 arrivals at 10/s (the last due at 1.9 s), each lasting ~1 s: the
    // run ends near 2.9 s, but the arrivals span 1.9 s.
    let load = "rate = 10.0\narrival = \"constant\"\nrequests = 20";
    let s = run_text(&plan(load, 60, &out), RunOptions::default())
        .await
        .summary;
    assert_eq!(s.requests_ok, 20);
    let o = s.open_loop.clone().expect("open loop");
    let ratio = o.achieved_rate / o.offered_rate.expect("offered");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "achieved {} vs offered 10/s",
        o.achieved_rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_drops_and_subtracts_the_same_window() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-warmup");
    // 1.5 s of warmup on a 1 s grid: two whole intervals are left out.
    // Two users send back to back, so requests run across the warmup's end.
    let load = "users = 2\nduration = \"3s\"\nwarmup = \"1500ms\"";
    let s = run_text(&plan(load, 5, &out), RunOptions::default())
        .await
        .summary;
    let dropped = s.timeline.iter().filter(|r| r.warmup).count() as f64;
    assert_eq!(dropped, 2.0);
    assert_eq!(
        s.warmup_s,
        dropped * 1.0,
        "the seconds taken off are the dropped intervals"
    );
    // Requests running across the warmup's end count where they end, as
    // started too: started, completed and incomplete share the window.
    assert_eq!(
        s.requests_started,
        s.requests_total + s.requests_incomplete,
        "{s:?}"
    );
}

/// SIGTERM (Kubernetes, systemd) stops the run like Ctrl-C: every agent
/// stops, what was measured is written, exit status 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_run_and_writes_what_was_measured() {
    let _serial = LOAD.lock().await;
    let out = scratch("edges-sigterm");
    let plan_path = out.join("plan.toml");
    let results = out.join("results");
    let load = "users = 2\nduration = \"60s\"";
    std::fs::write(&plan_path, plan(load, 5, &results)).expect("plan");
    let mut child = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("run")
        .arg(&plan_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn controller");
    // The first progress line ("[   0.0s] ok ...") says the run is going.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with('[') {
                let _ = tx.send(());
            }
        }
    });
    let going = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join");
    if going.is_err() {
        let _ = child.kill();
        panic!("the run never printed progress");
    }
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller did not stop within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(Verdict::Interrupted.exit_code()));
    let run_dir = std::fs::read_dir(&results)
        .expect("results folder")
        .flatten()
        .next()
        .expect("a run folder")
        .path();
    let summary = std::fs::read_to_string(run_dir.join("summary.json")).expect("summary.json");
    assert!(summary.contains("\"status\": \"interrupted\""), "{summary}");
}
