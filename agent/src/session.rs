//! One run on one agent, as seen from the agent: the phases of the session
//! stream (hello → prepare → start → running → final) and the safety rules
//! that stop load without the controller (lease expiry, stream loss, hard
//! deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use barrage_common::metrics::{Counters, Layout, Layouts, MetricSet};
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::client::{ClientError, TargetClient};
use crate::conversation::{Conversations, Think, TurnCounter};
use crate::engine::{self, Arrivals, Shape, SliceSpec, Workload};
use crate::health::{LagProbe, ProcessSampler, health};
use crate::profile::Profile;
use crate::recorder::Recorder;
use crate::resume::{Conn, Resumed, Tx, Unacked};
use crate::service::{HELLO_TIMEOUT, Inner, clock_reply, hello_ack, kind, msg, start_instants};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("prepare: {0}")]
    Prepare(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the controller stream ended: {0}")]
    Stream(String),
    #[error("metrics: {0}")]
    Metrics(#[from] barrage_common::metrics::MetricError),
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Protocol(_) => "protocol",
            SessionError::Prepare(_) | SessionError::Client(_) => "prepare",
            SessionError::Stream(_) => "stream",
            SessionError::Metrics(_) => "metrics",
        }
    }
}

async fn send(tx: &Tx, m: agent_msg::Msg) -> Result<(), SessionError> {
    tx.send(Ok(msg(m)))
        .await
        .map_err(|_| SessionError::Stream("controller went away".into()))
}

async fn next(
    inbound: &mut Streaming<pb::ControllerMsg>,
) -> Result<Option<controller_msg::Msg>, SessionError> {
    match inbound.message().await {
        Ok(Some(m)) => Ok(m.msg),
        Ok(None) => Err(SessionError::Stream("closed".into())),
        Err(s) => Err(SessionError::Stream(s.message().to_owned())),
    }
}

/// How a running step's stream ended.
enum StreamEnd {
    /// The controller closed or cancelled its stream: it is done with us.
    Closed,
    /// The connection broke (partition, crash): it may resume within the lease.
    Broken(String),
}

async fn next_in_step(
    inbound: &mut Streaming<pb::ControllerMsg>,
) -> Result<Option<controller_msg::Msg>, StreamEnd> {
    match inbound.message().await {
        Ok(Some(m)) => Ok(m.msg),
        Ok(None) => Err(StreamEnd::Closed),
        Err(s) if s.code() == tonic::Code::Cancelled => Err(StreamEnd::Closed),
        Err(s) => Err(StreamEnd::Broken(s.message().to_owned())),
    }
}

/// A prepared step: everything needed to start on the go signal.
struct Prepared {
    prepare: pb::Prepare,
    work: Arc<Workload>,
    slice: SliceSpec,
    layouts: Layouts,
}

pub(crate) async fn run_session(inner: Arc<Inner>, conn: &mut Conn) -> Result<(), SessionError> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next(&mut conn.inbound)).await {
        Ok(Ok(Some(controller_msg::Msg::Hello(h)))) => h,
        Ok(Ok(other)) => {
            return Err(SessionError::Protocol(format!(
                "expected hello first, got {}",
                other.as_ref().map_or("nothing", kind)
            )));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(SessionError::Protocol("no hello within 30 s".into())),
    };
    if hello.resume {
        return Err(SessionError::Protocol(format!(
            "nothing to resume: run {} is not running on this agent",
            hello.run_id
        )));
    }
    inner.set_run_id(&hello.run_id);
    tracing::info!(run_id = %hello.run_id, controller = %hello.controller_id, "session opened");
    let tx = conn.tx.clone();
    send(&tx, agent_msg::Msg::Hello(hello_ack(&inner, &hello)?)).await?;

    let mut pending: Option<pb::Prepare> = None;
    let mut prompts: Vec<pb::Prompt> = Vec::new();
    let mut prepared: Option<Prepared> = None;
    loop {
        let m = tokio::select! {
            m = next(&mut conn.inbound) => m?,
            _ = inner.shutdown.cancelled() => return Err(SessionError::Stream("agent shutting down".into())),
        };
        match m {
            Some(controller_msg::Msg::Probe(p)) => {
                send(&tx, agent_msg::Msg::Probe(clock_reply(&p))).await?
            }
            Some(controller_msg::Msg::Prepare(p)) => {
                prompts.clear();
                prepared = None;
                if p.dataset_len == 0 {
                    return Err(SessionError::Prepare("dataset is empty".into()));
                }
                pending = Some(p);
            }
            Some(controller_msg::Msg::Data(chunk)) => {
                let Some(p) = pending.as_ref() else {
                    return Err(SessionError::Protocol("dataset before prepare".into()));
                };
                prompts.extend(chunk.prompts);
                if prompts.len() as u64 >= p.dataset_len {
                    let Some(p) = pending.take() else { continue };
                    let ready = prepare(&inner, p, std::mem::take(&mut prompts))?;
                    send(
                        &tx,
                        agent_msg::Msg::Ready(pb::Ready {
                            plan_sha256: ready.prepare.plan_sha256.clone(),
                            prompts: ready.work.prompts.len() as u64,
                        }),
                    )
                    .await?;
                    prepared = Some(ready);
                }
            }
            Some(controller_msg::Msg::Start(s)) => {
                let Some(p) = prepared.take() else {
                    return Err(SessionError::Protocol(
                        "start before the step was prepared".into(),
                    ));
                };
                let (agreed, start) = start_instants(&s);
                return run_step(&inner, p, [agreed, start], conn).await;
            }
            Some(controller_msg::Msg::Stop(_)) => return Ok(()),
            Some(controller_msg::Msg::Heartbeat(_) | controller_msg::Msg::FinalAck(_)) | None => {}
            Some(controller_msg::Msg::Hello(_)) => {
                return Err(SessionError::Protocol("second hello".into()));
            }
        }
    }
}

fn prepare(
    inner: &Inner,
    p: pb::Prepare,
    prompts: Vec<pb::Prompt>,
) -> Result<Prepared, SessionError> {
    let slice = p.slice.clone().unwrap_or_default();
    let max = inner.options.max_users;
    if max > 0 && slice.user_indexes.len() as u64 > max {
        return Err(SessionError::Prepare(format!(
            "slice has {} users, this agent accepts at most {max}",
            slice.user_indexes.len()
        )));
    }
    let target = p
        .target
        .clone()
        .ok_or_else(|| SessionError::Prepare("no target".into()))?;
    let params = p.request.clone().unwrap_or_default();
    let pinned = inner
        .options
        .allow_targets
        .check(&target.url)
        .map_err(|e| SessionError::Prepare(e.to_string()))?;
    let shape = shape_of(&slice)?;
    // The pool must carry every request this slice can have in flight.
    let concurrency = match &shape {
        Shape::Closed { users, .. } => users.len(),
        Shape::Open {
            max_concurrency: Some(n),
            ..
        } => usize::try_from(*n).unwrap_or(usize::MAX),
        Shape::Open { .. } => 1024,
    };
    let client = TargetClient::new(&target, concurrency, pinned)?;
    // Multi-turn: bodies are built per turn; one per conversation is still
    // built here, so a body the client refuses fails the prepare.
    let bodies = prompts
        .iter()
        .map(|pr| client.prepare(pr, &params))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = |l: Option<&pb::HistogramLayout>, d: Layout| l.map_or(d, Layout::from_proto);
    let layouts = Layouts {
        latency: layout(p.latency_layout.as_ref(), Layout::LATENCY_US),
        tokens: layout(p.count_layout.as_ref(), Layout::TOKENS),
    };
    let shards = Recorder::shards_for(inner.options.load_threads);
    let recorder = Arc::new(Recorder::new(layouts, shards)?);
    let spec = SliceSpec {
        shape,
        max_requests: slice.max_requests,
        max_conversations: slice.max_conversations,
        duration: (slice.duration_ms > 0).then(|| Duration::from_millis(slice.duration_ms)),
        drain: Duration::from_millis(p.drain_ms),
        seed: p.seed,
    };
    let mut work = Workload::new(client, bodies, recorder, p.seed, spec.max_requests);
    work.slo = p.slo.unwrap_or_default();
    work.warmup_intervals = p.warmup_intervals;
    work.records = crate::records::Records::new(p.records.as_ref(), &prompts);
    if !p.tokenizer_json.is_empty() {
        let tok = tokenizers::Tokenizer::from_bytes(&p.tokenizer_json)
            .map_err(|e| SessionError::Prepare(format!("dataset.tokenizer: {e}")))?;
        work.tokenizer = Some(Arc::new(tok));
    }
    if let Some(c) = &p.conversation {
        work.conversations = Some(conversations(c, &work, prompts, &params, &spec, layouts)?);
    }
    let work = Arc::new(work);
    tracing::info!(
        run_id = %p.run_id, step = p.step, users = slice.user_indexes.len(),
        target = %barrage_common::redact::redact_url(&target.url), "step prepared"
    );
    Ok(Prepared {
        prepare: p,
        work,
        slice: spec,
        layouts,
    })
}

/// Multi-turn replay of the step's conversations.
fn conversations(
    c: &pb::Conversation,
    work: &Workload,
    prompts: Vec<pb::Prompt>,
    params: &pb::RequestParams,
    spec: &SliceSpec,
    layouts: Layouts,
) -> Result<Conversations, SessionError> {
    let think = Think {
        mean: Duration::from_micros(c.think_time_us),
        distribution: c.distribution(),
    };
    let mut convs = Conversations::new(
        prompts,
        params.clone(),
        think,
        spec.max_conversations,
        spec.seed,
        layouts,
    );
    if let (Some(tok), Some(counting)) = (&work.tokenizer, &c.counting) {
        convs.counter = Some(
            TurnCounter::new(tok.clone(), counting)
                .map_err(|e| SessionError::Prepare(e.to_string()))?,
        );
    }
    Ok(convs)
}

/// The engine's view of a wire slice.
fn shape_of(slice: &pb::Slice) -> Result<Shape, SessionError> {
    let profile = (!slice.stages.is_empty()).then(|| {
        Profile::stages(
            &slice
                .stages
                .iter()
                .map(|s| (Duration::from_millis(s.duration_ms), s.target))
                .collect::<Vec<_>>(),
        )
    });
    match pb::LoadModel::try_from(slice.model) {
        Ok(pb::LoadModel::ClosedLoop) => Ok(Shape::Closed {
            users: slice.user_indexes.clone(),
            spawn_rate: (slice.spawn_rate > 0.0).then_some(slice.spawn_rate),
            profile,
        }),
        Ok(pb::LoadModel::OpenLoop) => {
            let rate = if slice.rate_infinite {
                None
            } else if let Some(p) = profile {
                Some(p)
            } else if slice.rate.is_finite() && slice.rate >= 0.0 {
                Some(Profile::constant(slice.rate))
            } else {
                return Err(SessionError::Prepare(format!(
                    "rate {} is not a rate",
                    slice.rate
                )));
            };
            let arrivals = match pb::Arrival::try_from(slice.arrival) {
                Ok(pb::Arrival::Constant) => Arrivals::Constant,
                Ok(pb::Arrival::Gamma) if slice.burstiness > 0.0 => {
                    Arrivals::Gamma(slice.burstiness)
                }
                Ok(pb::Arrival::Gamma) => {
                    return Err(SessionError::Prepare(
                        "gamma arrivals need burstiness > 0".into(),
                    ));
                }
                _ => Arrivals::Poisson,
            };
            Ok(Shape::Open {
                rate,
                arrivals,
                max_concurrency: slice.max_concurrency,
                phase: slice.phase,
                offsets: (!slice.arrival_offsets_s.is_empty())
                    .then(|| slice.arrival_offsets_s.clone()),
            })
        }
        Err(_) => Err(SessionError::Prepare(format!(
            "unknown load model {}",
            slice.model
        ))),
    }
}

/// Running totals and the interval sequence of one step.
struct Intervals {
    seq: u64,
    totals: MetricSet,
    total_counters: Counters,
    sent: u64,
    /// Kept until the controller acknowledges them, resent after a resume.
    unacked: Unacked,
    /// Per-request records sent (or kept to resend) and dropped since the
    /// last cut: counted in the next interval.
    records_sent: u64,
    records_dropped: u64,
}

/// Longest wait for room on the stream: a controller that does not read
/// gets the interval on resume (it is kept), and the lease decides.
const SEND_WAIT: Duration = Duration::from_secs(2);

impl Intervals {
    /// Cuts interval `index`, keeps it until acknowledged, and sends it
    /// when a controller is attached.
    async fn cut(
        &mut self,
        index: u64,
        work: &Workload,
        health: pb::GeneratorHealth,
        tx: Option<&Tx>,
    ) -> Result<(), SessionError> {
        let (metrics, mut counters) = work.recorder.cut()?;
        let turns = match &work.conversations {
            // Every shard now records into the next interval.
            Some(c) => c
                .cut(work.recorder.with_shard(0, |s| s.interval))?
                .encode()?,
            None => Vec::new(),
        };
        // After the cut: every record of this interval goes before it.
        self.flush_records(work, tx).await;
        counters.records_sent += std::mem::take(&mut self.records_sent);
        counters.records_dropped += std::mem::take(&mut self.records_dropped);
        self.totals.add(&metrics)?;
        self.total_counters.add(&counters);
        self.seq += 1;
        self.sent += 1;
        let interval = pb::Interval {
            seq: self.seq,
            index,
            metrics: metrics.encode()?,
            counters: Some(counters.to_proto()),
            health: Some(health),
            turns,
        };
        self.unacked.keep(interval.clone());
        if let Some(tx) = tx {
            let sending = tx.send(Ok(msg(agent_msg::Msg::Interval(interval))));
            let _ = tokio::time::timeout(SEND_WAIT, sending).await;
        }
        Ok(())
    }

    /// Sends the records waiting in the shards, in batches, and keeps each
    /// batch with the interval that follows it, for a resend after a resume.
    /// Without a controller attached they are only kept (sent on resume).
    async fn flush_records(&mut self, work: &Workload, tx: Option<&Tx>) {
        let Some(records) = &work.records else {
            return;
        };
        let taken = work.recorder.take_records();
        if taken.is_empty() {
            return;
        }
        for (batch, bytes) in records.batches(taken) {
            let n = batch.records.len() as u64;
            let Some(tx) = tx else {
                self.keep_or_drop(batch, bytes, n);
                continue;
            };
            let sending = tx.send(Ok(msg(agent_msg::Msg::Requests(batch.clone()))));
            match tokio::time::timeout(SEND_WAIT, sending).await {
                Ok(Ok(())) => {
                    self.records_sent += n;
                    // Sent: kept if there is room (a resend is then possible).
                    let _ = self.unacked.keep_batch(batch, bytes);
                }
                // The stream is gone: kept for the controller's resume.
                Ok(Err(_)) => self.keep_or_drop(batch, bytes, n),
                // The controller does not read: it could not be told apart
                // from a batch that arrived, so it is not resent.
                Err(_) => self.records_dropped += n,
            }
        }
    }

    fn keep_or_drop(&mut self, batch: pb::RequestBatch, bytes: usize, n: u64) {
        if self.unacked.keep_batch(batch, bytes) {
            self.records_sent += n;
        } else {
            self.records_dropped += n;
        }
    }

    /// Takes over a resumed controller's stream: hello, then every interval
    /// it does not have yet, each after the request batches sent before it.
    async fn take_over(
        &mut self,
        inner: &Inner,
        conn: &mut Conn,
        r: Resumed,
    ) -> Result<(), SessionError> {
        *conn = r.conn;
        send(&conn.tx, agent_msg::Msg::Hello(hello_ack(inner, &r.hello)?)).await?;
        self.unacked.ack(r.hello.acked_through_seq);
        for m in self.unacked.messages() {
            send(&conn.tx, m).await?;
        }
        tracing::info!(
            resent = self.unacked.intervals(),
            "resumed: unacknowledged intervals resent"
        );
        Ok(())
    }
}

/// Resolves when enough per-request records wait for an early batch; never
/// with records off.
async fn records_full(work: &Workload) {
    match &work.records {
        Some(r) => r.full().await,
        None => std::future::pending().await,
    }
}

/// At the end of a step whose controller connection broke: waits (until the
/// lease ends) for the controller to resume, so it still gets the totals.
async fn await_resume(resumes: &mut mpsc::Receiver<Resumed>, until: Instant) -> Option<Resumed> {
    tokio::time::timeout_at(until.into(), resumes.recv())
        .await
        .ok()
        .flatten()
}

/// `[agreed, start]`: the agreed start and the real one (later when the
/// `Start` arrived late).
async fn run_step(
    inner: &Inner,
    p: Prepared,
    [agreed, start]: [Instant; 2],
    conn: &mut Conn,
) -> Result<(), SessionError> {
    let Some(rt) = inner.runtime.handle() else {
        return Err(SessionError::Prepare("load runtime is gone".into()));
    };
    let interval = Duration::from_millis(p.prepare.interval_ms.max(100));
    let lease = Duration::from_millis(p.prepare.lease_ms.max(1000));
    let hard_deadline = (p.prepare.hard_deadline_ms > 0)
        .then(|| start + Duration::from_millis(p.prepare.hard_deadline_ms));
    if let Some(r) = &p.work.records {
        r.set_origin(agreed);
    }
    let stop = CancellationToken::new();
    let lag = Arc::new(LagProbe::default());
    {
        let _enter = rt.enter();
        lag.start(stop.clone());
    }
    let mut engine = rt.spawn(engine::run(
        p.work.clone(),
        p.slice.clone(),
        start,
        stop.clone(),
    ));
    let (mut resumes, _door) = inner.resume.open(&p.prepare.run_id);

    tokio::time::sleep_until(start.into()).await;
    let late = Instant::now().saturating_duration_since(agreed);
    send(
        &conn.tx,
        agent_msg::Msg::Started(pb::Started {
            actual_start_agent_mono_ns: barrage_common::clock::mono_now_ns(),
            late_by_ns: i64::try_from(late.as_nanos()).unwrap_or(i64::MAX),
        }),
    )
    .await?;

    let mut sampler = ProcessSampler::default();
    sampler.sample();
    let mut iv = Intervals {
        seq: 0,
        totals: MetricSet::new(p.layouts)?,
        total_counters: Counters::default(),
        sent: 0,
        unacked: Unacked::default(),
        records_sent: 0,
        records_dropped: 0,
    };
    let mut index = 0u64;
    let mut lease_until = Instant::now() + lease;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    // Closed on purpose by the controller: no resume, the load stops now.
    let mut controller_gone = false;
    // False while the connection is broken and the controller may resume.
    let mut attached = true;
    let mut stopped_by: Option<pb::StopReason> = None;
    let reason = loop {
        let boundary = start + interval * (index as u32 + 1);
        let watchdog = hard_deadline.map_or(lease_until, |d| d.min(lease_until));
        tokio::select! {
            // A heartbeat that has arrived renews the lease before the
            // watchdog judges it: a loop held up (a slow send, a busy
            // machine) must not read a late message as a missing one.
            biased;
            r = &mut engine => break r.unwrap_or(pb::StopReason::Shutdown),
            m = next_in_step(&mut conn.inbound), if attached && !controller_gone => match m {
                Ok(Some(controller_msg::Msg::Heartbeat(h))) => {
                    lease_until = Instant::now() + Duration::from_millis(h.lease_extend_ms.max(1000));
                    iv.unacked.ack(h.acked_through_seq);
                }
                Ok(Some(controller_msg::Msg::Stop(s))) => {
                    tracing::info!(reason = %s.reason, "stop from controller");
                    stopped_by.get_or_insert(pb::StopReason::Controller);
                    stop.cancel();
                }
                Ok(Some(controller_msg::Msg::Probe(pr))) => send(&conn.tx, agent_msg::Msg::Probe(clock_reply(&pr))).await?,
                Ok(_) => {}
                Err(StreamEnd::Closed) => {
                    // Dead-man switch: no controller, no load.
                    tracing::warn!("controller closed the stream: stopping load");
                    controller_gone = true;
                    stopped_by.get_or_insert(pb::StopReason::LeaseExpired);
                    stop.cancel();
                }
                Err(StreamEnd::Broken(e)) => {
                    // The lease still stops the load if it does not come back.
                    tracing::warn!(error = %e, "controller connection lost: load goes on until the lease ends unless it resumes");
                    attached = false;
                }
            },
            Some(r) = resumes.recv(), if !controller_gone => {
                attached = iv.take_over(inner, conn, r).await.is_ok();
                // The resumed controller renews the lease from its next heartbeat.
                lease_until = lease_until.max(Instant::now() + lease);
            }
            _ = inner.shutdown.cancelled(), if stopped_by.is_none() => {
                tracing::info!("agent shutting down: stopping load");
                stopped_by = Some(pb::StopReason::Shutdown);
                stop.cancel();
            }
            _ = tokio::time::sleep_until(watchdog.into()), if stopped_by.is_none() => {
                let why = if Instant::now() >= lease_until { pb::StopReason::LeaseExpired } else { pb::StopReason::HardDeadline };
                tracing::warn!(reason = ?why, "stopping load without the controller");
                stopped_by = Some(why);
                stop.cancel();
            }
            _ = heartbeat.tick(), if attached => {
                let hb = pb::AgentHeartbeat {
                    seq: iv.seq,
                    state: pb::AgentState::Running as i32,
                    last_interval_seq: iv.seq,
                    health: None,
                };
                // A full channel means the controller is not reading: the lease decides.
                let _ = conn.tx.try_send(Ok(msg(agent_msg::Msg::Heartbeat(hb))));
            }
            _ = records_full(&p.work) => {
                iv.flush_records(&p.work, attached.then_some(&conn.tx)).await;
            }
            _ = tokio::time::sleep_until(boundary.into()) => {
                let h = health(&mut sampler, &lag, p.work.in_flight());
                iv.cut(index, &p.work, h, attached.then_some(&conn.tx)).await?;
                index += 1;
            }
        }
    };
    stop.cancel();
    let reason = stopped_by.unwrap_or(reason);
    let h = health(&mut sampler, &lag, 0);
    iv.cut(index, &p.work, h, attached.then_some(&conn.tx))
        .await?;
    if !attached && !controller_gone {
        attached = match await_resume(&mut resumes, lease_until).await {
            Some(r) => iv.take_over(inner, conn, r).await.is_ok(),
            None => false,
        };
    }
    if controller_gone || !attached {
        return Err(SessionError::Stream(
            "controller lost during the run".into(),
        ));
    }
    finish_step(conn, &iv, reason, p.work.last_arrival_us()).await
}

/// Sends the step's totals and waits (bounded) for the controller's ack.
async fn finish_step(
    conn: &mut Conn,
    iv: &Intervals,
    reason: pb::StopReason,
    last_arrival_us: Option<u64>,
) -> Result<(), SessionError> {
    let fin = pb::Final {
        last_seq: iv.seq,
        intervals: iv.sent,
        metrics: iv.totals.encode()?,
        counters: Some(iv.total_counters.to_proto()),
        reason: reason as i32,
        last_arrival_us,
    };
    send(&conn.tx, agent_msg::Msg::Final(fin)).await?;
    // Wait (bounded) for the ack so the controller surely has the totals.
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match next(&mut conn.inbound).await {
                Ok(Some(controller_msg::Msg::FinalAck(_))) => return true,
                Ok(Some(controller_msg::Msg::Probe(pr))) => {
                    let _ = send(&conn.tx, agent_msg::Msg::Probe(clock_reply(&pr))).await;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    tracing::info!(acked = matches!(acked, Ok(true)), reason = ?reason, "step finished");
    Ok(())
}
