//! Test helpers: a simulator on an ephemeral loopback port, a client, and a
//! reader that timestamps every SSE event / NDJSON line as it arrives.

use std::time::Duration;

pub use crate::{bounded, timed};
pub use barrage_llm_sim::{SimConfig, SimServer, SimStats};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// A fast configuration: 5 ms TTFT, 1 ms ITL.
pub fn fast() -> SimConfig {
    SimConfig {
        ttft: ms(5),
        itl: ms(1),
        ..SimConfig::default()
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A simulator on 127.0.0.1:0, its base URL and a client.
pub async fn start(cfg: SimConfig) -> (SimServer, String, reqwest::Client) {
    let server = SimServer::spawn(cfg, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("simulator starts");
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    warm_up(&client, &base).await;
    (server, base, client)
}

/// Opens a pooled connection so timed requests do not pay for one: reads the
/// whole body (else the connection is not reused) and lets it go back to the pool.
pub async fn warm_up(client: &reqwest::Client, base: &str) {
    let health = client.get(format!("{base}/health")).send().await;
    health.expect("health").bytes().await.expect("health body");
    tokio::time::sleep(ms(2)).await;
}

/// An OpenAI chat request body.
pub fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "say something nice"}],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// One framed record of a response body and when it arrived.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: Duration,
    pub text: String,
}

/// A whole response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// SSE `data:` payloads, or NDJSON lines, or the whole body as one record.
    pub records: Vec<Record>,
    /// When the body ended or failed.
    pub end: Duration,
    /// The body error, if the connection was cut.
    pub error: Option<String>,
    /// Bytes after the last complete record.
    pub rest: String,
}

/// How the body is framed.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    Sse,
    Ndjson,
    Whole,
}

/// Sends a request; returns when the response headers arrived.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (Instant, reqwest::Response) {
    let sent = Instant::now();
    let response = client.post(url).json(body).send().await.expect("response");
    (sent, response)
}

/// Reads a body to its end, timestamping records against `sent`.
pub async fn read(sent: Instant, response: reqwest::Response, framing: Framing) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.bytes_stream();
    let (mut buf, mut records, mut error) = (String::new(), Vec::new(), None);
    let sep = match framing {
        Framing::Sse => "\n\n",
        Framing::Ndjson => "\n",
        Framing::Whole => "\u{0}",
    };
    while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => {
                let at = sent.elapsed();
                buf.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
                while let Some(pos) = buf.find(sep) {
                    let frame: String = buf.drain(..pos + sep.len()).collect();
                    let frame = frame.trim_end_matches(sep);
                    let text = frame.strip_prefix("data: ").unwrap_or(frame).to_owned();
                    records.push(Record { at, text });
                }
            }
            Err(e) => {
                error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    let end = sent.elapsed();
    if matches!(framing, Framing::Whole) && error.is_none() {
        records.push(Record {
            at: end,
            text: std::mem::take(&mut buf),
        });
    }
    Reply {
        status,
        headers,
        records,
        end,
        error,
        rest: buf,
    }
}

/// Sends and reads.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value, framing: Framing) -> Reply {
    let (sent, response) = send(client, url, body).await;
    read(sent, response, framing).await
}

/// The generated text of a chunk in any of the four APIs (answer + reasoning).
pub fn output_text(v: &Value) -> String {
    let choice = &v["choices"][0];
    let fields = [
        &choice["delta"]["content"],
        &choice["delta"]["reasoning_content"],
        &choice["text"],
        &v["response"],
        &v["thinking"],
        &v["message"]["content"],
        &v["message"]["thinking"],
    ];
    fields.iter().filter_map(|f| f.as_str()).collect()
}

impl Reply {
    /// Records that parse as JSON.
    pub fn json(&self) -> Vec<(Duration, Value)> {
        let parsed = self
            .records
            .iter()
            .filter_map(|r| Some((r.at, serde_json::from_str(&r.text).ok()?)));
        parsed.collect()
    }

    /// Records carrying generated output: (arrival, text).
    pub fn outputs(&self) -> Vec<(Duration, String)> {
        let texts = self.json().into_iter().map(|(at, v)| (at, output_text(&v)));
        texts.filter(|(_, t)| !t.is_empty()).collect()
    }

    /// Time to the first output-bearing record.
    pub fn ttft(&self) -> Duration {
        self.outputs().first().expect("some output").0
    }

    /// Generated tokens (words) seen.
    pub fn tokens(&self) -> usize {
        self.outputs()
            .iter()
            .map(|(_, t)| t.split_whitespace().count())
            .sum()
    }

    /// Gaps between consecutive output records, in ms.
    pub fn gaps_ms(&self) -> Vec<f64> {
        let at: Vec<_> = self
            .outputs()
            .into_iter()
            .map(|(at, _)| as_ms(at))
            .collect();
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Whether the SSE stream ended with `[DONE]`.
    pub fn done(&self) -> bool {
        self.records.last().is_some_and(|r| r.text == "[DONE]")
    }

    /// Records that are neither JSON nor `[DONE]`.
    pub fn malformed(&self) -> usize {
        let bad =
            |r: &&Record| r.text != "[DONE]" && serde_json::from_str::<Value>(&r.text).is_err();
        self.records.iter().filter(bad).count()
    }

    /// The last JSON record (usage chunk, `done: true` object, whole body).
    pub fn last_json(&self) -> Value {
        self.json().pop().expect("a JSON record").1
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
