//! Fake agents for controller benchmarks: each is a real tonic gRPC server
//! on loopback speaking the `Agent` session protocol (hello, clock probes,
//! prepare + dataset, start barrier, interval deltas, heartbeats, final
//! totals), but instead of sending HTTP traffic it streams intervals from a
//! [`Pool`]. It records what it sent (per pool entry, bytes, and when) so a
//! bench can check the controller's merge against it.
//!
//! Faults: `Lose` kills the agent's server mid-run (its connections fail,
//! its listener closes, so the controller's resume attempts are refused
//! and it is marked lost as designed); `Slow` delays every interval and the
//! final totals while heartbeats stay on time.

#![allow(dead_code)] // the test uses a subset

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use barrage_common::clock::{instant_at, mono_now_ns};
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use barrage_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use futures::{Future, Stream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

#[path = "fleet_data.rs"]
pub mod data;
use barrage_common::metrics::{ErrorClass, Metric};
use barrage_controller::report::{Distribution, Summary};
use data::Pool;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// The server dies this long after the start.
    Lose(Duration),
    /// Every interval (and the final) goes out this much late.
    Slow(Duration),
}

/// What one fake agent sent; read by the bench after the run.
pub struct Sent {
    pub fault: Fault,
    /// Intervals sent, per pool entry.
    pub tally: Mutex<Vec<u64>>,
    /// Encoded bytes of every message it sent.
    pub bytes: AtomicU64,
    /// Cancelled when its server is killed.
    pub kill: CancellationToken,
}

impl Sent {
    pub fn tally(&self) -> Vec<u64> {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Shared by every fake of a fleet.
pub struct Shared {
    pub pool: Arc<Pool>,
    pub streams: u64,
    /// (interval index, when it was handed to gRPC) of every interval sent.
    pub sends: Mutex<Vec<(u64, Instant)>>,
}

pub struct Fleet {
    pub addrs: Vec<SocketAddr>,
    pub agents: Vec<Arc<Sent>>,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Fleet {
    /// Starts one server per fault on an ephemeral loopback port.
    pub async fn start(pool: Arc<Pool>, streams: u64, faults: &[Fault]) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pool,
            streams,
            sends: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let (mut addrs, mut agents) = (Vec::new(), Vec::new());
        for (i, fault) in faults.iter().enumerate() {
            let sent = Arc::new(Sent {
                fault: *fault,
                tally: Mutex::new(vec![0; shared.pool.entries.len()]),
                bytes: AtomicU64::new(0),
                kill: CancellationToken::new(),
            });
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let agent = FakeAgent {
                index: i,
                shared: shared.clone(),
                sent: sent.clone(),
            };
            tokio::spawn(serve(agent, listener, stop.clone()));
            agents.push(sent);
        }
        Ok(Self {
            addrs,
            agents,
            shared,
            stop,
        })
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

async fn serve(agent: FakeAgent, listener: TcpListener, stop: CancellationToken) {
    let kill = agent.sent.kill.clone();
    let svc = pb::agent_server::AgentServer::new(agent)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let served = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(Box::pin(incoming(listener, kill)), stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        eprintln!("fake agent server: {e}");
    }
}

/// Accepted connections until the kill; the listener closes with it, so
/// a reconnect is refused as it would be by a dead process.
fn incoming(
    listener: TcpListener,
    kill: CancellationToken,
) -> impl Stream<Item = io::Result<Killable>> {
    futures::stream::unfold(Some(listener), move |state| {
        let kill = kill.clone();
        async move {
            let listener = state?;
            tokio::select! {
                _ = kill.cancelled() => None,
                r = listener.accept() => {
                    let conn = r.map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Killable::new(s, kill.clone())
                    });
                    Some((conn, Some(listener)))
                }
            }
        }
    })
}

/// A connection that fails (both ways) once its agent is killed.
pub struct Killable {
    io: TcpStream,
    kill: CancellationToken,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    fn new(io: TcpStream, kill: CancellationToken) -> Self {
        let dead = Box::pin(kill.clone().cancelled_owned());
        Self { io, kill, dead }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.is_cancelled() || self.dead.as_mut().poll(cx).is_ready()
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "agent killed")
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Killable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[derive(Clone)]
struct FakeAgent {
    index: usize,
    shared: Arc<Shared>,
    sent: Arc<Sent>,
}

type Tx = mpsc::Sender<Result<pb::AgentMsg, Status>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::AgentMsg, Status>> + Send>>;

fn msg(m: agent_msg::Msg) -> Result<pb::AgentMsg, Status> {
    Ok(pb::AgentMsg { msg: Some(m) })
}

#[tonic::async_trait]
impl pb::agent_server::Agent for FakeAgent {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ControllerMsg>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let kill = me.sent.kill.clone();
            tokio::select! {
                _ = kill.cancelled() => {}
                r = me.session(inbound, tx) => {
                    if let Err(e) = r {
                        eprintln!("fake agent {}: {e}", me.index);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            state: pb::AgentState::Idle as i32,
            agent_id: self.id(),
            ..pb::HealthResponse::default()
        }))
    }
}

async fn next(inbound: &mut Streaming<pb::ControllerMsg>) -> Result<controller_msg::Msg, String> {
    match inbound.message().await {
        Ok(Some(pb::ControllerMsg { msg: Some(m) })) => Ok(m),
        Ok(Some(_)) => Err("empty message".into()),
        Ok(None) => Err("controller closed the stream".into()),
        Err(s) => Err(format!("stream: {}", s.message())),
    }
}

impl FakeAgent {
    fn id(&self) -> String {
        format!("fake-{:04}", self.index)
    }

    async fn send(&self, tx: &Tx, m: agent_msg::Msg) -> Result<(), String> {
        let m = msg(m);
        let len = m.as_ref().map_or(0, |m| m.encoded_len() as u64);
        tx.send(m).await.map_err(|_| "controller went away")?;
        self.sent.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    async fn session(
        &self,
        mut inbound: Streaming<pb::ControllerMsg>,
        tx: Tx,
    ) -> Result<(), String> {
        let hello = match next(&mut inbound).await? {
            controller_msg::Msg::Hello(h) => h,
            _ => return Err("expected hello first".into()),
        };
        if hello.protocol_major != PROTOCOL_MAJOR {
            return Err(format!("protocol {}", hello.protocol_major));
        }
        let ack = pb::HelloAck {
            agent_id: self.id(),
            version: "fleet-bench".into(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            capacity: Some(pb::Capacity {
                cores: 4,
                max_users: 0,
                weight: 1.0,
            }),
        };
        self.send(&tx, agent_msg::Msg::Hello(ack)).await?;
        let (prepare, start) = self.setup(&mut inbound, &tx).await?;
        self.run(prepare, start, inbound, tx).await
    }

    /// Clock probes, prepare and its dataset, until the go signal.
    async fn setup(
        &self,
        inbound: &mut Streaming<pb::ControllerMsg>,
        tx: &Tx,
    ) -> Result<(pb::Prepare, pb::Start), String> {
        let mut prepare: Option<pb::Prepare> = None;
        let mut prompts = 0u64;
        loop {
            match next(inbound).await? {
                controller_msg::Msg::Probe(p) => {
                    let reply = pb::ClockReply {
                        seq: p.seq,
                        controller_mono_ns: p.controller_mono_ns,
                        agent_mono_ns: mono_now_ns(),
                    };
                    self.send(tx, agent_msg::Msg::Probe(reply)).await?;
                }
                controller_msg::Msg::Prepare(p) => {
                    prompts = 0;
                    prepare = Some(p);
                }
                controller_msg::Msg::Data(chunk) => {
                    let p = prepare.as_ref().ok_or("dataset before prepare")?;
                    prompts += chunk.prompts.len() as u64;
                    if prompts >= p.dataset_len {
                        let ready = pb::Ready {
                            plan_sha256: p.plan_sha256.clone(),
                            prompts,
                        };
                        self.send(tx, agent_msg::Msg::Ready(ready)).await?;
                    }
                }
                controller_msg::Msg::Start(s) => {
                    return Ok((prepare.ok_or("start before prepare")?, s));
                }
                _ => {}
            }
        }
    }

    /// One interval of the pool: the entry this agent sends as `index`.
    fn interval(&self, index: u64) -> (usize, pb::Interval) {
        let pool = &self.shared.pool;
        let v = pool.pick(self.index, index);
        let e = &pool.entries[v];
        let interval = pb::Interval {
            seq: index + 1,
            index,
            metrics: e.wire.clone(),
            counters: Some(e.counters_pb.clone()),
            turns: Vec::new(),
            health: Some(pb::GeneratorHealth {
                cpu_percent: 150.0,
                rss_bytes: 1 << 30,
                scheduler_lag_us: 300,
                in_flight: self.shared.streams,
            }),
        };
        (v, interval)
    }

    /// Streams the step's intervals on the agreed grid, heartbeats every
    /// second, then the final totals; bounded by the slice's duration.
    async fn run(
        &self,
        prepare: pb::Prepare,
        start: pb::Start,
        mut inbound: Streaming<pb::ControllerMsg>,
        tx: Tx,
    ) -> Result<(), String> {
        let every = Duration::from_millis(prepare.interval_ms.max(100));
        let duration_ms = prepare.slice.as_ref().map_or(0, |s| s.duration_ms);
        let intervals = duration_ms.div_ceil(prepare.interval_ms.max(100)).max(1);
        let agreed = instant_at(start.start_at_agent_mono_ns);
        tokio::time::sleep_until(agreed.into()).await;
        let late = Instant::now().saturating_duration_since(agreed);
        let started = pb::Started {
            actual_start_agent_mono_ns: mono_now_ns(),
            late_by_ns: late.as_nanos() as i64,
        };
        self.send(&tx, agent_msg::Msg::Started(started)).await?;
        if let Fault::Lose(after) = self.sent.fault {
            let kill = self.sent.kill.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((agreed + after).into()).await;
                kill.cancel();
            });
        }
        let out = self.outbox(tx.clone());
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let mut index = 0u64;
        while index < intervals {
            let boundary = agreed + every * (index as u32 + 1);
            tokio::select! {
                m = next(&mut inbound) => if let controller_msg::Msg::Stop(_) = m? { break },
                _ = heartbeat.tick() => {
                    let hb = pb::AgentHeartbeat { seq: index, state: pb::AgentState::Running as i32, last_interval_seq: index, health: None };
                    let _ = tx.try_send(msg(agent_msg::Msg::Heartbeat(hb)));
                }
                _ = tokio::time::sleep_until(boundary.into()) => {
                    let (v, iv) = self.interval(index);
                    out.send(Queued::now(OutItem::Interval(v, Box::new(iv)))).map_err(|_| "outbox closed")?;
                    index += 1;
                }
            }
        }
        out.send(Queued::now(OutItem::Final(index)))
            .map_err(|_| "outbox closed")?;
        drop(out);
        self.await_final_ack(&mut inbound, &mut heartbeat, &tx)
            .await
    }

    /// Heartbeats go on (a slow agent's final may still be queued) until
    /// the controller acks the final, bounded.
    async fn await_final_ack(
        &self,
        inbound: &mut Streaming<pb::ControllerMsg>,
        heartbeat: &mut tokio::time::Interval,
        tx: &Tx,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                m = next(inbound) => if let controller_msg::Msg::FinalAck(_) = m? { return Ok(()) },
                _ = heartbeat.tick() => {
                    let hb = pb::AgentHeartbeat { state: pb::AgentState::Stopping as i32, ..pb::AgentHeartbeat::default() };
                    let _ = tx.try_send(msg(agent_msg::Msg::Heartbeat(hb)));
                }
                _ = tokio::time::sleep_until(deadline) => return Err("no final ack within 30 s".into()),
            }
        }
    }

    /// Intervals and the final leave through here, in order, each after
    /// the agent's delay (none unless slow); what was handed to gRPC is
    /// counted as sent.
    fn outbox(&self, tx: Tx) -> mpsc::UnboundedSender<Queued> {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Queued>();
        let delay = match self.sent.fault {
            Fault::Slow(d) => d,
            _ => Duration::ZERO,
        };
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                tokio::time::sleep_until((o.at + delay).into()).await;
                if me.deliver(&tx, o.item).await.is_err() {
                    return;
                }
            }
        });
        out_tx
    }

    async fn deliver(&self, tx: &Tx, item: OutItem) -> Result<(), String> {
        match item {
            OutItem::Interval(v, iv) => {
                let index = iv.index;
                self.send(tx, agent_msg::Msg::Interval(*iv)).await?;
                let now = Instant::now();
                self.sent
                    .tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)[v] += 1;
                let mut sends = self
                    .shared
                    .sends
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                sends.push((index, now));
            }
            OutItem::Final(last_seq) => {
                let fin = self.shared.pool.final_of(&self.sent.tally(), last_seq);
                self.send(tx, agent_msg::Msg::Final((*fin).clone())).await?;
            }
        }
        Ok(())
    }
}

enum OutItem {
    /// The pool entry and the interval made of it.
    Interval(usize, Box<pb::Interval>),
    /// The final totals, with the last seq sent.
    Final(u64),
}

/// An item and when it was due (its delay runs from there).
struct Queued {
    at: Instant,
    item: OutItem,
}

impl Queued {
    fn now(item: OutItem) -> Self {
        Self {
            at: Instant::now(),
            item,
        }
    }
}

/// Every difference between summary.json and what the fakes sent.
pub fn exactness(fleet: &Fleet, s: &Summary) -> Vec<String> {
    let pool = &fleet.shared.pool;
    let tallies: Vec<Vec<u64>> = fleet.agents.iter().map(|a| a.tally()).collect();
    let mut all = vec![0; pool.entries.len()];
    for t in &tallies {
        all.iter_mut().zip(t).for_each(|(a, b)| *a += b);
    }
    let (set, c) = pool.totals(&all);
    let mut problems = Vec::new();
    for m in Metric::ALL {
        let want = Distribution::of(m, set.get(m));
        if s.metrics.get(m.name()) != Some(&want) {
            problems.push(format!(
                "{m}: summary {:?} != sent {want:?}",
                s.metrics.get(m.name())
            ));
        }
    }
    let pairs = [
        ("requests_ok", s.requests_ok, c.requests_ok),
        ("requests_failed", s.requests_failed, c.requests_failed),
        ("input_tokens", s.input_tokens, c.input_tokens),
        ("output_tokens", s.output_tokens, c.output_tokens),
    ];
    for (name, got, want) in pairs {
        if got != want {
            problems.push(format!("{name}: summary {got} != sent {want}"));
        }
    }
    for e in ErrorClass::ALL {
        let got = s.errors.get(e.name()).copied().unwrap_or(0);
        if got != c.error(e) {
            problems.push(format!(
                "errors.{}: summary {got} != sent {}",
                e.name(),
                c.error(e)
            ));
        }
    }
    problems.extend(per_agent(pool, fleet, &tallies, s));
    problems
}

/// Each agent's count, loss and final check.
fn per_agent(pool: &Pool, fleet: &Fleet, tallies: &[Vec<u64>], s: &Summary) -> Vec<String> {
    let mut problems = Vec::new();
    for ((addr, sent), tally) in fleet.addrs.iter().zip(&fleet.agents).zip(tallies) {
        let Some(r) = s.agents.iter().find(|r| r.addr == addr.to_string()) else {
            problems.push(format!("{addr}: not in the summary"));
            continue;
        };
        let ok: u64 = pool
            .entries
            .iter()
            .zip(tally)
            .map(|(e, n)| e.counters.requests_ok * n)
            .sum();
        if r.requests_ok != ok {
            problems.push(format!(
                "{addr}: requests_ok {} != sent {ok}",
                r.requests_ok
            ));
        }
        let should_be_lost = matches!(sent.fault, Fault::Lose(_));
        if r.lost.is_some() != should_be_lost {
            problems.push(format!("{addr}: lost = {:?} ({:?})", r.lost, sent.fault));
        }
        if let Some(m) = &r.totals_mismatch {
            problems.push(format!("{addr}: final totals mismatch: {m}"));
        }
    }
    problems
}
