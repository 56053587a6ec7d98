//! The HTTP side of a request: request bodies built once per prompt at
//! prepare time, and one `send` that streams the response through the right
//! parser into a `RequestMeasure`, classifying every failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use barrage_common::error_detail::RequestError;
use barrage_common::metrics::{CountSource, ErrorClass};
use barrage_common::redact::redact_url;
use barrage_proto::agent::v1::{self as pb, Api};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::chunk;
use crate::direct::{DirectClient, DirectError, Exchange};
use crate::failure::{self, from_reqwest};
use crate::measure::{InputCount, RequestMeasure};
use crate::ndjson::NdjsonSplitter;
use crate::sse::SseParser;
use crate::wire::Arrival;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("target.url {0:?} is not a valid URL: {1}")]
    Url(String, String),
    #[error("target.api is not set")]
    NoApi,
    #[error("target.api = \"template\" needs a [target.template] table")]
    NoTemplate,
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("target.headers: {0:?} is not a valid header")]
    Header(String),
    #[error("request.extra_body must be a JSON object: {0}")]
    ExtraBody(String),
    #[error("building the HTTP client failed: {0}")]
    Build(String),
}

/// A prompt ready to send: its body bytes and the input-token count used
/// when the server reports no usage.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub body: Bytes,
    pub input: InputCount,
}

/// Stream parsers reused across one user's requests.
#[derive(Debug, Default)]
pub struct Parsers {
    sse: SseParser,
    ndjson: NdjsonSplitter,
}

use barrage_common::metrics::STALE_RETRIES_BEFORE_NO_POOL;

pub struct TargetClient {
    http: reqwest::Client,
    /// Same settings, but never reuses a connection: for retries, and for
    /// every request once the target proved to close pooled connections.
    unpooled: reqwest::Client,
    /// Plain `http://` over HTTP/1.1: the direct client, whose arrival
    /// times come from the kernel. None for TLS and HTTP/2 (reqwest).
    direct: Option<DirectClient>,
    stale_retries: AtomicU64,
    no_pool: AtomicBool,
    url: reqwest::Url,
    api: Api,
    reader: chunk::ChunkReader,
    /// Template API: NDJSON lines instead of SSE events.
    ndjson: bool,
    stream: bool,
    include_usage: bool,
    model: String,
    timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl TargetClient {
    /// `users`: in-flight requests this client must carry without queueing.
    /// `pinned`: addresses the allow-list checked for the URL's host; the
    /// client connects only to those (no second, unchecked DNS answer).
    pub fn new(
        target: &pb::Target,
        users: usize,
        pinned: Option<(String, Vec<std::net::SocketAddr>)>,
    ) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| ClientError::Url(redact_url(&target.url), e.to_string()))?;
        let api = match Api::try_from(target.api) {
            Ok(Api::Unspecified) | Err(_) => return Err(ClientError::NoApi),
            Ok(a) => a,
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !target.api_key.is_empty() {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", target.api_key))
                .map_err(|_| ClientError::Header("Authorization".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for h in &target.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ClientError::Header(h.name.clone()))?;
            let mut value =
                HeaderValue::from_str(&h.value).map_err(|_| ClientError::Header(h.name.clone()))?;
            value.set_sensitive(h.secret);
            headers.insert(name, value);
        }
        let timeout = Duration::from_millis(target.timeout_ms.max(1));
        // One connection per in-flight request: never cap concurrency silently.
        let http = http_client(target, &headers, pinned.clone(), timeout, users.max(1))?;
        let unpooled = http_client(target, &headers, pinned.clone(), timeout, 0)?;
        let direct = if url.scheme() == "http" && !target.http2 && direct_client_allowed() {
            let addrs = pinned.map(|(_, addrs)| addrs);
            let connect = connect_timeout(target, timeout);
            Some(
                DirectClient::new(&url, headers, addrs, users.max(1), connect)
                    .map_err(|e| ClientError::Url(redact_url(&target.url), e))?,
            )
        } else {
            None
        };
        let template = target.template.clone().map(std::sync::Arc::new);
        let (reader, ndjson, stream) = match (&template, api) {
            (Some(t), Api::Template) => {
                let format =
                    pb::TemplateFormat::try_from(t.format).unwrap_or(pb::TemplateFormat::Sse);
                (
                    chunk::ChunkReader::Template(t.clone()),
                    format == pb::TemplateFormat::Ndjson,
                    format != pb::TemplateFormat::Json,
                )
            }
            (None, Api::Template) => return Err(ClientError::NoTemplate),
            _ => (
                chunk::ChunkReader::Api(api),
                matches!(api, Api::OllamaChat | Api::OllamaGenerate),
                target.stream,
            ),
        };
        Ok(Self {
            http,
            unpooled,
            direct,
            stale_retries: AtomicU64::new(0),
            no_pool: AtomicBool::new(false),
            url,
            api,
            reader,
            ndjson,
            stream,
            include_usage: target.include_usage,
            model: target.model.clone(),
            timeout,
            idle_timeout: (target.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(target.idle_timeout_ms)),
        })
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// Builds the request body for one prompt (off the timed path).
    pub fn prepare(
        &self,
        prompt: &pb::Prompt,
        params: &pb::RequestParams,
    ) -> Result<PreparedPrompt, ClientError> {
        let max_tokens = if prompt.max_tokens > 0 {
            prompt.max_tokens
        } else {
            params.max_tokens
        };
        let messages: Vec<Value> = prompt
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let text = prompt
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let words = prompt
            .messages
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64)
            .sum::<u64>();
        // The controller fills input_tokens only with the plan's tokenizer.
        let input = if prompt.input_tokens > 0 {
            InputCount {
                tokens: u64::from(prompt.input_tokens),
                source: if prompt.input_chat_template {
                    CountSource::TokenizerChatTemplate
                } else {
                    CountSource::Tokenizer
                },
            }
        } else {
            InputCount::estimated(words.max(1))
        };
        if let chunk::ChunkReader::Template(t) = &self.reader {
            let body = crate::template::render(t, &self.model, &text, messages, max_tokens)?;
            return Ok(PreparedPrompt {
                body: Bytes::from(body),
                input,
            });
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("stream".into(), json!(self.stream));
        match self.api {
            Api::OpenaiEmbeddings => {
                body.remove("stream");
                body.insert("input".into(), json!(text));
            }
            Api::OpenaiChat | Api::OpenaiCompletions | Api::Unspecified | Api::Template => {
                if self.api == Api::OpenaiCompletions {
                    body.insert("prompt".into(), json!(text));
                } else {
                    body.insert("messages".into(), Value::Array(messages));
                }
                body.insert("max_tokens".into(), json!(max_tokens));
                if let Some(t) = params.temperature {
                    body.insert("temperature".into(), json!(t));
                }
                if params.ignore_eos {
                    body.insert("ignore_eos".into(), json!(true));
                }
                if self.stream && self.include_usage {
                    body.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            Api::OllamaGenerate | Api::OllamaChat => {
                if self.api == Api::OllamaGenerate {
                    body.insert("prompt".into(), json!(text));
                } else {
                    body.insert("messages".into(), Value::Array(messages));
                }
                let mut options = Map::new();
                options.insert("num_predict".into(), json!(max_tokens));
                if let Some(t) = params.temperature {
                    options.insert("temperature".into(), json!(t));
                }
                body.insert("options".into(), Value::Object(options));
            }
        }
        if !params.extra_body_json.is_empty() {
            let extra: Value = serde_json::from_str(&params.extra_body_json)
                .map_err(|e| ClientError::ExtraBody(e.to_string()))?;
            let Value::Object(extra) = extra else {
                return Err(ClientError::ExtraBody("not an object".into()));
            };
            barrage_common::plan::deep_merge(&mut body, extra);
        }
        let body = serde_json::to_vec(&Value::Object(body))
            .map_err(|e| ClientError::ExtraBody(e.to_string()))?;
        Ok(PreparedPrompt {
            body: Bytes::from(body),
            input,
        })
    }

    /// Sends one request and measures it. The hand-off instant is taken here,
    /// right before the client gets the request. With debug logging on
    /// (`controller run --debug`), each request and its outcome are logged:
    /// the body truncated, never the headers (they carry keys).
    pub async fn send(
        &self,
        body: Bytes,
        m: &mut RequestMeasure,
        parsers: &mut Parsers,
    ) -> Result<(), RequestError> {
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        if debug {
            let shown = &body[..body.len().min(300)];
            tracing::debug!(url = %redact_url(self.url.as_str()), body = %String::from_utf8_lossy(shown), "request");
        }
        let result = self.send_measured(body, m, parsers).await;
        if debug {
            tracing::debug!(
                ?result,
                bytes = m.response_bytes,
                prompt_tokens = ?m.prompt_tokens,
                completion_tokens = ?m.completion_tokens,
                "response"
            );
        }
        result
    }

    async fn send_measured(
        &self,
        body: Bytes,
        m: &mut RequestMeasure,
        parsers: &mut Parsers,
    ) -> Result<(), RequestError> {
        let handoff = Instant::now();
        m.begin(handoff);
        m.unstreamed = !self.stream;
        let deadline = handoff + self.timeout;
        // Boxed: the sending state is large and short-lived; inline it would
        // stay in every stream's task for the whole response.
        let resp = Box::pin(self.post(body, handoff, deadline, m)).await?;
        m.http_status = resp.status();
        m.kernel_arrivals = resp.kernel_stamped();
        // Only a reused connection has one (a resend goes on a new one).
        if let Response::Direct(x) = &resp
            && let Some(sent) = x.sent
        {
            m.on_sent(sent);
        }
        if !(200..300).contains(&m.http_status) {
            return Err(Box::pin(resp.failure()).await);
        }
        let mut body = resp.into_body(deadline, self.timeout);
        if !self.stream {
            let (bytes, arrival) = body.whole(m).await?;
            m.on_piece(arrival);
            let info = self.reader.parse_body(&bytes).map_err(|e| {
                failure::stream(
                    "malformed response body",
                    format!("{e}: {}", failure::lossy(&bytes)),
                )
            })?;
            m.on_chunk(arrival.at, &info);
            m.keep_text(&bytes, &info);
            return if info.error {
                Err(failure::stream(
                    "server reported an error",
                    failure::lossy(&bytes),
                ))
            } else {
                Ok(())
            };
        }
        self.read_stream(body, m, parsers).await
    }

    /// Sends the request on a pooled connection; when that connection turns
    /// out to be closed before any response byte (a server that closes after
    /// each response while saying keep-alive), resends it once on a new one.
    /// Timing keeps running from the original hand-off.
    async fn post(
        &self,
        body: Bytes,
        handoff: Instant,
        deadline: Instant,
        m: &mut RequestMeasure,
    ) -> Result<Response, RequestError> {
        let pooled = !self.no_pool.load(Ordering::Relaxed);
        if let Some(direct) = &self.direct {
            let send = |body, pooled| async move {
                tokio::time::timeout_at(deadline.into(), direct.post(body, pooled))
                    .await
                    .map_err(|_| whole_request_timeout(self.timeout, 0))
            };
            return match send(body.clone(), pooled).await? {
                Err(e) if pooled && e.is_stale_connection() => {
                    tracing::debug!(error = %e, "resending on a new connection");
                    m.connection_retries += 1;
                    self.note_stale_retry();
                    Ok(Response::Direct(
                        send(body, false).await?.map_err(|e| direct_error(e, 0))?,
                    ))
                }
                r => Ok(Response::Direct(r.map_err(|e| direct_error(e, 0))?)),
            };
        }
        let http = if pooled { &self.http } else { &self.unpooled };
        let first = self.request(http, body.clone(), self.timeout).await;
        let resp = match first {
            Err(e) if pooled && failure::is_stale_connection(&e) => {
                tracing::debug!(error = %from_reqwest(e, 0), "resending on a new connection");
                m.connection_retries += 1;
                self.note_stale_retry();
                let left = self.timeout.saturating_sub(handoff.elapsed());
                self.request(&self.unpooled, body, left.max(Duration::from_millis(1)))
                    .await
                    .map_err(|e| from_reqwest(e, 0))
            }
            r => r.map_err(|e| from_reqwest(e, 0)),
        }?;
        Ok(Response::Reqwest(resp))
    }

    async fn request(
        &self,
        http: &reqwest::Client,
        body: Bytes,
        timeout: Duration,
    ) -> Result<reqwest::Response, reqwest::Error> {
        http.post(self.url.clone())
            .timeout(timeout)
            .body(body)
            .send()
            .await
    }

    /// After a few stale-connection retries, stop pooling to this target.
    fn note_stale_retry(&self) {
        let n = self.stale_retries.fetch_add(1, Ordering::Relaxed) + 1;
        if n == STALE_RETRIES_BEFORE_NO_POOL && !self.no_pool.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                host = self.url.host_str().unwrap_or_default(),
                "the target closed {n} pooled connections it had announced as keep-alive: \
                 opening a new connection for every request from now on"
            );
        }
    }

    async fn read_stream(
        &self,
        mut body: Body,
        m: &mut RequestMeasure,
        parsers: &mut Parsers,
    ) -> Result<(), RequestError> {
        let reader = &self.reader;
        // The first event the server marked as an error, or that did not parse.
        let mut bad_event: BadEvent = None;
        let ndjson = self.ndjson;
        parsers.sse = SseParser::new();
        parsers.ndjson = NdjsonSplitter::new();
        loop {
            let next = match self.idle_timeout {
                Some(idle) => tokio::time::timeout(idle, body.next(m.response_bytes))
                    .await
                    .map_err(|_| {
                        RequestError::new(
                            ErrorClass::Timeout,
                            format!(
                                "no data for {idle:?} (target.idle_timeout) after {} response bytes",
                                m.response_bytes
                            ),
                        )
                    })?,
                None => body.next(m.response_bytes).await,
            };
            let Some(piece) = next else { break };
            let (piece, arrival) = piece?;
            m.on_piece(arrival);
            m.response_bytes += piece.len() as u64;
            let at = arrival.at;
            let mut on_event = |data: &[u8]| take_event(reader, m, &mut bad_event, at, data);
            let r = if ndjson {
                parsers.ndjson.push(&piece, &mut on_event)
            } else {
                parsers.sse.push(&piece, &mut on_event)
            };
            r.map_err(|e| failure::stream("event too large", e.to_string()))?;
        }
        // The parsers' unfinished tail (a last event without its blank line)
        // ended with the body: it counts from the last piece.
        let at = m.end_or(Instant::now());
        let mut on_event = |data: &[u8]| take_event(reader, m, &mut bad_event, at, data);
        if ndjson {
            parsers.ndjson.finish(&mut on_event);
        } else {
            parsers
                .sse
                .finish(&mut on_event)
                .map_err(|e| failure::stream("event too large", e.to_string()))?;
        }
        // A stream cut before its end marker, or carrying junk, is a stream error.
        if let Some((cause, detail)) = bad_event {
            return Err(failure::stream(cause, detail));
        }
        if !m.saw_done {
            return Err(failure::stream(
                "stream ended before its end marker",
                format!("{} response bytes", m.response_bytes),
            ));
        }
        Ok(())
    }
}

/// A response whose status is known, from whichever client sent it.
#[allow(clippy::large_enum_variant)] // as `Body`
enum Response {
    Reqwest(reqwest::Response),
    Direct(Exchange),
}

impl Response {
    fn status(&self) -> u16 {
        match self {
            Response::Reqwest(r) => r.status().as_u16(),
            Response::Direct(x) => x.status.as_u16(),
        }
    }

    /// Whether the body's arrival times come from the kernel.
    fn kernel_stamped(&self) -> bool {
        matches!(self, Response::Direct(x) if x.kernel)
    }

    /// The error of a response that is not a success.
    async fn failure(self) -> RequestError {
        match self {
            Response::Reqwest(r) => failure::from_status(r).await,
            Response::Direct(mut x) => {
                let status = x.status.as_u16();
                let location = x.location.take();
                let sample = failure::first_bytes(x.into_stream()).await;
                failure::status_error(status, location.as_ref(), &sample)
            }
        }
    }

    fn into_body(self, deadline: Instant, timeout: Duration) -> Body {
        match self {
            Response::Reqwest(r) => Body::Reqwest(Box::pin(r.bytes_stream())),
            Response::Direct(x) => Body::Direct {
                exchange: x,
                // One timer for the whole response, not one per piece.
                expires: Box::pin(tokio::time::sleep_until(deadline.into())),
                timeout,
            },
        }
    }
}

/// A response body, piece by piece, each with when it arrived.
// One per request in flight, on its task's stack: boxing the large variant
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Body {
    /// TLS or HTTP/2 through reqwest: arrival is the read time.
    Reqwest(std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>),
    /// The direct client; reqwest's whole-request timeout is kept by hand.
    Direct {
        exchange: Exchange,
        expires: std::pin::Pin<Box<tokio::time::Sleep>>,
        timeout: Duration,
    },
}

impl Body {
    /// The next piece; `after`: response bytes so far, for error messages.
    async fn next(&mut self, after: u64) -> Option<Result<(Bytes, Arrival), RequestError>> {
        match self {
            Body::Reqwest(s) => {
                let piece = s.next().await?;
                let now = Instant::now();
                Some(
                    piece
                        .map(|b| (b, Arrival { at: now, read: now }))
                        .map_err(|e| from_reqwest(e, after)),
                )
            }
            Body::Direct {
                exchange,
                expires,
                timeout,
            } => {
                let piece = tokio::select! {
                    biased;
                    piece = exchange.next() => piece,
                    () = expires.as_mut() => return Some(Err(whole_request_timeout(*timeout, after))),
                };
                Some(piece?.map_err(|e| direct_error(e, after)))
            }
        }
    }

    /// A whole (not streamed) body and the arrival of its last piece.
    async fn whole(&mut self, m: &mut RequestMeasure) -> Result<(Bytes, Arrival), RequestError> {
        let now = Instant::now();
        let mut last = Arrival { at: now, read: now };
        let mut first: Option<Bytes> = None;
        let mut more = bytes::BytesMut::new();
        while let Some(piece) = self.next(m.response_bytes).await {
            let (piece, arrival) = piece?;
            m.response_bytes += piece.len() as u64;
            last = arrival;
            match &first {
                None => first = Some(piece),
                Some(f) => {
                    if more.is_empty() {
                        more.extend_from_slice(f);
                    }
                    more.extend_from_slice(&piece);
                }
            }
        }
        let bytes = if more.is_empty() {
            first.unwrap_or_default()
        } else {
            more.freeze()
        };
        Ok((bytes, last))
    }
}

/// The whole-request timeout (`target.timeout`) ran out.
fn whole_request_timeout(timeout: Duration, after_bytes: u64) -> RequestError {
    let mut message = format!("no complete response within {timeout:?} (target.timeout)");
    if after_bytes > 0 {
        message.push_str(&format!(" (after {after_bytes} response bytes)"));
    }
    RequestError::new(ErrorClass::Timeout, message)
}

/// A direct client's error, classified as METRICS.md does.
fn direct_error(e: DirectError, after_bytes: u64) -> RequestError {
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_connect() {
        ErrorClass::Connect
    } else {
        // Reset, closed or unparsable mid-exchange, as with reqwest.
        ErrorClass::Stream
    };
    failure::from_chain(class, &e, after_bytes)
}

/// A client of the target with barrage's settings; `max_idle` = 0 never
/// reuses a connection. Redirects are never followed: a redirect could send
/// the load past the agent's allow-list, and its hops would hide inside the
/// latency. A 3xx is reported as its own error class instead.
/// The first event of a stream that went wrong: its cause and detail.
type BadEvent = Option<(&'static str, String)>;

/// Counts one streamed event, read at `at`, into `m`; the first event that
/// does not parse, or that the server marked as an error, is kept in
/// `bad_event`.
fn take_event(
    reader: &chunk::ChunkReader,
    m: &mut RequestMeasure,
    bad_event: &mut BadEvent,
    at: Instant,
    data: &[u8],
) {
    match reader.parse(data) {
        Ok(info) => {
            if info.error && bad_event.is_none() {
                *bad_event = Some(("server sent an error event", failure::lossy(data)));
            }
            m.on_chunk(at, &info);
            m.keep_text(data, &info);
        }
        Err(e) => {
            if bad_event.is_none() {
                *bad_event = Some((
                    "malformed event",
                    format!("{}: {}", e.0, failure::lossy(data)),
                ));
            }
            m.malformed = true;
        }
    }
}

fn http_client(
    target: &pb::Target,
    headers: &HeaderMap,
    pinned: Option<(String, Vec<std::net::SocketAddr>)>,
    timeout: Duration,
    max_idle: usize,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if target.http2 {
        builder = builder.http2_prior_knowledge();
    }
    if let Some((host, addrs)) = pinned {
        builder = builder.resolve_to_addrs(&host, &addrs);
    }
    builder
        .default_headers(headers.clone())
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout(target, timeout))
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
}

/// `target.connect_timeout`, or the whole-request timeout up to 10 s.
fn connect_timeout(target: &pb::Target, timeout: Duration) -> Duration {
    if target.connect_timeout_ms > 0 {
        Duration::from_millis(target.connect_timeout_ms)
    } else {
        timeout.min(Duration::from_secs(10))
    }
}

/// `BARRAGE_DIRECT_CLIENT=off` in the agent's environment sends plain
/// `http://` through reqwest too (read-time arrivals): a switch for
/// comparing the two clients, and a way around the direct one.
fn direct_client_allowed() -> bool {
    std::env::var("BARRAGE_DIRECT_CLIENT").map_or(true, |v| v != "off")
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers with a stream's head and one event, then
    /// stalls (the socket stays open) until the test ends.
    async fn stalling_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = sock.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(chunk.as_bytes()).await;
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                });
            }
        });
        addr
    }

    /// The direct client keeps reqwest's whole-request timeout by hand: a
    /// stream that stalls after its first event fails as a timeout.
    #[tokio::test]
    async fn a_stream_that_stalls_past_the_whole_request_timeout_fails_as_a_timeout() {
        let addr = stalling_server().await;
        let target = super::pb::Target {
            url: format!("http://{addr}/v1/chat/completions"),
            api: super::pb::Api::OpenaiChat as i32,
            stream: true,
            timeout_ms: 300,
            ..Default::default()
        };
        let c = super::TargetClient::new(&target, 1, None).expect("client");
        let mut m = crate::measure::RequestMeasure::default();
        let mut p = super::Parsers::default();
        let started = std::time::Instant::now();
        let e = c
            .send(bytes::Bytes::from_static(b"{}"), &mut m, &mut p)
            .await
            .expect_err("the stream never ends");
        let took = started.elapsed();
        assert_eq!(e.class, super::ErrorClass::Timeout, "{e:?}");
        assert!(e.message.contains("target.timeout"), "{e:?}");
        assert!(m.response_bytes > 0, "the first event arrived");
        assert!(
            took >= std::time::Duration::from_millis(290)
                && took < std::time::Duration::from_secs(5),
            "{took:?}"
        );
    }

    /// Every stream in flight holds one `send` future for its whole
    /// response: the sending and error states are boxed so it stays small
    /// (memory per stream is a goal; this catches a large state inlined).
    #[test]
    fn the_future_a_stream_holds_stays_small() {
        let target = super::pb::Target {
            url: "http://127.0.0.1:1/v1/chat/completions".into(),
            api: super::pb::Api::OpenaiChat as i32,
            ..Default::default()
        };
        let c = super::TargetClient::new(&target, 1, None).expect("client");
        assert!(c.direct.is_some() || !super::direct_client_allowed());
        let mut m = crate::measure::RequestMeasure::default();
        let mut p = super::Parsers::default();
        let f = c.send(bytes::Bytes::new(), &mut m, &mut p);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1536, "send future: {size} bytes");
    }
}
