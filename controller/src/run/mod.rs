//! One run, start to finish: resolve the target (or start the built-in
//! simulator) and the agents (or start embedded ones), split the load, open
//! every session, prepare, start everyone at one agreed moment, merge what
//! streams back, and write the report — also when the run is interrupted or
//! loses agents, so nothing measured is lost.

use std::path::PathBuf;
use std::time::Instant;

use barrage_common::auth::Token;
use barrage_common::plan::PlanFile;
use barrage_common::tls::ClientTls;
use barrage_proto::agent::v1 as pb;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dataset;
use crate::link::{AgentLink, LinkError, LinkRuntime};
use crate::merge::Merger;
use crate::report::{self, RunFacts, Summary};

mod connect;
mod finish;
mod prepare;
mod stream;

use connect::*;
use finish::*;
use prepare::*;
use stream::*;

pub use prepare::request_slo;

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
