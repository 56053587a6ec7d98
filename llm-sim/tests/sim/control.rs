//! `/sim/stats`, `/sim/reset`, the in-flight gauge, bounded shutdown, and the
//! `llm-sim` binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::support::*;

async fn remote_stats(client: &reqwest::Client, base: &str) -> SimStats {
    let response = client
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .expect("stats");
    response.json().await.expect("stats json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_reset_over_http() {
    bounded(async {
        let cfg = SimConfig {
            itl: ms(20),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let url = format!("{base}/v1/chat/completions");
        post(&client, &url, &chat(2, true), Framing::Sse).await;
        // Hold one stream open and look at the gauge.
        let (_, open) = send(&client, &url, &chat(50, true)).await;
        let mut body = open.bytes_stream();
        body.next().await.expect("first chunk").expect("bytes");
        let during = remote_stats(&client, &base).await;
        assert_eq!(during, server.stats());
        assert_eq!(
            (
                during.requests,
                during.completed,
                during.in_flight,
                during.max_in_flight
            ),
            (2, 1, 1, 1)
        );
        assert_eq!((during.input_tokens, during.output_tokens), (3, 2));
        let before: SimStats = client
            .post(format!("{base}/sim/reset"))
            .send()
            .await
            .expect("reset")
            .json()
            .await
            .expect("json");
        assert_eq!(before.requests, 2);
        let after = remote_stats(&client, &base).await;
        let expected = SimStats {
            in_flight: 1,
            max_in_flight: 1,
            ..SimStats::default()
        };
        assert_eq!(after, expected);
        drop(body);
        // The dropped stream leaves the gauge once the server notices.
        let mut left = remote_stats(&client, &base).await;
        for _ in 0..100 {
            if left.in_flight == 0 {
                break;
            }
            tokio::time::sleep(ms(10)).await;
            left = remote_stats(&client, &base).await;
        }
        assert_eq!((left.in_flight, left.completed), (0, 0));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_cuts_open_streams() {
    bounded(async {
        let cfg = SimConfig {
            itl: ms(100),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let (_, open) = send(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(1000, true),
        )
        .await;
        let mut body = open.bytes_stream();
        body.next().await.expect("first chunk").expect("bytes");
        let t = std::time::Instant::now();
        server.shutdown().await;
        let took = t.elapsed();
        assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");
        let rest: Vec<_> = body.collect().await;
        assert!(rest.iter().any(Result::is_err), "the open stream is cut");
        let refused = client.get(format!("{base}/health")).send().await;
        assert!(refused.is_err(), "nothing listens any more");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_with_config_and_flags() {
    bounded(async {
        let config = std::env::temp_dir().join(format!("llm-sim-test-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            "model = \"from-file\"\nttft = \"2s\"\noutput_tokens = 3\n",
        )
        .expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
            .args(["--listen", "127.0.0.1:0", "--ttft", "5ms", "--itl", "1ms"])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("llm-sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("a line");
            line
        })
        .await
        .expect("reader");
        let base = line
            .trim()
            .strip_prefix("llm-sim listening on ")
            .expect("the address line")
            .to_owned();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let body = json!({"messages": [{"role": "user", "content": "hi"}]});
        let t = std::time::Instant::now();
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &body,
            Framing::Whole,
        )
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "--ttft overrides the file"
        );
        let v = reply.last_json();
        assert_eq!(
            v["model"], "from-file",
            "no model in the request: the configured one"
        );
        assert_eq!(v["usage"]["completion_tokens"], 3);
        let models: serde_json::Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .expect("models")
            .json()
            .await
            .expect("json");
        assert_eq!(models["data"][0]["id"], "from-file");
        child.kill().expect("kill");
        child.wait().expect("wait");
        std::fs::remove_file(&config).ok();
        let bad = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
            .args(["--listen", "127.0.0.1:0", "--tokens-per-chunk", "0"])
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("tokens_per_chunk"));
    })
    .await;
}
