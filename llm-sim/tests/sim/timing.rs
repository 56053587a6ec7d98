//! The timing model as a client measures it: TTFT, ITL, prefill, the
//! `max_batch` queue, the batch slowdown, and non-streaming completion time.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_itl_and_length_are_honoured() {
    timed(|| async {
        let cfg = SimConfig {
            ttft: ms(40),
            itl: ms(10),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        let reply = post(&client, &url, &chat(20, true), Framing::Sse).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], "text/event-stream");
        assert!(reply.outputs().iter().all(|(_, t)| t == "tok "));
        assert_eq!(reply.tokens(), 20);
        assert!(reply.done());
        let usage = &reply.last_json()["usage"];
        assert_eq!(
            usage,
            &json!({"prompt_tokens": 3, "completion_tokens": 20, "total_tokens": 23})
        );
        let stats = server.stats();
        assert_eq!((stats.requests, stats.completed), (1, 1));
        assert_eq!(
            (
                stats.input_tokens,
                stats.output_tokens,
                stats.output_tokens_sent
            ),
            (3, 20, 20)
        );
        assert_eq!(stats.ttft_injected_count, 1);
        assert_eq!((stats.in_flight, stats.max_in_flight), (0, 1));
        server.shutdown().await;
        let ttft = as_ms(reply.ttft());
        let gaps = reply.gaps_ms();
        let gap = median(gaps.clone());
        let e2e = as_ms(reply.end);
        println!("ttft {ttft:.2} ms, median gap {gap:.2} ms, e2e {e2e:.2} ms, gaps {gaps:.1?}");
        ensure!((40.0..43.0).contains(&ttft), "ttft {ttft}");
        ensure!((gap - 10.0).abs() < 1.5, "median gap {gap}");
        ensure!((230.0..234.0).contains(&e2e), "e2e {e2e}");
        let injected = stats.ttft_injected_sum_us;
        ensure!(
            (40_000..40_500).contains(&injected),
            "intended ttft {injected} us"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_per_token_adds_to_ttft() {
    timed(|| async {
        let cfg = SimConfig {
            ttft: ms(10),
            prefill_per_token: ms(1),
            tokens_per_word: 2.0,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let prompt = ["word"; 10].join(" ");
        let body = json!({"prompt": prompt, "max_tokens": 2, "stream": true});
        let reply = post(
            &client,
            &format!("{base}/v1/completions"),
            &body,
            Framing::Sse,
        )
        .await;
        assert_eq!(server.stats().input_tokens, 20);
        server.shutdown().await;
        let ttft = as_ms(reply.ttft());
        println!("ttft with 20 prompt tokens: {ttft:.2} ms");
        ensure!((30.0..33.0).contains(&ttft), "ttft {ttft}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_queues_the_second_request() {
    timed(|| async {
        let cfg = SimConfig {
            ttft: ms(20),
            itl: ms(5),
            max_batch: 1,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        // A second connection, opened before the timed part.
        let other = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        warm_up(&other, &base).await;
        let url = format!("{base}/v1/chat/completions");
        let body = chat(10, true);
        let (sent_a, first) = send(&client, &url, &body).await;
        let (sent_b, second) = send(&other, &url, &body).await;
        let (a, b) = tokio::join!(
            read(sent_a, first, Framing::Sse),
            read(sent_b, second, Framing::Sse)
        );
        assert_eq!((a.tokens(), b.tokens()), (10, 10));
        let stats = server.stats();
        assert_eq!(stats.max_in_flight, 2);
        server.shutdown().await;
        let offset = as_ms(sent_b - sent_a);
        let a_end = as_ms(a.end);
        let b_ttft = as_ms(b.ttft()) + offset;
        println!(
            "a: ttft {:.2} e2e {a_end:.2}; b (from a's send): ttft {b_ttft:.2}",
            as_ms(a.ttft())
        );
        ensure!((65.0..69.0).contains(&a_end), "a e2e {a_end}");
        // B's first token comes one full TTFT after A's end.
        ensure!(
            b_ttft >= a_end + 19.0 && b_ttft < a_end + 23.0,
            "b ttft {b_ttft}, a end {a_end}"
        );
        // Intended TTFTs: 20 ms, and B's queue wait (A's end less B's later
        // start) + 20 ms.
        let sum_ms = stats.ttft_injected_sum_us as f64 / 1e3;
        let expected = 40.0 + a_end - offset;
        ensure!(
            (sum_ms - expected).abs() < 2.0,
            "intended ttft sum {sum_ms} ms, expected {expected}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_slowdown_stretches_the_step() {
    timed(|| async {
        let cfg = SimConfig {
            ttft: ms(5),
            itl: ms(4),
            batch_slowdown: 1.0,
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        let body = chat(12, true);
        let (a, b) = tokio::join!(
            post(&client, &url, &body, Framing::Sse),
            post(&client, &url, &body, Framing::Sse)
        );
        server.shutdown().await;
        for reply in [a, b] {
            let gap = median(reply.gaps_ms());
            println!("two decoding, median gap {gap:.2} ms");
            ensure!((gap - 8.0).abs() < 1.5, "gap {gap}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_body_arrives_when_the_last_token_is_due() {
    timed(|| async {
        let cfg = SimConfig {
            ttft: ms(20),
            itl: ms(5),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        let reply = post(&client, &url, &chat(10, false), Framing::Whole).await;
        let body = reply.last_json();
        assert_eq!(body["usage"]["completion_tokens"], 10);
        assert_eq!(server.stats().completed, 1);
        server.shutdown().await;
        let e2e = as_ms(reply.end);
        println!("non-streaming e2e {e2e:.2} ms");
        ensure!((65.0..69.0).contains(&e2e), "e2e {e2e}");
        Ok(())
    })
    .await;
}
