//! The controller's end of one agent's session stream: hello, clock
//! alignment, prepare + dataset, the go signal, then a pump that renews the
//! agent's lease with heartbeats and forwards its intervals and final totals.

use std::time::Duration;

use barrage_common::auth::{AttachToken, Token};
use barrage_common::clock::{ClockOffset, ProbeSample, mono_now_ns};
use barrage_common::tls::{ClientTls, describe_failure, error_chain};
use barrage_proto::agent::v1::{self as pb, agent_client::AgentClient, agent_msg, controller_msg};
use barrage_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Endpoint;

/// Clock probes per agent; the smallest round trip wins.
const PROBES: u64 = 8;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const LEASE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("agent {addr}: cannot connect: {reason}")]
    Connect { addr: String, reason: String },
    #[error("agent {addr}: refused the session: {reason}")]
    Refused { addr: String, reason: String },
    #[error("agent {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("agent {addr}: no answer to {phase} within {secs} s")]
    Timeout {
        addr: String,
        phase: &'static str,
        secs: u64,
    },
    #[error("agent {addr}: reported {code}: {message}")]
    Agent {
        addr: String,
        code: String,
        message: String,
    },
}

impl LinkError {
    /// Nothing answered at the address (not up yet, refused, timed out):
    /// worth retrying while agents come up. A TLS or token refusal is not.
    pub fn is_unreachable(&self) -> bool {
        let LinkError::Connect { reason, .. } = self else {
            return false;
        };
        let lower = reason.to_ascii_lowercase();
        let nobody = [
            "refused",
            "timed out",
            "unreachable",
            "no route",
            "dns",
            "resolve",
        ];
        !reason.contains("TLS") && nobody.iter().any(|w| lower.contains(w))
    }
}

/// The agents' sessions (their gRPC connections, heartbeats and pumps) run
/// on this small runtime of their own: a controller runtime busy with other
/// work (merging, the built-in simulator, an embedding program) would
/// otherwise delay the heartbeats past the agents' lease, and the agents
/// would stop their load by themselves.
pub struct LinkRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl LinkRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("controller-links")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for LinkRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Record seqs received since the last interval. After a resume the agent
/// resends the request batches sent before each interval not acked: those
/// already here are dropped, so every record reaches the outputs once.
#[derive(Default)]
struct RecordWindow(std::collections::HashSet<u64>);

impl RecordWindow {
    /// The next interval arrived: nothing before it is resent again.
    fn interval(&mut self) {
        self.0.clear();
    }

    /// Drops the records already received; false when none is left.
    fn fresh(&mut self, batch: &mut pb::RequestBatch) -> bool {
        batch.records.retain(|r| self.0.insert(r.seq));
        !batch.records.is_empty()
    }
}

/// What the pump hands to the merger.
#[derive(Debug)]
pub enum LinkEvent {
    Started {
        agent: usize,
        late_ns: i64,
    },
    Interval {
        agent: usize,
        interval: pb::Interval,
    },
    Final {
        agent: usize,
        fin: pb::Final,
    },
    Lost {
        agent: usize,
        reason: String,
    },
    /// The connection dropped and the session was resumed within the lease.
    Resumed {
        agent: usize,
    },
    /// Per-request records of requests that ended.
    Requests {
        agent: usize,
        batch: pb::RequestBatch,
    },
}

pub struct AgentLink {
    pub addr: String,
    pub hello: pb::HelloAck,
    pub offset: Option<ClockOffset>,
    dial: Dial,
    tx: mpsc::Sender<pb::ControllerMsg>,
    rx: Streaming<pb::AgentMsg>,
}

/// What it takes to dial the agent again: a resume after a dropped
/// connection uses the same token, TLS and run.
struct Dial {
    token: Option<Token>,
    tls: Option<ClientTls>,
    run_id: String,
    controller_id: String,
}

impl Dial {
    fn hello(&self, acked_through_seq: Option<u64>) -> pb::Hello {
        pb::Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            controller_id: self.controller_id.clone(),
            run_id: self.run_id.clone(),
            resume: acked_through_seq.is_some(),
            acked_through_seq: acked_through_seq.unwrap_or(0),
        }
    }
}

/// Longest wait for an agent to end its session after the final ack.
const FINAL_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Pause between two attempts to resume a dropped session.
const RESUME_RETRY: Duration = Duration::from_millis(250);

type Session = (mpsc::Sender<pb::ControllerMsg>, Streaming<pb::AgentMsg>);

fn cmsg(m: controller_msg::Msg) -> pb::ControllerMsg {
    pb::ControllerMsg { msg: Some(m) }
}

/// Connects (over TLS when the dial has it), opens the session stream and
/// sends `hello` first.
async fn connect_session(addr: &str, dial: &Dial, hello: pb::Hello) -> Result<Session, LinkError> {
    let tls = dial.tls.as_ref();
    let connect_err = |reason: String| LinkError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| connect_err(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = tls
            .apply(endpoint)
            .map_err(|e| connect_err(format!("TLS: {}", error_chain(&e))))?;
    }
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(describe_failure(&e, tls.is_some())))?;
    let attach =
        AttachToken::new(dial.token.as_ref()).map_err(|s| connect_err(s.message().to_owned()))?;
    let mut client = AgentClient::with_interceptor(channel, attach)
        .max_decoding_message_size(barrage_agent::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(barrage_agent::server::MAX_MESSAGE_BYTES);
    let (tx, out) = mpsc::channel(64);
    tx.send(cmsg(controller_msg::Msg::Hello(hello)))
        .await
        .map_err(|_| connect_err("session closed".into()))?;
    let rx = tokio::time::timeout(PHASE_TIMEOUT, client.session(ReceiverStream::new(out)))
        .await
        .map_err(|_| LinkError::Timeout {
            addr: addr.to_owned(),
            phase: "session",
            secs: PHASE_TIMEOUT.as_secs(),
        })?
        .map_err(|s| match std::error::Error::source(&s) {
            // No answer from the agent: the connection itself failed.
            // With TLS 1.3 a refused client certificate shows up here,
            // at the first request, not at connect.
            Some(_) => connect_err(describe_failure(&s, tls.is_some())),
            None => LinkError::Refused {
                addr: addr.to_owned(),
                reason: format!("{:?}: {}", s.code(), s.message()),
            },
        })?
        .into_inner();
    Ok((tx, rx))
}

impl AgentLink {
    /// Connects (over TLS when `tls` is given: `https`, the CA, the client
    /// certificate for mutual TLS), opens the session and exchanges hello.
    /// A failed handshake (unknown CA, wrong name, missing or refused client
    /// certificate, plaintext on one side) is a [`LinkError::Connect`] whose
    /// reason is the TLS error.
    pub async fn open(
        addr: &str,
        token: Option<&Token>,
        tls: Option<&ClientTls>,
        run_id: &str,
        controller_id: &str,
    ) -> Result<Self, LinkError> {
        let dial = Dial {
            token: token.cloned(),
            tls: tls.cloned(),
            run_id: run_id.to_owned(),
            controller_id: controller_id.to_owned(),
        };
        let (tx, rx) = connect_session(addr, &dial, dial.hello(None)).await?;
        let mut link = Self {
            addr: addr.to_owned(),
            hello: pb::HelloAck::default(),
            offset: None,
            dial,
            tx,
            rx,
        };
        match link.recv("hello").await? {
            agent_msg::Msg::Hello(h) => link.hello = h,
            other => return Err(link.unexpected("hello", &other)),
        }
        Ok(link)
    }

    /// [`AgentLink::open`] on the links' runtime, so the connection's tasks
    /// live there.
    pub async fn open_on(
        rt: &tokio::runtime::Handle,
        addr: &str,
        token: Option<&Token>,
        tls: Option<&ClientTls>,
        run_id: &str,
        controller_id: &str,
    ) -> Result<Self, LinkError> {
        let (a, token, tls) = (addr.to_owned(), token.cloned(), tls.cloned());
        let (run_id, controller_id) = (run_id.to_owned(), controller_id.to_owned());
        rt.spawn(async move {
            Self::open(&a, token.as_ref(), tls.as_ref(), &run_id, &controller_id).await
        })
        .await
        .map_err(|e| LinkError::Protocol {
            addr: addr.to_owned(),
            reason: format!("session task: {e}"),
        })?
    }

    /// Opens a new session that resumes the running one: the agent answers
    /// hello and resends every interval after `acked`.
    async fn resume(&mut self, acked: u64) -> Result<(), LinkError> {
        let (tx, rx) =
            connect_session(&self.addr, &self.dial, self.dial.hello(Some(acked))).await?;
        self.tx = tx;
        self.rx = rx;
        match self.recv("resume").await? {
            agent_msg::Msg::Hello(_) => Ok(()),
            other => Err(self.unexpected("resume", &other)),
        }
    }

    /// Tries to resume until `until` (when the agent's lease runs out).
    async fn resume_until(
        &mut self,
        acked: u64,
        until: tokio::time::Instant,
    ) -> Result<(), String> {
        let mut last = "no attempt".to_owned();
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout_at(until, self.resume(acked)).await {
                Ok(Ok(())) => return Ok(()),
                // It answered and refused: trying again will not help.
                Ok(Err(e @ LinkError::Agent { .. })) => {
                    return Err(e.to_string());
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => break,
            }
            tokio::time::sleep(RESUME_RETRY).await;
        }
        Err(format!("not resumed within the lease: {last}"))
    }

    fn unexpected(&self, phase: &str, m: &agent_msg::Msg) -> LinkError {
        if let agent_msg::Msg::Error(e) = m {
            return LinkError::Agent {
                addr: self.addr.clone(),
                code: e.code.clone(),
                message: e.message.clone(),
            };
        }
        LinkError::Protocol {
            addr: self.addr.clone(),
            reason: format!("unexpected message while waiting for {phase}"),
        }
    }

    async fn send(&self, m: controller_msg::Msg) -> Result<(), LinkError> {
        self.tx
            .send(cmsg(m))
            .await
            .map_err(|_| LinkError::Protocol {
                addr: self.addr.clone(),
                reason: "session closed".into(),
            })
    }

    async fn recv(&mut self, phase: &'static str) -> Result<agent_msg::Msg, LinkError> {
        let addr = self.addr.clone();
        match tokio::time::timeout(PHASE_TIMEOUT, self.rx.message()).await {
            Err(_) => Err(LinkError::Timeout {
                addr,
                phase,
                secs: PHASE_TIMEOUT.as_secs(),
            }),
            Ok(Err(s)) => Err(LinkError::Refused {
                addr,
                reason: format!("{:?}: {}", s.code(), s.message()),
            }),
            Ok(Ok(None)) => Err(LinkError::Protocol {
                addr,
                reason: format!("session ended while waiting for {phase}"),
            }),
            Ok(Ok(Some(pb::AgentMsg { msg: None }))) => Err(LinkError::Protocol {
                addr,
                reason: "empty message".into(),
            }),
            Ok(Ok(Some(pb::AgentMsg { msg: Some(m) }))) => Ok(m),
        }
    }

    /// Estimates the agent's clock offset from round trips.
    pub async fn align_clock(&mut self) -> Result<ClockOffset, LinkError> {
        let mut samples = Vec::with_capacity(PROBES as usize);
        for seq in 0..PROBES {
            let sent = mono_now_ns();
            self.send(controller_msg::Msg::Probe(pb::ClockProbe {
                seq,
                controller_mono_ns: sent,
            }))
            .await?;
            match self.recv("clock probe").await? {
                agent_msg::Msg::Probe(r) if r.seq == seq => samples.push(ProbeSample {
                    sent_ns: r.controller_mono_ns,
                    peer_ns: r.agent_mono_ns,
                    received_ns: mono_now_ns(),
                }),
                other => return Err(self.unexpected("clock probe", &other)),
            }
        }
        let off = ClockOffset::from_probes(&samples).ok_or_else(|| LinkError::Protocol {
            addr: self.addr.clone(),
            reason: "no usable clock probe".into(),
        })?;
        self.offset = Some(off);
        Ok(off)
    }

    /// Sends the step and its prompts; waits for Ready.
    pub async fn prepare(
        &mut self,
        prepare: pb::Prepare,
        chunks: &[pb::DatasetChunk],
    ) -> Result<pb::Ready, LinkError> {
        self.send(controller_msg::Msg::Prepare(prepare)).await?;
        for c in chunks {
            self.send(controller_msg::Msg::Data(c.clone())).await?;
        }
        match self.recv("ready").await? {
            agent_msg::Msg::Ready(r) => Ok(r),
            other => Err(self.unexpected("ready", &other)),
        }
    }

    /// The go signal, at `start_local_ns` on the controller's clock.
    pub async fn start(&self, start_local_ns: u64) -> Result<(), LinkError> {
        let at = self
            .offset
            .map_or(start_local_ns, |o| o.to_peer(start_local_ns));
        self.send(controller_msg::Msg::Start(pb::Start {
            start_at_agent_mono_ns: at,
        }))
        .await
    }

    /// After the final ack: the agent ends the session once it has the ack.
    /// Waiting for that (bounded) keeps the ack from being lost when the
    /// links' runtime shuts down right after the run.
    async fn await_close(&mut self) {
        let _ = tokio::time::timeout(FINAL_CLOSE_WAIT, async {
            while let Ok(Some(_)) = self.rx.message().await {}
        })
        .await;
    }

    /// Renews the lease and forwards everything until the agent's Final (or
    /// its loss). `stop` asks the agent to stop early. A dropped connection
    /// is resumed within the lease (the agent resends what was not acked).
    /// Marked lost after `lease + margin` of silence: by then the agent has
    /// stopped itself.
    pub async fn pump(
        mut self,
        agent: usize,
        events: mpsc::Sender<LinkEvent>,
        stop: CancellationToken,
    ) {
        let silence_limit = LEASE + Duration::from_secs(2);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut hb_seq = 0u64;
        // Cumulative: every interval up to here has arrived.
        let mut acked = 0u64;
        let mut unconfirmed = RecordWindow::default();
        let mut last_heard = tokio::time::Instant::now();
        let mut stop_sent = false;
        let lost = |reason: String| LinkEvent::Lost { agent, reason };
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > silence_limit {
                        let _ = events.send(lost(format!("silent for {} s", silence_limit.as_secs()))).await;
                        return;
                    }
                    hb_seq += 1;
                    let hb = pb::ControllerHeartbeat { seq: hb_seq, lease_extend_ms: LEASE.as_millis() as u64, acked_through_seq: acked };
                    // A closed stream shows up on the receiving side (resume) or as silence.
                    let _ = self.send(controller_msg::Msg::Heartbeat(hb)).await;
                }
                _ = stop.cancelled(), if !stop_sent => {
                    stop_sent = true;
                    let _ = self.send(controller_msg::Msg::Stop(pb::Stop { reason: "controller stop".into(), grace_ms: 0 })).await;
                }
                m = self.rx.message() => {
                    let ev = match m {
                        Ok(Some(pb::AgentMsg { msg: Some(m) })) => m,
                        Ok(Some(_)) => continue,
                        Ok(None) => { let _ = events.send(lost("session ended before final totals".into())).await; return; }
                        Err(s) => {
                            // The agent's lease runs from about its last word.
                            match self.resume_until(acked, last_heard + LEASE).await {
                                Ok(()) => {
                                    tracing::info!(agent = %self.addr, "session resumed after a dropped connection");
                                    last_heard = tokio::time::Instant::now();
                                    // A stop asked during the partition is sent again.
                                    stop_sent = false;
                                    let _ = events.send(LinkEvent::Resumed { agent }).await;
                                }
                                Err(why) => {
                                    let _ = events.send(lost(format!("{:?}: {}; {why}", s.code(), s.message()))).await;
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    last_heard = tokio::time::Instant::now();
                    match ev {
                        agent_msg::Msg::Started(s) => { let _ = events.send(LinkEvent::Started { agent, late_ns: s.late_by_ns }).await; }
                        agent_msg::Msg::Interval(i) => {
                            if i.seq == acked + 1 {
                                acked = i.seq;
                                unconfirmed.interval();
                            }
                            let _ = events.send(LinkEvent::Interval { agent, interval: i }).await;
                        }
                        agent_msg::Msg::Final(f) => {
                            let _ = self.send(controller_msg::Msg::FinalAck(pb::FinalAck {})).await;
                            let _ = events.send(LinkEvent::Final { agent, fin: f }).await;
                            self.await_close().await;
                            return;
                        }
                        agent_msg::Msg::Requests(mut batch) => {
                            if unconfirmed.fresh(&mut batch) {
                                let _ = events.send(LinkEvent::Requests { agent, batch }).await;
                            }
                        }
                        agent_msg::Msg::Error(e) => {
                            let _ = events.send(lost(format!("{}: {}", e.code, e.message))).await;
                            return;
                        }
                        agent_msg::Msg::Heartbeat(_) | agent_msg::Msg::Probe(_) | agent_msg::Msg::Hello(_) | agent_msg::Msg::Ready(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[u64]) -> pb::RequestBatch {
        pb::RequestBatch {
            records: seqs
                .iter()
                .map(|&seq| pb::RequestRecord {
                    seq,
                    ..pb::RequestRecord::default()
                })
                .collect(),
        }
    }

    fn seqs(b: &pb::RequestBatch) -> Vec<u64> {
        b.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_resent_after_a_resume_reach_the_outputs_once() {
        let mut w = RecordWindow::default();
        let mut b = batch(&[0, 1]);
        assert!(w.fresh(&mut b));
        w.interval();
        // Sent before interval 2, which was lost with the connection...
        let mut b = batch(&[2, 3]);
        assert!(w.fresh(&mut b));
        // ...and resent with it after the resume, beside new ones.
        let mut again = batch(&[2, 3]);
        assert!(!w.fresh(&mut again), "all already here");
        let mut mixed = batch(&[3, 4]);
        assert!(w.fresh(&mut mixed));
        assert_eq!(seqs(&mixed), vec![4]);
        w.interval();
        let mut next = batch(&[5]);
        assert!(w.fresh(&mut next));
        assert_eq!(seqs(&next), vec![5]);
    }
}
