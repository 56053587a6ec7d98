//! Per-request records (`[output] requests`): one `RequestRecord` for every
//! request that ends, built where the engine records the request, kept in
//! the recorder's shards beside the interval's counters, and sent by the
//! session in `RequestBatch`es before the interval they ended in.
//!
//! With records off nothing here exists (`Workload::records` is `None`):
//! the engine allocates nothing per request for them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use barrage_common::error_detail::{MAX_MESSAGE_BYTES, RequestError, truncate};
use barrage_proto::agent::v1 as pb;
use prost::Message;
use tokio::sync::Notify;

use crate::measure::{InputCount, RequestMeasure};

/// A batch is sent early, before its interval ends, once this many records
/// are waiting...
pub const FLUSH_RECORDS: usize = 512;
/// ...or this many bytes of them (and no batch is larger, but for a single
/// record bigger than this).
pub const FLUSH_BYTES: usize = 1 << 20;
/// Longest prompt or response text kept in one record (gRPC messages are
/// capped at 16 MiB): longer text is cut on a character boundary, with `…`.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// `Records::waiting` holds bytes below this bit and the count above it:
/// 2^40 bytes (1 TiB) and 2^24 records waiting are far beyond what a
/// session leaves in the shards between two flushes.
const COUNT_SHIFT: u32 = 40;
const BYTES_MASK: u64 = (1 << COUNT_SHIFT) - 1;

/// One step's record keeping on this agent.
#[derive(Debug)]
pub struct Records {
    /// Requests (by `seq`) whose prompt and response text are kept.
    save_text: u64,
    next_seq: AtomicU64,
    /// The agreed start: every offset is from it.
    origin: OnceLock<Instant>,
    /// Records in the shards, not yet taken by the session (high bits, from
    /// `COUNT_SHIFT`), and their encoded bytes (low bits): the session is
    /// woken when either passes its limit. One word, so a record costs the
    /// load threads one shared atomic add, not two.
    waiting: AtomicU64,
    full: Notify,
    /// The prompts' text, only when some text is saved.
    prompt_texts: Vec<String>,
}

/// What a request is given when it starts: its place in hand-off order and
/// whether its text is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub seq: u64,
    pub keep_text: bool,
}

/// Who sent a request that ended, and when it started.
#[derive(Debug, Clone)]
pub struct Sender {
    pub claim: Claim,
    /// Closed loop: the global user; 0 in open loop.
    pub user: u64,
    pub prompt_index: usize,
    /// Started in the warmup intervals.
    pub warmup: bool,
    /// The prompt's own input count (used when the server reports none).
    pub input: InputCount,
    /// Multi-turn: which turn of which conversation.
    pub turn: Option<crate::conversation::TurnRef>,
    /// Multi-turn with text kept: the turn's own user message.
    pub prompt_text: Option<String>,
}

/// How a request ended: at `Instant` with its result, or cut.
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    Done(Instant, &'a Result<(), RequestError>),
    Cut,
}

impl Records {
    /// `None` when the controller asked for no records (or is too old to
    /// know about them).
    pub fn new(opts: Option<&pb::RecordOptions>, prompts: &[pb::Prompt]) -> Option<Self> {
        let opts = opts.filter(|o| o.enabled)?;
        let prompt_texts = if opts.save_text > 0 {
            prompts.iter().map(prompt_text).collect()
        } else {
            Vec::new()
        };
        Some(Self {
            save_text: opts.save_text,
            next_seq: AtomicU64::new(0),
            origin: OnceLock::new(),
            waiting: AtomicU64::new(0),
            full: Notify::new(),
            prompt_texts,
        })
    }

    /// Sets the agreed start (once, before the load begins).
    pub fn set_origin(&self, agreed: Instant) {
        let _ = self.origin.set(agreed);
    }

    /// A request about to be handed to the HTTP client.
    pub fn claim(&self) -> Claim {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        Claim {
            seq,
            keep_text: seq < self.save_text,
        }
    }

    /// The record of a request that ended, and its encoded size.
    pub fn build(
        &self,
        who: Sender,
        m: &RequestMeasure,
        end: End<'_>,
    ) -> (pb::RequestRecord, usize) {
        let origin = *self.origin.get_or_init(Instant::now);
        let at = match end {
            End::Done(at, _) => Some(at),
            End::Cut => None,
        };
        let mut r = m.to_record(at, who.input, origin);
        r.seq = who.claim.seq;
        r.user = u32::try_from(who.user).unwrap_or(u32::MAX);
        r.prompt_index = who.prompt_index as u64;
        r.warmup = who.warmup;
        if let Some(t) = who.turn {
            r.conversation = t.conversation;
            r.turn = t.turn;
        }
        r.outcome = match end {
            End::Done(_, Ok(())) => pb::RecordOutcome::Ok,
            End::Done(_, Err(e)) => {
                r.error_class = e.class.name().to_owned();
                if let Some(s) = e.status {
                    r.http_status = u32::from(s);
                }
                // The same text the error_details examples keep.
                r.error = truncate(&e.message, MAX_MESSAGE_BYTES);
                pb::RecordOutcome::Failed
            }
            End::Cut => pb::RecordOutcome::Incomplete,
        } as i32;
        if who.claim.keep_text {
            let prompt = who
                .prompt_text
                .as_deref()
                .or_else(|| self.prompt_texts.get(who.prompt_index).map(String::as_str));
            r.prompt = prompt.map(|p| truncate(p, MAX_TEXT_BYTES));
            r.response = Some(truncate(&m.response_text(), MAX_TEXT_BYTES));
        }
        let bytes = r.encoded_len();
        (r, bytes)
    }

    /// One record was put in a shard: wakes the session when enough wait.
    pub fn added(&self, bytes: usize) {
        let bytes = (bytes as u64).min(BYTES_MASK);
        let prev = self
            .waiting
            .fetch_add((1 << COUNT_SHIFT) | bytes, Ordering::Relaxed);
        let (n, b) = ((prev >> COUNT_SHIFT) + 1, prev & BYTES_MASK);
        let limit = FLUSH_BYTES as u64;
        if n == FLUSH_RECORDS as u64 || (b < limit && b + bytes >= limit) {
            self.full.notify_one();
        }
    }

    /// The session took `n` records of `bytes` out of the shards.
    fn taken(&self, n: usize, bytes: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let count = (v >> COUNT_SHIFT).saturating_sub(n as u64);
                let b = (v & BYTES_MASK).saturating_sub(bytes as u64);
                Some((count << COUNT_SHIFT) | b)
            });
    }

    /// Resolves when enough records wait for an early batch.
    pub async fn full(&self) {
        self.full.notified().await;
    }

    /// Cuts `records` into batches of at most `FLUSH_RECORDS` records and
    /// about `FLUSH_BYTES`, with each batch's encoded size.
    pub fn batches(&self, records: Vec<pb::RequestRecord>) -> Vec<(pb::RequestBatch, usize)> {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let (mut bytes, mut total, n) = (0usize, 0usize, records.len());
        for r in records {
            let len = r.encoded_len() + 4;
            if !batch.is_empty() && (batch.len() >= FLUSH_RECORDS || bytes + len > FLUSH_BYTES) {
                out.push((
                    pb::RequestBatch {
                        records: std::mem::take(&mut batch),
                    },
                    bytes,
                ));
                bytes = 0;
            }
            bytes += len;
            total += len;
            batch.push(r);
        }
        if !batch.is_empty() {
            out.push((pb::RequestBatch { records: batch }, bytes));
        }
        self.taken(n, total);
        out
    }
}

/// A prompt's text as saved: its messages' contents, one after another (the
/// text a completions API is sent).
fn prompt_text(p: &pb::Prompt) -> String {
    p.messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(save_text: u64) -> Records {
        Records::new(
            Some(&pb::RecordOptions {
                enabled: true,
                save_text,
            }),
            &[pb::Prompt {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                }],
                ..pb::Prompt::default()
            }],
        )
        .expect("enabled")
    }

    #[test]
    fn disabled_or_absent_options_give_no_records() {
        let off = pb::RecordOptions {
            enabled: false,
            save_text: 9,
        };
        assert!(Records::new(Some(&off), &[]).is_none());
        assert!(Records::new(None, &[]).is_none());
    }

    #[test]
    fn seqs_follow_claims_and_text_is_kept_for_the_first_n() {
        let r = records(2);
        let claims: Vec<Claim> = (0..4).map(|_| r.claim()).collect();
        assert_eq!(
            claims
                .iter()
                .map(|c| (c.seq, c.keep_text))
                .collect::<Vec<_>>(),
            vec![(0, true), (1, true), (2, false), (3, false)]
        );
    }

    #[test]
    fn batches_respect_the_record_and_byte_limits() {
        let r = records(0);
        let small: Vec<pb::RequestRecord> = (0..1100)
            .map(|seq| pb::RequestRecord {
                seq,
                ..pb::RequestRecord::default()
            })
            .collect();
        let sizes: Vec<usize> = r
            .batches(small)
            .iter()
            .map(|(b, _)| b.records.len())
            .collect();
        assert_eq!(sizes, vec![512, 512, 76]);
        let big = |seq| pb::RequestRecord {
            seq,
            response: Some("x".repeat(400_000)),
            ..pb::RequestRecord::default()
        };
        let out = r.batches((0..5).map(big).collect());
        assert_eq!(
            out.iter().map(|(b, _)| b.records.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert!(
            out.iter()
                .all(|(b, bytes)| b.encoded_len() <= *bytes && *bytes <= FLUSH_BYTES)
        );
        let seqs: Vec<u64> = out
            .iter()
            .flat_map(|(b, _)| b.records.iter().map(|r| r.seq))
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4], "order kept");
    }

    #[test]
    fn the_session_is_woken_when_a_batch_is_full() {
        use futures::FutureExt;
        let r = records(0);
        for _ in 0..FLUSH_RECORDS - 1 {
            r.added(10);
        }
        assert!(r.full().now_or_never().is_none(), "not yet full");
        r.added(10);
        assert!(r.full().now_or_never().is_some(), "woken at 512 records");
        for _ in 0..FLUSH_RECORDS {
            r.added(10);
        }
        assert!(r.full().now_or_never().is_none(), "once per crossing");
    }

    #[test]
    fn the_session_is_woken_by_bytes_and_counts_restart_after_a_take() {
        use futures::FutureExt;
        let r = records(0);
        r.added(FLUSH_BYTES / 2);
        assert!(r.full().now_or_never().is_none(), "half the bytes");
        r.added(FLUSH_BYTES / 2);
        assert!(r.full().now_or_never().is_some(), "woken at the byte limit");
        // The session takes both: the next crossing wakes it again.
        r.taken(2, FLUSH_BYTES);
        for _ in 0..FLUSH_RECORDS - 1 {
            r.added(1);
        }
        assert!(r.full().now_or_never().is_none(), "count restarted at 0");
        r.added(1);
        assert!(r.full().now_or_never().is_some(), "woken at 512 again");
    }
}
