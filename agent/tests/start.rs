//! The start barrier seen from the agent: a `Start` that arrives after the
//! agreed moment is reported late against that moment, not against its own
//! arrival. A raw session client plays the controller.

use std::time::Duration;

use barrage_common::simulator::SimConfig;
use barrage_llm_sim::SimServer;
use barrage_proto::agent::v1::{self as pb, agent_msg, controller_msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{AgentProcess, LOAD, cmsg, raw_client, sim_with};

const TOKEN: &str = "start-token";

/// Next message of the stream, bounded.
async fn next(rx: &mut tonic::Streaming<pb::AgentMsg>) -> agent_msg::Msg {
    tokio::time::timeout(Duration::from_secs(30), rx.message())
        .await
        .expect("bounded")
        .expect("stream")
        .and_then(|m| m.msg)
        .expect("a message")
}

fn prepare(sim: &SimServer) -> pb::Prepare {
    pb::Prepare {
        run_id: "late".into(),
        slice: Some(pb::Slice {
            user_indexes: vec![0],
            duration_ms: 500,
            ..pb::Slice::default()
        }),
        target: Some(pb::Target {
            url: format!("http://{}/v1/chat/completions", sim.addr()),
            api: pb::Api::OpenaiChat as i32,
            stream: true,
            timeout_ms: 10_000,
            ..pb::Target::default()
        }),
        request: Some(pb::RequestParams {
            max_tokens: 4,
            ..pb::RequestParams::default()
        }),
        interval_ms: 1000,
        lease_ms: 5000,
        dataset_len: 1,
        ..pb::Prepare::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_start_reports_its_lateness_against_the_agreed_moment() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let mut client = raw_client(&agent, TOKEN).await;
    let (tx, out) = mpsc::channel(16);
    tx.send(cmsg(controller_msg::Msg::Hello(pb::Hello {
        protocol_major: barrage_proto::PROTOCOL_MAJOR,
        controller_id: "late-test".into(),
        run_id: "late".into(),
        ..pb::Hello::default()
    })))
    .await
    .expect("hello");
    let mut rx = client
        .session(ReceiverStream::new(out))
        .await
        .expect("session")
        .into_inner();
    // The agent's own clock, read through a probe.
    tx.send(cmsg(controller_msg::Msg::Probe(pb::ClockProbe {
        seq: 1,
        controller_mono_ns: 0,
    })))
    .await
    .expect("probe");
    let agent_now_ns = loop {
        if let agent_msg::Msg::Probe(r) = next(&mut rx).await {
            break r.agent_mono_ns;
        }
    };
    tx.send(cmsg(controller_msg::Msg::Prepare(prepare(&sim))))
        .await
        .expect("prepare");
    tx.send(cmsg(controller_msg::Msg::Data(pb::DatasetChunk {
        prompts: vec![pb::Prompt {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }],
            ..pb::Prompt::default()
        }],
    })))
    .await
    .expect("data");
    loop {
        match next(&mut rx).await {
            agent_msg::Msg::Ready(_) => break,
            agent_msg::Msg::Error(e) => panic!("agent error: {}", e.message),
            _ => {}
        }
    }
    // The agreed moment is the probe's reading; the Start is sent 2 s
    // after the reply came back, so it arrives at least 2 s late.
    let late_by = Duration::from_secs(2);
    tokio::time::sleep(late_by).await;
    let agreed = agent_now_ns.max(1);
    tx.send(cmsg(controller_msg::Msg::Start(pb::Start {
        start_at_agent_mono_ns: agreed,
    })))
    .await
    .expect("start");
    let started = loop {
        if let agent_msg::Msg::Started(s) = next(&mut rx).await {
            break s;
        }
    };
    assert!(
        started.late_by_ns >= late_by.as_nanos() as i64,
        "late by {} ns, at least {late_by:?}",
        started.late_by_ns
    );
    assert!(
        started.late_by_ns < Duration::from_secs(60).as_nanos() as i64,
        "bounded: {} ns",
        started.late_by_ns
    );
    drop(tx);
    sim.shutdown().await;
}
