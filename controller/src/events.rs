//! One stream of run events, many outputs (docs/results.md).
//!
//! A run (or a sweep of steps) emits `RunEvent`s in order; every output —
//! the console, the results folder, the SQLite store, the HTML report, the
//! service's live view — is a `Consumer` on its own thread that sees every
//! event (but the per-request records, if it says it ignores them).
//! Adding an output means adding a consumer; the run loop does not
//! change. A slow or failing consumer never blocks the run: each has its own
//! queue, and an error is kept and reported when the outputs close.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use barrage_common::metrics::{Counters, MetricSet};
use barrage_proto::agent::v1 as pb;

use crate::merge::IntervalRow;
use crate::report::Summary;
use crate::run::Verdict;
use crate::sweep::SweepReport;

/// What a run produces, in the order it happens.
// Each event is built once and shared behind an Arc: its size is not copied.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RunEvent {
    /// A plan begins: one run, or a sweep whose steps follow.
    PlanStarted(PlanStart),
    /// A step (the only one of a plain run) is about to start its load.
    StepStarted(StepStart),
    /// One merged interval of a step: every agent reported it (or was lost).
    Interval(IntervalEvent),
    /// Per-request records from one agent, in batches as they arrive.
    Requests(RequestsEvent),
    /// A message for whoever watches the run (a stop, a sweep step
    /// starting): consoles show it without breaking their view.
    Message(String),
    /// The GPU exporters' latest reading, after each settled interval (live
    /// views; the per-interval averages are on the final timeline).
    Monitor(MonitorEvent),
    /// A step ended; its summary holds every figure, the timeline with the
    /// monitor samples on it, and the notes.
    StepFinished(Box<StepEnd>),
    /// The plan ended (after its last step).
    PlanFinished(PlanEnd),
}

#[derive(Debug, Clone)]
pub struct PlanStart {
    pub name: String,
    /// The plan's results folder: the run's folder, or the sweep's (whose
    /// steps each have a folder below it).
    pub dir: PathBuf,
    /// The plan as it runs, secrets redacted.
    pub plan_toml: String,
    /// RFC 3339, wall clock (a label only).
    pub started_at: String,
    pub sweep: bool,
}

#[derive(Debug, Clone)]
pub struct StepStart {
    /// 0 for a plain run; 1.. for the steps of a sweep.
    pub step: u32,
    /// The step's name (the plan's name for a plain run).
    pub name: String,
    pub run_id: String,
    /// The step's results folder.
    pub dir: PathBuf,
    /// The step's plan, secrets redacted.
    pub plan_toml: String,
    pub started_at: String,
    pub interval_s: f64,
    /// What ends the load: a duration and/or a request count.
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    /// Peak closed-loop users, or 0 in open loop.
    pub users: u64,
    /// Open loop: the planned arrival rate (None: closed loop or "inf").
    pub rate: Option<f64>,
    /// Agents taking part, by index (as in `RequestsEvent::agent`).
    pub agents: Vec<AgentStart>,
}

#[derive(Debug, Clone)]
pub struct AgentStart {
    pub id: String,
    pub addr: String,
    pub users: u64,
    pub share: f64,
}

#[derive(Debug)]
pub struct IntervalEvent {
    pub step: u32,
    pub row: IntervalRow,
    /// The interval's merged histograms (every metric) and counters.
    pub metrics: MetricSet,
    pub counters: Counters,
    /// Totals so far (after the warmup), for live views.
    pub totals: Counters,
}

#[derive(Debug)]
pub struct RequestsEvent {
    pub step: u32,
    pub agent: usize,
    pub records: Vec<pb::RequestRecord>,
}

#[derive(Debug)]
pub struct MonitorEvent {
    pub step: u32,
    /// Seconds from the step's start of the interval it follows.
    pub t_s: f64,
    pub sample: crate::monitor::IntervalMonitor,
}

#[derive(Debug)]
pub struct StepEnd {
    pub step: u32,
    pub summary: Summary,
    pub verdict: Verdict,
    pub dir: PathBuf,
    pub plan_toml: String,
}

#[derive(Debug)]
pub struct PlanEnd {
    pub verdict: Verdict,
    pub dir: PathBuf,
    /// A sweep's comparison of its steps.
    pub sweep: Option<SweepReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl OutputError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OutputError::Io {
            path: path.into(),
            source,
        }
    }
}

/// One output of a run. Runs on its own thread; sees every event in order
/// (`Requests` only if `wants_requests`).
pub trait Consumer: Send {
    /// Short name for messages ("results folder", "sqlite", ...).
    fn name(&self) -> &'static str;
    /// Handles one event. An error stops this consumer only (it is reported
    /// when the outputs close); the run goes on.
    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError>;
    /// Whether this output takes the per-request records (`Requests`):
    /// they come ~100 times a second, so an output that ignores them says
    /// so and is not woken for them.
    fn wants_requests(&self) -> bool {
        true
    }
    /// After the last event: flush and return the files written.
    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        Ok(Vec::new())
    }
}

/// The emitting end, cloned into every part of the run that produces events.
#[derive(Clone, Default)]
pub struct Events {
    /// Each consumer's queue, and whether it takes `Requests`.
    txs: Vec<(mpsc::Sender<Arc<RunEvent>>, bool)>,
}

impl Events {
    /// A stream nobody listens to (library use, tests of the run alone).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn emit(&self, ev: RunEvent) {
        if self.txs.is_empty() {
            return;
        }
        let requests = matches!(ev, RunEvent::Requests(_));
        let ev = Arc::new(ev);
        for (tx, wants_requests) in &self.txs {
            if requests && !wants_requests {
                continue;
            }
            // A consumer that ended (after an error) no longer receives.
            let _ = tx.send(Arc::clone(&ev));
        }
    }
}

/// What one consumer did.
#[derive(Debug)]
pub struct ConsumerReport {
    pub name: &'static str,
    pub files: Vec<PathBuf>,
    pub error: Option<OutputError>,
}

/// The running consumers of one plan.
pub struct Outputs {
    events: Events,
    threads: Vec<(&'static str, JoinHandle<ConsumerReport>)>,
}

impl Outputs {
    /// Starts each consumer on its own thread.
    pub fn start(consumers: Vec<Box<dyn Consumer>>) -> Self {
        let mut txs = Vec::new();
        let mut threads = Vec::new();
        for c in consumers {
            let (tx, rx) = mpsc::channel::<Arc<RunEvent>>();
            let name = c.name();
            let wants_requests = c.wants_requests();
            let spawned = std::thread::Builder::new()
                .name(format!("output {name}"))
                .spawn(move || consume(c, rx));
            match spawned {
                Ok(h) => {
                    txs.push((tx, wants_requests));
                    threads.push((name, h));
                }
                Err(e) => tracing::error!(output = name, error = %e, "cannot start output thread"),
            }
        }
        Self {
            events: Events { txs },
            threads,
        }
    }

    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// Ends the stream (every `Events` clone must be dropped too) and waits
    /// for each consumer to finish.
    pub fn close(self) -> Vec<ConsumerReport> {
        drop(self.events);
        self.threads
            .into_iter()
            .map(|(name, h)| {
                h.join().unwrap_or_else(|_| ConsumerReport {
                    name,
                    files: Vec::new(),
                    error: Some(OutputError::Other(format!("output {name} panicked"))),
                })
            })
            .collect()
    }
}

fn consume(mut c: Box<dyn Consumer>, rx: mpsc::Receiver<Arc<RunEvent>>) -> ConsumerReport {
    let name = c.name();
    let mut error = None;
    for ev in rx {
        if let Err(e) = c.event(&ev) {
            tracing::error!(output = name, error = %e, "output stopped");
            error = Some(e);
            break;
        }
    }
    let files = match c.finish() {
        Ok(f) => f,
        Err(e) => {
            error.get_or_insert(e);
            Vec::new()
        }
    };
    ConsumerReport { name, files, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Count(Arc<Mutex<Vec<&'static str>>>, bool);

    impl Consumer for Count {
        fn name(&self) -> &'static str {
            "count"
        }
        fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
            let kind = match ev {
                RunEvent::PlanFinished(_) => "end",
                _ => "other",
            };
            self.0
                .lock()
                .map_err(|_| OutputError::Other("poisoned".into()))?
                .push(kind);
            if self.1 {
                return Err(OutputError::Other("disk full".into()));
            }
            Ok(())
        }
    }

    fn end() -> RunEvent {
        RunEvent::PlanFinished(PlanEnd {
            verdict: Verdict::Completed,
            dir: PathBuf::from("x"),
            sweep: None,
        })
    }

    #[test]
    fn every_consumer_sees_every_event_and_a_failing_one_is_reported() {
        let good = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let outputs = Outputs::start(vec![
            Box::new(Count(good.clone(), false)),
            Box::new(Count(bad.clone(), true)),
        ]);
        let events = outputs.events();
        events.emit(end());
        events.emit(end());
        drop(events);
        let reports = outputs.close();
        assert_eq!(good.lock().expect("lock").len(), 2);
        assert_eq!(bad.lock().expect("lock").len(), 1, "stops after its error");
        assert!(reports[0].error.is_none());
        assert!(
            reports[1]
                .error
                .as_ref()
                .is_some_and(|e| e.to_string().contains("disk full"))
        );
    }

    struct Kinds(Arc<Mutex<Vec<&'static str>>>, bool);

    impl Consumer for Kinds {
        fn name(&self) -> &'static str {
            "kinds"
        }
        fn wants_requests(&self) -> bool {
            self.1
        }
        fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
            let kind = match ev {
                RunEvent::Requests(_) => "requests",
                RunEvent::Message(_) => "message",
                _ => "other",
            };
            self.0
                .lock()
                .map_err(|_| OutputError::Other("poisoned".into()))?
                .push(kind);
            Ok(())
        }
    }

    #[test]
    fn requests_reach_only_the_consumers_that_want_them() {
        let wants = Arc::new(Mutex::new(Vec::new()));
        let ignores = Arc::new(Mutex::new(Vec::new()));
        let outputs = Outputs::start(vec![
            Box::new(Kinds(wants.clone(), true)),
            Box::new(Kinds(ignores.clone(), false)),
        ]);
        let events = outputs.events();
        let requests = || {
            RunEvent::Requests(RequestsEvent {
                step: 0,
                agent: 0,
                records: vec![pb::RequestRecord::default()],
            })
        };
        events.emit(requests());
        events.emit(RunEvent::Message("m".into()));
        events.emit(requests());
        events.emit(end());
        drop(events);
        outputs.close();
        assert_eq!(
            *wants.lock().expect("lock"),
            ["requests", "message", "requests", "other"]
        );
        assert_eq!(*ignores.lock().expect("lock"), ["message", "other"]);
    }
}
