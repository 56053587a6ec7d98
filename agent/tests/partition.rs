//! A brief network partition between the controller and one agent: the
//! controller resumes the session within the lease, the agent keeps its load
//! going and resends what was not acknowledged, and nothing is lost or
//! counted twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barrage_controller::run::{Verdict, execute};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{AgentProcess, LOAD, cluster_plan, finish, opts, plan_from, sim_toml};

const TOKEN: &str = "partition-token";

/// A TCP proxy on loopback that can cut every connection through it and
/// refuse new ones for a while.
struct Proxy {
    addr: String,
    refusing: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let refusing = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (r, c, up) = (refusing.clone(), conns.clone(), upstream.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let up = up.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().expect("conns").push(pipe);
            }
        });
        Self {
            addr,
            refusing,
            conns,
            accept,
        }
    }

    /// Closes both sides of every connection and refuses new ones.
    fn partition(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for pipe in self.conns.lock().expect("conns").drain(..) {
            pipe.abort();
        }
    }

    fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.partition();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_partition_loses_no_interval_and_counts_nothing_twice() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"10ms\"").await;
    let agents = [
        AgentProcess::start(TOKEN, &[]),
        AgentProcess::start(TOKEN, &[]),
    ];
    let proxy = Proxy::start(&agents[1].addr).await;
    let text = cluster_plan(
        "partition",
        &sim,
        &[&agents[0].addr, &proxy.addr],
        "[dataset]\ninput_words = 16\nprompts = 50\n[load]\nusers = 4\nrequests = 320",
    );
    let run = tokio::spawn(execute(
        plan_from(&text),
        opts(TOKEN),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the partition must fall inside the run");
    let before = sim.stats().requests;
    proxy.partition();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();
    let outcome = finish(run).await;
    let s = &outcome.summary;
    let served = sim.stats();
    assert_eq!(outcome.verdict, Verdict::Completed, "{:?}", s.notes);
    let behind = s
        .agents
        .iter()
        .find(|a| a.addr == proxy.addr)
        .expect("the proxied agent");
    assert!(behind.reconnects >= 1, "{behind:?}");
    assert!(served.requests > before, "load went on");
    for a in &s.agents {
        assert!(a.lost.is_none(), "{a:?}");
        assert_eq!(a.intervals_missing, 0, "{a:?}");
        assert!(a.totals_mismatch.is_none(), "{a:?}");
        assert!(a.requests_ok > 0, "{a:?}");
    }
    // Merged totals equal what the simulator served: nothing lost, nothing twice.
    assert_eq!(s.requests_ok, 320);
    assert_eq!(s.requests_total, served.requests);
    assert_eq!(s.requests_ok, served.completed);
    assert_eq!(s.output_tokens, served.output_tokens);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_lease_stops_the_agent_and_loses_it() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"10ms\"").await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let proxy = Proxy::start(&agent.addr).await;
    let text = cluster_plan(
        "partition-long",
        &sim,
        &[&proxy.addr],
        "[load]\nusers = 2\nduration = \"60s\"",
    );
    let run = tokio::spawn(execute(
        plan_from(&text),
        opts(TOKEN),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim.stats().requests > 0, "load is running");
    let cut = std::time::Instant::now();
    proxy.partition();
    // Never healed: the agent's lease (5 s) runs out and it stops by itself.
    let limit = Duration::from_secs(15);
    let stopped = loop {
        let before = sim.stats();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = sim.stats();
        if after.in_flight == 0 && after.requests == before.requests {
            break cut.elapsed();
        }
        assert!(cut.elapsed() < limit, "load still running: {after:?}");
    };
    assert!(
        stopped >= Duration::from_secs(3),
        "the load went on within the lease: stopped after {stopped:?}"
    );
    let outcome = finish(run).await;
    assert_eq!(outcome.verdict, Verdict::Degraded);
    let lost = outcome.summary.agents[0].lost.clone().expect("lost");
    assert!(lost.contains("not resumed"), "{lost}");
    sim.shutdown().await;
}
