//! The agent stops by itself: lease not renewed (a frozen controller), the
//! controller's stream dropped (a killed controller), the hard deadline. A raw
//! session client plays the controller so each rule is tested alone.

use std::time::{Duration, Instant};

use barrage_common::clock::mono_now_ns;
use barrage_common::simulator::SimConfig;
use barrage_llm_sim::SimServer;
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{AgentProcess, LOAD, cmsg, raw_client, sim_with};

const TOKEN: &str = "safety-token";

/// A started run: the sender (our half of the stream) and the responses.
struct RawRun {
    tx: mpsc::Sender<pb::ControllerMsg>,
    rx: tonic::Streaming<pb::AgentMsg>,
}

async fn start_run(agent: &AgentProcess, sim: &SimServer, hard_deadline_ms: u64) -> RawRun {
    let mut client = raw_client(agent, TOKEN).await;
    let (tx, out) = mpsc::channel(16);
    let send = |m| cmsg(m);
    tx.send(send(controller_msg::Msg::Hello(pb::Hello {
        protocol_major: barrage_proto::PROTOCOL_MAJOR,
        protocol_minor: 0,
        controller_id: "raw-test".into(),
        run_id: "raw".into(),
        ..pb::Hello::default()
    })))
    .await
    .expect("hello");
    let prepare = pb::Prepare {
        run_id: "raw".into(),
        slice: Some(pb::Slice {
            user_indexes: (0..8).collect(),
            spawn_rate: 0.0,
            max_requests: None,
            duration_ms: 60_000,
            ..pb::Slice::default()
        }),
        target: Some(pb::Target {
            url: format!("http://{}/v1/chat/completions", sim.addr()),
            api: pb::Api::OpenaiChat as i32,
            stream: true,
            timeout_ms: 30_000,
            include_usage: true,
            ..pb::Target::default()
        }),
        request: Some(pb::RequestParams {
            max_tokens: 8,
            ..pb::RequestParams::default()
        }),
        interval_ms: 1000,
        lease_ms: 2000,
        hard_deadline_ms,
        dataset_len: 1,
        ..pb::Prepare::default()
    };
    tx.send(send(controller_msg::Msg::Prepare(prepare)))
        .await
        .expect("prepare");
    tx.send(send(controller_msg::Msg::Data(pb::DatasetChunk {
        prompts: vec![pb::Prompt {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "hello there".into(),
            }],
            max_tokens: 0,
            input_tokens: 0,
            input_chat_template: false,
        }],
    })))
    .await
    .expect("data");
    let mut rx = client
        .session(ReceiverStream::new(out))
        .await
        .expect("session")
        .into_inner();
    loop {
        match rx.message().await.expect("stream").and_then(|m| m.msg) {
            Some(agent_msg::Msg::Ready(_)) => break,
            Some(agent_msg::Msg::Error(e)) => panic!("agent error: {}", e.message),
            _ => {}
        }
    }
    // Clocks unaligned on purpose: start "now" on the agent's clock is
    // unknown, and a start time in the agent's past means "at once".
    tx.send(send(controller_msg::Msg::Start(pb::Start {
        start_at_agent_mono_ns: 0,
    })))
    .await
    .expect("start");
    let _ = mono_now_ns();
    RawRun { tx, rx }
}

/// Waits until the simulator has had no request in flight for a moment,
/// returning how long that took from `since`.
async fn load_stops(sim: &SimServer, since: Instant, limit: Duration) -> Duration {
    loop {
        let s = sim.stats();
        if s.in_flight == 0 {
            let before = s.requests;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if sim.stats().requests == before && sim.stats().in_flight == 0 {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < limit,
            "load still running after {limit:?}: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sim() -> SimServer {
    let cfg = SimConfig {
        itl: Duration::from_millis(10),
        ttft: Duration::from_millis(10),
        ..SimConfig::default()
    };
    sim_with(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_controller_loses_its_lease_and_the_load_stops() {
    let _serial = LOAD.lock().await;
    let sim = sim().await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let run = start_run(&agent, &sim, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sim.stats().requests > 0, "load is running");
    // No heartbeats from here on, stream kept open: a frozen controller.
    let frozen = Instant::now();
    let took = load_stops(&sim, frozen, Duration::from_secs(8)).await;
    assert!(
        took < Duration::from_secs(5),
        "lease 2 s: stopped after {took:?}"
    );
    let after = sim.stats().requests;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.stats().requests, after, "nothing after the stop");
    drop(run);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_controller_stream_stops_the_load_at_once() {
    let _serial = LOAD.lock().await;
    let sim = sim().await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let run = start_run(&agent, &sim, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sim.stats().requests > 0);
    let killed = Instant::now();
    drop(run.tx);
    drop(run.rx);
    let took = load_stops(&sim, killed, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(2),
        "dead-man switch took {took:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_deadline_stops_the_load_whatever_the_controller_does() {
    let _serial = LOAD.lock().await;
    let sim = sim().await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let mut run = start_run(&agent, &sim, 1500).await;
    let started = Instant::now();
    // Keep the lease alive all along.
    let tx = run.tx.clone();
    let beat = tokio::spawn(async move {
        for seq in 0.. {
            let hb = pb::ControllerHeartbeat {
                seq,
                lease_extend_ms: 2000,
                acked_through_seq: 0,
            };
            if tx
                .send(cmsg(controller_msg::Msg::Heartbeat(hb)))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut reason = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), run.rx.message())
        .await
        .expect("bounded")
    {
        if let Some(agent_msg::Msg::Final(f)) = m.msg {
            reason = Some(f.reason);
            break;
        }
    }
    beat.abort();
    assert_eq!(reason, Some(pb::StopReason::HardDeadline as i32));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_targets_off_its_allow_list() {
    let _serial = LOAD.lock().await;
    let sim = sim().await;
    let agent = AgentProcess::start(TOKEN, &["--allow-target", "10.0.0.0/8"]);
    let mut client = raw_client(&agent, TOKEN).await;
    let (tx, out) = mpsc::channel(16);
    let mut rx = client
        .session(ReceiverStream::new(out))
        .await
        .expect("session")
        .into_inner();
    tx.send(cmsg(controller_msg::Msg::Hello(pb::Hello {
        protocol_major: barrage_proto::PROTOCOL_MAJOR,
        ..pb::Hello::default()
    })))
    .await
    .expect("hello");
    let prepare = pb::Prepare {
        slice: Some(pb::Slice {
            user_indexes: vec![0],
            duration_ms: 1000,
            ..pb::Slice::default()
        }),
        target: Some(pb::Target {
            url: format!("http://{}/v1/chat/completions", sim.addr()),
            api: pb::Api::OpenaiChat as i32,
            ..pb::Target::default()
        }),
        dataset_len: 1,
        ..pb::Prepare::default()
    };
    tx.send(cmsg(controller_msg::Msg::Prepare(prepare)))
        .await
        .expect("prepare");
    tx.send(cmsg(controller_msg::Msg::Data(pb::DatasetChunk {
        prompts: vec![pb::Prompt::default()],
    })))
    .await
    .expect("data");
    let mut refused = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("bounded")
    {
        if let Some(agent_msg::Msg::Error(e)) = m.msg {
            refused = Some(e.message);
            break;
        }
    }
    let msg = refused.expect("an error");
    assert!(
        msg.contains("allow-list") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert_eq!(sim.stats().requests, 0);
    sim.shutdown().await;
}
