//! Surviving a brief partition (PROTOCOL.md R3/R4): the controller's stream
//! of a running step may drop and come back within the lease. The running
//! step keeps its load going, keeps every interval the controller has not
//! acknowledged, and takes over the new stream when the controller resumes.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// What the agent sends on a session stream.
pub(crate) type Tx = mpsc::Sender<Result<pb::AgentMsg, Status>>;

/// One session stream: what the controller sends, and our answers.
pub(crate) struct Conn {
    pub(crate) inbound: Streaming<pb::ControllerMsg>,
    pub(crate) tx: Tx,
}

/// A controller's new stream for a running step, with its resume hello.
pub(crate) struct Resumed {
    pub(crate) hello: pb::Hello,
    pub(crate) conn: Conn,
}

/// How long a busy agent waits for the first message of a new stream to
/// tell a resuming controller from a second one.
const RESUME_HELLO_WAIT: Duration = Duration::from_secs(5);

struct Slot {
    run_id: String,
    handoff: mpsc::Sender<Resumed>,
}

/// Where a resuming controller's stream is handed to the running step.
#[derive(Default)]
pub(crate) struct ResumeDoor(Mutex<Option<Slot>>);

/// Closes the door when the step ends, however it ends.
pub(crate) struct DoorGuard<'a>(&'a ResumeDoor);

impl Drop for DoorGuard<'_> {
    fn drop(&mut self) {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl ResumeDoor {
    /// Opens the door for `run_id` while the returned guard lives.
    pub(crate) fn open(&self, run_id: &str) -> (mpsc::Receiver<Resumed>, DoorGuard<'_>) {
        let (handoff, rx) = mpsc::channel(1);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Slot {
            run_id: run_id.to_owned(),
            handoff,
        });
        (rx, DoorGuard(self))
    }

    fn handoff_for(&self, run_id: &str) -> Option<mpsc::Sender<Resumed>> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|s| s.run_id == run_id)
            .map(|s| s.handoff.clone())
    }

    fn is_open(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// A busy agent's answer to a new stream: hands it to the running step
    /// when its hello resumes that step's run, else refuses with `busy`.
    pub(crate) async fn hand_over(&self, mut conn: Conn, busy: Status) -> Result<(), Status> {
        if !self.is_open() {
            return Err(busy);
        }
        let first = tokio::time::timeout(RESUME_HELLO_WAIT, conn.inbound.message()).await;
        let hello = match first {
            Ok(Ok(Some(pb::ControllerMsg {
                msg: Some(controller_msg::Msg::Hello(h)),
            }))) if h.resume => h,
            _ => return Err(busy),
        };
        let Some(handoff) = self.handoff_for(&hello.run_id) else {
            return Err(busy);
        };
        tracing::info!(run_id = %hello.run_id, controller = %hello.controller_id, "controller resumed its session");
        handoff
            .send(Resumed { hello, conn })
            .await
            .map_err(|_| busy)
    }
}

/// Most bytes of request batches kept for a resend. Acks come every
/// heartbeat, so this is reached only when no controller is attached for a
/// long while at a high request rate: further batches are then dropped (and
/// counted as `records_dropped`) rather than grow the agent without bound.
pub(crate) const KEPT_BATCH_BYTES: usize = 64 << 20;

/// Intervals sent but not yet acknowledged by the controller (cumulative
/// ack in its heartbeats), each with the request batches sent before it:
/// resent, in their order, after a resume. The controller drops records it
/// already had (by seq) from batches resent after its last interval.
#[derive(Default)]
pub(crate) struct Unacked {
    intervals: VecDeque<(Vec<(pb::RequestBatch, usize)>, pb::Interval)>,
    /// Batches sent since the last interval (they belong to the next one).
    batches: Vec<(pb::RequestBatch, usize)>,
    batch_bytes: usize,
}

impl Unacked {
    pub(crate) fn keep(&mut self, interval: pb::Interval) {
        let batches = std::mem::take(&mut self.batches);
        self.intervals.push_back((batches, interval));
    }

    /// Keeps a batch of `bytes` for a resend; false when there is no room.
    pub(crate) fn keep_batch(&mut self, batch: pb::RequestBatch, bytes: usize) -> bool {
        if self.batch_bytes.saturating_add(bytes) > KEPT_BATCH_BYTES {
            return false;
        }
        self.batch_bytes += bytes;
        self.batches.push((batch, bytes));
        true
    }

    /// Forgets everything up to interval `seq` (the controller has it).
    pub(crate) fn ack(&mut self, seq: u64) {
        while self.intervals.front().is_some_and(|(_, i)| i.seq <= seq) {
            if let Some((batches, _)) = self.intervals.pop_front() {
                let freed: usize = batches.iter().map(|(_, b)| b).sum();
                self.batch_bytes = self.batch_bytes.saturating_sub(freed);
            }
        }
    }

    /// Intervals kept.
    pub(crate) fn intervals(&self) -> usize {
        self.intervals.len()
    }

    /// Everything kept, in the order it was (or would have been) sent.
    pub(crate) fn messages(&self) -> impl Iterator<Item = agent_msg::Msg> + '_ {
        let batch = |(b, _): &(pb::RequestBatch, usize)| agent_msg::Msg::Requests(b.clone());
        self.intervals
            .iter()
            .flat_map(move |(batches, i)| {
                batches
                    .iter()
                    .map(batch)
                    .chain(std::iter::once(agent_msg::Msg::Interval(i.clone())))
            })
            .chain(self.batches.iter().map(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_intervals_are_forgotten_in_order() {
        let mut u = Unacked::default();
        for seq in 1..=4 {
            u.keep(pb::Interval {
                seq,
                ..pb::Interval::default()
            });
        }
        u.ack(2);
        assert_eq!(seqs(&u), vec![3, 4]);
        u.ack(9);
        assert_eq!(u.messages().count(), 0);
    }

    fn seqs(u: &Unacked) -> Vec<u64> {
        u.messages()
            .filter_map(|m| match m {
                agent_msg::Msg::Interval(i) => Some(i.seq),
                _ => None,
            })
            .collect()
    }

    fn batch(seq: u64) -> pb::RequestBatch {
        pb::RequestBatch {
            records: vec![pb::RequestRecord {
                seq,
                ..pb::RequestRecord::default()
            }],
        }
    }

    /// "b7" for a batch holding record 7, "i2" for interval 2.
    fn order(u: &Unacked) -> Vec<String> {
        u.messages()
            .map(|m| match m {
                agent_msg::Msg::Requests(b) => format!("b{}", b.records[0].seq),
                agent_msg::Msg::Interval(i) => format!("i{}", i.seq),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn batches_are_resent_before_their_interval_and_forgotten_with_it() {
        let mut u = Unacked::default();
        assert!(u.keep_batch(batch(0), 10));
        u.keep(pb::Interval {
            seq: 1,
            ..pb::Interval::default()
        });
        assert!(u.keep_batch(batch(1), 10));
        assert!(u.keep_batch(batch(2), 10));
        u.keep(pb::Interval {
            seq: 2,
            ..pb::Interval::default()
        });
        assert!(u.keep_batch(batch(3), 10));
        assert_eq!(order(&u), ["b0", "i1", "b1", "b2", "i2", "b3"]);
        u.ack(1);
        assert_eq!(order(&u), ["b1", "b2", "i2", "b3"]);
        assert_eq!(u.batch_bytes, 30);
    }

    #[test]
    fn kept_batches_are_bounded() {
        let mut u = Unacked::default();
        assert!(u.keep_batch(batch(0), KEPT_BATCH_BYTES - 5));
        assert!(!u.keep_batch(batch(1), 6), "over the bound");
        assert!(u.keep_batch(batch(2), 5));
        u.keep(pb::Interval {
            seq: 1,
            ..pb::Interval::default()
        });
        u.ack(1);
        assert!(
            u.keep_batch(batch(3), KEPT_BATCH_BYTES),
            "room again after the ack"
        );
    }
}
