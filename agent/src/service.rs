//! The gRPC `Agent` service: one `Session` stream per run (hello, clock
//! probes, prepare + dataset, start barrier, interval deltas, heartbeats and
//! lease, final totals). The session runs on the gRPC runtime; the load runs
//! on the agent's own load runtime so a saturated load cannot starve the
//! control path.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use barrage_common::clock::{instant_at, mono_now_ns};
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use barrage_proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::resume::{Conn, ResumeDoor};
use crate::session::{SessionError, run_session};

/// How an agent presents itself and how much it accepts.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub agent_id: String,
    /// Most users this agent accepts in one slice (0 = no limit).
    pub max_users: u64,
    /// Worker threads of the load runtime.
    pub load_threads: usize,
    /// Targets this agent may send to (empty: any). A stolen token then
    /// cannot aim the agent at arbitrary hosts.
    pub allow_targets: crate::allow::AllowList,
}

impl Default for AgentOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            agent_id: format!("agent-{:08x}", rand::random::<u32>()),
            max_users: 0,
            load_threads: cores,
            allow_targets: crate::allow::AllowList::default(),
        }
    }
}

/// A runtime that may be dropped from async code (tokio forbids dropping a
/// runtime inside another one; `shutdown_background` is always allowed).
pub(crate) struct LoadRuntime(Option<tokio::runtime::Runtime>);

impl LoadRuntime {
    pub(crate) fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(|r| r.handle())
    }
}

impl Drop for LoadRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) options: AgentOptions,
    pub(crate) runtime: LoadRuntime,
    /// Run id of the session in progress, if any.
    busy: Mutex<Option<String>>,
    /// Cancelled on SIGTERM: a running step stops and flushes its final totals.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Open while a step runs: a controller whose connection dropped resumes here.
    pub(crate) resume: ResumeDoor,
}

impl Inner {
    pub(crate) fn capacity(&self) -> pb::Capacity {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        pb::Capacity {
            cores,
            max_users: self.options.max_users,
            weight: self.options.load_threads.max(1) as f64,
        }
    }

    pub(crate) fn set_run_id(&self, run_id: &str) {
        *self.busy.lock().unwrap_or_else(PoisonError::into_inner) = Some(run_id.to_owned());
    }
}

#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

/// Releases the agent for the next session when a session ends, however it ends.
struct BusyGuard(Arc<Inner>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl AgentService {
    pub fn new(options: AgentOptions) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.load_threads.max(1))
            .thread_name(format!("{}-load", options.agent_id))
            .on_thread_park(crate::pacing::before_park)
            .enable_all()
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                runtime: LoadRuntime(Some(runtime)),
                busy: Mutex::new(None),
                shutdown: tokio_util::sync::CancellationToken::new(),
                resume: ResumeDoor::default(),
            }),
        })
    }

    /// Cancel to stop a running step (load stops, the last delta and the
    /// final totals are still sent) before the server shuts down.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.inner.shutdown.clone()
    }

    /// True while a session is open (tests, health).
    pub fn is_busy(&self) -> bool {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub fn agent_id(&self) -> &str {
        &self.inner.options.agent_id
    }

    fn try_claim(&self) -> Result<BusyGuard, Status> {
        let mut busy = self
            .inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = busy.as_ref() {
            let run = if run.is_empty() { "(starting)" } else { run };
            return Err(Status::failed_precondition(format!(
                "agent {} is busy with run {run}",
                self.inner.options.agent_id
            )));
        }
        *busy = Some(String::new());
        Ok(BusyGuard(self.inner.clone()))
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::AgentMsg, Status>> + Send>>;

pub(crate) fn msg(m: agent_msg::Msg) -> pb::AgentMsg {
    pb::AgentMsg { msg: Some(m) }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ControllerMsg>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let claimed = self.try_claim();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let mut conn = Conn { inbound, tx };
        let guard = match claimed {
            Ok(g) => g,
            Err(busy) => {
                // Busy: unless this is the running run's controller coming back.
                self.inner.resume.hand_over(conn, busy).await?;
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = run_session(inner, &mut conn).await {
                let code = e.code().to_owned();
                // The latest stream: a resumed session answers on its own.
                let delivered = conn
                    .tx
                    .send(Ok(msg(agent_msg::Msg::Error(pb::AgentError {
                        code,
                        message: e.to_string(),
                        fatal: true,
                    }))))
                    .await
                    .is_ok();
                // The controller prints what it was told (embedded agents
                // share its stderr): warn only about what it never heard.
                if delivered {
                    tracing::info!(error = %e, "session ended with an error (told the controller)");
                } else {
                    tracing::warn!(error = %e, "session ended with an error");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let run = self
            .inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Response::new(pb::HealthResponse {
            state: if run.is_some() {
                pb::AgentState::Running
            } else {
                pb::AgentState::Idle
            } as i32,
            run_id: run.unwrap_or_default(),
            agent_id: self.inner.options.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: Some(self.inner.capacity()),
        }))
    }
}

/// The hello exchange, shared by the session: checks the protocol version.
pub(crate) fn hello_ack(inner: &Inner, hello: &pb::Hello) -> Result<pb::HelloAck, SessionError> {
    if hello.protocol_major != PROTOCOL_MAJOR {
        return Err(SessionError::Protocol(format!(
            "controller speaks protocol {}.{}, this agent {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            hello.protocol_major, hello.protocol_minor
        )));
    }
    Ok(pb::HelloAck {
        agent_id: inner.options.agent_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_major: PROTOCOL_MAJOR,
        protocol_minor: PROTOCOL_MINOR,
        capacity: Some(inner.capacity()),
    })
}

pub(crate) fn clock_reply(p: &pb::ClockProbe) -> pb::ClockReply {
    pb::ClockReply {
        seq: p.seq,
        controller_mono_ns: p.controller_mono_ns,
        agent_mono_ns: mono_now_ns(),
    }
}

/// The agreed start as an `Instant` of this process (0: now), and when the
/// step really starts: the agreed instant, or now when the `Start` came too
/// late (the lateness is then reported against the agreed instant).
pub(crate) fn start_instants(start: &pb::Start) -> (Instant, Instant) {
    let now = Instant::now();
    let agreed = match start.start_at_agent_mono_ns {
        0 => now,
        ns => instant_at(ns),
    };
    (agreed, agreed.max(now))
}

pub(crate) fn kind(m: &controller_msg::Msg) -> &'static str {
    match m {
        controller_msg::Msg::Hello(_) => "hello",
        controller_msg::Msg::Probe(_) => "probe",
        controller_msg::Msg::Prepare(_) => "prepare",
        controller_msg::Msg::Data(_) => "data",
        controller_msg::Msg::Start(_) => "start",
        controller_msg::Msg::Heartbeat(_) => "heartbeat",
        controller_msg::Msg::Stop(_) => "stop",
        controller_msg::Msg::FinalAck(_) => "final_ack",
    }
}

pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
