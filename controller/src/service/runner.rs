//! The scheduler: starts queued runs in submission order, as many at once
//! per pool as the pool allows (default 1), through the same code as
//! `controller run`; cancels; and on start-up marks runs that a restart cut
//! as interrupted (rebuilding their reports from what they stored).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use barrage_common::plan::{self, PlanError, PlanFile};
use figment::Figment;
use figment::providers::{Format, Toml};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Service;
use super::queue::{QueueError, RunRow, RunStatus};
use crate::events::Consumer;
use crate::run::RunOptions;
use crate::sweep::{PlanOutcome, execute_plan_with};

/// Why a run's cancel token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    User,
    Shutdown,
}

struct Running {
    pool: String,
    cancel: CancellationToken,
    reason: Option<StopReason>,
}

/// What cancel did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// A queued run: it ends at once.
    Dequeued,
    /// A running run: its agents are told to stop; it ends when they did.
    Stopping,
    /// It already ended, or a cancel is under way.
    NotCancellable(RunStatus),
    NotFound,
}

pub struct Runner {
    /// Runs at once per pool (a pool not named here: 1).
    pools: BTreeMap<String, usize>,
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
}

/// The plan text of a submitted run, parsed and checked as `controller
/// run` does (the same messages); `BARRAGE_*` variables are not applied.
pub fn parse_plan(text: &str) -> Result<PlanFile, PlanError> {
    plan::from_figment(Figment::from(Toml::string(text)))
}

impl Runner {
    pub fn new(pools: BTreeMap<String, usize>) -> Self {
        Self {
            pools,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something changed (a run queued or ended): look for work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn limit(&self, pool: &str) -> usize {
        self.pools.get(pool).copied().unwrap_or(1).max(1)
    }

    /// Cancels a queued or running run.
    pub fn cancel(&self, svc: &Service, id: &str) -> Result<Cancelled, QueueError> {
        {
            let mut running = self.running();
            if let Some(r) = running.get_mut(id) {
                if r.reason.is_some() {
                    return Ok(Cancelled::NotCancellable(RunStatus::Running));
                }
                r.reason = Some(StopReason::User);
                r.cancel.cancel();
                return Ok(Cancelled::Stopping);
            }
        }
        let Some(row) = svc.queue.get(id)? else {
            return Ok(Cancelled::NotFound);
        };
        if row.status == RunStatus::Queued
            && svc.queue.finish(id, RunStatus::Cancelled, None, None)?
        {
            svc.end_live(id);
            return Ok(Cancelled::Dequeued);
        }
        Ok(Cancelled::NotCancellable(row.status))
    }

    /// Stops every running run (the service is shutting down) and waits up
    /// to `grace` for them to write what they measured.
    pub async fn shutdown(&self, grace: Duration) {
        for r in self.running().values_mut() {
            r.reason.get_or_insert(StopReason::Shutdown);
            r.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts what fits until `stop`; each run on its own task.
    pub async fn schedule(svc: Arc<Service>, stop: CancellationToken) {
        loop {
            if let Err(e) = Self::start_what_fits(&svc) {
                tracing::error!(error = %e, "run queue");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = svc.runner.wake.notified() => {}
                // A missed wake-up costs a second, never a stuck queue.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn start_what_fits(svc: &Arc<Service>) -> Result<(), QueueError> {
        for row in svc.queue.queued()? {
            let cancel = {
                let mut running = svc.runner.running();
                let busy = running.values().filter(|r| r.pool == row.pool).count();
                if busy >= svc.runner.limit(&row.pool) || !svc.queue.start(&row.id)? {
                    continue;
                }
                let cancel = CancellationToken::new();
                running.insert(
                    row.id.clone(),
                    Running {
                        pool: row.pool.clone(),
                        cancel: cancel.clone(),
                        reason: None,
                    },
                );
                cancel
            };
            svc.publish_state(&row.id);
            tokio::spawn(supervise(Arc::clone(svc), row, cancel));
        }
        Ok(())
    }

    fn stop_reason(&self, id: &str) -> Option<StopReason> {
        self.running().get(id).and_then(|r| r.reason)
    }
}

/// Runs `execute` and, should its task panic, still ends the run (as
/// `error`) so that it never stays running forever.
async fn supervise(svc: Arc<Service>, row: RunRow, cancel: CancellationToken) {
    let id = row.id.clone();
    if let Err(e) = tokio::spawn(execute(Arc::clone(&svc), row, cancel)).await {
        tracing::error!(run = %id, error = %e, "a run's task failed");
        let why = format!("internal error: the run's task failed ({e})");
        if let Err(e) = svc.queue.finish(&id, RunStatus::Error, Some(&why), None) {
            tracing::error!(run = %id, error = %e, "cannot record a run's end");
        }
        svc.runner.running().remove(&id);
        svc.end_live(&id);
        svc.runner.wake();
    }
}

/// Runs one plan to its end and records how it ended.
async fn execute(svc: Arc<Service>, row: RunRow, cancel: CancellationToken) {
    let id = row.id.clone();
    let (status, error, headline) = match parse_plan(&row.plan_toml) {
        Err(e) => (RunStatus::Error, Some(e.to_string()), None),
        Ok(mut plan) => {
            plan.output.dir = svc.run_folder(&id);
            let opts = RunOptions {
                plan_dir: Some(svc.data.clone()),
                ..RunOptions::default()
            };
            let outputs = run_outputs(&svc, &id, &opts);
            let result = execute_plan_with(plan, opts, cancel, outputs).await;
            let reason = svc.runner.stop_reason(&id);
            ended(result, reason)
        }
    };
    if let Err(e) = svc
        .queue
        .finish(&id, status, error.as_deref(), headline.as_ref())
    {
        tracing::error!(run = %id, error = %e, "cannot record a run's end");
    }
    svc.runner.running().remove(&id);
    svc.end_live(&id);
    svc.runner.wake();
}

/// The outputs of a run in the service: the files of `controller run` (no
/// console), the live view and the metrics.
fn run_outputs(svc: &Arc<Service>, id: &str, opts: &RunOptions) -> Vec<Box<dyn Consumer>> {
    let mut outputs = crate::outputs::defaults(opts);
    let queue_svc = Arc::clone(svc);
    let run = id.to_owned();
    let on_dir = Box::new(move |dir: &Path| {
        if let Err(e) = queue_svc.queue.set_dir(&run, dir) {
            tracing::error!(run = %run, error = %e, "cannot record a run's folder");
        }
    });
    outputs.push(svc.hub.consumer(id, on_dir));
    outputs.push(svc.metrics.consumer(id));
    outputs
}

type Ending = (RunStatus, Option<String>, Option<serde_json::Value>);

fn ended(result: Result<PlanOutcome, crate::run::RunError>, reason: Option<StopReason>) -> Ending {
    // A stop asked for names the end, whatever the run made of it.
    let stopped = reason.map(|r| match r {
        StopReason::User => RunStatus::Cancelled,
        StopReason::Shutdown => RunStatus::Interrupted,
    });
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            return (
                stopped.unwrap_or(RunStatus::Error),
                Some(e.to_string()),
                None,
            );
        }
    };
    let headline = match &outcome {
        PlanOutcome::Single(o) => super::api::headline_of(&o.summary),
        PlanOutcome::Sweep(o) => super::api::sweep_headline(&o.report),
    };
    let status = stopped.unwrap_or_else(|| {
        RunStatus::parse(crate::store::verdict_name(outcome.verdict())).unwrap_or(RunStatus::Error)
    });
    (status, None, Some(headline))
}

/// On start-up: runs a previous process left running were cut by its end;
/// they become interrupted and their report is rebuilt from their store.
pub fn recover(svc: &Service) -> Result<Vec<String>, QueueError> {
    let mut cut = Vec::new();
    for row in svc.queue.with_status(RunStatus::Running)? {
        let dir = svc.results_dir(&row);
        let note = "cut by a restart of the service: what it measured is kept";
        svc.queue
            .finish(&row.id, RunStatus::Interrupted, Some(note), None)?;
        if let Some(dir) = dir {
            rebuild_report(&dir);
        }
        cut.push(row.id);
    }
    for row in svc.queue.queued()? {
        svc.hub.register(&row.id);
    }
    Ok(cut)
}

/// Rebuilds the files of a results folder from its results.sqlite (the
/// run was killed before writing them).
fn rebuild_report(dir: &Path) {
    let consumers: Vec<Box<dyn Consumer>> = crate::outputs::defaults(&RunOptions::default())
        .into_iter()
        .filter(|c| c.name() != "sqlite")
        .collect();
    if let Err(e) = crate::store::replay::replay(dir, consumers) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot rebuild an interrupted run's files");
    }
}
