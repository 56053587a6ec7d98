//! One run, start to finish: resolve the target (or start the built-in
//! simulator) and the agents (or start embedded ones), split the load, open
//! every session, prepare, start everyone at one agreed moment, merge what
//! streams back, and write the report — also when the run is interrupted or
//! loses agents, so nothing measured is lost.

use std::path::PathBuf;

use barrage_common::auth::Token;
use barrage_common::plan::PlanFile;
use barrage_common::tls::ClientTls;
use barrage_proto::agent::v1 as pb;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dataset;
use crate::events::{
    AgentStart, Events, Outputs, PlanEnd, PlanStart, RunEvent, StepEnd, StepStart,
};
use crate::link::{AgentLink, LinkError, LinkRuntime};
use crate::merge::Merger;
use crate::report::Summary;

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

/// Runs a plan without a sweep as one step, with the default outputs
/// (`outputs::defaults`). `cancel` (Ctrl-C) stops every agent and still
/// writes the report of what was measured.
pub async fn execute(
    plan: PlanFile,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunError> {
    let outputs = crate::outputs::defaults(&opts);
    execute_with(plan, opts, cancel, outputs).await
}

/// `execute` with the given outputs (the defaults plus a service's live
/// view, a test's recorder...).
pub async fn execute_with(
    plan: PlanFile,
    opts: RunOptions,
    cancel: CancellationToken,
    consumers: Vec<Box<dyn crate::events::Consumer>>,
) -> Result<RunOutcome, RunError> {
    let outputs = Outputs::start(consumers);
    let events = outputs.events();
    let step = StepOut::new(&events, 0);
    let dir = step.dir(&plan);
    events.emit(RunEvent::PlanStarted(PlanStart {
        name: plan.name.clone(),
        dir: dir.clone(),
        plan_toml: plan_text(&plan)?,
        started_at: step.started.to_rfc3339(),
        sweep: false,
    }));
    let result = run_step(plan, &opts, cancel, step).await;
    if let Ok(o) = &result {
        events.emit(RunEvent::PlanFinished(PlanEnd {
            verdict: o.verdict,
            dir: o.dir.clone(),
            sweep: None,
        }));
    }
    drop(events);
    let closed = outputs.close();
    let outcome = result?;
    outputs_written(&closed, &dir)?;
    Ok(outcome)
}

/// The run's results folder must be written; another output that failed
/// (the console, a report) is logged by its thread and does not fail the run.
pub(crate) fn outputs_written(
    closed: &[crate::events::ConsumerReport],
    dir: &std::path::Path,
) -> Result<(), RunError> {
    match closed
        .iter()
        .find(|r| r.name == crate::outputs::RESULTS_FOLDER && r.error.is_some())
    {
        Some(r) => Err(RunError::Output {
            dir: dir.to_owned(),
            reason: r
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// The plan as written into the results: header values and URL
/// credentials (which may be secrets) redacted.
pub(crate) fn plan_text(plan: &PlanFile) -> Result<String, RunError> {
    barrage_common::redact::plan_for_display(plan)
        .to_toml()
        .map_err(|e| RunError::Setup(e.to_string()))
}

/// Where one step sends its events, and its identity: index, run id and
/// the wall-clock moment that names its folder.
pub(crate) struct StepOut<'a> {
    pub events: &'a Events,
    pub step: u32,
    pub run_id: String,
    pub started: chrono::DateTime<chrono::Local>,
}

impl<'a> StepOut<'a> {
    pub fn new(events: &'a Events, step: u32) -> Self {
        Self {
            events,
            step,
            run_id: format!("{:016x}", rand::random::<u64>()),
            started: chrono::Local::now(),
        }
    }

    /// The step's results folder, below the plan's `[output] dir`.
    pub fn dir(&self, plan: &PlanFile) -> PathBuf {
        plan.output.dir.join(format!(
            "{}-{}-{}",
            plan.name,
            self.started.format("%Y%m%d-%H%M%S"),
            &self.run_id[..8]
        ))
    }
}

/// What a step loads before any agent is contacted: a bad file fails here,
/// before traffic.
struct Loaded {
    plan_toml: String,
    plan_sha: String,
    tls: Option<ClientTls>,
    trace: Option<crate::trace::Trace>,
    tokenizer_json: Vec<u8>,
    prompts: Vec<pb::Prompt>,
    /// How the prompts' input tokens were counted (with a tokenizer).
    counted: Option<dataset::CountInfo>,
    /// Multi-turn replay: think times and how agents count each turn.
    conversation: Option<pb::Conversation>,
}

fn load(plan: &PlanFile, opts: &RunOptions) -> Result<Loaded, RunError> {
    let plan_toml = plan_text(plan)?;
    let plan_sha = format!("{:x}", Sha256::digest(plan_toml.as_bytes()));
    // TLS files are read and checked before anything connects.
    let tls = ClientTls::from_cluster(&plan.cluster, opts.plan_dir.as_deref())?;
    // Input tokens are counted as the target's server counts them.
    let api = Some(plan.target.api);
    let trace = crate::trace::load_for(&plan.load, &plan.dataset, opts.plan_dir.as_deref(), api)?;
    // Agents count output with the plan's tokenizer when the server reports
    // no usage: they get the file's bytes, not its path.
    let tokenizer_json = dataset::tokenizer_bytes(&plan.dataset, opts.plan_dir.as_deref())?;
    let dir = opts.plan_dir.as_deref();
    let (prompts, counted) = match (&trace, &plan.conversation) {
        (Some(t), _) => (t.prompts.clone(), t.counted.clone()),
        (None, Some(c)) => {
            let d = dataset::conversations::load(&plan.dataset, c, dir, plan.target.api)?;
            (d.prompts, d.counted)
        }
        (None, None) => {
            let d = dataset::load_for(&plan.dataset, dir, api)?;
            (d.prompts, d.counted)
        }
    };
    let conversation = match &plan.conversation {
        Some(c) => Some(pb::Conversation {
            think_time_us: u64::try_from(c.think_time.as_micros()).unwrap_or(u64::MAX),
            distribution: think_time_proto(c.think_time_distribution) as i32,
            counting: dataset::Loaded::turn_counting(&plan.dataset, dir, plan.target.api)?,
        }),
        None => None,
    };
    Ok(Loaded {
        plan_toml,
        plan_sha,
        tls,
        trace,
        tokenizer_json,
        prompts,
        counted,
        conversation,
    })
}

fn think_time_proto(d: barrage_common::conversation::ThinkTimeDistribution) -> pb::ThinkTime {
    use barrage_common::conversation::ThinkTimeDistribution as D;
    match d {
        D::Constant => pb::ThinkTime::Constant,
        D::Exponential => pb::ThinkTime::Exponential,
        D::Uniform => pb::ThinkTime::Uniform,
    }
}

/// One step: load, resolve the target and the agents, drive the load,
/// then emit the step's summary to the outputs.
pub(crate) async fn run_step(
    plan: PlanFile,
    opts: &RunOptions,
    cancel: CancellationToken,
    out: StepOut<'_>,
) -> Result<RunOutcome, RunError> {
    let loaded = load(&plan, opts)?;
    let target = resolve_target(&plan, opts.plan_dir.as_deref()).await?;
    let target_pb = target_proto(&plan, &target.url)?;
    let (addrs, token, embedded) = resolve_agents(
        &plan,
        opts.embedded_threads.unwrap_or(1),
        opts.agent_token.clone(),
    )
    .await?;
    let dir = out.dir(&plan);
    let result = drive(
        &plan,
        opts,
        &loaded,
        (target_pb, &addrs, token.as_ref()),
        (&out, &dir),
        cancel,
    )
    .await;
    if let Some(e) = embedded {
        e.shutdown().await;
    }
    let (mut summary, verdict) = result?;
    summary.started_at = out.started.to_rfc3339();
    summary.notes.extend(
        loaded
            .trace
            .as_ref()
            .and_then(crate::trace::Trace::counts_note),
    );
    if let Some(c) = &loaded.counted {
        summary.token_source.set_counting(c);
        if c.chat_without_template {
            summary.notes.push(c.how.clone());
        }
    }
    if let Some(sim) = target.sim {
        summary.simulator = Some(sim.stats());
        sim.shutdown().await;
    }
    out.events.emit(RunEvent::StepFinished(Box::new(StepEnd {
        step: out.step,
        summary: summary.clone(),
        verdict,
        dir: dir.clone(),
        plan_toml: loaded.plan_toml,
    })));
    Ok(RunOutcome {
        summary,
        dir,
        verdict,
    })
}

/// The phases of one step: connect and align clocks, prepare, start
/// together, stream and merge, finish.
async fn drive(
    plan: &PlanFile,
    opts: &RunOptions,
    loaded: &Loaded,
    (target, addrs, token): (pb::Target, &[String], Option<&Token>),
    (out, dir): (&StepOut<'_>, &PathBuf),
    cancel: CancellationToken,
) -> Result<(Summary, Verdict), RunError> {
    let embedded = plan.cluster.agents.is_empty();
    // Embedded agents serve plaintext on loopback; TLS is for listed agents.
    let agent_tls = if embedded { None } else { loaded.tls.as_ref() };
    let link_rt = LinkRuntime::start()
        .map_err(|e| RunError::Setup(format!("starting the agent links' runtime: {e}")))?;
    let (mut links, offsets) =
        connect_all(plan, addrs, (token, agent_tls), &link_rt, &out.run_id).await?;
    let prepared = prepare_step(plan, loaded, &target, &out.run_id, &mut links).await?;
    let monitors = crate::monitor::Monitors::start(
        &plan.monitor,
        monitor_token(opts, plan)?,
        loaded.tls.as_ref(),
    )
    .await;
    let start_local = start_together(&links, &offsets).await?;
    let start_instant = barrage_common::clock::instant_at(start_local);
    tracing::info!(agents = links.len(), mode = ?plan.load.mode(), "run started");
    let infos = agent_infos(&links, &prepared.slices);
    out.events.emit(RunEvent::StepStarted(step_start(
        plan,
        out,
        dir,
        &loaded.plan_toml,
        &infos,
    )));
    let mut merger = new_merger(plan, &links, prepared.layouts)?;
    let checks = plan
        .thresholds
        .checks()
        .map_err(|(k, p)| RunError::Setup(format!("thresholds.{k}: {p}")))?;
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
            cancel: &cancel,
            stop: &stop,
            events: out.events,
            step: out.step,
            monitors: &monitors,
        },
    )
    .await;
    let ran = Ran {
        merger,
        streamed,
        infos,
        offsets,
        slices: prepared.slices,
        start_local,
        start_instant,
        checks,
        drain: prepared.drain,
    };
    Ok(finish_step(
        plan,
        loaded.trace.as_ref(),
        (&out.run_id, &target.url),
        monitors,
        ran,
        out,
    )
    .await)
}

/// The event that opens a step: its identity and what ends its load.
fn step_start(
    plan: &PlanFile,
    out: &StepOut<'_>,
    dir: &std::path::Path,
    plan_toml: &str,
    infos: &[(String, String, u64, f64)],
) -> StepStart {
    let load = &plan.load;
    StepStart {
        step: out.step,
        name: plan.name.clone(),
        run_id: out.run_id.clone(),
        dir: dir.to_owned(),
        plan_toml: plan_toml.to_owned(),
        started_at: out.started.to_rfc3339(),
        interval_s: plan.metrics.interval.as_secs_f64(),
        duration_s: load.effective_duration().map(|d| d.as_secs_f64()),
        requests: load.requests,
        users: if load.open_loop() {
            0
        } else {
            load.peak_users()
        },
        rate: load.rate_per_second(),
        agents: infos
            .iter()
            .map(|(id, addr, users, share)| AgentStart {
                id: id.clone(),
                addr: addr.clone(),
                users: *users,
                share: *share,
            })
            .collect(),
    }
}

/// The merger of this step, knowing each agent's cores (for the CPU
/// saturation check) and the warmup window.
fn new_merger(
    plan: &PlanFile,
    links: &[AgentLink],
    layouts: barrage_common::metrics::Layouts,
) -> Result<Merger, RunError> {
    let interval = plan.metrics.interval;
    let mut merger = Merger::new(layouts, links.len(), interval.as_secs_f64())?;
    for (tally, link) in merger.agents.iter_mut().zip(links) {
        tally.cores = link
            .hello
            .capacity
            .as_ref()
            .map_or(1.0, |c| f64::from(c.cores.max(1)));
    }
    merger.warmup_intervals =
        crate::edges::warmup_window(plan.load.warmup.unwrap_or_default(), interval).0;
    Ok(merger)
}
