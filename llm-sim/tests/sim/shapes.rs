//! Response shapes: role chunk, tokens per chunk, reasoning, continuous usage,
//! the OpenAI chunk / body fields, `/v1/models`, and bad requests.

use barrage_common::simulator::OutputLength;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_chunk_comes_first_without_content() {
    bounded(async {
        let cfg = SimConfig {
            ttft: ms(30),
            role_chunk: true,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(3, true),
            Framing::Sse,
        )
        .await;
        let (at, first) = reply.json().into_iter().next().expect("a chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant"}));
        assert_eq!(first["object"], "chat.completion.chunk");
        assert!(as_ms(at) < 20.0, "role chunk at {at:?}");
        assert!(as_ms(reply.ttft()) >= 30.0);
        // Content chunks then carry no role.
        let second = &reply.json()[1].1;
        assert_eq!(second["choices"][0]["delta"], json!({"content": "tok "}));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_fields_match_openai() {
    bounded(async {
        let (server, base, client) = start(fast()).await;
        let reply = post(&client, &format!("{base}/v1/chat/completions"), &chat(2, true), Framing::Sse).await;
        let chunks = reply.json();
        assert_eq!(chunks.len(), 3, "two content chunks and the usage chunk");
        let first = &chunks[0].1;
        assert!(first["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
        assert!(first["created"].as_u64().is_some());
        assert_eq!(first["model"], "m");
        assert_eq!(
            first["choices"][0],
            json!({"index": 0, "delta": {"role": "assistant", "content": "tok "}, "logprobs": null, "finish_reason": null})
        );
        assert_eq!(chunks[1].1["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[2].1["choices"], json!([]));
        assert!(reply.done());
        // Without include_usage there is no usage chunk.
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true});
        let reply = post(&client, &format!("{base}/v1/chat/completions"), &body, Framing::Sse).await;
        assert_eq!(reply.json().len(), 2);
        assert!(reply.json().iter().all(|(_, v)| v.get("usage").is_none()));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_chunk_groups_tokens_and_keeps_the_per_token_itl() {
    timed(|| async {
        let cfg = SimConfig {
            itl: ms(4),
            tokens_per_chunk: 3,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(10, true),
            Framing::Sse,
        )
        .await;
        let texts: Vec<_> = reply.outputs().into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            texts,
            ["tok tok tok ", "tok tok tok ", "tok tok tok ", "tok "]
        );
        assert_eq!(reply.last_json()["usage"]["completion_tokens"], 10);
        server.shutdown().await;
        let gaps = reply.gaps_ms();
        println!("gaps with 3 tokens per chunk: {gaps:.2?}");
        ensure!(
            (gaps[0] - 12.0).abs() < 1.5 && (gaps[1] - 12.0).abs() < 1.5,
            "{gaps:?}"
        );
        ensure!((gaps[2] - 4.0).abs() < 1.5, "{gaps:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_comes_first_and_counts_in_usage() {
    bounded(async {
        let cfg = SimConfig {
            reasoning_tokens: 3,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        let reply = post(&client, &url, &chat(4, true), Framing::Sse).await;
        let deltas: Vec<Value> = reply
            .json()
            .into_iter()
            .map(|(_, v)| v["choices"][0]["delta"].clone())
            .collect();
        for d in &deltas[..3] {
            assert_eq!(d["reasoning_content"], "tok ", "{deltas:?}");
            assert!(d.get("content").is_none());
        }
        for d in &deltas[3..7] {
            assert_eq!(d["content"], "tok ", "{deltas:?}");
        }
        assert_eq!(reply.last_json()["usage"]["completion_tokens"], 7);
        let whole = post(&client, &url, &chat(4, false), Framing::Whole)
            .await
            .last_json();
        assert_eq!(
            whole["choices"][0]["message"]["reasoning_content"],
            "tok tok tok "
        );
        assert_eq!(
            whole["choices"][0]["message"]["content"],
            "tok tok tok tok "
        );
        assert_eq!(whole["usage"]["completion_tokens"], 7);
        assert_eq!(server.stats().output_tokens, 14);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_usage_is_in_every_chunk() {
    bounded(async {
        let cfg = SimConfig {
            continuous_usage: true,
            role_chunk: true,
            tokens_per_chunk: 2,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(5, true),
            Framing::Sse,
        )
        .await;
        let running: Vec<u64> = reply
            .json()
            .iter()
            .map(|(_, v)| {
                let usage = &v["usage"];
                assert_eq!(usage["prompt_tokens"], 3, "{v}");
                usage["completion_tokens"]
                    .as_u64()
                    .expect("usage in every chunk")
            })
            .collect();
        // Role chunk, chunks of 2, 2 and 1 tokens, then the final usage chunk.
        assert_eq!(running, [0, 2, 4, 5, 5]);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_whole_bodies() {
    bounded(async {
        let cfg = SimConfig {
            tokens_per_word: 1.5,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/completions");
        let body = json!({"prompt": ["one two", "three"], "max_tokens": 3, "stream": true,
            "stream_options": {"include_usage": true}});
        let reply = post(&client, &url, &body, Framing::Sse).await;
        let first = &reply.json()[0].1;
        assert_eq!(first["object"], "text_completion");
        assert_eq!(first["choices"][0]["text"], "tok ");
        assert_eq!(reply.tokens(), 3);
        // 3 words x 1.5 = 4.5 -> 5 prompt tokens.
        assert_eq!(reply.last_json()["usage"]["prompt_tokens"], 5);
        let body = json!({"prompt": [1, 2, 3, 4], "max_completion_tokens": 2});
        let whole = post(&client, &url, &body, Framing::Whole).await.last_json();
        assert_eq!(whole["choices"][0]["text"], "tok tok ");
        assert_eq!(
            whole["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6})
        );
        let whole = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(2, false),
            Framing::Whole,
        )
        .await;
        assert_eq!(whole.headers["content-type"], "application/json");
        let whole = whole.last_json();
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(
            whole["choices"][0]["message"],
            json!({"role": "assistant", "content": "tok tok "})
        );
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        let models: Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .expect("models")
            .json()
            .await
            .expect("json");
        assert_eq!(models["data"][0]["id"], "llm-sim");
        assert_eq!(
            server.stats().requests,
            3,
            "/v1/models is not a generation request"
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_model_and_bad_requests() {
    bounded(async {
        let cfg = SimConfig {
            honour_max_tokens: false,
            output_tokens: OutputLength::Uniform { min: 3, max: 6 },
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        for _ in 0..5 {
            let whole = post(&client, &url, &chat(100, false), Framing::Whole)
                .await
                .last_json();
            let n = whole["usage"]["completion_tokens"].as_u64().expect("usage");
            assert!((3..=6).contains(&n), "{n}");
            assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        }
        for body in [
            json!({"messages": "nope"}),
            json!({"max_tokens": 3}),
            json!({"messages": [], "max_tokens": 0}),
        ] {
            let reply = post(&client, &url, &body, Framing::Whole).await;
            assert_eq!(reply.status, 400, "{body}");
            assert!(reply.last_json()["error"]["message"].is_string());
        }
        let reply = client.post(&url).body("{").send().await.expect("response");
        assert_eq!(reply.status(), 400);
        let stats = server.stats();
        assert_eq!(
            (stats.requests, stats.completed, stats.in_flight),
            (9, 5, 0)
        );
        server.shutdown().await;
    })
    .await;
}
