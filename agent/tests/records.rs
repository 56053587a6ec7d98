//! Per-request records through a real session: an `agent` process, a raw
//! session client playing the controller, llm-sim over real HTTP on
//! loopback. Every request that ends gives one record, sent before the
//! interval it ended in, and the Final's counters say how many were sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use barrage_controller::events::{Consumer, OutputError, RunEvent};
use barrage_controller::run::execute_with;
use barrage_llm_sim::SimServer;
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::support::{
    AgentProcess, LOAD, RawClient, TEST_LIMIT, cluster_plan, cmsg, finish, opts, plan_from,
    raw_client, sim_toml,
};

const TOKEN: &str = "records-token";
const PROMPTS: [&str; 3] = ["alpha one", "bravo two words", "charlie"];

/// A step for `users` closed-loop users against `sim`, `max_tokens` each.
fn prepare(sim: &SimServer, users: u64, records: Option<pb::RecordOptions>) -> pb::Prepare {
    pb::Prepare {
        run_id: "records".into(),
        slice: Some(pb::Slice {
            user_indexes: (0..users).collect(),
            ..pb::Slice::default()
        }),
        target: Some(pb::Target {
            url: format!("http://{}/v1/chat/completions", sim.addr()),
            api: pb::Api::OpenaiChat as i32,
            stream: true,
            include_usage: true,
            timeout_ms: 30_000,
            ..pb::Target::default()
        }),
        request: Some(pb::RequestParams {
            max_tokens: 6,
            ..pb::RequestParams::default()
        }),
        interval_ms: 1000,
        lease_ms: 5000,
        dataset_len: PROMPTS.len() as u64,
        records,
        ..pb::Prepare::default()
    }
}

fn on(save_text: u64) -> Option<pb::RecordOptions> {
    Some(pb::RecordOptions {
        enabled: true,
        save_text,
    })
}

/// A started session: our half of the stream and the agent's answers.
struct Session {
    tx: mpsc::Sender<pb::ControllerMsg>,
    rx: tonic::Streaming<pb::AgentMsg>,
    _heartbeats: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn start(agent: &AgentProcess, prepare: pb::Prepare) -> Self {
        let client = raw_client(agent, TOKEN).await;
        Self::open(client, prepare, Arc::default()).await
    }

    /// A session through `client`; heartbeats ack the interval in `acked`.
    async fn open(mut client: RawClient, prepare: pb::Prepare, acked: Arc<AtomicU64>) -> Self {
        let (tx, out) = mpsc::channel(16);
        for m in [
            controller_msg::Msg::Hello(pb::Hello {
                protocol_major: barrage_proto::PROTOCOL_MAJOR,
                controller_id: "records-test".into(),
                run_id: "records".into(),
                ..pb::Hello::default()
            }),
            controller_msg::Msg::Prepare(prepare),
            controller_msg::Msg::Data(pb::DatasetChunk {
                prompts: PROMPTS
                    .iter()
                    .map(|p| pb::Prompt {
                        messages: vec![pb::ChatMessage {
                            role: "user".into(),
                            content: (*p).into(),
                        }],
                        ..pb::Prompt::default()
                    })
                    .collect(),
            }),
        ] {
            tx.send(cmsg(m)).await.expect("send");
        }
        let mut rx = client
            .session(ReceiverStream::new(out))
            .await
            .expect("session")
            .into_inner();
        loop {
            match next(&mut rx).await {
                agent_msg::Msg::Ready(_) => break,
                agent_msg::Msg::Error(e) => panic!("agent error: {}", e.message),
                _ => {}
            }
        }
        tx.send(cmsg(controller_msg::Msg::Start(pb::Start {
            start_at_agent_mono_ns: 0,
        })))
        .await
        .expect("start");
        let heartbeats = heartbeats(tx.clone(), acked);
        Self {
            tx,
            rx,
            _heartbeats: heartbeats,
        }
    }

    /// Everything up to and with the Final, which is acknowledged.
    async fn until_final(&mut self) -> Vec<agent_msg::Msg> {
        let mut out = Vec::new();
        loop {
            let m = next(&mut self.rx).await;
            if let agent_msg::Msg::Error(e) = &m {
                panic!("agent error: {}", e.message);
            }
            let done = matches!(m, agent_msg::Msg::Final(_));
            out.push(m);
            if done {
                let _ = self
                    .tx
                    .send(cmsg(controller_msg::Msg::FinalAck(pb::FinalAck {})))
                    .await;
                return out;
            }
        }
    }
}

/// Renews the lease as a controller does, acking the interval in `acked`.
fn heartbeats(
    tx: mpsc::Sender<pb::ControllerMsg>,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for seq in 1.. {
            let beat = pb::ControllerHeartbeat {
                seq,
                lease_extend_ms: 5000,
                acked_through_seq: acked.load(Ordering::SeqCst),
            };
            if tx
                .send(cmsg(controller_msg::Msg::Heartbeat(beat)))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Next message of the stream, bounded.
async fn next(rx: &mut tonic::Streaming<pb::AgentMsg>) -> agent_msg::Msg {
    tokio::time::timeout(TEST_LIMIT, rx.message())
        .await
        .expect("bounded")
        .expect("stream")
        .and_then(|m| m.msg)
        .expect("a message")
}

/// What a step's messages hold: records, batches, the Final's counters.
struct Step {
    records: Vec<pb::RequestRecord>,
    batches: usize,
    fin: pb::Counters,
}

/// Checks that the records of every interval came before it, and gathers
/// the records.
fn step(msgs: Vec<agent_msg::Msg>) -> Step {
    let (mut records, mut batches, mut ended) = (Vec::new(), 0, 0u64);
    let mut fin = None;
    for m in msgs {
        match m {
            agent_msg::Msg::Requests(b) => {
                assert!(!b.records.is_empty(), "no empty batch");
                batches += 1;
                records.extend(b.records);
            }
            agent_msg::Msg::Interval(i) => {
                let c = i.counters.unwrap_or_default();
                ended += c.requests_ok + c.requests_failed + c.requests_incomplete;
                assert!(
                    records.len() as u64 >= ended,
                    "interval {}: {} records for {ended} ended requests",
                    i.index,
                    records.len()
                );
            }
            agent_msg::Msg::Final(f) => fin = f.counters,
            _ => {}
        }
    }
    let fin = fin.expect("a final");
    let ended = fin.requests_ok + fin.requests_failed + fin.requests_incomplete;
    assert_eq!(records.len() as u64, ended, "one record per ended request");
    assert_eq!(fin.records_sent, ended, "records_sent counts them");
    assert_eq!(fin.records_dropped, 0);
    let mut seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..ended).collect::<Vec<_>>(), "seqs 0..n, once each");
    Step {
        records,
        batches,
        fin,
    }
}

async fn run(prepare: pb::Prepare) -> Step {
    let agent = AgentProcess::start(TOKEN, &[]);
    let mut s = Session::start(&agent, prepare).await;
    step(s.until_final().await)
}

fn outcome(r: &pb::RequestRecord) -> pb::RecordOutcome {
    pb::RecordOutcome::try_from(r.outcome).expect("known outcome")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_requests_give_records_with_their_timings_tokens_and_text() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"2ms\"").await;
    let mut p = prepare(&sim, 4, on(3));
    p.slice.as_mut().expect("slice").max_requests = Some(20);
    let s = run(p).await;
    assert_eq!(s.fin.requests_ok, 20);
    assert_eq!(s.records.len(), 20);
    for r in &s.records {
        assert_eq!(outcome(r), pb::RecordOutcome::Ok, "{r:?}");
        let (ttft, e2e) = (r.ttft_us.expect("ttft"), r.e2e_us.expect("e2e"));
        assert!(ttft <= e2e, "ttft {ttft} > e2e {e2e}");
        assert!(ttft >= 20_000, "the simulator's 20 ms ttft: {ttft}");
        assert_eq!(r.ttfo_us, r.ttft_us, "no reasoning");
        // One token per chunk: 6 output chunks, 5 gaps between them.
        assert_eq!(r.output_tokens, 6);
        assert_eq!(r.chunk_gaps_us.len(), 5);
        assert_eq!(r.output_source, pb::CountSource::Server as i32);
        assert_eq!(r.input_source, pb::CountSource::Server as i32);
        let words = PROMPTS[r.prompt_index as usize].split_whitespace().count();
        assert_eq!(r.input_tokens, words as u64, "llm-sim counts words");
        assert_eq!((r.http_status, r.error_class.as_str()), (200, ""));
        assert!(r.user < 4 && !r.warmup && r.intended_offset_us.is_none());
        assert!(r.start_offset_us + e2e < 60_000_000);
    }
    let in_out = s.fin.input_tokens + s.fin.output_tokens;
    let summed: u64 = s
        .records
        .iter()
        .map(|r| r.input_tokens + r.output_tokens)
        .sum();
    assert_eq!(summed, in_out, "the counters' counts");
    let with_text: Vec<&pb::RequestRecord> = s
        .records
        .iter()
        .filter(|r| r.prompt.is_some() || r.response.is_some())
        .collect();
    assert_eq!(with_text.len(), 3, "save_text = 3");
    for r in with_text {
        assert!(r.seq < 3, "the first three: {}", r.seq);
        assert_eq!(r.prompt.as_deref(), Some(PROMPTS[r.prompt_index as usize]));
        let response = r.response.as_deref().expect("response");
        assert!(!response.is_empty(), "the generated text");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_gives_failed_records_with_status_class_and_body() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("[faults]\nhttp_500 = 1.0").await;
    let mut p = prepare(&sim, 2, on(0));
    p.slice.as_mut().expect("slice").max_requests = Some(6);
    let s = run(p).await;
    assert_eq!(s.fin.requests_failed, 6);
    for r in &s.records {
        assert_eq!(outcome(r), pb::RecordOutcome::Failed);
        assert_eq!((r.http_status, r.error_class.as_str()), (500, "http_5xx"));
        assert!(r.error.contains("HTTP 500"), "{}", r.error);
        assert!(
            r.error.contains("injected fault: HTTP 500"),
            "body: {}",
            r.error
        );
        assert!(r.e2e_us.is_some() && r.ttft_us.is_none());
        assert!(r.prompt.is_none() && r.response.is_none(), "save_text = 0");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_end_gives_an_incomplete_record_without_e2e() {
    let _serial = LOAD.lock().await;
    // 6 tokens at 1 s each: nothing ends within the 1 s run and no drain.
    let sim = sim_toml("ttft = \"10ms\"\nitl = \"1s\"").await;
    let mut p = prepare(&sim, 3, on(u64::MAX));
    p.slice.as_mut().expect("slice").duration_ms = 1000;
    let s = run(p).await;
    assert_eq!((s.fin.requests_incomplete, s.fin.requests_ok), (3, 0));
    for r in &s.records {
        assert_eq!(outcome(r), pb::RecordOutcome::Incomplete);
        assert_eq!(r.e2e_us, None, "censored");
        assert!(r.ttft_us.is_some(), "the first token came at 10 ms");
        assert!(r.response.is_some(), "save_text = all");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_off_sends_no_batch() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"5ms\"\nitl = \"1ms\"").await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let off = Some(pb::RecordOptions {
        enabled: false,
        save_text: u64::MAX,
    });
    let mut p = prepare(&sim, 2, off);
    p.slice.as_mut().expect("slice").max_requests = Some(10);
    let mut session = Session::start(&agent, p).await;
    let msgs = session.until_final().await;
    let batches = msgs
        .iter()
        .filter(|m| matches!(m, agent_msg::Msg::Requests(_)))
        .count();
    assert_eq!(batches, 0);
    let Some(agent_msg::Msg::Final(f)) = msgs.last() else {
        panic!("ends with the final");
    };
    let c = f.counters.clone().unwrap_or_default();
    assert_eq!(
        (c.requests_ok, c.records_sent, c.records_dropped),
        (10, 0, 0)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_goes_out_before_its_interval_ends() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"1ms\"\nitl = \"0ms\"").await;
    let agent = AgentProcess::start(TOKEN, &[]);
    // One interval as long as the run: without an early batch, nothing
    // would arrive before the stop.
    let mut p = prepare(&sim, 16, on(0));
    p.interval_ms = 120_000;
    p.slice.as_mut().expect("slice").duration_ms = 120_000;
    let mut session = Session::start(&agent, p).await;
    let first = loop {
        match next(&mut session.rx).await {
            agent_msg::Msg::Requests(b) => break b,
            agent_msg::Msg::Interval(_) | agent_msg::Msg::Final(_) => {
                panic!("the interval before its records")
            }
            agent_msg::Msg::Error(e) => panic!("agent error: {}", e.message),
            _ => {}
        }
    };
    assert_eq!(first.records.len(), barrage_agent::records::FLUSH_RECORDS);
    session
        .tx
        .send(cmsg(controller_msg::Msg::Stop(pb::Stop {
            reason: "test".into(),
            grace_ms: 0,
        })))
        .await
        .expect("stop");
    let mut msgs = vec![agent_msg::Msg::Requests(first)];
    msgs.extend(session.until_final().await);
    let s = step(msgs);
    assert!(s.batches >= 2);
    sim.shutdown().await;
}

/// A TCP proxy on loopback whose connections can all be cut at once.
struct Proxy {
    addr: String,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let conns: Arc<std::sync::Mutex<Vec<_>>> = Arc::default();
        let (c, up) = (conns.clone(), upstream.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let up = up.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().expect("conns").push(pipe);
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every connection through the proxy, both sides.
    fn cut(&self) {
        for pipe in self.conns.lock().expect("conns").drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn client_at(addr: &str) -> RawClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let attach =
        barrage_common::auth::AttachToken::new(Some(&barrage_common::auth::Token::new(TOKEN)))
            .expect("token");
    barrage_proto::agent::v1::agent_client::AgentClient::with_interceptor(channel, attach)
}

/// The interval seq up to which every interval is in `msgs`.
fn contiguous(msgs: &[agent_msg::Msg], mut acked: u64) -> u64 {
    for m in msgs {
        if let agent_msg::Msg::Interval(i) = m
            && i.seq == acked + 1
        {
            acked = i.seq;
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_resumed_loses_no_record() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"5ms\"\nitl = \"5ms\"").await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let proxy = Proxy::start(&agent.addr).await;
    let mut p = prepare(&sim, 4, on(0));
    p.interval_ms = 300;
    p.slice.as_mut().expect("slice").duration_ms = 3000;
    let acked = Arc::new(AtomicU64::new(0));
    let mut first = Session::open(client_at(&proxy.addr).await, p, acked.clone()).await;
    // Two intervals through the proxy, then the connection drops.
    let mut before = Vec::new();
    while contiguous(&before, 0) < 2 {
        let m = next(&mut first.rx).await;
        before.push(m);
        acked.store(contiguous(&before, 0), Ordering::SeqCst);
    }
    proxy.cut();
    // Whatever was already on its way still arrives, until the break.
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_secs(10), first.rx.message()).await
    {
        before.extend(m.msg);
    }
    first._heartbeats.abort();
    let had = contiguous(&before, 0);
    // The load went on meanwhile; the controller resumes directly.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut client = client_at(&agent.addr).await;
    let (tx, out) = mpsc::channel(16);
    tx.send(cmsg(controller_msg::Msg::Hello(pb::Hello {
        protocol_major: barrage_proto::PROTOCOL_MAJOR,
        controller_id: "records-test".into(),
        run_id: "records".into(),
        resume: true,
        acked_through_seq: had,
        ..pb::Hello::default()
    })))
    .await
    .expect("hello");
    let rx = client
        .session(ReceiverStream::new(out))
        .await
        .expect("resumed session")
        .into_inner();
    acked.store(had, Ordering::SeqCst);
    let mut second = Session {
        _heartbeats: heartbeats(tx.clone(), acked),
        tx,
        rx,
    };
    let after = second.until_final().await;
    // Records received after interval `had` may come again: the controller
    // drops those (by seq). Nothing else may repeat, nothing may be missing.
    let window: Vec<u64> = before
        .iter()
        .skip_while(|m| !matches!(m, agent_msg::Msg::Interval(i) if i.seq == had))
        .filter_map(|m| match m {
            agent_msg::Msg::Requests(b) => Some(b.records.iter().map(|r| r.seq)),
            _ => None,
        })
        .flatten()
        .collect();
    let (mut seen, mut intervals) = (HashSet::new(), HashSet::new());
    let mut msgs = Vec::new();
    for m in before.into_iter().chain(after) {
        match m {
            agent_msg::Msg::Interval(i) => {
                assert!(intervals.insert(i.seq), "interval {} twice", i.seq);
                msgs.push(agent_msg::Msg::Interval(i));
            }
            agent_msg::Msg::Requests(mut b) => {
                b.records.retain(|r| {
                    let fresh = seen.insert(r.seq);
                    assert!(
                        fresh || window.contains(&r.seq),
                        "record {} repeated",
                        r.seq
                    );
                    fresh
                });
                msgs.push(agent_msg::Msg::Requests(b));
            }
            other => msgs.push(other),
        }
    }
    msgs.retain(|m| !matches!(m, agent_msg::Msg::Requests(b) if b.records.is_empty()));
    let s = step(msgs);
    assert!(s.fin.requests_ok > 0);
    sim.shutdown().await;
}

/// Records as the controller's consumers see them.
#[derive(Default)]
struct Collected {
    /// (agent, seq) of every record.
    records: Vec<(usize, u64)>,
    sent: u64,
    dropped: u64,
}

struct Collector(Arc<std::sync::Mutex<Collected>>);

impl Consumer for Collector {
    fn name(&self) -> &'static str {
        "records test"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        let mut c = self
            .0
            .lock()
            .map_err(|_| OutputError::Other("poisoned".into()))?;
        match ev {
            RunEvent::Requests(r) => {
                let agent = r.agent;
                c.records.extend(r.records.iter().map(|x| (agent, x.seq)));
            }
            RunEvent::Interval(iv) => {
                c.sent += iv.counters.records_sent;
                c.dropped += iv.counters.records_dropped;
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_gets_every_record_once_across_a_dropped_session() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"10ms\"").await;
    let agents = [
        AgentProcess::start(TOKEN, &[]),
        AgentProcess::start(TOKEN, &[]),
    ];
    let proxy = Proxy::start(&agents[1].addr).await;
    let text = cluster_plan(
        "records-resume",
        &sim,
        &[&agents[0].addr, &proxy.addr],
        "[dataset]\ninput_words = 16\nprompts = 50\n[load]\nusers = 4\nrequests = 320\n[metrics]\ninterval = \"500ms\"",
    );
    let seen = Arc::new(std::sync::Mutex::new(Collected::default()));
    let run = tokio::spawn(execute_with(
        plan_from(&text),
        opts(TOKEN),
        CancellationToken::new(),
        vec![Box::new(Collector(seen.clone()))],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "the drop must fall inside the run");
    proxy.cut();
    let outcome = finish(run).await;
    let s = &outcome.summary;
    let behind = s
        .agents
        .iter()
        .find(|a| a.addr == proxy.addr)
        .expect("the proxied agent");
    assert!(behind.reconnects >= 1, "{behind:?}");
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let distinct: HashSet<(usize, u64)> = seen.records.iter().copied().collect();
    assert_eq!(distinct.len(), seen.records.len(), "no record twice");
    let ended = s.requests_ok + s.requests_failed + s.requests_incomplete;
    assert_eq!(ended, 320);
    assert_eq!(seen.records.len() as u64, ended, "one record per request");
    assert_eq!((seen.sent, seen.dropped), (ended, 0), "the agents' count");
    sim.shutdown().await;
}
