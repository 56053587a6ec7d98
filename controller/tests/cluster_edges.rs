//! The cluster as a plan-free command runs it: `--agents` with
//! `--token-env` against a real agent that requires a token.

use std::process::Output;

use barrage_agent::{AgentOptions, AgentService, server};
use barrage_common::auth::Token;
use barrage_common::simulator::SimConfig;
use barrage_llm_sim::SimServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::{LOAD, controller, output, scratch, sim_with};

const TOKEN_VAR: &str = "BARRAGE_EDGES_AGENT_TOKEN";

/// An in-process agent on loopback that accepts only `token`.
async fn agent_requiring(token: &str) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let service = AgentService::new(AgentOptions {
        load_threads: 1,
        ..AgentOptions::default()
    })
    .expect("agent");
    let (stop, stopped) = oneshot::channel::<()>();
    let token = Some(Token::new(token));
    tokio::spawn(server::serve(listener, service, token, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// `controller run` with plan-free flags against `sim` through `agent`.
async fn run_flags(sim: &SimServer, agent: &str, extra: &[&str], token: &str) -> Output {
    let mut cmd = controller();
    cmd.args(["run", "--url", &format!("http://{}", sim.addr())])
        .args(["--agents", agent, "--users", "2", "--requests", "4"])
        .args(["--max-tokens", "4", "--quiet", "--output"])
        .arg(scratch("edges-token"))
        .args(extra)
        .env(TOKEN_VAR, token);
    output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_env_flag_names_the_agent_token_of_a_plan_free_run() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let (agent, stop) = agent_requiring("edges-secret-token").await;
    let without = run_flags(&sim, &agent, &[], "edges-secret-token").await;
    let err = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    assert_eq!(sim.stats().requests, 0);

    let with = run_flags(
        &sim,
        &agent,
        &["--token-env", TOKEN_VAR],
        "edges-secret-token",
    )
    .await;
    let err = String::from_utf8_lossy(&with.stderr);
    assert_eq!(with.status.code(), Some(0), "{err}");
    assert_eq!(sim.stats().completed, 4);
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(!out.contains("edges-secret-token") && !err.contains("edges-secret-token"));

    let unset = run_flags(&sim, &agent, &["--token-env", "BARRAGE_EDGES_UNSET"], "x").await;
    let err = String::from_utf8_lossy(&unset.stderr);
    assert_ne!(unset.status.code(), Some(0), "{err}");
    assert!(err.contains("BARRAGE_EDGES_UNSET"), "{err}");
    let _ = stop.send(());
    sim.shutdown().await;
}
