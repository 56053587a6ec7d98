//! Sweeps end to end against the built-in simulator: a zipped matrix with
//! input/output pairs, and an SLO search that must find the simulator's
//! known capacity.

use barrage_controller::run::{RunOptions, Verdict};
use barrage_controller::sweep::{PlanOutcome, execute_plan};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zipped_matrix_runs_every_step_and_compares_them() {
    let _serial = LOAD.lock().await;
    let text = format!(
        r#"
        name = "matrix"
        [load]
        users = 1
        requests = 1
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "10ms"
        itl = "2ms"
        [sweep]
        users = [1, 4]
        requests = [4, 16]
        io = [[8, 4], [16, 8]]
        "#,
        scratch("sweep").display()
    );
    let out = tokio::time::timeout(
        TEST_LIMIT,
        execute_plan(
            plan_from(&text),
            RunOptions::default(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("bounded")
    .expect("sweep");
    let PlanOutcome::Sweep(s) = out else {
        panic!("a sweep")
    };
    assert_eq!(s.verdict, Verdict::Completed);
    let rows = &s.report.steps;
    assert_eq!(rows.len(), 4);
    let shape: Vec<_> = rows
        .iter()
        .map(|r| (r.users, r.requests, r.input_tokens, r.output_tokens))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Some(1), Some(4), Some(8), Some(4)),
            (Some(4), Some(16), Some(8), Some(4)),
            (Some(1), Some(4), Some(16), Some(8)),
            (Some(4), Some(16), Some(16), Some(8)),
        ]
    );
    for r in rows {
        assert_eq!(Some(r.requests_ok), r.requests, "{}", r.label);
        // Each step's own summary: output tokens are exactly requests × out.
        let sum: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(r.dir.join("summary.json")).expect("step summary"),
        )
        .expect("json");
        let want = r.requests.unwrap_or(0) * u64::from(r.output_tokens.unwrap_or(0));
        assert_eq!(sum["output_tokens"], want, "{}", r.label);
        assert_eq!(sum["simulator"]["output_tokens"], want, "{}", r.label);
    }
    assert!(s.dir.join("sweep.json").is_file());
    let csv = std::fs::read_to_string(s.dir.join("sweep.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_search_finds_the_simulators_batch_capacity() {
    let _serial = LOAD.lock().await;
    // max_batch = 4: up to 4 users get TTFT ≈ 20 ms; a fifth waits a whole
    // request (~170 ms) in the queue, breaking the 100 ms p99 TTFT SLO.
    let text = format!(
        r#"
        name = "search"
        [request]
        max_tokens = 16
        [load]
        users = 1
        duration = "1500ms"
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "20ms"
        itl = "10ms"
        max_batch = 4
        [slo]
        ttft_p99 = "100ms"
        [sweep]
        search = "users"
        search_min = 1
        search_max = 64
        "#,
        scratch("search").display()
    );
    let out = tokio::time::timeout(
        TEST_LIMIT,
        execute_plan(
            plan_from(&text),
            RunOptions::default(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("bounded")
    .expect("search");
    let PlanOutcome::Sweep(s) = out else {
        panic!("a sweep")
    };
    let r = s.report.search.clone().expect("search result");
    assert_eq!(
        r.best,
        Some(4.0),
        "{:?}",
        s.report
            .steps
            .iter()
            .map(|x| (&x.label, x.limits_held, x.ttft_p99_ms))
            .collect::<Vec<_>>()
    );
    assert_eq!(r.first_failing, Some(5.0));
    assert!(
        r.goodput_at_best.is_some_and(|g| g > 10.0),
        "{:?}",
        r.goodput_at_best
    );
    assert_eq!(s.verdict, Verdict::Completed);
}
