//! Odd but legal servers, through the real path (embedded agents over gRPC,
//! HTTP on loopback): a small server written here sends exactly the bytes
//! each case needs, in pieces the test chooses. SSE keep-alives and empty
//! `data:` lines, usage for one count only or starting late, tool calls and
//! text counted whole by the plan's tokenizer; and a `tpot` SLO on
//! one-token answers (llm-sim).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use barrage_controller::report::Summary;
use barrage_controller::run::{RunOptions, Verdict};
use tokenizers::Tokenizer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{LOAD, run_text, scratch, word_level_tokenizer};

const REQUESTS: u64 = 6;

/// A loopback HTTP/1.1 server answering every request with the same SSE
/// body, written piece by piece (each flushed alone, a moment apart, so the
/// client reads the boundaries the test chose). Returns its address.
async fn scripted(pieces: Vec<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let pieces = Arc::new(pieces);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let pieces = Arc::clone(&pieces);
            tokio::spawn(async move {
                let _ = answer(sock, &pieces).await;
            });
        }
    });
    addr
}

async fn answer(mut sock: TcpStream, pieces: &[&[u8]]) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    crate::support::read_http_body(&mut sock).await?;
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    )
    .await?;
    for p in pieces {
        sock.write_all(p).await?;
        sock.flush().await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sock.shutdown().await
}

/// A plan against `addr` (openai-chat, streamed), with `extra` TOML lines
/// in `[dataset]`.
fn plan(addr: &str, dataset: &str, dir: &Path) -> String {
    format!(
        r#"
        [target]
        url = "http://{addr}/v1/chat/completions"
        api = "openai-chat"
        timeout = "10s"
        [request]
        max_tokens = 8
        [dataset]
        input_tokens = 5
        prompts = 2
        {dataset}
        [load]
        users = 2
        requests = {REQUESTS}
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        "#,
        dir.display()
    )
}

async fn run_against(pieces: Vec<&'static [u8]>, dataset: &str) -> (Summary, PathBuf) {
    let addr = scripted(pieces).await;
    let o = run_text(
        &plan(&addr, dataset, &scratch("odd")),
        RunOptions::default(),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Completed, "{:?}", o.summary.errors);
    assert_eq!(o.summary.requests_ok, REQUESTS, "{:?}", o.summary.errors);
    (o.summary, o.dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_lines_comments_and_odd_splits_are_not_stream_errors() {
    let _serial = LOAD.lock().await;
    let pieces: Vec<&'static [u8]> = vec![
        b": keep-alive\r\n\r\n",
        // An event with empty data is not an event (SSE spec).
        b"data:\r\n\r\n",
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n",
        // Split inside the two bytes of "\xc3\xa9" (é), then between CR and LF.
        b"data: {\"choices\":[{\"delta\":{\"content\":\"caf\xc3",
        b"\xa9\"}}]}\r",
        b"\n\r\n",
        b"data: \n\n",
        // CR line ends.
        b"data: {\"choices\":[{\"delta\":{\"content\":\" au lait\"}}]}\r\r: ping\r\r",
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4}}\n\n",
        b"data: [DONE]\n\n",
    ];
    let (s, _) = run_against(pieces, "").await;
    assert_eq!(s.requests_failed, 0, "{:?}", s.errors);
    assert_eq!(s.output_tokens, REQUESTS * 4);
    assert_eq!(s.metrics["ttft"].count, REQUESTS);
    assert_eq!(s.metrics["chunk_gap"].count, REQUESTS, "two output chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_count_keeps_its_own_source() {
    let _serial = LOAD.lock().await;
    // Usage with completion tokens only: output from the server, input
    // estimated (from the prompt's words: no tokenizer).
    let pieces: Vec<&'static [u8]> = vec![
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\" b\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\" c\"}}]}\n\n",
        b"data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\n",
        b"data: [DONE]\n\n",
    ];
    let (s, dir) = run_against(pieces, "").await;
    let from = &s.token_source;
    assert_eq!((from.output.server, from.output.estimated), (REQUESTS, 0));
    assert_eq!((from.input.server, from.input.estimated), (0, REQUESTS));
    assert_eq!(s.output_tokens, REQUESTS * 3);
    assert_eq!(s.input_tokens, REQUESTS * 5, "the prompts' words");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json"))
            .expect("json");
    assert_eq!(json["token_source"]["input"]["estimated"], REQUESTS);
    assert_eq!(json["token_source"]["output"]["server"], REQUESTS);
    let console = barrage_controller::report::render(&s);
    let line = |label: &str| {
        console
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("Input tokens from").contains(&format!("estimated {REQUESTS}")),
        "{console}"
    );
    assert!(
        line("Output tokens from").contains(&format!("server usage {REQUESTS}")),
        "{console}"
    );

    // Running usage that starts late: on a role-only first chunk, not on
    // the first output chunk, then on every chunk. Each reported rise
    // spreads over its chunk (the first output chunk's 1 token assumed).
    let pieces: Vec<&'static [u8]> = vec![
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":0}}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\" b c d\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4}}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\" e f\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n",
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n",
        b"data: [DONE]\n\n",
    ];
    let (s, _) = run_against(pieces, "").await;
    assert_eq!(s.output_tokens, REQUESTS * 6);
    assert_eq!(s.metrics["chunk_gap"].count, REQUESTS * 2);
    assert_eq!(
        s.metrics["itl"].count,
        REQUESTS * (6 - 1),
        "3 + 2 tokens after the first chunk"
    );
    assert_eq!(s.token_source.chunk_tokens_assumed, REQUESTS);
    assert_eq!(
        (s.token_source.input.server, s.token_source.output.server),
        (REQUESTS, REQUESTS)
    );
}

/// One token per whitespace-separated word; unknown words are `[UNK]`.
fn word_tokenizer(dir: &Path) -> (Tokenizer, PathBuf) {
    let t = word_level_tokenizer([
        "[UNK]", "hello", "world", "alpha", "bravo", "delta", "echo", "golf",
    ]);
    let path = dir.join("tokenizer.json");
    t.save(&path, false).expect("save");
    (t, path)
}

fn count(tok: &Tokenizer, text: &str) -> u64 {
    tok.encode(text, false).expect("encode").get_ids().len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_the_tokenizer_counts_the_whole_text_tool_calls_included() {
    let _serial = LOAD.lock().await;
    let (tok, path) = word_tokenizer(&scratch("odd-tokenizer"));
    // Words split across chunks, then a tool call streamed in pieces.
    let content = ["hel", "lo wor", "ld "];
    let tool = [
        "get_weather",
        "{\"city\": ",
        "\"paris\", ",
        "\"unit\": \"c\"}",
    ];
    let pieces: Vec<&'static [u8]> = vec![
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\"lo wor\"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"content\":\"ld \"}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\": \"}}]}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"paris\\\", \"}}]}}]}\n\n",
        b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"unit\\\": \\\"c\\\"}\"}}]}}]}\n\n",
        b"data: [DONE]\n\n",
    ];
    let whole = count(&tok, &(content.concat() + &tool.concat()));
    let chunk_sum: u64 = content.iter().chain(&tool).map(|t| count(&tok, t)).sum();
    let content_chunks: u64 = content.iter().map(|t| count(&tok, t)).sum();
    assert!(
        whole != chunk_sum && whole != content_chunks,
        "the case tells the counts apart: {whole} {chunk_sum} {content_chunks}"
    );
    let (s, _) = run_against(pieces, &format!("tokenizer = \"{}\"", path.display())).await;
    assert_eq!(
        s.output_tokens,
        REQUESTS * whole,
        "whole text, tools included"
    );
    let from = &s.token_source;
    assert_eq!(
        (from.output.tokenizer, from.output.estimated),
        (REQUESTS, 0)
    );
    assert_eq!(
        from.input.tokenizer, REQUESTS,
        "prompts counted by the controller"
    );
    assert_eq!(from.chunk_tokens_assumed, 0);
}

/// llm-sim run with `max_tokens` and a per-request tpot SLO of 1 ms.
async fn tpot_slo_run(max_tokens: u32) -> Summary {
    let text = format!(
        r#"
        [request]
        max_tokens = {max_tokens}
        [dataset]
        input_tokens = 4
        prompts = 2
        [load]
        users = 2
        requests = {REQUESTS}
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "5ms"
        itl = "5ms"
        [slo]
        tpot_p99 = "1ms"
        "#,
        scratch("odd-tpot").display()
    );
    run_text(&text, RunOptions::default()).await.summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpot_slo_does_not_fail_one_token_answers() {
    let _serial = LOAD.lock().await;
    let one = tpot_slo_run(1).await;
    assert_eq!(one.requests_ok, REQUESTS, "{:?}", one.errors);
    assert_eq!(
        one.metrics["tpot"].count, 0,
        "tpot is undefined for 1 token"
    );
    assert!(one.request_throughput > 0.0);
    assert_eq!(
        one.goodput,
        Some(one.request_throughput),
        "every one-token answer is good"
    );
    // Two tokens 5 ms apart: tpot is defined and over the limit.
    let two = tpot_slo_run(2).await;
    assert_eq!(two.requests_ok, REQUESTS, "{:?}", two.errors);
    assert_eq!(two.goodput, Some(0.0));
}
