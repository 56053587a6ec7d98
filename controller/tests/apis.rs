//! Every API against the built-in simulator, streaming and not: the counts
//! the controller reports equal what the simulator served.

use barrage_controller::run::{RunOptions, Verdict, execute};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch};

async fn run(api: &str, stream: bool) -> (barrage_controller::report::Summary, Verdict) {
    let text = format!(
        r#"
        [target]
        api = "{api}"
        stream = {stream}
        [request]
        max_tokens = 5
        [dataset]
        input_tokens = 12
        prompts = 4
        [load]
        users = 2
        requests = 8
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "15ms"
        itl = "3ms"
        "#,
        scratch("apis").display()
    );
    let o = tokio::time::timeout(
        TEST_LIMIT,
        execute(
            plan_from(&text),
            RunOptions::default(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("bounded")
    .expect("run");
    (o.summary, o.verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generation_api_streaming_and_not_counts_what_the_server_served() {
    let _serial = LOAD.lock().await;
    for api in [
        "openai-chat",
        "openai-completions",
        "ollama-generate",
        "ollama-chat",
    ] {
        for stream in [true, false] {
            let (s, v) = run(api, stream).await;
            let sim = s.simulator.clone().expect("sim");
            let case = format!("{api} stream={stream}");
            assert_eq!(v, Verdict::Completed, "{case}: {:?}", s.errors);
            assert_eq!(s.requests_ok, 8, "{case}");
            assert_eq!(sim.completed, 8, "{case}");
            assert_eq!(s.output_tokens, 8 * 5, "{case}");
            assert_eq!(s.input_tokens, sim.input_tokens, "{case}");
            assert_eq!(s.input_tokens, 8 * 12, "{case}");
            assert_eq!(
                s.token_source.usage_from_server, 8,
                "{case}: usage read from the response"
            );
            let ttft = s.metrics["ttft"].percentiles["p50"];
            if stream {
                assert!((15.0..25.0).contains(&ttft), "{case}: ttft {ttft}");
                assert_eq!(s.metrics["chunk_gap"].count, 8 * 4, "{case}");
            } else {
                // One body: the first output arrives with the last.
                assert!(ttft >= 15.0 + 4.0 * 3.0, "{case}: ttft {ttft}");
                assert_eq!(s.metrics["chunk_gap"].count, 0, "{case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_measure_latency_and_input_tokens() {
    let _serial = LOAD.lock().await;
    let (s, v) = run("openai-embeddings", true).await;
    let sim = s.simulator.clone().expect("sim");
    assert_eq!(v, Verdict::Completed, "{:?}", s.errors);
    assert_eq!((s.requests_ok, sim.completed), (8, 8));
    assert_eq!(s.input_tokens, 8 * 12);
    assert_eq!(s.input_tokens, sim.input_tokens);
    assert_eq!(s.output_tokens, 0);
    let e2e = s.metrics["e2e"].percentiles["p50"];
    assert!((15.0..25.0).contains(&e2e), "e2e {e2e}");
}
