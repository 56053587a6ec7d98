//! Several `agent` processes as a cluster: exact split and merge, a lost
//! agent, refused tokens, a busy agent, graceful SIGTERM.

use std::time::{Duration, Instant};

use barrage_controller::run::{RunError, Verdict, execute};
use barrage_llm_sim::SimServer;
use tokio_util::sync::CancellationToken;

use crate::support::{
    AgentProcess, LOAD, TEST_LIMIT, cluster_plan, finish, free_port, opts, plan_from, sim_toml,
};

const TOKEN: &str = "cluster-test-token";

fn plan(sim: &SimServer, agents: &[AgentProcess], load: &str) -> String {
    let addrs: Vec<&str> = agents.iter().map(|a| a.addr.as_str()).collect();
    cluster_plan(
        "cluster",
        sim,
        &addrs,
        &format!("[dataset]\ninput_words = 16\nprompts = 100\n[load]\n{load}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_agent_processes_carry_2000_users_and_merge_exactly() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"100ms\"\nitl = \"100ms\"").await;
    let agents: Vec<_> = (0..4).map(|_| AgentProcess::start(TOKEN, &[])).collect();
    let p = plan_from(&plan(&sim, &agents, "users = 2000\nrequests = 4000"));
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        execute(p, opts(TOKEN), CancellationToken::new()),
    )
    .await
    .expect("bounded")
    .expect("run");
    let s = &outcome.summary;
    let served = sim.stats();
    assert_eq!(outcome.verdict, Verdict::Completed, "{:?}", s.notes);
    assert_eq!(s.requests_ok, 4000);
    assert_eq!(
        s.requests_total, served.requests,
        "the controller counts what the simulator served"
    );
    assert_eq!(s.requests_ok, served.completed);
    assert_eq!(s.output_tokens, served.output_tokens);
    assert!(
        served.max_in_flight > 1500,
        "thousands of concurrent streams: {}",
        served.max_in_flight
    );
    assert_eq!(s.agents.len(), 4);
    for a in &s.agents {
        assert!(
            (499..=501).contains(&a.users),
            "agent {} got {} users",
            a.addr,
            a.users
        );
        assert!(a.requests_ok > 0 && a.lost.is_none() && a.totals_mismatch.is_none());
    }
    assert_eq!(s.agents.iter().map(|a| a.requests_ok).sum::<u64>(), 4000);
    assert!(
        s.max_start_skew_ms.is_some_and(|ms| ms < 50.0),
        "start skew {:?}",
        s.max_start_skew_ms
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_reported_and_the_run_degrades() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("ttft = \"20ms\"\nitl = \"10ms\"").await;
    let mut agents: Vec<_> = (0..4).map(|_| AgentProcess::start(TOKEN, &[])).collect();
    let p = plan_from(&plan(&sim, &agents, "users = 200\nduration = \"5s\""));
    let run = tokio::spawn(execute(p, opts(TOKEN), CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = agents[2].addr.clone();
    agents[2].child.kill().expect("SIGKILL agent");
    let outcome = finish(run).await;
    let s = &outcome.summary;
    assert_eq!(outcome.verdict, Verdict::Degraded);
    assert_eq!(outcome.verdict.exit_code(), 3);
    let lost: Vec<_> = s.agents.iter().filter(|a| a.lost.is_some()).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].addr, victim);
    assert_eq!(lost[0].users, 50);
    assert!(
        s.notes.iter().any(|n| n.contains("50 of 200 users")),
        "{:?}",
        s.notes
    );
    // The three survivors ran to the end and their totals add up.
    assert!(
        s.agents
            .iter()
            .filter(|a| a.lost.is_none())
            .all(|a| a.requests_ok > 0 && a.totals_mismatch.is_none())
    );
    assert!(
        s.duration_s >= 4.9,
        "the run went on after the loss: {}",
        s.duration_s
    );
    drop(agents);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_names_the_agent_and_starts_no_traffic() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("").await;
    let agents = vec![
        AgentProcess::start(TOKEN, &[]),
        AgentProcess::start("other-token", &[]),
    ];
    let p = plan_from(&plan(&sim, &agents, "users = 4\nrequests = 8"));
    let err = match tokio::time::timeout(
        TEST_LIMIT,
        execute(p, opts(TOKEN), CancellationToken::new()),
    )
    .await
    .expect("bounded")
    {
        Err(e) => e,
        Ok(_) => panic!("a wrong token must fail the run"),
    };
    let msg = err.to_string();
    assert!(matches!(err, RunError::Link(_)), "{msg}");
    assert!(
        msg.contains(&agents[1].addr) && msg.contains("Unauthenticated"),
        "{msg}"
    );
    assert_eq!(sim.stats().requests, 0, "no traffic anywhere");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_agent_refuses_a_second_controller() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("itl = \"20ms\"").await;
    let agents = vec![AgentProcess::start(TOKEN, &[])];
    let first = plan_from(&plan(&sim, &agents, "users = 2\nduration = \"3s\""));
    let running = tokio::spawn(execute(first, opts(TOKEN), CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = plan_from(&plan(&sim, &agents, "users = 2\nrequests = 2"));
    let err = match execute(second, opts(TOKEN), CancellationToken::new()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a busy agent must refuse"),
    };
    assert!(
        err.contains("busy") && err.contains(&agents[0].addr),
        "{err}"
    );
    let first = finish(running).await;
    assert_eq!(first.verdict, Verdict::Completed);
    // Idle again afterwards: a new run is accepted.
    let again = plan_from(&plan(&sim, &agents, "users = 2\nrequests = 2"));
    let ok = execute(again, opts(TOKEN), CancellationToken::new())
        .await
        .expect("idle agent accepts");
    assert_eq!(ok.summary.requests_ok, 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_load_and_still_delivers_the_final_totals() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("itl = \"10ms\"").await;
    let agents = vec![AgentProcess::start(TOKEN, &[])];
    let p = plan_from(&plan(&sim, &agents, "users = 8\nduration = \"60s\""));
    let began = Instant::now();
    let run = tokio::spawn(execute(p, opts(TOKEN), CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    agents[0].signal("-TERM");
    let outcome = finish(run).await;
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "stopped long before its 60 s"
    );
    let s = &outcome.summary;
    let a = &s.agents[0];
    assert!(a.lost.is_none(), "the final totals arrived: {:?}", a.lost);
    assert!(a.totals_mismatch.is_none());
    assert!(s.requests_ok > 0);
    // Responses finished by the server but unread at the stop are incomplete.
    let served = sim.stats().completed;
    assert!(s.requests_ok <= served && served <= s.requests_ok + s.requests_incomplete);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_agents_starts_with_the_agents_that_answered() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("").await;
    let agents = vec![AgentProcess::start(TOKEN, &[])];
    let base = plan(&sim, &agents, "users = 4\nrequests = 8");
    // A second listed agent that never answers (nothing listens on port 9).
    let with_dead = base.replace(
        &format!("agents = [\"{}\"]", agents[0].addr),
        &format!("agents = [\"{}\", \"127.0.0.1:9\"]", agents[0].addr),
    );
    let waiting = with_dead.replace("[cluster]", "[cluster]\nagent_wait = \"1s\"");
    let err = match execute(plan_from(&waiting), opts(TOKEN), CancellationToken::new()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("all listed agents are required by default"),
    };
    assert!(
        err.contains("127.0.0.1:9") && err.contains("cluster.agent_wait: 1 of 2"),
        "{err}"
    );
    assert_eq!(sim.stats().requests, 0);
    let relaxed = with_dead.replace(
        "[cluster]",
        "[cluster]\nmin_agents = 1\nagent_wait = \"2s\"",
    );
    let ok = tokio::time::timeout(
        TEST_LIMIT,
        execute(plan_from(&relaxed), opts(TOKEN), CancellationToken::new()),
    )
    .await
    .expect("bounded")
    .expect("runs on the agent that answered");
    assert_eq!(ok.summary.agents.len(), 1);
    assert_eq!(ok.summary.requests_ok, 8);
    let too_many = with_dead.replace(
        "[cluster]",
        "[cluster]\nmin_agents = 2\nagent_wait = \"1s\"",
    );
    let err = match execute(plan_from(&too_many), opts(TOKEN), CancellationToken::new()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("min_agents = 2 cannot be met"),
    };
    assert!(
        err.contains("cluster.min_agents") && err.contains("1 of 2"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_wait_waits_for_a_listed_agent_that_comes_up_late() {
    let _serial = LOAD.lock().await;
    let sim = sim_toml("").await;
    let early = vec![AgentProcess::start(TOKEN, &[])];
    let late_addr = free_port();
    // No min_agents: every listed agent is needed, and agent_wait says how
    // long to wait for them to come up.
    let text = plan(&sim, &early, "users = 4\nrequests = 8").replace(
        &format!("agents = [\"{}\"]", early[0].addr),
        &format!(
            "agents = [\"{}\", \"{late_addr}\"]\nagent_wait = \"30s\"",
            early[0].addr
        ),
    );
    let run = tokio::spawn(execute(
        plan_from(&text),
        opts(TOKEN),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = AgentProcess::start_on(&late_addr, TOKEN, &[]);
    let outcome = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("bounded")
        .expect("join")
        .expect("the run waited for the late agent");
    let s = &outcome.summary;
    assert_eq!(outcome.verdict, Verdict::Completed, "{:?}", s.notes);
    assert_eq!(s.agents.len(), 2);
    assert!(s.agents.iter().any(|a| a.addr == late.addr));
    assert_eq!(s.requests_ok, 8);
    assert_eq!(sim.stats().completed, 8);
    sim.shutdown().await;
}
