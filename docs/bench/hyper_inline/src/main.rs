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
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Body as _;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let c = s.rfind(')').unwrap();
    let f: Vec<&str> = s[c + 2..].split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

const BODY: &str = r#"{"model":"m","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hello there"}],"stream_options":{"include_usage":true}}"#;

async fn reqwest_user(c: reqwest::Client, url: String, chunks: Arc<AtomicU64>, until: Instant) {
    while Instant::now() < until {
        let r = c.post(&url).header("content-type", "application/json").timeout(Duration::from_secs(600)).body(BODY).send().await.unwrap();
        let mut b = r.bytes_stream();
        while let Some(p) = b.next().await {
            let _p = p.unwrap();
            let _ = Instant::now();
            chunks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn hyper_user(addr: String, chunks: Arc<AtomicU64>, until: Instant) {
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut send, mut conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    while Instant::now() < until {
        let req = hyper::Request::post("/v1/chat/completions").header("host", &addr)
            .header("content-type", "application/json").body(Full::new(Bytes::from_static(BODY.as_bytes()))).unwrap();
        poll_fn(|cx| { let _ = Pin::new(&mut conn).poll(cx); send.poll_ready(cx) }).await.unwrap();
        let mut fut = std::pin::pin!(send.send_request(req));
        let resp = poll_fn(|cx| { let _ = Pin::new(&mut conn).poll(cx); fut.as_mut().poll(cx) }).await.unwrap();
        let mut body = resp.into_body();
        loop {
            let f = poll_fn(|cx| { let _ = Pin::new(&mut conn).poll(cx); Pin::new(&mut body).poll_frame(cx) }).await;
            match f { Some(f) => { let _ = f.unwrap(); let _ = Instant::now(); chunks.fetch_add(1, Ordering::Relaxed); } None => break }
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (mode, addr, n, secs) = (a[1].clone(), a[2].clone(), a[3].parse::<usize>().unwrap(), a[4].parse::<u64>().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let chunks = Arc::new(AtomicU64::new(0));
        let rss0 = rss_kib();
        let c = reqwest::Client::builder().pool_max_idle_per_host(n).tcp_nodelay(true).build().unwrap();
        let until = Instant::now() + Duration::from_secs(secs);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (c, ch, addr) = (c.clone(), chunks.clone(), addr.clone());
            let m = mode.clone();
            set.spawn(async move {
                tokio::time::sleep(Duration::from_micros(2_000_000 * i as u64 / n as u64)).await;
                if m == "reqwest" { reqwest_user(c, format!("http://{addr}/v1/chat/completions"), ch, until).await }
                else { hyper_user(addr, ch, until).await }
            });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (c0, k0) = (cpu(), chunks.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(secs - 6)).await;
        let (c1, k1) = (cpu(), chunks.load(Ordering::Relaxed));
        let rss = rss_kib();
        println!("{mode} n={n}: {} frames in window, {:.2} us CPU/frame, RSS growth {:.1} KiB/stream", k1 - k0, (c1 - c0) / (k1 - k0) as f64 * 1e6, (rss - rss0) as f64 / n as f64);
        while set.join_next().await.is_some() {}
    });
}
