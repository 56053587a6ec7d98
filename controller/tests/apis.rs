//! Every API against the built-in simulator, streaming and not: the counts
//! the controller reports equal what the simulator served.

use barrage_controller::run::{RunOptions, Verdict};

use crate::support::{LOAD, run_text, scratch, sim_with, word_level_tokenizer};

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
    let o = run_text(&text, RunOptions::default()).await;
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
            let from = &s.token_source;
            assert_eq!(
                (from.input.server, from.output.server),
                (8, 8),
                "{case}: usage read from the response"
            );
            if api.starts_with("ollama") {
                // Ollama's own durations are kept per request.
                let pe = &s.metrics["server_prompt_eval"];
                assert_eq!(pe.count, 8, "{case}");
                let p50 = pe.percentiles["p50"];
                assert!((14.0..22.0).contains(&p50), "{case}: prompt_eval {p50}");
                assert_eq!(s.metrics["server_eval"].count, 8, "{case}");
            } else {
                assert_eq!(s.metrics["server_prompt_eval"].count, 0, "{case}");
            }
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
    // usage.prompt_tokens is the server's count, labelled so; total_tokens
    // = prompt_tokens says it generated nothing.
    let from = &s.token_source;
    assert_eq!((from.input.server, from.input.estimated), (8, 0));
    assert_eq!((from.output.server, from.output.estimated), (8, 0));
    let e2e = s.metrics["e2e"].percentiles["p50"];
    assert!((15.0..25.0).contains(&e2e), "e2e {e2e}");
}

/// The `template` API in its three formats, each aimed at a simulator
/// endpoint whose shape the pointers describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_api_reads_sse_ndjson_and_json_bodies_by_pointers() {
    let _serial = LOAD.lock().await;
    let cfg: barrage_common::simulator::SimConfig =
        toml::from_str("ttft = \"10ms\"\nitl = \"2ms\"").expect("cfg");
    let sim = sim_with(cfg).await;
    let cases = [
        (
            "/v1/completions",
            r#"body = '{"model": "%m", "prompt": "%p", "max_tokens": %max_tokens, "stream": true, "stream_options": {"include_usage": true}}'
            text = "/choices/0/text"
            prompt_tokens = "/usage/prompt_tokens"
            completion_tokens = "/usage/completion_tokens""#,
        ),
        (
            "/api/generate",
            r#"body = '{"model": "%m", "prompt": "%p", "options": {"num_predict": %max_tokens}}'
            format = "ndjson"
            text = "/response"
            done = "/done"
            prompt_tokens = "/prompt_eval_count"
            completion_tokens = "/eval_count""#,
        ),
        (
            "/v1/chat/completions",
            r#"body = '{"model": "%m", "messages": %messages, "max_tokens": %max_tokens}'
            format = "json"
            text = "/choices/0/message/content"
            prompt_tokens = "/usage/prompt_tokens"
            completion_tokens = "/usage/completion_tokens""#,
        ),
    ];
    for (path, template) in cases {
        let before = sim.stats();
        let text = format!(
            r#"
            [target]
            url = "http://{}{path}"
            api = "template"
            [target.template]
            {template}
            [request]
            max_tokens = 5
            [dataset]
            input_tokens = 12
            prompts = 4
            [load]
            users = 2
            requests = 6
            [cluster]
            embedded_agents = 1
            [output]
            dir = "{}"
            "#,
            sim.addr(),
            scratch("template").display()
        );
        let o = run_text(&text, RunOptions::default()).await;
        let s = &o.summary;
        let after = sim.stats();
        assert_eq!(s.requests_ok, 6, "{path}: {:?}", s.errors);
        assert_eq!(after.completed - before.completed, 6, "{path}");
        assert_eq!(s.output_tokens, 6 * 5, "{path}: usage read by pointer");
        assert_eq!(
            s.input_tokens,
            after.input_tokens - before.input_tokens,
            "{path}"
        );
        assert_eq!(s.token_source.output.server, 6, "{path}");
        assert!(
            s.metrics["ttft"].count == 6,
            "{path}: output found by pointer"
        );
    }
    sim.shutdown().await;
}

/// A server that sends no usage (llama-cpp-python's streams do not): output
/// tokens come from the plan's tokenizer, per chunk for `itl` too, labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_usage_the_tokenizer_counts_output_per_chunk() {
    let _serial = LOAD.lock().await;
    let dir = scratch("tokenizer-output");
    let t = word_level_tokenizer([
        "[UNK]", "tok", "alpha", "bravo", "delta", "echo", "golf", "hotel",
    ]);
    let path = dir.join("tokenizer.json");
    t.save(&path, false).expect("save");
    let text = format!(
        r#"
        [target]
        include_usage = false
        [request]
        max_tokens = 12
        [dataset]
        tokenizer = "{}"
        input_tokens = 10
        prompts = 4
        [load]
        users = 2
        requests = 6
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "10ms"
        itl = "2ms"
        tokens_per_chunk = 3
        "#,
        path.display(),
        dir.display()
    );
    let o = run_text(&text, RunOptions::default()).await;
    let s = &o.summary;
    let sim = s.simulator.clone().expect("sim");
    assert_eq!(s.requests_ok, 6);
    assert_eq!(
        s.output_tokens, sim.output_tokens,
        "the tokenizer's count equals the server's"
    );
    assert_eq!(s.output_tokens, 6 * 12);
    assert_eq!(
        s.token_source.output.tokenizer, 6,
        "labelled as tokenizer counts"
    );
    assert_eq!(s.token_source.output.server, 0);
    assert_eq!(s.token_source.chunk_tokens_assumed, 0);
    // 4 chunks of 3 tokens per request: 3 gaps, each spread over 3 tokens.
    assert_eq!(s.metrics["chunk_gap"].count, 6 * 3);
    assert_eq!(s.metrics["itl"].count, 6 * 3 * 3);
}
