//! Many steps in one run: a `[sweep]` matrix (each step its own results,
//! one comparison table for all) or an SLO search (bracketing then
//! bisection for the highest users / rate that keeps every `[slo]` limit).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use barrage_common::load::{LoadMode, RateValue};
use barrage_common::plan::PlanFile;
use barrage_common::sweep::{SearchOver, StepSpec, SweepSection};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{Events, Outputs, PlanEnd, PlanStart, RunEvent};
use crate::report::Summary;
use crate::run::{RunError, RunOptions, RunOutcome, StepOut, Verdict, execute_with, run_step};

/// One step in the comparison table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepRow {
    pub step: usize,
    pub label: String,
    pub users: Option<u64>,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub status: String,
    /// Every `[slo]` / `[thresholds]` limit held.
    pub limits_held: bool,
    pub requests_ok: u64,
    pub success_rate: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub goodput: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub tpot_p50_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    /// Where this step's own results are.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchResult {
    pub over: SearchOver,
    /// The highest value that kept every limit (None: even the first failed).
    pub best: Option<f64>,
    /// The lowest value that broke a limit.
    pub first_failing: Option<f64>,
    pub goodput_at_best: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepReport {
    pub name: String,
    pub status: String,
    pub steps: Vec<SweepRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchResult>,
}

pub struct SweepOutcome {
    pub report: SweepReport,
    pub dir: PathBuf,
    pub verdict: Verdict,
}

/// A plan's outcome: one run, or a sweep of them.
pub enum PlanOutcome {
    /// Boxed: a run's summary is much larger than a sweep's handle.
    Single(Box<RunOutcome>),
    Sweep(SweepOutcome),
}

impl PlanOutcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            PlanOutcome::Single(o) => o.verdict,
            PlanOutcome::Sweep(o) => o.verdict,
        }
    }
}

/// Runs a plan: directly, or as the steps of its `[sweep]`.
pub async fn execute_plan(
    plan: PlanFile,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<PlanOutcome, RunError> {
    let outputs = crate::outputs::defaults(&opts);
    execute_plan_with(plan, opts, cancel, outputs).await
}

/// `execute_plan` with the given outputs.
pub async fn execute_plan_with(
    plan: PlanFile,
    opts: RunOptions,
    cancel: CancellationToken,
    consumers: Vec<Box<dyn crate::events::Consumer>>,
) -> Result<PlanOutcome, RunError> {
    let Some(sweep) = plan.sweep.clone() else {
        return Ok(PlanOutcome::Single(Box::new(
            execute_with(plan, opts, cancel, consumers).await?,
        )));
    };
    let started = chrono::Local::now();
    let stamp = started.format("%Y%m%d-%H%M%S");
    let dir = plan.output.dir.join(format!("{}-sweep-{stamp}", plan.name));
    let outputs = Outputs::start(consumers);
    let events = outputs.events();
    events.emit(RunEvent::PlanStarted(PlanStart {
        name: plan.name.clone(),
        dir: dir.clone(),
        plan_toml: crate::run::plan_text(&plan)?,
        started_at: started.to_rfc3339(),
        sweep: true,
    }));
    let steps = Steps {
        dir: &dir,
        opts: &opts,
        cancel: &cancel,
        events: &events,
    };
    let result = match sweep.search {
        Some(over) => search(&plan, &sweep, over, &steps).await,
        None => matrix(&plan, &sweep, &steps).await,
    };
    if let Ok(o) = &result {
        events.emit(RunEvent::PlanFinished(PlanEnd {
            verdict: o.verdict,
            dir: o.dir.clone(),
            sweep: Some(o.report.clone()),
        }));
    }
    drop(events);
    let closed = outputs.close();
    let outcome = result?;
    crate::run::outputs_written(&closed, &dir)?;
    Ok(PlanOutcome::Sweep(outcome))
}

/// The plan of one step: the base plan with the step's keys set.
pub fn step_plan(
    base: &PlanFile,
    spec: &StepSpec,
    index: usize,
    dir: &Path,
) -> Result<PlanFile, RunError> {
    let mut p = base.clone();
    p.sweep = None;
    p.output.dir = dir.to_owned();
    p.name = format!(
        "step{index:02}{}{}",
        if spec.label.is_empty() { "" } else { "-" },
        spec.label
    );
    if let Some(u) = spec.users {
        p.load.users = Some(u);
        p.load.rate = None;
        p.load.mode = Some(LoadMode::Concurrency);
    }
    if let Some(r) = spec.rate {
        p.load.rate = Some(RateValue::PerSecond(r));
        p.load.users = None;
        p.load.mode = Some(LoadMode::Rate);
    }
    if let Some(n) = spec.requests {
        p.load.requests = Some(n);
    }
    if let Some([input, output]) = spec.io {
        p.dataset.input_tokens = input;
        p.dataset.output_tokens = Some(output);
        p.request.max_tokens = output;
    }
    p.validate()
        .map_err(|e| RunError::Setup(format!("sweep step {index} ({}): {e}", spec.label)))?;
    Ok(p)
}

fn row(index: usize, spec: &StepSpec, o: &RunOutcome) -> SweepRow {
    let s: &Summary = &o.summary;
    let q = |m: &str, p: &str| s.metrics.get(m).and_then(|d| d.percentiles.get(p).copied());
    SweepRow {
        step: index,
        label: spec.label.clone(),
        users: spec.users,
        rate: spec.rate,
        requests: spec.requests,
        input_tokens: spec.io.map(|io| io[0]),
        output_tokens: spec.io.map(|io| io[1]),
        status: s.status.clone(),
        limits_held: s.thresholds.iter().all(|t| t.passed)
            && !matches!(o.verdict, Verdict::Degraded | Verdict::Failed),
        requests_ok: s.requests_ok,
        success_rate: s.success_rate,
        request_throughput: s.request_throughput,
        output_throughput: s.output_throughput,
        goodput: s.goodput,
        ttft_p50_ms: q("ttft", "p50"),
        ttft_p99_ms: q("ttft", "p99"),
        itl_p50_ms: q("itl", "p50"),
        itl_p99_ms: q("itl", "p99"),
        tpot_p50_ms: q("tpot", "p50"),
        e2e_p50_ms: q("e2e", "p50"),
        e2e_p99_ms: q("e2e", "p99"),
        dir: o.dir.clone(),
    }
}

async fn cooldown(d: Duration, cancel: &CancellationToken) {
    if !d.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

fn worst(verdicts: &[Verdict], interrupted: bool) -> Verdict {
    if interrupted {
        Verdict::Interrupted
    } else if verdicts.contains(&Verdict::Failed) {
        Verdict::Failed
    } else if verdicts.contains(&Verdict::Degraded) {
        Verdict::Degraded
    } else if verdicts.contains(&Verdict::Breached) {
        Verdict::Breached
    } else {
        Verdict::Completed
    }
}

/// What every step of a sweep shares: the sweep's folder, the options, the
/// stop signal and the outputs.
struct Steps<'a> {
    dir: &'a Path,
    opts: &'a RunOptions,
    cancel: &'a CancellationToken,
    events: &'a Events,
}

impl Steps<'_> {
    async fn run(&self, plan: PlanFile, step: usize) -> Result<RunOutcome, RunError> {
        let out = StepOut::new(self.events, step as u32);
        run_step(plan, self.opts, self.cancel.clone(), out).await
    }
}

async fn matrix(
    plan: &PlanFile,
    sweep: &SweepSection,
    steps: &Steps<'_>,
) -> Result<SweepOutcome, RunError> {
    let (dir, cancel) = (steps.dir, steps.cancel);
    let specs = sweep.steps();
    // Every step's plan is checked before the first one sends anything.
    let plans = specs
        .iter()
        .enumerate()
        .map(|(i, s)| step_plan(plan, s, i + 1, dir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for (i, (spec, p)) in specs.iter().zip(plans).enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        if i > 0 {
            cooldown(sweep.cooldown, cancel).await;
        }
        steps.events.emit(RunEvent::Message(format!(
            "sweep step {}/{}: {}",
            i + 1,
            specs.len(),
            spec.label
        )));
        let o = steps.run(p, i + 1).await?;
        verdicts.push(o.verdict);
        rows.push(row(i + 1, spec, &o));
    }
    let verdict = worst(&verdicts, cancel.is_cancelled());
    Ok(SweepOutcome {
        report: SweepReport {
            name: plan.name.clone(),
            status: format!("{verdict:?}").to_lowercase(),
            steps: rows,
            search: None,
        },
        dir: dir.to_owned(),
        verdict,
    })
}

async fn search(
    plan: &PlanFile,
    sweep: &SweepSection,
    over: SearchOver,
    steps: &Steps<'_>,
) -> Result<SweepOutcome, RunError> {
    let (dir, cancel) = (steps.dir, steps.cancel);
    let integer = over == SearchOver::Users;
    let norm = |v: f64| if integer { v.round().max(1.0) } else { v };
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut goodput_at_best = None;
    let mut rows = Vec::new();
    let mut v = norm(sweep.search_min);
    let mut base = plan.clone();
    // A probe passes when every SLO holds: judge it through the thresholds.
    base.thresholds = plan.slo.clone();
    base.thresholds.abort_on_breach = false;
    for step in 1..=sweep.search_max_steps as usize {
        if cancel.is_cancelled() {
            break;
        }
        if step > 1 {
            cooldown(sweep.cooldown, cancel).await;
        }
        let spec = StepSpec {
            label: if integer {
                format!("u{v}")
            } else {
                format!("r{v:.3}")
            },
            users: integer.then_some(v as u64),
            rate: (!integer).then_some(v),
            requests: sweep.requests.first().copied(),
            io: sweep.io.first().copied(),
        };
        steps.events.emit(RunEvent::Message(format!(
            "slo search step {step}: {}",
            spec.label
        )));
        let o = steps.run(step_plan(&base, &spec, step, dir)?, step).await?;
        if o.verdict == Verdict::Interrupted {
            rows.push(row(step, &spec, &o));
            break;
        }
        let r = row(step, &spec, &o);
        if r.limits_held {
            pass = Some(v);
            goodput_at_best = r.goodput.or(Some(r.request_throughput));
        } else {
            fail = Some(v);
        }
        rows.push(r);
        let next = match (pass, fail) {
            (Some(p), None) => norm((p * 2.0).min(sweep.search_max)),
            (None, Some(f)) => norm((f / 2.0).max(sweep.search_min)),
            (Some(p), Some(f)) => norm((p + f) / 2.0),
            (None, None) => break,
        };
        let narrow = match (pass, fail) {
            (Some(p), Some(f)) => {
                (f - p) / p <= sweep.search_precision || (integer && f - p <= 1.0)
            }
            _ => false,
        };
        if narrow
            || next == v
            || (pass.is_none() && v <= sweep.search_min)
            || (fail.is_none() && v >= sweep.search_max)
        {
            break;
        }
        v = next;
    }
    let verdict = if cancel.is_cancelled() {
        Verdict::Interrupted
    } else {
        Verdict::Completed
    };
    Ok(SweepOutcome {
        report: SweepReport {
            name: plan.name.clone(),
            status: format!("{verdict:?}").to_lowercase(),
            steps: rows,
            search: Some(SearchResult {
                over,
                best: pass,
                first_failing: fail,
                goodput_at_best,
            }),
        },
        dir: dir.to_owned(),
        verdict,
    })
}

fn o(v: Option<f64>, d: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.d$}"))
}

/// The comparison table as printed.
pub fn render(r: &SweepReport) -> String {
    let mut out = format!("\nSweep: {} ({})\n", r.name, r.status);
    let _ = writeln!(
        out,
        "  {:>4} {:<26} {:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "step",
        "label",
        "ok",
        "success",
        "req/s",
        "out tok/s",
        "goodput",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "e2e p50",
        "limits"
    );
    for s in &r.steps {
        let _ = writeln!(
            out,
            "  {:>4} {:<26} {:>6} {:>7.1}% {:>9.3} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            s.step,
            s.label,
            s.requests_ok,
            s.success_rate * 100.0,
            s.request_throughput,
            s.output_throughput,
            o(s.goodput, 3),
            o(s.ttft_p50_ms, 1),
            o(s.ttft_p99_ms, 1),
            o(s.itl_p50_ms, 2),
            o(s.itl_p99_ms, 2),
            o(s.e2e_p50_ms, 1),
            if s.limits_held { "ok" } else { "FAIL" }
        );
    }
    if let Some(s) = &r.search {
        let _ = writeln!(
            out,
            "\n  SLO search over {:?}: highest passing {} (first failing {}), goodput there {} req/s",
            s.over,
            o(s.best, 3),
            o(s.first_failing, 3),
            o(s.goodput_at_best, 3)
        );
    }
    out
}

pub fn write(dir: &Path, r: &SweepReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("sweep.json"), json)?;
    let mut csv = String::from(
        "step,label,users,rate,requests,input_tokens,output_tokens,status,limits_held,requests_ok,success_rate,request_throughput,output_throughput,goodput,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,tpot_p50_ms,e2e_p50_ms,e2e_p99_ms\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
    let n = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
    for s in &r.steps {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.3},{},{},{},{},{},{},{},{}",
            s.step,
            s.label,
            n(s.users),
            f(s.rate),
            n(s.requests),
            n(s.input_tokens.map(u64::from)),
            n(s.output_tokens.map(u64::from)),
            s.status,
            s.limits_held,
            s.requests_ok,
            s.success_rate,
            s.request_throughput,
            s.output_throughput,
            f(s.goodput),
            f(s.ttft_p50_ms),
            f(s.ttft_p99_ms),
            f(s.itl_p50_ms),
            f(s.itl_p99_ms),
            f(s.tpot_p50_ms),
            f(s.e2e_p50_ms),
            f(s.e2e_p99_ms)
        );
    }
    std::fs::write(dir.join("sweep.csv"), csv)
}
