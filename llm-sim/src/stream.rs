//! The streaming timeline: a body stream that hyper polls directly (no task or
//! channel per request). Each write waits on an absolute deadline
//! (`sleep_until(first + gaps…)`), so a late wake-up never shifts the chunks
//! after it. Order: optional preamble at once → wait for a slot (queue) →
//! first chunk at slot + TTFT → each next chunk `tokens × step` later → end
//! events. Half-way faults are placed by [`crate::plan::Plan`].

use std::sync::atomic::Ordering::Relaxed;

use crate::precise::sleep_until;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::Instant;

use crate::engine::{Cut, Job, Piece, Slot, Summary, Wire, after};
use crate::plan::Kind;
use crate::stats::bump;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preamble,
    Queue,
    /// Next token-bearing chunk to write.
    Chunk(u32),
    End,
    Done,
}

#[derive(Debug)]
struct State<W> {
    job: Job<W>,
    phase: Phase,
    slot: Option<Slot>,
    start: Instant,
    deadline: Instant,
    first_written: Instant,
    /// Completion tokens written so far.
    sent: u64,
    /// The last rendered middle chunk, reused while chunks stay alike.
    cache: Option<(Kind, u32, Bytes)>,
}

type Item = Result<Bytes, Cut>;

/// A streaming response for a job.
pub(crate) fn response<W: Wire>(job: Job<W>) -> Response {
    let now = job.t0;
    let state = State {
        job,
        phase: Phase::Preamble,
        slot: None,
        start: now,
        deadline: now,
        first_written: now,
        sent: 0,
        cache: None,
    };
    let body = Body::from_stream(futures::stream::unfold(state, step));
    (
        [
            (header::CONTENT_TYPE, W::STREAM_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn step<W: Wire>(mut st: State<W>) -> Option<(Item, State<W>)> {
    loop {
        match st.phase {
            Phase::Preamble => {
                st.phase = Phase::Queue;
                if st.job.shared.cfg.role_chunk {
                    let usage = st.job.continuous.then(|| st.job.usage(0));
                    let bytes = st.job.wire.preamble(usage);
                    return Some((Ok(bytes), st));
                }
            }
            Phase::Queue => {
                let (slot, start) = st.job.start().await;
                st.slot = Some(slot);
                st.start = start;
                st.deadline = after(start, st.job.plan.ttft);
                st.phase = Phase::Chunk(0);
            }
            Phase::Chunk(i) if i >= st.job.plan.chunks() => st.phase = Phase::End,
            Phase::Chunk(i) => return Some(chunk(st, i).await),
            Phase::End => return Some(end(st).await),
            Phase::Done => return None,
        }
    }
}

/// Waits for position `i`'s deadline (plus the stall, if it lands here);
/// returns whether the connection is to be cut instead of writing.
async fn wait(st: &mut State<impl Wire>, i: u32) -> bool {
    let plan = &st.job.plan;
    let stall = plan.stall_at() == Some(i);
    if stall {
        st.deadline = after(st.deadline, plan.stall_duration);
    }
    if Instant::now() < st.deadline {
        sleep_until(st.deadline).await;
    }
    let counters = &st.job.shared.counters;
    let late = Instant::now().saturating_duration_since(st.deadline);
    counters.lateness.record(late);
    if i == 0 {
        counters.first_lateness.record(late);
    }
    if stall {
        bump(&counters.stalled);
    }
    if st.job.plan.cut_at() == Some(i) {
        bump(&counters.cut);
        st.phase = Phase::Done;
        st.slot = None;
        // hyper drops its unflushed buffer when the body fails: give it one
        // pending poll to flush what was written before the cut.
        tokio::task::yield_now().await;
        return true;
    }
    false
}

async fn chunk<W: Wire>(mut st: State<W>, i: u32) -> (Item, State<W>) {
    let (kind, tokens) = st.job.plan.chunk(i);
    if i > 0 {
        let active = st.slot.as_ref().map_or(1, Slot::active);
        st.deadline = after(st.deadline, st.job.plan.gap(tokens, active));
    }
    if wait(&mut st, i).await {
        return (Err(Cut), st);
    }
    if i == 0 {
        st.first_written = Instant::now();
    }
    st.phase = Phase::Chunk(i + 1);
    st.sent += u64::from(tokens);
    let counters = &st.job.shared.counters;
    counters
        .output_tokens_sent
        .fetch_add(u64::from(tokens), Relaxed);
    if st.job.plan.malformed_at() == Some(i) {
        bump(&counters.malformed);
        return (Ok(st.job.wire.malformed()), st);
    }
    let last = i + 1 == st.job.plan.chunks();
    let piece = Piece {
        kind,
        tokens,
        first: i == 0,
        finish: last.then_some(st.job.plan.finish),
        usage: st.job.continuous.then(|| st.job.usage(st.sent)),
    };
    let cacheable = W::STABLE_PIECES && !piece.first && !last && piece.usage.is_none();
    let hit = match &st.cache {
        Some((k, t, bytes)) if cacheable && (*k, *t) == (kind, tokens) => Some(bytes.clone()),
        _ => None,
    };
    if let Some(bytes) = hit {
        return (Ok(bytes), st);
    }
    let bytes = st.job.wire.piece(&piece);
    if cacheable {
        st.cache = Some((kind, tokens, bytes.clone()));
    }
    (Ok(bytes), st)
}

async fn end<W: Wire>(mut st: State<W>) -> (Item, State<W>) {
    let n = st.job.plan.chunks();
    if wait(&mut st, n).await {
        return (Err(Cut), st);
    }
    st.slot = None;
    st.phase = Phase::Done;
    let now = Instant::now();
    let plan = &st.job.plan;
    let summary = Summary {
        reasoning: plan.reasoning,
        answer: plan.answer,
        usage: st.job.usage(plan.completion_tokens()),
        finish: plan.finish,
        queue: st.start.saturating_duration_since(st.job.t0),
        prefill: st.first_written.saturating_duration_since(st.start),
        decode: now.saturating_duration_since(st.first_written),
        total: now.saturating_duration_since(st.job.t0),
    };
    let bytes = st.job.wire.end(&summary);
    st.job.complete();
    (Ok(bytes), st)
}
