//! Injected faults: error statuses, cut / malformed / stalled streams, and
//! fractional rates whose client-side counts equal the server's counters.

use std::time::Duration;

use barrage_common::simulator::Faults;
use futures::StreamExt;

use crate::support::*;

fn faulty(faults: Faults) -> SimConfig {
    SimConfig { faults, ..fast() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses() {
    bounded(async {
        for (faults, status) in [
            (
                Faults {
                    http_500: 1.0,
                    ..Faults::default()
                },
                500,
            ),
            (
                Faults {
                    http_429: 1.0,
                    ..Faults::default()
                },
                429,
            ),
        ] {
            let (server, base, client) = start(faulty(faults)).await;
            for stream in [true, false] {
                let reply = post(
                    &client,
                    &format!("{base}/v1/chat/completions"),
                    &chat(5, stream),
                    Framing::Whole,
                )
                .await;
                assert_eq!(reply.status, status);
                assert!(reply.last_json()["error"]["message"].is_string());
                if status == 429 {
                    assert_eq!(reply.headers["retry-after"], "1");
                }
            }
            let reply = post(
                &client,
                &format!("{base}/api/generate"),
                &serde_json::json!({"prompt": "x"}),
                Framing::Whole,
            )
            .await;
            assert_eq!(reply.status, status);
            assert!(reply.last_json()["error"].is_string());
            let s = server.stats();
            assert_eq!(
                (
                    s.requests,
                    s.completed,
                    s.http_500 + s.http_429,
                    s.ttft_injected_count
                ),
                (3, 0, 3, 0)
            );
            server.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_drops_the_connection_half_way() {
    bounded(async {
        let (server, base, client) = start(faulty(Faults {
            cut: 1.0,
            ..Faults::default()
        }))
        .await;
        let url = format!("{base}/v1/chat/completions");
        let reply = post(&client, &url, &chat(6, true), Framing::Sse).await;
        assert!(reply.error.is_some(), "the body fails: {reply:?}");
        assert!(!reply.done());
        assert_eq!(reply.tokens(), 3);
        assert!(reply.json().iter().all(|(_, v)| v.get("usage").is_none()));
        let (_, response) = send(&client, &url, &chat(6, false)).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.is_err(),
            "a non-streaming body is cut too"
        );
        let s = server.stats();
        assert_eq!(
            (
                s.requests,
                s.completed,
                s.cut,
                s.output_tokens_sent,
                s.output_tokens
            ),
            (2, 0, 2, 3, 0)
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_then_the_stream_goes_on() {
    bounded(async {
        let (server, base, client) = start(faulty(Faults {
            malformed: 1.0,
            ..Faults::default()
        }))
        .await;
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(6, true),
            Framing::Sse,
        )
        .await;
        assert_eq!(reply.malformed(), 1);
        assert_eq!(reply.records[2].text, "{not json");
        assert_eq!(
            reply.tokens(),
            5,
            "the malformed chunk replaced a token chunk"
        );
        assert!(reply.done());
        assert_eq!(reply.last_json()["usage"]["completion_tokens"], 6);
        let reply = post(
            &client,
            &format!("{base}/api/generate"),
            &serde_json::json!({"prompt": "x", "options": {"num_predict": 4}}),
            Framing::Ndjson,
        )
        .await;
        assert_eq!(reply.malformed(), 1);
        assert_eq!(reply.last_json()["done"], true);
        let s = server.stats();
        assert_eq!(
            (
                s.completed,
                s.malformed,
                s.output_tokens,
                s.output_tokens_sent
            ),
            (2, 2, 10, 10)
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_pauses_half_way() {
    timed(|| async {
        let faults = Faults {
            stall: 1.0,
            stall_duration: ms(30),
            ..Faults::default()
        };
        let cfg = SimConfig {
            itl: ms(2),
            ..faulty(faults)
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        let reply = post(&client, &url, &chat(6, true), Framing::Sse).await;
        assert!(reply.done());
        let whole = post(&client, &url, &chat(6, false), Framing::Whole).await;
        assert_eq!(server.stats().stalled, 2);
        server.shutdown().await;
        let gaps = reply.gaps_ms();
        let (e2e, whole_e2e) = (as_ms(reply.end), as_ms(whole.end));
        println!("gaps with a 30 ms stall: {gaps:.2?}, e2e {e2e:.2}, whole {whole_e2e:.2}");
        ensure!((gaps[2] - 32.0).abs() < 2.0, "{gaps:?}");
        ensure!(
            gaps.iter().enumerate().all(|(i, g)| i == 2 || *g < 4.0),
            "{gaps:?}"
        );
        ensure!((45.0..49.0).contains(&e2e), "5 + 5 x 2 + 30 ms, got {e2e}");
        ensure!(
            (45.0..49.0).contains(&whole_e2e),
            "whole body at {whole_e2e}"
        );
        Ok(())
    })
    .await;
}

/// What the client saw of one streamed request.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    http_500: u64,
    http_429: u64,
    cut: u64,
    malformed: u64,
    stalled: u64,
}

async fn fractional_run(seed: u64, stall: Duration) -> (Seen, SimStats) {
    let faults = Faults {
        http_500: 0.1,
        http_429: 0.1,
        cut: 0.3,
        malformed: 0.3,
        stall: 0.3,
        stall_duration: stall,
    };
    let cfg = SimConfig {
        ttft: ms(1),
        seed,
        ..faulty(faults)
    };
    let (server, base, client) = start(cfg).await;
    let url = format!("{base}/v1/chat/completions");
    let body = chat(4, true);
    let replies: Vec<Reply> = futures::stream::iter(0..200)
        .map(|_| post(&client, &url, &body, Framing::Sse))
        .buffer_unordered(50)
        .collect()
        .await;
    let mut seen = Seen::default();
    for reply in &replies {
        match reply.status {
            500 => seen.http_500 += 1,
            429 => seen.http_429 += 1,
            200 => {
                seen.cut += u64::from(reply.error.is_some() || !reply.done());
                seen.malformed += reply.malformed() as u64;
                // Arrivals of every record and of the end; a stall is the one long gap.
                let mut at: Vec<f64> = reply.records.iter().map(|r| as_ms(r.at)).collect();
                at.push(as_ms(reply.end));
                seen.stalled += u64::from(at.windows(2).any(|w| w[1] - w[0] > as_ms(stall) / 2.0));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let stats = server.stats();
    server.shutdown().await;
    (seen, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractional_faults_match_the_server_counters() {
    timed(|| async {
        let (seen, stats) = fractional_run(11, ms(150)).await;
        println!("client saw {seen:?}");
        // Binomial ranges (about ±4 sd): 200 x 0.1 = 20; 160 x 0.3 = 48.
        assert!(
            (5..=40).contains(&seen.http_500) && (5..=40).contains(&seen.http_429),
            "{seen:?}"
        );
        for n in [seen.cut, seen.malformed, seen.stalled] {
            assert!((20..=80).contains(&n), "{seen:?}");
        }
        assert_eq!(stats.requests, 200);
        assert_eq!(
            stats.completed,
            200 - seen.http_500 - seen.http_429 - seen.cut
        );
        // The same seed draws the same faults (the stall's length is no draw).
        let (_, again) = fractional_run(11, ms(1)).await;
        let counts = |s: &SimStats| (s.http_500, s.http_429, s.cut, s.malformed, s.stalled);
        assert_eq!(counts(&again), counts(&stats));
        let from_server = Seen {
            http_500: stats.http_500,
            http_429: stats.http_429,
            cut: stats.cut,
            malformed: stats.malformed,
            stalled: stats.stalled,
        };
        // Stalls are seen by timing (a 150 ms gap among 1 ms ones), hence the retry.
        ensure!(
            seen == from_server,
            "client {seen:?} != server {from_server:?}"
        );
        Ok(())
    })
    .await;
}
