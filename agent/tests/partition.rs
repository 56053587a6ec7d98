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
/// refuse new ones for a while, or mute the controller: its bytes stop
/// reaching the agent while the connection stays open.
struct Proxy {
    addr: String,
    refusing: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let refusing = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (r, c, up) = (refusing.clone(), conns.clone(), upstream.to_owned());
        let m = muted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let (up, m) = (up.clone(), m.clone());
                let pipe = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        pipe(client, server, m).await;
                    }
                });
                c.lock().expect("conns").push(pipe);
            }
        });
        Self {
            addr,
            refusing,
            muted,
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

    /// The controller's bytes stop reaching the agent (its heartbeats
    /// among them); the agent's still reach the controller.
    fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

/// Both directions of one connection; controller → agent stops (unread,
/// held in the socket buffers) once `muted` is set.
async fn pipe(client: TcpStream, server: TcpStream, muted: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // Read after the mute: never delivered, nothing more read.
                Ok(_) if muted.load(Ordering::SeqCst) => std::future::pending::<()>().await,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
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

/// A request-budget run has no end of its own before the budget: an agent
/// that stops its load because its lease expired (the controller's
/// heartbeats stopped reaching it) cut requests the plan meant to run, and
/// the run must say so rather than report "completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expires_mid_run_degrades_a_request_budget_run() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"10ms\"").await;
    let agent = AgentProcess::start(TOKEN, &[]);
    let proxy = Proxy::start(&agent.addr).await;
    let text = cluster_plan(
        "lease-expired",
        &sim,
        &[&proxy.addr],
        "[load]\nusers = 2\nrequests = 100000",
    );
    let run = tokio::spawn(execute(
        plan_from(&text),
        opts(TOKEN),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sim.stats().requests > 0, "load is running");
    proxy.mute();
    let outcome = finish(run).await;
    let s = &outcome.summary;
    assert_eq!(outcome.verdict, Verdict::Degraded, "{:?}", s.notes);
    assert_eq!(outcome.verdict.exit_code(), 3);
    assert_eq!(s.status, "degraded");
    let a = &s.agents[0];
    assert!(a.lost.is_none(), "its final totals arrived: {:?}", a.lost);
    assert_eq!(a.stop_reason.as_deref(), Some("lease_expired"));
    assert!(s.requests_ok > 0 && s.requests_ok < 100_000);
    let note = format!(
        "agent {} ({}) stopped its load itself: lease expired (no controller heartbeat for 5 s); {} requests cut",
        a.id, a.addr, s.requests_incomplete
    );
    assert!(s.notes.contains(&note), "{note:?} not in {:?}", s.notes);
    sim.shutdown().await;
}
