//! The closed-loop workload: each user of the slice starts at its place on
//! the global ramp (user i at i / spawn_rate after the agreed start), then
//! sends its next request as soon as the last one ends, until the request
//! budget is spent, the duration is over, or the run is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use barrage_proto::agent::v1::StopReason;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Parsers, PreparedPrompt, TargetClient};
use crate::measure::RequestMeasure;
use crate::recorder::Recorder;

/// What this agent runs of one step.
#[derive(Debug, Clone)]
pub struct SliceSpec {
    /// Global user indexes owned by this agent.
    pub users: Vec<u64>,
    /// Global users started per second (None: all at once).
    pub spawn_rate: Option<f64>,
    /// Requests this agent may start (None: unbounded).
    pub max_requests: Option<u64>,
    /// How long the step runs (None: until the budget is spent).
    pub duration: Option<Duration>,
}

/// Everything a user task needs, shared.
pub struct Workload {
    pub client: TargetClient,
    pub prompts: Vec<PreparedPrompt>,
    pub recorder: Arc<Recorder>,
    next_prompt: AtomicUsize,
    budget: Option<AtomicU64>,
    in_flight: AtomicU64,
}

impl Workload {
    pub fn new(
        client: TargetClient,
        prompts: Vec<PreparedPrompt>,
        recorder: Arc<Recorder>,
        seed: u64,
        max_requests: Option<u64>,
    ) -> Self {
        let start = if prompts.is_empty() {
            0
        } else {
            (seed % prompts.len() as u64) as usize
        };
        Self {
            client,
            prompts,
            recorder,
            next_prompt: AtomicUsize::new(start),
            budget: max_requests.map(AtomicU64::new),
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes one request from the budget; false when it is spent.
    fn claim(&self) -> bool {
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    fn budget_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Acquire) == 0)
    }
}

/// Runs the slice to its end. `stop` cancels everything at once (in-flight
/// requests are dropped and not counted as ok or failed).
pub async fn run(
    work: Arc<Workload>,
    slice: SliceSpec,
    start: Instant,
    stop: CancellationToken,
) -> StopReason {
    if work.prompts.is_empty() || slice.users.is_empty() {
        return StopReason::Completed;
    }
    let deadline = slice.duration.map(|d| start + d);
    let run_over = stop.child_token();
    if let Some(deadline) = deadline {
        let t = run_over.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => t.cancel(),
                _ = t.cancelled() => {}
            }
        });
    }
    let mut users = JoinSet::new();
    for (slot, global) in slice.users.iter().copied().enumerate() {
        let offset = match slice.spawn_rate {
            Some(rate) => Duration::from_secs_f64(global as f64 / rate),
            None => Duration::ZERO,
        };
        users.spawn(user_loop(
            work.clone(),
            slot,
            start + offset,
            run_over.clone(),
        ));
    }
    while users.join_next().await.is_some() {}
    run_over.cancel();
    if stop.is_cancelled() {
        StopReason::Controller
    } else if deadline.is_some_and(|d| Instant::now() >= d) && !work.budget_spent() {
        StopReason::Duration
    } else {
        StopReason::Completed
    }
}

async fn user_loop(work: Arc<Workload>, slot: usize, begin: Instant, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep_until(begin.into()) => {}
        _ = stop.cancelled() => return,
    }
    let mut measure = RequestMeasure::default();
    let mut parsers = Parsers::default();
    while !stop.is_cancelled() && work.claim() {
        let i = work.next_prompt.fetch_add(1, Ordering::Relaxed) % work.prompts.len();
        let prompt = &work.prompts[i];
        work.recorder
            .with_shard(slot, |s| s.counters.requests_started += 1);
        work.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = tokio::select! {
            r = work.client.send(prompt.body.clone(), &mut measure, &mut parsers) => Some(r),
            _ = stop.cancelled() => None,
        };
        let end = Instant::now();
        work.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(result) = result else { break };
        work.recorder.with_shard(slot, |s| {
            measure.record(
                end,
                result,
                prompt.estimated_input_tokens,
                &mut s.metrics,
                &mut s.counters,
            )
        });
    }
}
