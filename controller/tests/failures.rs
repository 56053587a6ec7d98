//! Failure must look like failure: a run where nothing succeeds fails, and
//! every error keeps its detail (status, body, OS error), redirects are not
//! followed, and a server that closes each keep-alive connection loses no
//! request; what a run cannot observe (gaps between chunks of a response that
//! is not streamed) is not reported as a number. Real HTTP on loopback:
//! llm-sim with faults, or small servers here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use barrage_common::metrics::ErrorClass;
use barrage_controller::report::{Summary, render};
use barrage_controller::run::{RunOptions, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{LOAD, run_text, scratch};

/// A plan of `requests` requests by `users` users against `target` (a
/// `[target]` url line, or empty for the simulator) plus `extra` TOML.
fn plan(target: &str, users: u32, requests: u32, extra: &str) -> String {
    format!(
        r#"
        name = "failures"
        [target]
        {target}
        [request]
        max_tokens = 4
        [dataset]
        input_words = 8
        prompts = 4
        [load]
        users = {users}
        requests = {requests}
        [cluster]
        embedded_agents = 2
        [output]
        dir = "{}"
        {extra}
        "#,
        scratch("failures").display()
    )
}

fn detail(s: &Summary, c: ErrorClass) -> &barrage_common::error_detail::ClassDetail {
    s.error_details
        .get(c)
        .unwrap_or_else(|| panic!("no {} detail in {:?}", c.name(), s.error_details))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_where_every_request_fails_is_a_failed_run_that_says_why() {
    let _serial = LOAD.lock().await;
    let text = plan(
        "",
        2,
        6,
        "[simulator]\nttft = \"5ms\"\n[simulator.faults]\nhttp_500 = 1.0",
    );
    let o = run_text(&text, RunOptions::default()).await;
    let s = &o.summary;
    assert_eq!((s.requests_ok, s.requests_failed), (0, 6));
    assert!(
        s.agents.iter().all(|a| a.requests_failed > 0),
        "both agents failed"
    );
    assert_eq!(o.verdict, Verdict::Failed);
    assert_eq!(o.verdict.exit_code(), 5);
    assert_eq!(s.status, "failed");
    let d = detail(s, ErrorClass::Http5xx);
    assert_eq!(d.statuses.get(&500), Some(&6), "{d:?}");
    assert_eq!(
        d.examples.len(),
        1,
        "one distinct message, merged from both agents: {d:?}"
    );
    assert!(
        d.examples[0].contains("HTTP 500") && d.examples[0].contains("injected fault"),
        "status and the body's first bytes: {d:?}"
    );
    let console = render(s);
    assert!(
        console.contains("all 6 requests failed") && console.contains("Why requests failed"),
        "{console}"
    );
    let json = std::fs::read_to_string(o.dir.join("summary.json")).expect("summary.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error_details"]["http_5xx"]["statuses"]["500"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_named_with_its_os_error() {
    let _serial = LOAD.lock().await;
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let url = format!("url = \"http://{addr}/v1/chat/completions\"\nmodel = \"m\"");
    let o = run_text(&plan(&url, 2, 4, ""), RunOptions::default()).await;
    let s = &o.summary;
    assert_eq!(o.verdict, Verdict::Failed);
    let d = detail(s, ErrorClass::Connect);
    let (cause, n) = d.causes.iter().next().expect("a cause");
    assert_eq!(*n, 4);
    assert!(cause.to_lowercase().contains("refused"), "{d:?}");
    assert!(
        d.examples
            .iter()
            .all(|e| e.to_lowercase().contains("refused")),
        "the chain down to the OS error: {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_failure_heads_the_summary_and_stream_errors_keep_their_detail() {
    let _serial = LOAD.lock().await;
    let sim = "[simulator]\nttft = \"2ms\"\nitl = \"1ms\"\nseed = 3\n[simulator.faults]\ncut = 0.3\nmalformed = 0.3";
    let o = run_text(&plan("", 4, 40, sim), RunOptions::default()).await;
    let s = &o.summary;
    assert!(s.requests_ok > 0 && s.requests_failed > 0, "{s:?}");
    assert_eq!(
        o.verdict,
        Verdict::Completed,
        "no error-rate limit is imposed"
    );
    let d = detail(s, ErrorClass::Stream);
    assert_eq!(d.causes.values().sum::<u64>(), s.requests_failed);
    // Cut streams end inside the chunked framing: the I/O error is the cause.
    assert!(
        d.causes.contains_key("malformed event") && d.causes.keys().any(|k| k.contains("EOF")),
        "{d:?}"
    );
    assert!(
        d.examples.iter().any(|e| e.contains("response bytes")),
        "how far the cut stream got: {d:?}"
    );
    let console = render(s);
    let headline = format!("{:.1} % of requests failed", s.failure_rate * 100.0);
    let first = console.lines().nth(2).unwrap_or_default();
    assert!(first.contains(&headline), "{console}");
}

/// A loopback HTTP/1.1 server: reads each request and lets `answer` write
/// the reply; `answer` returns false to close the connection. Counts requests.
async fn serve<F, Fut>(answer: F) -> (std::net::SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let (answer, seen) = (Arc::new(answer), count.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                let mut sock = sock;
                while read_request(&mut sock).await {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    match answer(sock, n).await {
                        Some(s) => sock = s,
                        None => return,
                    }
                }
            });
        }
    });
    (addr, count)
}

/// Reads one request (headers and a Content-Length body); false at EOF.
async fn read_request(sock: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match sock.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_are_their_own_error_class() {
    let _serial = LOAD.lock().await;
    let (elsewhere, reached) = serve(|mut sock, _| async move {
        let body = "{}";
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(reply.as_bytes()).await.ok()?;
        Some(sock)
    })
    .await;
    let location = format!("http://{elsewhere}/v1/chat/completions");
    let to = location.clone();
    let (redirector, asked) = serve(move |mut sock, _| {
        let to = to.clone();
        async move {
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"
            );
            sock.write_all(reply.as_bytes()).await.ok()?;
            Some(sock)
        }
    })
    .await;
    let url = format!("url = \"http://{redirector}/v1/chat/completions\"\nmodel = \"m\"");
    let o = run_text(&plan(&url, 2, 6, ""), RunOptions::default()).await;
    let s = &o.summary;
    assert_eq!(asked.load(Ordering::SeqCst), 6);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "no request followed the redirect"
    );
    assert_eq!(s.errors.get("http_3xx"), Some(&6), "{:?}", s.errors);
    let d = detail(s, ErrorClass::Http3xx);
    assert_eq!(d.statuses.get(&307), Some(&6));
    assert!(
        d.examples
            .iter()
            .any(|e| e.contains("307") && e.contains(&location)),
        "status and Location: {d:?}"
    );
}

/// One streamed chat response: chunked SSE, announced keep-alive.
async fn stream_reply(sock: &mut TcpStream) -> std::io::Result<()> {
    let events = [
        r#"data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{"content":" there"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        "data: [DONE]",
    ];
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for e in events {
        let chunk = format!("{e}\n\n");
        out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    out.push_str("0\r\n\r\n");
    sock.write_all(out.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_each_keep_alive_connection_loses_no_request() {
    let _serial = LOAD.lock().await;
    // Like llama-server: the response says keep-alive, yet the connection is
    // done. Here the close comes when the next request arrives on it, so
    // every reuse meets a closed connection (no race with the close).
    let unanswered = Arc::new(AtomicU64::new(0));
    let dropped = unanswered.clone();
    let (addr, served) = serve(move |mut sock, _| {
        let dropped = dropped.clone();
        async move {
            stream_reply(&mut sock).await.ok()?;
            if read_request(&mut sock).await {
                dropped.fetch_add(1, Ordering::SeqCst);
                let _ = sock.shutdown().await;
            }
            None
        }
    })
    .await;
    let url = format!("url = \"http://{addr}/v1/chat/completions\"\nmodel = \"m\"");
    let o = run_text(&plan(&url, 8, 200, ""), RunOptions::default()).await;
    let s = &o.summary;
    assert_eq!(
        (s.requests_ok, s.requests_failed),
        (200, 0),
        "{:?}",
        s.error_details
    );
    assert!(
        s.connection_retries > 0,
        "the stale connections were retried"
    );
    assert_eq!(served.load(Ordering::SeqCst), 200);
    // Each retry is one request the server read on a reused connection and
    // never answered.
    assert_eq!(unanswered.load(Ordering::SeqCst), s.connection_retries);
    assert!(render(s).contains("Connection retries"));
    // Every reuse fails here, so each agent soon stops pooling, and says so.
    for a in s.agents.iter().filter(|a| a.connection_retries >= 3) {
        let said = s.notes.iter().any(|n| {
            n.contains(&format!("agent {} ({})", a.id, a.addr))
                && n.contains("stopped reusing connections")
        });
        assert!(said, "agent {} not noted in {:?}", a.addr, s.notes);
    }
    assert!(
        s.agents.iter().any(|a| a.connection_retries >= 3),
        "{:?}",
        s.agents
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstreamed_responses_give_ttft_equal_to_e2e_and_no_gap_metrics() {
    let _serial = LOAD.lock().await;
    let sim = "[simulator]\nttft = \"10ms\"\nitl = \"2ms\"";
    let o = run_text(&plan("stream = false", 2, 6, sim), RunOptions::default()).await;
    let s = &o.summary;
    assert_eq!(s.requests_ok, 6);
    let (ttft, e2e) = (&s.metrics["ttft"], &s.metrics["e2e"]);
    assert_eq!(ttft.count, 6);
    assert_eq!(ttft, e2e, "one body: the first token arrives with the last");
    for unseen in ["tpot", "chunk_gap", "itl", "max_stall"] {
        assert_eq!(s.metrics[unseen].count, 0, "{unseen} is not recorded");
        assert!(
            s.not_observable.iter().any(|n| n == unseen),
            "{:?}",
            s.not_observable
        );
    }
    let console = render(s);
    let tpot_row = console
        .lines()
        .find(|l| l.trim_start().starts_with("tpot"))
        .unwrap_or_default();
    assert!(
        tpot_row.contains('–') && !tpot_row.contains("0.00"),
        "{console}"
    );
    assert!(
        console.contains("ttft (= e2e)") && console.contains("not streamed"),
        "{console}"
    );
}
