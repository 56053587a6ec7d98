//! The API-independent core of a generation request: the shared server state
//! (config, counters, the `max_batch` capacity and the count of decoding
//! sequences), the [`Wire`] trait each API's renderer implements, fault
//! dispatch, and the non-streaming timeline. The streaming timeline lives in
//! [`crate::stream`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::precise::sleep_until;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use barrage_common::simulator::SimConfig;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::count::Counter;
use crate::plan::{
    Ask, Finish, HttpFault, Kind, Plan, TOKEN, input_tokens, token_text, words as count_words,
};
use crate::prefix::{Blocks, PrefixCache, id_unit, word_unit};
use crate::stats::{Counters, InFlight, bump};
use barrage_common::chat_template::ChatMessage;

/// State shared by every request of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: SimConfig,
    /// Counts input tokens with `cfg.tokenizer` (None: words).
    pub counter: Option<Counter>,
    pub counters: Arc<Counters>,
    /// The prefix cache, when enabled.
    pub cache: Option<PrefixCache>,
    slots: Option<Arc<Semaphore>>,
    active: AtomicU64,
    next_request: AtomicU64,
}

/// A counted prompt: its input tokens and, with the prefix cache on, its
/// cache blocks.
#[derive(Debug)]
pub(crate) struct Counted {
    pub tokens: u64,
    pub blocks: Option<Blocks>,
    /// Tokens per cache unit: `tokens_per_word` for words, else 1.
    pub per_unit: f64,
}

impl Shared {
    pub fn new(cfg: SimConfig, counter: Option<Counter>) -> Self {
        let slots = (cfg.max_batch > 0).then(|| Arc::new(Semaphore::new(cfg.max_batch as usize)));
        Self {
            cache: PrefixCache::new(&cfg.prefix_cache),
            cfg,
            counter,
            counters: Arc::new(Counters::default()),
            slots,
            active: AtomicU64::new(0),
            next_request: AtomicU64::new(0),
        }
    }

    fn blocks(&self) -> Option<Blocks> {
        self.cache.as_ref().map(|c| Blocks::new(c.block()))
    }

    /// Input tokens of prompt texts, then literal token ids: with the
    /// tokenizer, exact; else words × `tokens_per_word`.
    pub fn count_texts(&self, texts: &[&str], ids: &[&[u64]]) -> Result<Counted, String> {
        let mut blocks = self.blocks();
        let mut tokens = 0;
        let mut words = 0;
        for text in texts {
            match &self.counter {
                Some(c) => {
                    let got = c.ids(text)?;
                    tokens += got.len() as u64;
                    push(&mut blocks, || got.iter().map(|&i| id_unit(u64::from(i))));
                }
                None => {
                    words += count_words(text);
                    push(&mut blocks, || text.split_whitespace().map(word_unit));
                }
            }
        }
        let literal = ids.iter().map(|l| l.len() as u64).sum::<u64>();
        push(&mut blocks, || {
            ids.iter().copied().flatten().map(|&i| id_unit(i))
        });
        let (tokens, per_unit) = match self.counter {
            Some(_) => (tokens + literal, 1.0),
            None if words > 0 => (
                input_tokens(words, literal, self.cfg.tokens_per_word),
                self.cfg.tokens_per_word,
            ),
            None => (input_tokens(0, literal, 1.0), 1.0),
        };
        Ok(Counted {
            tokens,
            blocks,
            per_unit,
        })
    }

    /// Input tokens of chat messages: with the tokenizer, the rendered chat
    /// template (when there is one); else words of the texts in turn.
    pub fn count_chat(&self, messages: &[ChatMessage<'_>]) -> Result<Counted, String> {
        match &self.counter {
            Some(c) => {
                let ids = c.chat_ids(messages)?;
                let mut blocks = self.blocks();
                push(&mut blocks, || ids.iter().map(|&i| id_unit(u64::from(i))));
                Ok(Counted {
                    tokens: ids.len() as u64,
                    blocks,
                    per_unit: 1.0,
                })
            }
            None => {
                let texts: Vec<&str> = messages.iter().map(|m| m.content).collect();
                self.count_texts(&texts, &[])
            }
        }
    }

    /// Looks an admitted prompt up in the prefix cache and inserts it;
    /// returns its cached tokens (never all of them: the last is computed).
    fn admit(&self, prompt: &Counted) -> u64 {
        let (Some(cache), Some(blocks)) = (&self.cache, &prompt.blocks) else {
            return 0;
        };
        let got = cache.admit(blocks);
        let units = (got.hit_blocks * blocks.size()) as f64;
        // `as` saturates; per_unit is finite and positive.
        let cached =
            ((units * prompt.per_unit).floor() as u64).min(prompt.tokens.saturating_sub(1));
        self.counters
            .record_cache_lookup(prompt.tokens, cached, got.evicted);
        cached
    }

    /// Inserts a completed sequence: the prompt's blocks followed by the
    /// output's (its text, `"tok "` × `completion`, as the next turn's
    /// history will carry it).
    fn cache_output(&self, mut blocks: Blocks, completion: u64) {
        let Some(cache) = &self.cache else {
            return;
        };
        let n = u32::try_from(completion).unwrap_or(u32::MAX);
        match &self.counter {
            Some(c) => match c.ids(&token_text(n)) {
                Ok(ids) => ids.iter().for_each(|&i| blocks.push(id_unit(u64::from(i)))),
                Err(e) => tracing::debug!("output not cached: {e}"),
            },
            None => {
                let unit = word_unit(TOKEN.trim_end());
                (0..completion).for_each(|_| blocks.push(unit));
            }
        }
        let evicted = cache.insert(&blocks);
        self.counters.record_cache_evictions(evicted);
    }

    /// The next request's sequence number (seeds its random draws).
    pub fn next_request(&self) -> u64 {
        self.next_request.fetch_add(1, Relaxed)
    }

    /// Waits (FIFO) for a decoding slot.
    async fn slot(self: &Arc<Self>) -> Slot {
        let permit = match &self.slots {
            // The semaphore is never closed; a closed one would mean "no limit".
            Some(s) => Arc::clone(s).acquire_owned().await.ok(),
            None => None,
        };
        self.active.fetch_add(1, Relaxed);
        Slot {
            _permit: permit,
            shared: Arc::clone(self),
        }
    }
}

/// Appends units to a prompt's cache blocks (made only when there are blocks).
fn push<I: Iterator<Item = u64>>(blocks: &mut Option<Blocks>, units: impl FnOnce() -> I) {
    if let Some(b) = blocks {
        units().for_each(|u| b.push(u));
    }
}

/// A sequence decoding: holds a `max_batch` permit and counts in the batch size.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl Slot {
    /// Sequences decoding now, this one included.
    pub fn active(&self) -> u64 {
        self.shared.active.load(Relaxed).max(1)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Relaxed);
    }
}

/// Token counts as `usage` reports them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens found in the prefix cache (None: no cache modelled).
    pub cached: Option<u64>,
}

/// One token-bearing chunk to render.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub kind: Kind,
    pub tokens: u32,
    /// The first token-bearing chunk of the response.
    pub first: bool,
    /// Set on the last chunk.
    pub finish: Option<Finish>,
    /// Running usage (continuous usage only).
    pub usage: Option<Usage>,
}

/// What the end of a response reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub reasoning: u32,
    pub answer: u32,
    pub usage: Usage,
    pub finish: Finish,
    /// Waiting for a slot.
    pub queue: Duration,
    /// Slot acquired to first token.
    pub prefill: Duration,
    /// First token to last token.
    pub decode: Duration,
    /// Request parsed to end of response.
    pub total: Duration,
}

/// An API's rendering of the simulated generation.
pub(crate) trait Wire: Send + Sync + 'static {
    /// Content type of a streamed response.
    const STREAM_CONTENT_TYPE: &'static str;
    /// Whether two middle pieces with equal kind and size render to equal bytes.
    const STABLE_PIECES: bool;
    /// The output-free chunk sent when the request is accepted (`role_chunk`).
    fn preamble(&self, usage: Option<Usage>) -> Bytes;
    fn piece(&self, piece: &Piece) -> Bytes;
    /// The invalid chunk of the `malformed` fault.
    fn malformed(&self) -> Bytes;
    /// Everything written after the last piece (usage chunk, `[DONE]`, `done: true`).
    fn end(&self, summary: &Summary) -> Bytes;
    /// A whole non-streaming body.
    fn whole(&self, summary: &Summary) -> Bytes;
    /// An error response in this API's shape.
    fn error(status: StatusCode, message: &str) -> Response;
}

/// A parsed generation request, ready to run.
#[derive(Debug)]
pub(crate) struct Call<W> {
    /// The request's sequence number, from [`Shared::next_request`].
    pub number: u64,
    pub wire: W,
    pub ask: Ask,
    /// The prompt's cache blocks (None without a prefix cache).
    pub prompt: Counted,
    pub stream: bool,
    /// Running usage in every chunk.
    pub continuous: bool,
}

/// A request that drew a generation plan.
#[derive(Debug)]
pub(crate) struct Job<W> {
    pub shared: Arc<Shared>,
    pub wire: W,
    pub plan: Plan,
    /// The prompt's cache blocks, inserted with the output on completion.
    pub blocks: Option<Blocks>,
    pub continuous: bool,
    /// When the request body was parsed: the origin of the TTFT.
    pub t0: Instant,
    pub _in_flight: InFlight,
}

impl<W> Job<W> {
    /// Waits for a slot and records the intended TTFT; returns when that was.
    pub async fn start(&self) -> (Slot, Instant) {
        let slot = self.shared.slot().await;
        let start = Instant::now();
        let queue = start.saturating_duration_since(self.t0);
        self.shared.counters.record_ttft(queue + self.plan.ttft);
        (slot, start)
    }

    pub fn usage(&self, completion: u64) -> Usage {
        Usage {
            prompt: self.plan.input_tokens,
            completion,
            cached: self.shared.cache.as_ref().map(|_| self.plan.cached_tokens),
        }
    }

    /// Records a completed response: counters, and the prefix cache learns
    /// prompt + output.
    pub fn complete(&mut self) {
        let completion = self.plan.completion_tokens();
        let counters = &self.shared.counters;
        counters.record_completed(self.plan.input_tokens, completion);
        if let Some(blocks) = self.blocks.take() {
            self.shared.cache_output(blocks, completion);
        }
    }
}

/// The connection-cutting error of the `cut` fault: hyper aborts the connection.
#[derive(Debug, thiserror::Error)]
#[error("connection cut by an injected fault")]
pub(crate) struct Cut;

/// Serialises one of our own response structs (cannot fail: no maps with
/// non-string keys, writing into a `Vec`).
pub(crate) fn write_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    if let Err(e) = serde_json::to_writer(out, value) {
        tracing::error!("cannot serialise a response: {e}");
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `t + d`, or far in the future rather than overflowing.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
}

/// Runs a parsed request: a fault status, a stream or a whole body.
pub(crate) async fn respond<W: Wire>(
    shared: Arc<Shared>,
    in_flight: InFlight,
    t0: Instant,
    call: Call<W>,
) -> Response {
    let mut plan = match Plan::draw(&shared.cfg, call.number, call.ask) {
        Ok(plan) => plan,
        Err(HttpFault::Status500) => {
            bump(&shared.counters.http_500);
            return W::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected fault: HTTP 500",
            );
        }
        Err(HttpFault::Status429) => {
            bump(&shared.counters.http_429);
            let mut r = W::error(StatusCode::TOO_MANY_REQUESTS, "injected fault: HTTP 429");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    plan.use_cache(shared.admit(&call.prompt));
    let job = Job {
        shared,
        wire: call.wire,
        plan,
        blocks: call.prompt.blocks,
        continuous: call.continuous,
        t0,
        _in_flight: in_flight,
    };
    if call.stream {
        crate::stream::response(job)
    } else {
        whole(job).await
    }
}

/// The non-streaming timeline: the body is sent when the last token is due.
async fn whole<W: Wire>(mut job: Job<W>) -> Response {
    let (slot, start) = job.start().await;
    let first = after(start, job.plan.ttft);
    let mut deadline = first;
    // With a batch slowdown the step length depends on the batch over time, so
    // pace through the steps; otherwise the end is known at once.
    let pace = job.shared.cfg.batch_slowdown > 0.0;
    for i in 1..job.plan.chunks() {
        if pace {
            sleep_until(deadline).await;
        }
        let (_, tokens) = job.plan.chunk(i);
        deadline = after(deadline, job.plan.gap(tokens, slot.active()));
    }
    let last = deadline;
    if job.plan.stall {
        deadline = after(deadline, job.plan.stall_duration);
    }
    if Instant::now() < deadline {
        sleep_until(deadline).await;
    }
    drop(slot);
    let counters = Arc::clone(&job.shared.counters);
    if job.plan.stall {
        bump(&counters.stalled);
    }
    let completion = job.plan.completion_tokens();
    let summary = Summary {
        reasoning: job.plan.reasoning,
        answer: job.plan.answer,
        usage: job.usage(completion),
        finish: job.plan.finish,
        queue: start.saturating_duration_since(job.t0),
        prefill: first.saturating_duration_since(start),
        decode: last.saturating_duration_since(first),
        total: job.t0.elapsed(),
    };
    let json = [(header::CONTENT_TYPE, "application/json")];
    if job.plan.cut {
        bump(&counters.cut);
        let body = job.wire.whole(&summary);
        let half = body.slice(..body.len() / 2);
        let cut = futures::stream::once(async {
            // Let hyper flush the headers and the half body before the cut.
            tokio::task::yield_now().await;
            Err::<Bytes, _>(Cut)
        });
        let body = futures::stream::once(async { Ok(half) }).chain(cut);
        return (json, Body::from_stream(body)).into_response();
    }
    counters.output_tokens_sent.fetch_add(completion, Relaxed);
    job.complete();
    if job.plan.malformed {
        bump(&counters.malformed);
        return (json, Bytes::from_static(b"{not json")).into_response();
    }
    (json, job.wire.whole(&summary)).into_response()
}
