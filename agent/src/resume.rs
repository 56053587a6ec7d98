//! Surviving a brief partition (PROTOCOL.md R3/R4): the controller's stream
//! of a running step may drop and come back within the lease. The running
//! step keeps its load going, keeps every interval the controller has not
//! acknowledged, and takes over the new stream when the controller resumes.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use barrage_proto::agent::v1::{self as pb, controller_msg};
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

/// Intervals sent but not yet acknowledged by the controller (cumulative
/// ack in its heartbeats): resent after a resume.
#[derive(Default)]
pub(crate) struct Unacked(VecDeque<pb::Interval>);

impl Unacked {
    pub(crate) fn keep(&mut self, interval: pb::Interval) {
        self.0.push_back(interval);
    }

    /// Forgets everything up to `seq` (the controller has it).
    pub(crate) fn ack(&mut self, seq: u64) {
        while self.0.front().is_some_and(|i| i.seq <= seq) {
            self.0.pop_front();
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &pb::Interval> {
        self.0.iter()
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
        assert_eq!(u.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![3, 4]);
        u.ack(9);
        assert_eq!(u.iter().count(), 0);
    }
}
