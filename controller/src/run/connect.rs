//! Connect and align: the target (or the built-in simulator), the agents
//! (or embedded ones), their sessions, and the start barrier.

use crate::embedded::EmbeddedAgents;
use crate::link::AgentLink;
use barrage_common::auth::Token;
use barrage_common::clock::mono_now_ns;
use barrage_common::plan::PlanFile;
use barrage_common::tls::ClientTls;
use barrage_llm_sim::SimServer;
use futures::future::join_all;
use std::time::{Duration, Instant};

use super::*;

/// Where the load goes: a URL, or the embedded simulator we started.
pub(super) struct Target {
    pub(super) url: String,
    pub(super) sim: Option<SimServer>,
}

/// The simulator's files (`tokenizer`, `chat_template`) are relative to the
/// plan's folder, as the dataset's are.
fn sim_config(
    cfg: &barrage_llm_sim::SimConfig,
    plan_dir: Option<&std::path::Path>,
) -> barrage_llm_sim::SimConfig {
    let mut cfg = cfg.clone();
    let rebase = |p: &mut Option<std::path::PathBuf>| {
        if let (Some(dir), Some(path)) = (plan_dir, p.as_mut())
            && path.is_relative()
            && path.as_os_str() != "none"
        {
            *path = dir.join(&*path);
        }
    };
    rebase(&mut cfg.tokenizer);
    rebase(&mut cfg.chat_template);
    cfg
}

pub(super) async fn resolve_target(
    plan: &PlanFile,
    plan_dir: Option<&std::path::Path>,
) -> Result<Target, RunError> {
    match (&plan.target.url, &plan.simulator) {
        (Some(url), _) => Ok(Target {
            url: plan.endpoint_url(url),
            sim: None,
        }),
        (None, Some(cfg)) => {
            let sim = SimServer::spawn(sim_config(cfg, plan_dir), ([127, 0, 0, 1], 0).into())
                .await
                .map_err(|e| RunError::Setup(format!("starting the built-in simulator: {e}")))?;
            let url = plan.endpoint_url(&format!("http://{}", sim.addr()));
            Ok(Target {
                url,
                sim: Some(sim),
            })
        }
        (None, None) => Err(RunError::Setup("target.url: missing".into())),
    }
}

/// Agent addresses: the plan's list (a DNS name with several addresses is
/// several agents), or freshly started embedded agents.
pub(super) async fn resolve_agents(
    plan: &PlanFile,
    threads: usize,
    given: Option<Token>,
) -> Result<(Vec<String>, Option<Token>, Option<EmbeddedAgents>), RunError> {
    if plan.cluster.agents.is_empty() {
        let n = plan
            .cluster
            .embedded_agents
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let agents = EmbeddedAgents::start(n, threads)
            .await
            .map_err(|e| RunError::Setup(format!("starting embedded agents: {e}")))?;
        let addrs = agents.addrs.iter().map(ToString::to_string).collect();
        let token = Some(agents.token.clone());
        return Ok((addrs, token, Some(agents)));
    }
    let token = match &plan.cluster.token_env {
        _ if given.is_some() => given,
        Some(var) => Some(
            Token::from_env(var).map_err(|e| RunError::Plan(format!("cluster.token_env: {e}")))?,
        ),
        None => None,
    };
    let mut addrs = Vec::new();
    for a in &plan.cluster.agents {
        let resolved = tokio::net::lookup_host(a.as_str())
            .await
            .map_err(|e| RunError::Setup(format!("cluster.agents: cannot resolve {a:?}: {e}")))?;
        let mut found: Vec<String> = resolved.map(|s| s.to_string()).collect();
        found.sort();
        found.dedup();
        addrs.extend(found);
    }
    Ok((addrs, token, None))
}

/// The GPU exporters' token: given directly, else `monitor.token_env`, else
/// the agents' `cluster.token_env`.
pub(super) fn monitor_token(opts: &RunOptions, plan: &PlanFile) -> Result<Option<Token>, RunError> {
    let var = plan
        .monitor
        .token_env
        .as_ref()
        .or(plan.cluster.token_env.as_ref());
    match (&opts.monitor_token, var) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(var)) => Token::from_env(var)
            .map(Some)
            .map_err(|e| RunError::Plan(format!("monitor.token_env: {e}"))),
        (None, None) => Ok(None),
    }
}

/// The start barrier: one moment far enough ahead for the slowest agent,
/// translated into each agent's clock. Returns it on the controller's clock.
pub(super) async fn start_together(
    links: &[AgentLink],
    offsets: &[barrage_common::clock::ClockOffset],
) -> Result<u64, RunError> {
    let max_rtt = offsets.iter().map(|o| o.rtt_ns).max().unwrap_or(0);
    let lead = Duration::from_nanos(max_rtt * 5).max(Duration::from_millis(500));
    let start_local = mono_now_ns() + lead.as_nanos() as u64;
    join_all(links.iter().map(|l| l.start(start_local)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(start_local)
}

/// Opens every agent's session. Agents that cannot be reached yet (not up,
/// connection refused) are retried until `agent_wait` has passed; an agent
/// that answers and refuses (token, busy, version) fails the run at once
/// unless `min_agents` allows starting without it. Without `min_agents`
/// every listed agent is needed; with it, the run starts once that many
/// answered (or all did).
pub(super) async fn open_links(
    plan: &PlanFile,
    addrs: &[String],
    (token, tls): (Option<&Token>, Option<&ClientTls>),
    rt: &tokio::runtime::Handle,
    run_id: &str,
    controller_id: &str,
) -> Result<Vec<AgentLink>, RunError> {
    let needed = plan.cluster.min_agents.unwrap_or(addrs.len());
    let deadline = Instant::now() + plan.cluster.agent_wait;
    let mut links: Vec<Option<AgentLink>> = addrs.iter().map(|_| None).collect();
    loop {
        let missing: Vec<usize> = (0..addrs.len()).filter(|i| links[*i].is_none()).collect();
        let tries = join_all(
            missing
                .iter()
                .map(|i| AgentLink::open_on(rt, &addrs[*i], token, tls, run_id, controller_id)),
        )
        .await;
        let mut last_errors = Vec::new();
        for (i, r) in missing.into_iter().zip(tries) {
            match r {
                Ok(l) => links[i] = Some(l),
                Err(e) if plan.cluster.min_agents.is_none() && !e.is_unreachable() => {
                    return Err(e.into());
                }
                Err(e) => last_errors.push(e.to_string()),
            }
        }
        let ready = links.iter().flatten().count();
        if ready >= needed || ready == addrs.len() {
            if ready < addrs.len() {
                tracing::warn!(
                    ready,
                    listed = addrs.len(),
                    "starting with the agents that answered: {}",
                    last_errors.join("; ")
                );
            }
            return Ok(links.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            return Err(agents_missing(plan, ready, needed, &last_errors));
        }
        tracing::info!(
            ready,
            needed,
            "waiting for agents: {}",
            last_errors.join("; ")
        );
        tokio::time::sleep(AGENT_RETRY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// Pause between two rounds of connection attempts while agents come up.
pub(super) const AGENT_RETRY: Duration = Duration::from_millis(500);

pub(super) fn agents_missing(
    plan: &PlanFile,
    ready: usize,
    needed: usize,
    errors: &[String],
) -> RunError {
    let key = if plan.cluster.min_agents.is_some() {
        "cluster.min_agents"
    } else {
        "cluster.agent_wait"
    };
    RunError::Setup(format!(
        "{key}: {ready} of {needed} agents answered within {}: {}",
        humantime::format_duration(plan.cluster.agent_wait),
        errors.join("; ")
    ))
}

/// Connect and align: every session opened (a wrong token or a busy agent
/// fails the step before any traffic starts anywhere), then each agent's
/// clock offset measured.
pub(super) async fn connect_all(
    plan: &PlanFile,
    addrs: &[String],
    auth: (Option<&Token>, Option<&ClientTls>),
    link_rt: &LinkRuntime,
    run_id: &str,
) -> Result<(Vec<AgentLink>, Vec<barrage_common::clock::ClockOffset>), RunError> {
    let controller_id = format!("controller-{}", std::process::id());
    let mut links = open_links(plan, addrs, auth, link_rt.handle(), run_id, &controller_id).await?;
    let offsets = join_all(links.iter_mut().map(AgentLink::align_clock)).await;
    let offsets = offsets.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((links, offsets))
}
