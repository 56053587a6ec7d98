//! Scratch measurement behind BENCHMARKS.md "Would a direct hyper client help?":
//! N streams against llm-sim, read either with reqwest (as the agent does) or
//! with hyper's http1 connection polled inside the user's own task (no
//! connection task, no hop). Nothing parsed. Not part of the workspace.
//!
//! `cargo run --release -- reqwest|hyper HOST:PORT STREAMS SECONDS` (from this folder)

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Body as _;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// This process's user + system CPU seconds.
fn cpu() -> Res<f64> {
    let s = std::fs::read_to_string("/proc/self/stat")?;
    let c = s.rfind(')').ok_or("/proc/self/stat: no ')'")?;
    let f: Vec<&str> = s[c + 2..].split_whitespace().collect();
    let field = |i: usize| -> Res<f64> {
        Ok(f.get(i)
            .ok_or("/proc/self/stat: too few fields")?
            .parse::<f64>()?)
    };
    Ok((field(11)? + field(12)?) / 100.0)
}

fn rss_kib() -> Res<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .ok_or("/proc/self/status: no VmRSS")?;
    let kib = line.split_whitespace().nth(1).ok_or("VmRSS: no value")?;
    Ok(kib.parse()?)
}

const BODY: &str = r#"{"model":"m","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hello there"}],"stream_options":{"include_usage":true}}"#;

async fn reqwest_user(
    c: reqwest::Client,
    url: String,
    chunks: Arc<AtomicU64>,
    until: Instant,
) -> Res<()> {
    while Instant::now() < until {
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(600))
            .body(BODY)
            .send()
            .await?;
        let mut b = r.bytes_stream();
        while let Some(p) = b.next().await {
            p?;
            let _ = Instant::now();
            chunks.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn hyper_user(addr: String, chunks: Arc<AtomicU64>, until: Instant) -> Res<()> {
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, mut conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await?;
    while Instant::now() < until {
        let req = hyper::Request::post("/v1/chat/completions")
            .header("host", &addr)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))?;
        // The connection is polled here, in the user's task: no connection task.
        poll_fn(|cx| {
            let _ = Pin::new(&mut conn).poll(cx);
            send.poll_ready(cx)
        })
        .await?;
        let mut fut = std::pin::pin!(send.send_request(req));
        let resp = poll_fn(|cx| {
            let _ = Pin::new(&mut conn).poll(cx);
            fut.as_mut().poll(cx)
        })
        .await?;
        let mut body = resp.into_body();
        while let Some(f) = poll_fn(|cx| {
            let _ = Pin::new(&mut conn).poll(cx);
            Pin::new(&mut body).poll_frame(cx)
        })
        .await
        {
            f?;
            let _ = Instant::now();
            chunks.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The arguments; the target must be a loopback address (benchmarks never
/// leave this machine).
fn args() -> Res<(String, String, usize, u64)> {
    let a: Vec<String> = std::env::args().collect();
    let [_, mode, addr, n, secs] = a.as_slice() else {
        return Err("usage: hyper_inline reqwest|hyper 127.0.0.1:PORT STREAMS SECONDS".into());
    };
    let sock: std::net::SocketAddr = addr.parse()?;
    if !sock.ip().is_loopback() {
        return Err(format!("{addr}: not a loopback address").into());
    }
    let secs: u64 = secs.parse()?;
    if secs <= 6 {
        return Err("SECONDS must be more than 6 (3 s of ramp, 3 s of tail)".into());
    }
    Ok((mode.clone(), addr.clone(), n.parse()?, secs))
}

fn main() -> Res<()> {
    let (mode, addr, n, secs) = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let chunks = Arc::new(AtomicU64::new(0));
        let rss0 = rss_kib()?;
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(n)
            .tcp_nodelay(true)
            .build()?;
        let until = Instant::now() + Duration::from_secs(secs);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (c, ch, addr, m) = (c.clone(), chunks.clone(), addr.clone(), mode.clone());
            set.spawn(async move {
                tokio::time::sleep(Duration::from_micros(2_000_000 * i as u64 / n as u64)).await;
                if m == "reqwest" {
                    reqwest_user(c, format!("http://{addr}/v1/chat/completions"), ch, until).await
                } else {
                    hyper_user(addr, ch, until).await
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (c0, k0) = (cpu()?, chunks.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(secs - 6)).await;
        let (c1, k1) = (cpu()?, chunks.load(Ordering::Relaxed));
        let rss = rss_kib()?;
        println!(
            "{mode} n={n}: {} frames in window, {:.2} us CPU/frame, RSS growth {:.1} KiB/stream",
            k1 - k0,
            (c1 - c0) / (k1 - k0).max(1) as f64 * 1e6,
            rss.saturating_sub(rss0) as f64 / n as f64
        );
        while let Some(r) = set.join_next().await {
            if let Ok(Err(e)) = r {
                eprintln!("a stream failed: {e}");
            }
        }
        Ok(())
    })
}
