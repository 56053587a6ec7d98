//! One run, start to finish: resolve the target (or start the built-in
//! simulator) and the agents (or start embedded ones), split the load, open
//! every session, prepare, start everyone at one agreed moment, merge what
//! streams back, and write the report — also when the run is interrupted or
//! loses agents, so nothing measured is lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use barrage_common::auth::Token;
use barrage_common::clock::mono_now_ns;
use barrage_common::metrics::{Layout, Layouts};
use barrage_common::plan::{ApiKind, PlanFile};
use barrage_common::tls::ClientTls;
use barrage_llm_sim::SimServer;
use barrage_proto::agent::v1 as pb;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dataset;
use crate::embedded::EmbeddedAgents;
use crate::link::{AgentLink, LinkError, LinkEvent, LinkRuntime};
use crate::merge::Merger;
use crate::report::{self, AgentReport, RunFacts, Summary};

/// Exit statuses of `controller run` (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Completed,
    Interrupted,
    Degraded,
    /// A `[thresholds]` limit failed.
    Breached,
    /// Requests were sent and not one succeeded.
    Failed,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Completed => 0,
            Verdict::Degraded => 3,
            Verdict::Breached => 4,
            Verdict::Failed => 5,
            Verdict::Interrupted => 130,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Completed => "completed",
            Verdict::Interrupted => "interrupted",
            Verdict::Degraded => "degraded",
            Verdict::Breached => "breached",
            Verdict::Failed => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error("{0}")]
    Setup(String),
    /// The plan names something that is not there (an unset environment
    /// variable): a bad plan, like an unknown key.
    #[error("{0}")]
    Plan(String),
    #[error(transparent)]
    Tls(#[from] barrage_common::tls::TlsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("metrics: {0}")]
    Metrics(#[from] barrage_common::metrics::MetricError),
    #[error("writing results to {dir}: {reason}")]
    Output { dir: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder relative dataset paths start from (the plan's folder).
    pub plan_dir: Option<PathBuf>,
    /// Print a line per interval on stderr.
    pub progress: bool,
    /// Load worker threads of each embedded agent (default 1).
    pub embedded_threads: Option<usize>,
    /// Agent token given directly (library use) instead of `cluster.token_env`.
    pub agent_token: Option<Token>,
    /// GPU exporter token given directly instead of `monitor.token_env`.
    pub monitor_token: Option<Token>,
}

pub struct RunOutcome {
    pub summary: Summary,
    pub dir: PathBuf,
    pub verdict: Verdict,
}

/// Where the load goes: a URL, or the embedded simulator we started.
struct Target {
    url: String,
    sim: Option<SimServer>,
}

async fn resolve_target(plan: &PlanFile) -> Result<Target, RunError> {
    match (&plan.target.url, &plan.simulator) {
        (Some(url), _) => Ok(Target {
            url: plan.endpoint_url(url),
            sim: None,
        }),
        (None, Some(cfg)) => {
            let sim = SimServer::spawn(cfg.clone(), ([127, 0, 0, 1], 0).into())
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

fn api(kind: ApiKind) -> pb::Api {
    match kind {
        ApiKind::OpenaiChat => pb::Api::OpenaiChat,
        ApiKind::OpenaiCompletions => pb::Api::OpenaiCompletions,
        ApiKind::OllamaGenerate => pb::Api::OllamaGenerate,
        ApiKind::OllamaChat => pb::Api::OllamaChat,
        ApiKind::OpenaiEmbeddings => pb::Api::OpenaiEmbeddings,
        ApiKind::Template => pb::Api::Template,
    }
}

fn target_proto(plan: &PlanFile, url: &str) -> Result<pb::Target, RunError> {
    let api_key = match &plan.target.api_key_env {
        Some(var) => std::env::var(var).map_err(|_| {
            RunError::Plan(format!(
                "target.api_key_env: environment variable {var} is not set"
            ))
        })?,
        None => String::new(),
    };
    Ok(pb::Target {
        url: url.to_owned(),
        api: api(plan.target.api) as i32,
        model: plan
            .target
            .model
            .clone()
            .or_else(|| plan.simulator.as_ref().map(|s| s.model.clone()))
            .unwrap_or_default(),
        api_key,
        headers: plan
            .target
            .headers
            .iter()
            .map(|(k, v)| pb::Header {
                name: k.clone(),
                value: v.clone(),
                secret: true,
            })
            .collect(),
        // Embeddings answer with one body.
        stream: plan.streams(),
        timeout_ms: plan.target.timeout.as_millis() as u64,
        include_usage: plan.target.include_usage,
        connect_timeout_ms: plan.target.connect_timeout.as_millis() as u64,
        idle_timeout_ms: plan.target.idle_timeout.map_or(0, |d| d.as_millis() as u64),
        http2: plan.target.http_version == "2",
        template: plan.target.template.as_ref().map(|t| pb::TemplateApi {
            body: t.body.clone(),
            format: match t.format.as_deref() {
                Some("ndjson") => pb::TemplateFormat::Ndjson,
                Some("json") => pb::TemplateFormat::Json,
                _ => pb::TemplateFormat::Sse,
            } as i32,
            text_pointer: t.text.clone(),
            reasoning_pointer: t.reasoning.clone().unwrap_or_default(),
            prompt_tokens_pointer: t.prompt_tokens.clone().unwrap_or_default(),
            completion_tokens_pointer: t.completion_tokens.clone().unwrap_or_default(),
            done_pointer: t.done.clone().unwrap_or_default(),
            done_marker: t.done_marker.clone().unwrap_or_default(),
        }),
    })
}

/// Agent addresses: the plan's list (a DNS name with several addresses is
/// several agents), or freshly started embedded agents.
async fn resolve_agents(
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

/// Runs the plan. `cancel` (Ctrl-C) stops every agent and still writes the
/// report of what was measured.
pub async fn execute(
    plan: PlanFile,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunError> {
    let run_id = format!("{:016x}", rand::random::<u64>());
    let started_wall = chrono::Local::now();
    // Header values and URL credentials may be secrets: the written plan hides them.
    let plan_toml = barrage_common::redact::plan_for_display(&plan)
        .to_toml()
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let plan_sha = format!("{:x}", Sha256::digest(plan_toml.as_bytes()));
    // TLS files are read and checked before anything connects.
    let tls = ClientTls::from_cluster(&plan.cluster, opts.plan_dir.as_deref())?;
    let trace = crate::trace::load(&plan.load, &plan.dataset, opts.plan_dir.as_deref())?;
    // Agents count output with the plan's tokenizer when the server reports
    // no usage: they get the file's bytes, not its path.
    let tokenizer_json = dataset::tokenizer_bytes(&plan.dataset, opts.plan_dir.as_deref())?;
    let prompts = match &trace {
        Some(t) => t.prompts.clone(),
        None => dataset::load(&plan.dataset, opts.plan_dir.as_deref())?,
    };
    let target = resolve_target(&plan).await?;
    let target_pb = target_proto(&plan, &target.url)?;
    let (addrs, token, embedded) = resolve_agents(
        &plan,
        opts.embedded_threads.unwrap_or(1),
        opts.agent_token.clone(),
    )
    .await?;
    let result = drive(
        &plan,
        &opts,
        &run_id,
        &plan_sha,
        &prompts,
        trace.as_ref(),
        target_pb,
        &addrs,
        token.as_ref(),
        tls.as_ref(),
        &tokenizer_json,
        cancel,
    )
    .await;
    if let Some(e) = embedded {
        e.shutdown().await;
    }
    let (mut summary, verdict) = result?;
    summary.started_at = started_wall.to_rfc3339();
    summary
        .notes
        .extend(trace.as_ref().and_then(crate::trace::Trace::counts_note));
    if let Some(sim) = target.sim {
        summary.simulator = Some(sim.stats());
        sim.shutdown().await;
    }
    let dir = plan.output.dir.join(format!(
        "{}-{}-{}",
        plan.name,
        started_wall.format("%Y%m%d-%H%M%S"),
        &run_id[..8]
    ));
    report::write(&dir, &summary, &plan_toml).map_err(|e| RunError::Output {
        dir: dir.clone(),
        reason: e.to_string(),
    })?;
    Ok(RunOutcome {
        summary,
        dir,
        verdict,
    })
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    plan: &PlanFile,
    opts: &RunOptions,
    run_id: &str,
    plan_sha: &str,
    prompts: &[pb::Prompt],
    trace: Option<&crate::trace::Trace>,
    target: pb::Target,
    addrs: &[String],
    token: Option<&Token>,
    tls: Option<&ClientTls>,
    tokenizer_json: &[u8],
    cancel: CancellationToken,
) -> Result<(Summary, Verdict), RunError> {
    let controller_id = format!("controller-{}", std::process::id());
    let embedded = plan.cluster.agents.is_empty();
    // Open every session first: a wrong token or a busy agent fails the run
    // before any traffic starts anywhere.
    // Embedded agents serve plaintext on loopback; TLS is for listed agents.
    let agent_tls = if embedded { None } else { tls };
    let link_rt = LinkRuntime::start()
        .map_err(|e| RunError::Setup(format!("starting the agent links' runtime: {e}")))?;
    let mut links = open_links(
        plan,
        addrs,
        (token, agent_tls),
        link_rt.handle(),
        run_id,
        &controller_id,
    )
    .await?;
    let offsets = join_all(links.iter_mut().map(AgentLink::align_clock)).await;
    let offsets = offsets.into_iter().collect::<Result<Vec<_>, _>>()?;

    let weights = capacity_weights(&links);
    let load = &plan.load;
    let mut slices = crate::slices::slices(load, &weights);
    let per_agent = trace.map(|t| stripe_trace(t, &weights, &mut slices));
    let layouts = run_layouts(plan);
    let interval = plan.metrics.interval;
    let drain = crate::edges::drain(plan);
    let hard_deadline = hard_deadline(plan, trace, drain);
    let common = common_prepare(
        plan,
        (run_id, plan_sha),
        &target,
        layouts,
        (hard_deadline, drain),
        tokenizer_json,
    );
    // The dataset in ≤ 1 MiB chunks: encoded once when every agent gets it all.
    let (datasets, shared) = match &per_agent {
        Some(parts) => (parts.iter().map(Vec::as_slice).collect(), None),
        None => (
            vec![prompts; links.len()],
            Some(dataset::chunks(prompts, 1 << 20)),
        ),
    };
    let striped: Vec<Vec<pb::DatasetChunk>> = match shared {
        Some(_) => Vec::new(),
        None => datasets
            .iter()
            .map(|d| dataset::chunks(d, 1 << 20))
            .collect(),
    };
    let chunks: Vec<&[pb::DatasetChunk]> = match &shared {
        Some(all) => vec![all.as_slice(); links.len()],
        None => striped.iter().map(Vec::as_slice).collect(),
    };
    let lens: Vec<u64> = datasets.iter().map(|d| d.len() as u64).collect();
    prepare_all(
        &mut links,
        &common,
        &slices,
        (&chunks, &lens),
        plan.dataset.seed,
    )
    .await?;

    let monitors =
        crate::monitor::Monitors::start(&plan.monitor, monitor_token(opts, plan)?, tls).await;
    let start_local = start_together(&links, &offsets).await?;
    let start_instant = barrage_common::clock::instant_at(start_local);
    tracing::info!(agents = links.len(), mode = ?load.mode(), "run started");

    let mut merger = Merger::new(layouts, links.len(), interval.as_secs_f64())?;
    for (tally, link) in merger.agents.iter_mut().zip(&links) {
        tally.cores = link
            .hello
            .capacity
            .as_ref()
            .map_or(1.0, |c| f64::from(c.cores.max(1)));
    }
    let (warmup_intervals, warmup_s) =
        crate::edges::warmup_window(load.warmup.unwrap_or_default(), interval);
    merger.warmup_intervals = warmup_intervals;
    let checks = plan
        .thresholds
        .checks()
        .map_err(|(k, p)| RunError::Setup(format!("thresholds.{k}: {p}")))?;
    let infos = agent_infos(&links, &slices);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    for (i, link) in links.into_iter().enumerate() {
        link_rt
            .handle()
            .spawn(link.pump(i, ev_tx.clone(), stop.clone()));
    }
    drop(ev_tx);

    let streamed = stream_and_merge(
        ev_rx,
        &mut merger,
        &infos,
        start_instant,
        Watch {
            plan,
            checks: &checks,
            progress: opts.progress,
            cancel: &cancel,
            stop: &stop,
        },
    )
    .await;
    let Streamed {
        late,
        lost,
        stops,
        interrupted,
        last_final,
        merge_errors,
        aborted,
    } = streamed;
    let end = if interrupted {
        Instant::now()
    } else {
        last_final
    };
    let mut timeline = merger.finish().to_vec();
    let monitor_report = attach_monitors(
        monitors,
        &mut timeline,
        (start_local, end),
        interval,
        merger.counters.output_tokens,
    )
    .await;
    let agents = agent_reports(&infos, &merger, (&late, &lost, &stops), &offsets);
    let stop_notes = unasked_stop_notes(&agents, &stops, &merger);
    let degraded = agents
        .iter()
        .any(|a| a.lost.is_some() || a.totals_mismatch.is_some() || a.intervals_missing > 0)
        || !merge_errors.is_empty()
        || !stop_notes.is_empty();
    let run_s = end.saturating_duration_since(start_instant).as_secs_f64();
    let measured_s = if warmup_s < run_s {
        run_s - warmup_s
    } else {
        run_s
    };
    let achieved_rate = crate::edges::achieved_rate(
        merger.counters.requests_started,
        merger.last_arrival_us.map(|us| us as f64 / 1e6),
        warmup_s.min(run_s),
        measured_s,
    );
    let offered_rate = offered_rate(load, &slices, trace);
    let figures = crate::verdict::RunFigures {
        duration_s: measured_s,
        offered_rate,
        achieved_rate: Some(achieved_rate),
    };
    let results = crate::verdict::evaluate(&checks, &merger.totals, &merger.counters, figures);
    let breached = results.iter().any(|r| !r.passed) || aborted.is_some();
    let verdict = if interrupted {
        Verdict::Interrupted
    } else if every_request_failed(&merger.counters) {
        Verdict::Failed
    } else {
        match (degraded, breached) {
            (true, _) => Verdict::Degraded,
            (false, true) => Verdict::Breached,
            (false, false) => Verdict::Completed,
        }
    };
    let mut notes = merge_errors;
    notes.extend(stop_notes);
    notes.extend(agents.iter().filter_map(sequence_note));
    notes.extend(crate::edges::cut_note(
        merger.counters.requests_incomplete,
        drain,
        load.effective_duration().is_some(),
        interrupted,
    ));
    notes.extend(crate::edges::late_start_notes(&agents));
    notes.extend(crate::edges::unpooled_notes(&agents));
    if let Some(key) = &aborted {
        notes.push(format!(
            "stopped early: threshold {key} was clearly lost (abort_on_breach)"
        ));
    }
    notes.extend(lost_share_note(&agents, load));
    notes.extend(saturation_notes(&agents, &merger, embedded));
    let facts = RunFacts {
        name: plan.name.clone(),
        run_id: run_id.to_owned(),
        started_at: String::new(),
        target: barrage_common::redact::redact_url(&target.url),
        api: plan.target.api.as_str().to_owned(),
        status: verdict.name().to_owned(),
        duration_s: measured_s,
        users: load.peak_users(),
        streamed: plan.streams(),
    };
    let summary = Summary::build(
        facts,
        &merger.totals,
        &merger.counters,
        agents,
        timeline,
        notes,
    );
    let mut summary = summary;
    summary.warmup_s = warmup_s.min(run_s);
    summary.drain_s = load.effective_duration().map(|_| drain.as_secs_f64());
    summary.thresholds = results;
    if request_slo(plan) != pb::RequestSlo::default() && measured_s > 0.0 {
        summary.goodput = Some(merger.counters.requests_good as f64 / measured_s);
    }
    if let Some(m) = monitor_report {
        summary.notes.extend(m.notes.iter().cloned());
        summary.monitor = Some(m);
    }
    if load.open_loop() {
        summary.open_loop = Some(open_loop_report(&merger, offered_rate, achieved_rate));
    }
    Ok((summary, verdict))
}

/// What the run loop saw besides the merged figures.
struct Streamed {
    late: Vec<Option<f64>>,
    lost: Vec<Option<String>>,
    stops: Vec<Option<pb::StopReason>>,
    interrupted: bool,
    last_final: Instant,
    merge_errors: Vec<String>,
    aborted: Option<String>,
}

/// What the run loop watches besides the agents' events.
struct Watch<'a> {
    plan: &'a PlanFile,
    checks: &'a [barrage_common::thresholds::Check],
    progress: bool,
    cancel: &'a CancellationToken,
    stop: &'a CancellationToken,
}

/// Stream and merge: every agent's events until all links end; stops every
/// agent on Ctrl-C/SIGTERM or a threshold that is clearly lost.
async fn stream_and_merge(
    mut ev_rx: mpsc::Receiver<LinkEvent>,
    merger: &mut Merger,
    infos: &[(String, String, u64, f64)],
    start_instant: Instant,
    w: Watch<'_>,
) -> Streamed {
    let mut late = vec![None; infos.len()];
    let mut lost: Vec<Option<String>> = vec![None; infos.len()];
    let mut stops: Vec<Option<pb::StopReason>> = vec![None; infos.len()];
    let mut interrupted = false;
    let mut aborted: Option<String> = None;
    let mut last_final = start_instant;
    let mut printed = 0usize;
    let mut merge_errors = Vec::new();
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    LinkEvent::Started { agent, late_ns } => late[agent] = Some(late_ns as f64 / 1e6),
                    LinkEvent::Interval { agent, interval } => {
                        if let Err(e) = merger.add_interval(agent, &interval) {
                            merge_errors.push(format!("agent {}: interval {} rejected: {e}", infos[agent].1, interval.index));
                        }
                    }
                    LinkEvent::Final { agent, fin } => {
                        last_final = Instant::now();
                        stops[agent] = Some(final_reason(&infos[agent].1, &fin));
                        if let Err(e) = merger.add_final(agent, &fin) {
                            merge_errors.push(format!("agent {}: final totals rejected: {e}", infos[agent].1));
                        }
                    }
                    LinkEvent::Resumed { agent } => merger.agent_resumed(agent),
                    LinkEvent::Requests { .. } => {}
                    LinkEvent::Lost { agent, reason } => {
                        tracing::warn!(agent = %infos[agent].1, %reason, "agent lost");
                        lost[agent] = Some(reason);
                        merger.agent_gone(agent);
                    }
                }
                if w.plan.thresholds.abort_on_breach && aborted.is_none() {
                    let lost = w.checks
                        .iter()
                        .find(|c| crate::verdict::clearly_lost(c, &merger.totals, &merger.counters, w.plan.load.requests));
                    if let Some(c) = lost {
                        eprintln!("threshold {c} is clearly lost: stopping every agent");
                        aborted = Some(c.key.clone());
                        w.stop.cancel();
                    }
                }
                if w.progress {
                    while printed < merger.timeline.len() {
                        progress(&merger.timeline[printed]);
                        printed += 1;
                    }
                }
            }
            _ = w.cancel.cancelled(), if !interrupted => {
                interrupted = true;
                eprintln!("interrupted: stopping all agents and writing what was measured");
                w.stop.cancel();
            }
        }
    }
    Streamed {
        late,
        lost,
        stops,
        interrupted,
        last_final,
        merge_errors,
        aborted,
    }
}

/// Per agent, what the run loop saw: start lateness (ms), why it was lost,
/// why it stopped.
type AgentEnds<'a> = (
    &'a [Option<f64>],
    &'a [Option<String>],
    &'a [Option<pb::StopReason>],
);

/// Each agent's part of the report: its share, counts, timing and faults.
fn agent_reports(
    infos: &[(String, String, u64, f64)],
    merger: &Merger,
    (late, lost, stops): AgentEnds<'_>,
    offsets: &[barrage_common::clock::ClockOffset],
) -> Vec<AgentReport> {
    infos
        .iter()
        .enumerate()
        .map(|(i, (id, addr, users, share))| AgentReport {
            share: *share,
            id: id.clone(),
            addr: addr.clone(),
            users: *users,
            requests_ok: merger.agents[i].counters.requests_ok,
            requests_failed: merger.agents[i].counters.requests_failed,
            max_cpu_percent: merger.agents[i].max_cpu,
            delta_bytes: merger.agents[i].delta_bytes,
            start_late_ms: late[i],
            clock_uncertainty_ms: Some(offsets[i].uncertainty().as_secs_f64() * 1000.0),
            lost: lost[i].clone(),
            totals_mismatch: merger.agents[i].mismatch.clone(),
            intervals_duplicated: merger.agents[i].duplicates,
            intervals_missing: merger.agents[i].missing(),
            reconnects: merger.agents[i].resumes,
            stop_reason: stops[i].map(|r| crate::edges::stop_reason_name(r).to_owned()),
            connection_retries: merger.agents[i].counters.connection_retries,
        })
        .collect()
}

/// Ends the monitors and puts their samples on the run's timeline.
async fn attach_monitors(
    monitors: crate::monitor::Monitors,
    timeline: &mut [crate::merge::IntervalRow],
    (start_local, end): (u64, Instant),
    interval: Duration,
    output_tokens: u64,
) -> Option<crate::monitor::MonitorReport> {
    if monitors.is_empty() {
        return None;
    }
    let end_ns = barrage_common::clock::mono_ns_of(end);
    let n = timeline
        .iter()
        .map(|r| r.index as usize + 1)
        .max()
        .unwrap_or(0);
    let (report, rows) = monitors
        .finish(start_local, end_ns, interval, n, output_tokens)
        .await;
    for r in timeline.iter_mut() {
        if let Some(m) = rows.get(r.index as usize) {
            r.monitor = m.clone();
        }
    }
    Some(report)
}

/// What every agent's Prepare shares; each then gets its slice, seed and
/// prompts.
fn common_prepare(
    plan: &PlanFile,
    (run_id, plan_sha): (&str, &str),
    target: &pb::Target,
    layouts: Layouts,
    (hard_deadline, drain): (Duration, Duration),
    tokenizer_json: &[u8],
) -> pb::Prepare {
    pb::Prepare {
        run_id: run_id.to_owned(),
        step: 0,
        slice: None,
        target: Some(target.clone()),
        request: Some(request_params(plan)),
        latency_layout: Some(layouts.latency.to_proto()),
        count_layout: Some(layouts.tokens.to_proto()),
        interval_ms: plan.metrics.interval.as_millis() as u64,
        lease_ms: crate::link::LEASE.as_millis() as u64,
        hard_deadline_ms: hard_deadline.as_millis() as u64,
        seed: 0,
        dataset_len: 0,
        plan_sha256: plan_sha.to_owned(),
        slo: Some(request_slo(plan)),
        tokenizer_json: tokenizer_json.to_vec(),
        drain_ms: drain.as_millis() as u64,
        warmup_intervals: crate::edges::warmup_window(
            plan.load.warmup.unwrap_or_default(),
            plan.metrics.interval,
        )
        .0,
        records: Some(pb::RecordOptions {
            enabled: plan.output.requests,
            save_text: plan.output.save_text.per_agent(),
        }),
    }
}

/// Prepare: every agent gets its slice, seed and dataset chunks (and their
/// prompt count) and answers Ready
/// with the plan's hash, or the run fails before any traffic.
async fn prepare_all(
    links: &mut [AgentLink],
    common: &pb::Prepare,
    slices: &[pb::Slice],
    (chunks, lens): (&[&[pb::DatasetChunk]], &[u64]),
    seed: u64,
) -> Result<(), RunError> {
    let prepares = links.iter_mut().enumerate().map(|(i, link)| {
        let prepare = pb::Prepare {
            slice: Some(slices[i].clone()),
            seed: seed.wrapping_add(i as u64 * 0x9E37_79B9),
            dataset_len: lens[i],
            ..common.clone()
        };
        link.prepare(prepare, chunks[i])
    });
    let readies = join_all(prepares)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let sha = &common.plan_sha256;
    if let Some((i, r)) = readies
        .iter()
        .enumerate()
        .find(|(_, r)| &r.plan_sha256 != sha)
    {
        return Err(RunError::Setup(format!(
            "agent {}: prepared plan {} instead of {sha}",
            links[i].addr, r.plan_sha256
        )));
    }
    Ok(())
}

/// Requests cut by a stop the plan did not ask for (lease expired, hard
/// deadline, shutdown): failure looks like failure.
fn unasked_stop_notes(
    agents: &[AgentReport],
    stops: &[Option<pb::StopReason>],
    merger: &Merger,
) -> Vec<String> {
    agents
        .iter()
        .zip(stops)
        .zip(&merger.agents)
        .filter_map(|((a, r), t)| {
            let why = crate::edges::unasked_stop((*r)?, crate::link::LEASE)?;
            Some(crate::edges::unasked_stop_note(
                a,
                &why,
                t.counters.requests_incomplete,
            ))
        })
        .collect()
}

/// Each agent's weight: its declared capacity, else its cores.
fn capacity_weights(links: &[AgentLink]) -> Vec<f64> {
    links
        .iter()
        .map(|l| {
            l.hello.capacity.as_ref().map_or(1.0, |c| {
                if c.weight > 0.0 {
                    c.weight
                } else {
                    f64::from(c.cores.max(1))
                }
            })
        })
        .collect()
}

/// Trace replay: each agent gets its stripe of arrivals (set in its slice)
/// and their prompts.
fn stripe_trace(
    t: &crate::trace::Trace,
    weights: &[f64],
    slices: &mut [pb::Slice],
) -> Vec<Vec<pb::Prompt>> {
    t.split(weights)
        .into_iter()
        .zip(slices.iter_mut())
        .map(|((offsets, prompts), slice)| {
            slice.max_requests = Some(offsets.len() as u64);
            slice.arrival_offsets_s = offsets;
            slice.duration_ms = 0;
            // An agent without arrivals still needs a dataset to prepare.
            if prompts.is_empty() {
                t.prompts[..1].to_vec()
            } else {
                prompts
            }
        })
        .collect()
}

/// The one histogram layout of this run, at the plan's precision.
fn run_layouts(plan: &PlanFile) -> Layouts {
    Layouts {
        latency: Layout {
            sigfig: plan.metrics.sigfig,
            ..Layout::LATENCY_US
        },
        tokens: Layout {
            sigfig: plan.metrics.sigfig,
            ..Layout::TOKENS
        },
    }
}

/// When an agent stops by itself, whatever the controller does: the run's
/// length, the drain and one request timeout, with a margin.
fn hard_deadline(
    plan: &PlanFile,
    trace: Option<&crate::trace::Trace>,
    drain: Duration,
) -> Duration {
    match plan
        .load
        .effective_duration()
        .or(trace.map(|t| Duration::from_secs_f64(t.span_s())))
    {
        Some(d) => d + drain + plan.target.timeout + Duration::from_secs(30),
        None => Duration::from_secs(24 * 3600),
    }
}

/// The request parameters every agent sends, from `[request]`.
fn request_params(plan: &PlanFile) -> pb::RequestParams {
    let extra = plan.request.extra_json(plan.target.api);
    pb::RequestParams {
        max_tokens: plan.request.max_tokens,
        temperature: plan.request.temperature,
        ignore_eos: plan.request.ignore_eos,
        extra_body_json: if extra.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(extra).to_string()
        },
    }
}

/// The GPU exporters' token: given directly, else `monitor.token_env`, else
/// the agents' `cluster.token_env`.
fn monitor_token(opts: &RunOptions, plan: &PlanFile) -> Result<Option<Token>, RunError> {
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
async fn start_together(
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

/// Each agent's id, address, users and share of the load (users in closed
/// loop, rate in open loop).
fn agent_infos(links: &[AgentLink], slices: &[pb::Slice]) -> Vec<(String, String, u64, f64)> {
    let total_weight: f64 = slices.iter().map(slice_weight).sum();
    links
        .iter()
        .zip(slices)
        .map(|(l, s)| {
            let share = if total_weight > 0.0 {
                slice_weight(s) / total_weight
            } else {
                0.0
            };
            (
                l.hello.agent_id.clone(),
                l.addr.clone(),
                s.user_indexes.len() as u64,
                share,
            )
        })
        .collect()
}

/// Open loop: the planned arrivals per second (None in closed loop).
fn offered_rate(
    load: &barrage_common::load::LoadSection,
    slices: &[pb::Slice],
    trace: Option<&crate::trace::Trace>,
) -> Option<f64> {
    match load.mode() {
        barrage_common::load::LoadMode::Rate => load.rate_per_second(),
        barrage_common::load::LoadMode::Stages if load.open_loop() => {
            let total: f64 = slices.iter().map(expected_arrivals).sum();
            load.effective_duration().map(|d| total / d.as_secs_f64())
        }
        barrage_common::load::LoadMode::Trace => trace
            .filter(|t| t.span_s() > 0.0)
            .map(|t| t.offsets_s.len() as f64 / t.span_s()),
        _ => None,
    }
}

/// The part of the load that ran on lost agents.
fn lost_share_note(
    agents: &[AgentReport],
    load: &barrage_common::load::LoadSection,
) -> Option<String> {
    let lost: Vec<&AgentReport> = agents.iter().filter(|a| a.lost.is_some()).collect();
    if lost.is_empty() {
        return None;
    }
    let share: f64 = lost.iter().map(|a| a.share).sum();
    let users: u64 = lost.iter().map(|a| a.users).sum();
    let what = if load.open_loop() {
        format!("{:.1} % of the arrival rate", share * 100.0)
    } else {
        format!(
            "{users} of {} users ({:.1} %)",
            load.peak_users(),
            share * 100.0
        )
    };
    Some(format!(
        "{what} ran on lost agents; their unreported intervals are missing"
    ))
}

/// A generator that stays saturated inflates the latencies it measures.
fn saturation_notes(agents: &[AgentReport], merger: &Merger, embedded: bool) -> Vec<String> {
    let mut notes = Vec::new();
    for (a, t) in agents.iter().zip(&merger.agents) {
        if t.hot_intervals >= 3 && t.hot_intervals * 2 >= t.intervals {
            let who = if embedded {
                "this machine (embedded agents, simulator and controller share it)".to_owned()
            } else {
                format!("agent {} ({})", a.id, a.addr)
            };
            notes.push(format!(
                "{who} stayed above 90 % CPU in {} of {} intervals: latencies may be client-bound",
                t.hot_intervals, t.intervals
            ));
            if embedded {
                break;
            }
        }
    }
    notes
}

/// Open-loop delivery: offered vs achieved rate and the schedule lag.
fn open_loop_report(
    merger: &Merger,
    offered_rate: Option<f64>,
    achieved_rate: f64,
) -> report::OpenLoopReport {
    let lag = merger
        .totals
        .get(barrage_common::metrics::Metric::ScheduleLag);
    let ms = |v: Option<u64>| v.map(|x| x as f64 / 1000.0);
    report::OpenLoopReport {
        offered_rate,
        achieved_rate,
        arrivals_unsent: merger.counters.arrivals_unsent,
        schedule_lag_p50_ms: ms(lag.quantile(0.5)),
        schedule_lag_p99_ms: ms(lag.quantile(0.99)),
        schedule_lag_max_ms: ms(lag.quantile(1.0)),
    }
}

/// The stop reason of an agent's final totals; one the plan did not ask
/// for is logged at once (it also degrades the run).
fn final_reason(addr: &str, fin: &pb::Final) -> pb::StopReason {
    let reason = pb::StopReason::try_from(fin.reason).unwrap_or(pb::StopReason::Unspecified);
    if let Some(why) = crate::edges::unasked_stop(reason, crate::link::LEASE) {
        tracing::warn!(agent = %addr, "agent stopped its load itself: {why}");
    }
    reason
}

/// A run in which requests ended and none succeeded failed, whatever the
/// thresholds say (there may be none).
fn every_request_failed(c: &barrage_common::metrics::Counters) -> bool {
    c.requests_ok == 0 && c.requests_failed > 0
}

/// Per-request goodput limits from `[slo]`: the tightest limit given on each
/// of ttft, ttfo, tpot, e2e and max_stall, whatever its statistic.
pub fn request_slo(plan: &PlanFile) -> pb::RequestSlo {
    use barrage_common::metrics::Metric;
    use barrage_common::thresholds::Subject;
    let mut slo = pb::RequestSlo::default();
    for c in plan.slo.checks().unwrap_or_default() {
        let Subject::Metric(m, _) = c.subject else {
            continue;
        };
        let us = (c.limit * 1000.0).round() as u64;
        let field = match m {
            Metric::Ttft => &mut slo.ttft_us,
            Metric::Ttfo => &mut slo.ttfo_us,
            Metric::Tpot => &mut slo.tpot_us,
            Metric::E2e => &mut slo.e2e_us,
            Metric::MaxStall => &mut slo.max_stall_us,
            _ => continue,
        };
        *field = Some(field.map_or(us, |v| v.min(us)));
    }
    slo
}

/// Arrivals a rate-stage slice plans over its stages (the profile's area).
fn expected_arrivals(s: &pb::Slice) -> f64 {
    let mut prev = 0.0;
    let mut area = 0.0;
    for st in &s.stages {
        area += 0.5 * (prev + st.target) * st.duration_ms as f64 / 1000.0;
        prev = st.target;
    }
    area
}

/// Opens every agent's session. Agents that cannot be reached yet (not up,
/// connection refused) are retried until `agent_wait` has passed; an agent
/// that answers and refuses (token, busy, version) fails the run at once
/// unless `min_agents` allows starting without it. Without `min_agents`
/// every listed agent is needed; with it, the run starts once that many
/// answered (or all did).
async fn open_links(
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
const AGENT_RETRY: Duration = Duration::from_millis(500);

fn agents_missing(plan: &PlanFile, ready: usize, needed: usize, errors: &[String]) -> RunError {
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

/// What the sequence check found for one agent: reconnects, resent
/// intervals dropped, intervals that never arrived.
fn sequence_note(a: &AgentReport) -> Option<String> {
    let mut parts = Vec::new();
    if a.reconnects > 0 {
        parts.push(format!(
            "connection dropped and resumed {} time(s), {} resent interval(s) dropped",
            a.reconnects, a.intervals_duplicated
        ));
    }
    if a.intervals_missing > 0 {
        parts.push(format!(
            "{} interval(s) never arrived: its figures are incomplete",
            a.intervals_missing
        ));
    }
    (!parts.is_empty()).then(|| format!("agent {} ({}): {}", a.id, a.addr, parts.join("; ")))
}

/// The quantity a slice carries: users, else its (peak) rate.
fn slice_weight(s: &pb::Slice) -> f64 {
    if !s.user_indexes.is_empty() {
        return s.user_indexes.len() as f64;
    }
    let peak = s.stages.iter().map(|st| st.target).fold(s.rate, f64::max);
    if s.rate_infinite {
        s.max_requests.unwrap_or(0) as f64
    } else {
        peak
    }
}

fn progress(r: &crate::merge::IntervalRow) {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
    eprintln!(
        "[{:>6.1}s] ok {:>6}  failed {:>4}  in-flight {:>5}  out tok {:>7}  ttft p50 {:>7} ms  itl p50 {:>6} ms  e2e p99 {:>8} ms",
        r.t_s + 0.0,
        r.requests_ok,
        r.requests_failed,
        r.in_flight,
        r.output_tokens,
        f(r.ttft_p50_ms),
        f(r.itl_p50_ms),
        f(r.e2e_p99_ms)
    );
}
