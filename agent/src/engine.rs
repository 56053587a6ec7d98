//! The workload engine. Closed loop: each user of the slice starts at its
//! place on the global ramp (user i at i / spawn_rate, or when a user-stage
//! profile first exceeds i) and sends its next request as soon as the last
//! one ends. Open loop: arrivals from a precise clock thread at the agent's
//! share of the rate, never dropped; a full concurrency cap makes them wait
//! and the wait shows as `schedule_lag`. Both stop on the request budget,
//! the duration, or cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use barrage_proto::agent::v1::StopReason;
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp1, Gamma};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Parsers, PreparedPrompt, TargetClient};
use crate::conversation::{self, ConversationEnd, Conversations, Seat, TurnRef};
use crate::measure::RequestMeasure;
use crate::profile::Profile;
use crate::recorder::Recorder;
use crate::records::{End, Sender};
use barrage_common::turns::TurnSample;
use barrage_proto::agent::v1::RequestRecord;

/// Takes one from a budget (None: unbounded); false when it is spent.
pub(crate) fn take_one(budget: Option<&AtomicU64>) -> bool {
    budget.is_none_or(|b| {
        b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    })
}

/// Mixed into the seeds of think-time draws ("think").
const THINK_SEED: u64 = 0x0074_6869_6e6b;

/// Gaps of the unit-rate arrival process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    Constant,
    Poisson,
    /// Shape k: gaps Gamma(k, 1/k), mean 1.
    Gamma(f64),
}

/// How this agent's traffic is shaped.
#[derive(Debug, Clone)]
pub enum Shape {
    Closed {
        /// Global user indexes owned by this agent.
        users: Vec<u64>,
        /// Global users started per second (None: all at once).
        spawn_rate: Option<f64>,
        /// User stages: user i is active while the profile exceeds i.
        profile: Option<Profile>,
    },
    Open {
        /// This agent's rate over time; None = every request at the start.
        rate: Option<Profile>,
        arrivals: Arrivals,
        max_concurrency: Option<u64>,
        /// Constant arrivals: offset of the first arrival, in gaps (0..1).
        phase: f64,
        /// Trace replay: arrival j at start + offsets[j] sends prompt j.
        offsets: Option<Vec<f64>>,
    },
}

/// What this agent runs of one step.
#[derive(Debug, Clone)]
pub struct SliceSpec {
    pub shape: Shape,
    /// Requests this agent may start (None: unbounded).
    pub max_requests: Option<u64>,
    /// Multi-turn: conversations this agent may start (None: unbounded).
    pub max_conversations: Option<u64>,
    /// How long the step runs (None: until the budget is spent).
    pub duration: Option<Duration>,
    /// After `duration`: how long in-flight requests may still finish
    /// before they are cut (zero: cut at once).
    pub drain: Duration,
    pub seed: u64,
}

/// Everything a request needs, shared.
pub struct Workload {
    pub client: TargetClient,
    pub prompts: Vec<PreparedPrompt>,
    pub recorder: Arc<Recorder>,
    /// Per-request limits for goodput.
    pub slo: barrage_proto::agent::v1::RequestSlo,
    /// The plan's tokenizer: counts output when the server reports no usage.
    pub tokenizer: Option<Arc<tokenizers::Tokenizer>>,
    next_prompt: AtomicUsize,
    budget: Option<AtomicU64>,
    in_flight: AtomicU64,
    /// Open loop: µs after the start of the last arrival due, plus one (0 = none).
    last_arrival: AtomicU64,
    /// Intervals of the warmup: a request started in them that ends after
    /// them is counted as `requests_from_warmup` where it ends.
    pub warmup_intervals: u64,
    /// Per-request records (`None`: off, nothing kept per request).
    pub records: Option<crate::records::Records>,
    /// Multi-turn: the conversations replayed turn by turn (`None`: each
    /// prompt is one request).
    pub conversations: Option<Conversations>,
}

/// One request to send: the prompt's index in the dataset, its body, and
/// which conversation turn it is (multi-turn only).
pub struct Request<'a> {
    pub index: usize,
    pub prompt: &'a PreparedPrompt,
    pub turn: Option<TurnRef>,
    /// The text a record keeps as its prompt (a turn's own user message).
    pub text: Option<&'a str>,
}

impl Workload {
    pub fn new(
        client: TargetClient,
        prompts: Vec<PreparedPrompt>,
        recorder: Arc<Recorder>,
        seed: u64,
        max_requests: Option<u64>,
    ) -> Self {
        let start = first_prompt(seed, prompts.len());
        Self {
            client,
            prompts,
            recorder,
            slo: Default::default(),
            tokenizer: None,
            next_prompt: AtomicUsize::new(start),
            budget: max_requests.map(AtomicU64::new),
            in_flight: AtomicU64::new(0),
            last_arrival: AtomicU64::new(0),
            warmup_intervals: 0,
            records: None,
            conversations: None,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Open loop: the intended instant of the last arrival that came due, in
    /// µs after the start (achieved_rate is measured over the arrivals' span,
    /// unsent ones included).
    pub fn last_arrival_us(&self) -> Option<u64> {
        self.last_arrival.load(Ordering::Relaxed).checked_sub(1)
    }

    fn note_arrival(&self, intended: Instant, start: Instant) {
        let us = u64::try_from(intended.saturating_duration_since(start).as_micros())
            .unwrap_or(u64::MAX - 1);
        self.last_arrival.fetch_max(us + 1, Ordering::Relaxed);
    }

    /// Takes one request from the budget; false when it is spent.
    pub(crate) fn claim(&self) -> bool {
        take_one(self.budget.as_ref())
    }

    fn budget_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Acquire) == 0)
            || self
                .conversations
                .as_ref()
                .is_some_and(Conversations::budget_spent)
    }

    /// Whether the request budget is spent (no turn can start).
    pub(crate) fn requests_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Acquire) == 0)
    }

    /// The dataset prompt a single request sends: the trace's, or the next.
    fn pick(&self, prompt: Option<usize>) -> Request<'_> {
        let i = prompt.unwrap_or_else(|| self.next_prompt.fetch_add(1, Ordering::Relaxed))
            % self.prompts.len();
        Request {
            index: i,
            prompt: &self.prompts[i],
            turn: None,
            text: None,
        }
    }

    /// Sends one request and records it in `slot`'s shard. `None` when it
    /// was cut (`cut`: the drain ran out, or a stop): it is then recorded as
    /// incomplete, with what was seen of it.
    ///
    /// A request counts as started at its hand-off to the HTTP client (where
    /// `ttft` and `e2e` start): `requests_started` is counted just before,
    /// with no await in between, and the send is polled first (`biased`), so
    /// every started request has its hand-off and ends as exactly one of
    /// ok, failed or incomplete. A request cut while its connection is still
    /// being set up is started and incomplete, and the server never saw it.
    ///
    /// `user` (the closed-loop user, 0 in open loop) is for its record only.
    /// Returns whether the request succeeded.
    pub(crate) async fn one_request(
        &self,
        slot: usize,
        user: u64,
        req: Request<'_>,
        m: &mut RequestMeasure,
        p: &mut Parsers,
        cut: &CancellationToken,
    ) -> Option<bool> {
        let prompt = req.prompt;
        let started_in = self.recorder.with_shard(slot, |s| {
            s.counters.requests_started += 1;
            s.interval
        });
        let sender = self.records.as_ref().map(|r| Sender {
            claim: r.claim(),
            user,
            prompt_index: req.index,
            warmup: started_in < self.warmup_intervals,
            input: prompt.input,
            turn: req.turn,
            prompt_text: req.text.map(str::to_owned),
        });
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let keep_text = sender.as_ref().is_some_and(|s| s.claim.keep_text);
        // A turn's reply goes into the next turn's history.
        m.capture_text(self.tokenizer.is_some() || keep_text || req.turn.is_some());
        let result = tokio::select! {
            biased;
            r = self.client.send(prompt.body.clone(), m, p) => Some(r),
            _ = cut.cancelled() => None,
        };
        // The response's last bytes arrived before the client returned.
        let end = m.end_or(Instant::now());
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(result) = result else {
            let record = self.build_record(sender, m, End::Cut);
            self.recorder.with_shard(slot, |s| {
                m.record_cut(&mut s.metrics, &mut s.counters);
                self.count_from_warmup(started_in, s);
                self.keep_record(s, record);
            });
            return None;
        };
        let turn = req
            .turn
            .map(|t| self.turn_sample(t, m, end, &result, prompt.input));
        if let Some(tok) = &self.tokenizer {
            // Tokenizing is CPU work: let the runtime move other streams'
            // timestamping off this worker meanwhile.
            tokio::task::block_in_place(|| m.count_with(tok));
        }
        // Built outside the shard's lock: it allocates.
        let record = self.build_record(sender, m, End::Done(end, &result));
        self.recorder.with_shard(slot, |s| {
            self.keep_record(s, record);
            m.record(
                end,
                result.as_ref().map_err(|e| e.class).copied(),
                prompt.input,
                &self.slo,
                &mut s.metrics,
                &mut s.counters,
            );
            self.count_from_warmup(started_in, s);
            s.counters.connection_retries += m.connection_retries;
            if let Err(e) = &result {
                s.counters.note_error(e);
            }
            if let (Some(c), Some(t)) = (&self.conversations, turn) {
                c.record(s.interval, t);
            }
        });
        Some(result.is_ok())
    }

    /// What a finished turn adds to its turn index's figures.
    fn turn_sample(
        &self,
        t: TurnRef,
        m: &RequestMeasure,
        end: Instant,
        result: &Result<(), barrage_common::error_detail::RequestError>,
        input: crate::measure::InputCount,
    ) -> TurnSample {
        let ok = result.is_ok();
        let (ttft_us, e2e_us, input_tokens) = m.ttft_e2e_input(ok.then_some(end), input);
        TurnSample {
            turn: t.turn,
            ok,
            ttft_us,
            e2e_us,
            input_tokens,
        }
    }

    fn build_record(
        &self,
        sender: Option<Sender>,
        m: &RequestMeasure,
        end: End<'_>,
    ) -> Option<(RequestRecord, usize)> {
        Some(self.records.as_ref()?.build(sender?, m, end))
    }

    /// Puts a record in the shard, beside the counters of its interval.
    fn keep_record(&self, s: &mut crate::recorder::Shard, record: Option<(RequestRecord, usize)>) {
        if let (Some(records), Some((r, bytes))) = (&self.records, record) {
            s.records.push(r);
            records.added(bytes);
        }
    }

    /// A request started in the warmup that ends after it: its outcome
    /// counts, so it is counted as started in the same window as its outcome
    /// (started + from warmup = ok + failed + incomplete after the warmup).
    fn count_from_warmup(&self, started_in: u64, s: &mut crate::recorder::Shard) {
        if started_in < self.warmup_intervals && s.interval >= self.warmup_intervals {
            s.counters.requests_from_warmup += 1;
        }
    }
}

/// Runs the slice to its end. At the end of its duration no new request
/// starts and in-flight ones may finish for the slice's drain, then they are
/// cut. `stop` cuts everything at once. Cut requests count as incomplete.
pub async fn run(
    work: Arc<Workload>,
    slice: SliceSpec,
    start: Instant,
    stop: CancellationToken,
) -> StopReason {
    if work.prompts.is_empty() {
        return StopReason::Completed;
    }
    let deadline = slice.duration.map(|d| start + d);
    // No new requests from `run_over`; in-flight ones are cut at `cut`.
    let run_over = stop.child_token();
    let cut = stop.child_token();
    if let Some(deadline) = deadline {
        tokio::spawn(end_of_run(
            deadline,
            slice.drain,
            run_over.clone(),
            cut.clone(),
        ));
    }
    match slice.shape {
        Shape::Closed {
            users,
            spawn_rate,
            profile,
        } => {
            let mut tasks = JoinSet::new();
            for (slot, global) in users.iter().copied().enumerate() {
                let begin = match (&profile, spawn_rate) {
                    (Some(_), _) => start,
                    (None, Some(rate)) => start + Duration::from_secs_f64(global as f64 / rate),
                    (None, None) => start,
                };
                let ctx = UserCtx {
                    work: work.clone(),
                    slot,
                    global,
                    begin,
                    start,
                    profile: profile.clone(),
                    cut: cut.clone(),
                };
                tasks.spawn(user_loop(ctx, run_over.clone()));
            }
            while tasks.join_next().await.is_some() {}
        }
        Shape::Open {
            rate,
            arrivals,
            max_concurrency,
            phase,
            offsets,
        } => {
            let timing = match offsets {
                Some(o) => Timing::Offsets(o),
                None => Timing::Process {
                    rate,
                    arrivals,
                    phase,
                },
            };
            // Multi-turn: arrivals are conversations, bounded by their budget.
            let arrivals_budget = if work.conversations.is_some() {
                slice.max_conversations
            } else {
                slice.max_requests
            };
            open_loop(
                work.clone(),
                timing,
                max_concurrency,
                slice.seed,
                start,
                deadline,
                arrivals_budget,
                &run_over,
                &cut,
            )
            .await;
        }
    }
    run_over.cancel();
    cut.cancel();
    if stop.is_cancelled() {
        StopReason::Controller
    } else if deadline.is_some_and(|d| Instant::now() >= d) && !work.budget_spent() {
        StopReason::Duration
    } else {
        StopReason::Completed
    }
}

/// The end of a duration run: no new requests from the deadline, in-flight
/// ones cut when the drain has run out (or at once on a stop).
async fn end_of_run(
    deadline: Instant,
    drain: Duration,
    run_over: CancellationToken,
    cut: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => run_over.cancel(),
        _ = cut.cancelled() => return,
    }
    tokio::select! {
        _ = tokio::time::sleep_until((deadline + drain).into()) => cut.cancel(),
        _ = cut.cancelled() => {}
    }
}

struct UserCtx {
    work: Arc<Workload>,
    slot: usize,
    global: u64,
    begin: Instant,
    start: Instant,
    profile: Option<Profile>,
    /// Cuts the request in flight.
    cut: CancellationToken,
}

async fn user_loop(ctx: UserCtx, stop: CancellationToken) {
    let mut at = ctx.begin;
    let mut measure = RequestMeasure::default();
    let mut parsers = Parsers::default();
    // Think times differ per user, reproducibly.
    let mut rng = StdRng::seed_from_u64(ctx.global ^ THINK_SEED);
    loop {
        // With user stages, wait until this user is part of the load.
        if let Some(p) = &ctx.profile {
            let now = Instant::now().max(at);
            let t = now.saturating_duration_since(ctx.start).as_secs_f64();
            match p.next_above(ctx.global as f64, t) {
                Some(active_at) => at = ctx.start + Duration::from_secs_f64(active_at),
                None => return,
            }
        }
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
        if stop.is_cancelled() {
            return;
        }
        if ctx.work.conversations.is_some() {
            let seat = Seat {
                slot: ctx.slot,
                user: ctx.global,
                stop: &stop,
                cut: &ctx.cut,
            };
            let end =
                conversation::run_one(&ctx.work, seat, &mut rng, &mut measure, &mut parsers).await;
            // A cut conversation means the run (or a budget) is over.
            if end == ConversationEnd::Cut {
                return;
            }
            continue;
        }
        if !ctx.work.claim() {
            return;
        }
        let req = ctx.work.pick(None);
        if ctx
            .work
            .one_request(
                ctx.slot,
                ctx.global,
                req,
                &mut measure,
                &mut parsers,
                &ctx.cut,
            )
            .await
            .is_none()
        {
            return;
        }
    }
}

/// When arrivals happen.
pub enum Timing {
    /// A unit-rate process mapped through the rate profile (None = "inf").
    Process {
        rate: Option<Profile>,
        arrivals: Arrivals,
        phase: f64,
    },
    /// Trace replay: fixed offsets from the start, arrival j sends prompt j.
    Offsets(Vec<f64>),
}

/// One arrival: when it was due, and the prompt it must send (trace replay).
type Arrival = (Instant, Option<usize>);

/// Sleeps until `due` in short steps so a stop is noticed quickly; false if stopped.
fn sleep_until_precise(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// The arrival clock: a dedicated thread (precise sleeps, never quantised to
/// the async timer's millisecond) sending each arrival's intended instant.
#[allow(clippy::too_many_arguments)]
fn arrival_clock(
    timing: Timing,
    seed: u64,
    start: Instant,
    deadline: Option<Instant>,
    budget: Option<u64>,
    tx: mpsc::UnboundedSender<Arrival>,
    stop: Arc<AtomicBool>,
) {
    let mut sent = 0u64;
    let more = |sent: u64| budget.is_none_or(|b| sent < b);
    let (rate, arrivals, phase) = match timing {
        Timing::Offsets(offsets) => {
            for (j, off) in offsets.into_iter().enumerate() {
                let due = start + Duration::from_secs_f64(off.max(0.0));
                if !more(sent)
                    || deadline.is_some_and(|d| due >= d)
                    || !sleep_until_precise(due, &stop)
                {
                    return;
                }
                if !hand_off(&tx, (due, Some(j))) {
                    return;
                }
                sent += 1;
            }
            return;
        }
        Timing::Process {
            rate,
            arrivals,
            phase,
        } => (rate, arrivals, phase),
    };
    let Some(profile) = rate else {
        // "inf": the whole budget at the agreed start (this thread runs
        // before it, while the agent waits for the start barrier).
        if !sleep_until_precise(start, &stop) {
            return;
        }
        while more(sent) && hand_off(&tx, (start, None)) {
            sent += 1;
        }
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let gamma = match arrivals {
        Arrivals::Gamma(k) => Gamma::new(k, 1.0 / k).ok(),
        _ => None,
    };
    let mut x = match arrivals {
        Arrivals::Constant => phase.clamp(0.0, 1.0),
        _ => 0.0,
    };
    let mut first = true;
    while more(sent) && !stop.load(Ordering::Relaxed) {
        let gap = match (arrivals, &gamma) {
            (Arrivals::Constant, _) if first => 0.0,
            (Arrivals::Constant, _) => 1.0,
            (Arrivals::Gamma(_), Some(g)) => g.sample(&mut rng),
            _ => Exp1.sample(&mut rng),
        };
        first = false;
        x += gap;
        let Some(t) = profile.inverse_cumulative(x) else {
            return;
        };
        let due = start + Duration::from_secs_f64(t);
        if deadline.is_some_and(|d| due >= d) || !sleep_until_precise(due, &stop) {
            return;
        }
        if !hand_off(&tx, (due, None)) {
            return;
        }
        sent += 1;
    }
}

/// Sends one arrival to the load threads and ends their read pacing pause,
/// so that it is taken at once. False when the receiver is gone.
fn hand_off(tx: &mpsc::UnboundedSender<Arrival>, arrival: Arrival) -> bool {
    let sent = tx.send(arrival).is_ok();
    crate::pacing::PACING.interrupt();
    sent
}

#[allow(clippy::too_many_arguments)]
async fn open_loop(
    work: Arc<Workload>,
    timing: Timing,
    max_concurrency: Option<u64>,
    seed: u64,
    start: Instant,
    deadline: Option<Instant>,
    budget: Option<u64>,
    stop: &CancellationToken,
    cut: &CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clock_stop = Arc::new(AtomicBool::new(false));
    let flag = clock_stop.clone();
    let clock = std::thread::Builder::new()
        .name("arrival-clock".into())
        .spawn(move || arrival_clock(timing, seed, start, deadline, budget, tx, flag));
    if clock.is_err() {
        tracing::error!("cannot start the arrival clock thread");
        return;
    }
    let cap = max_concurrency.map(|n| {
        Arc::new(Semaphore::new(
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
        ))
    });
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut unsent = 0u64;
    let mut slot = 0usize;
    loop {
        let (intended, prompt) = tokio::select! {
            a = rx.recv() => match a { Some(a) => a, None => break },
            _ = stop.cancelled() => break,
        };
        // The span of the planned arrivals, whether or not they could start.
        work.note_arrival(intended, start);
        let permit = match &cap {
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => p.ok(),
                _ = stop.cancelled() => { unsent += 1; break }
            },
            None => None,
        };
        // Multi-turn: an arrival is a conversation, whose turns claim
        // requests themselves.
        if work.conversations.is_none() && !work.claim() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let (work, cut, stop) = (work.clone(), cut.clone(), stop.clone());
        slot = slot.wrapping_add(1);
        let my_slot = slot;
        tasks.spawn(async move {
            let _permit = permit;
            let mut m = RequestMeasure::default();
            m.intend(intended);
            let mut p = Parsers::default();
            if work.conversations.is_some() {
                let seat = Seat {
                    slot: my_slot,
                    user: 0,
                    stop: &stop,
                    cut: &cut,
                };
                let mut rng = StdRng::seed_from_u64(my_slot as u64 ^ THINK_SEED);
                conversation::run_one(&work, seat, &mut rng, &mut m, &mut p).await;
                return;
            }
            let req = work.pick(prompt);
            let _ = work
                .one_request(my_slot, 0, req, &mut m, &mut p, &cut)
                .await;
        });
    }
    clock_stop.store(true, Ordering::Relaxed);
    // Arrivals already due but never sent are reported, not dropped silently.
    while let Ok((due, _)) = rx.try_recv() {
        if due <= Instant::now() {
            work.note_arrival(due, start);
            unsent += 1;
        }
    }
    if unsent > 0 {
        work.recorder
            .with_shard(0, |s| s.counters.arrivals_unsent += unsent);
    }
    // Requests in flight drain; a cut ends them (recorded as incomplete).
    while tasks.join_next().await.is_some() {}
}

/// Where a user's walk through the prompts starts: the seed picks it, so
/// runs differ by seed and repeat with it.
pub(crate) fn first_prompt(seed: u64, prompts: usize) -> usize {
    if prompts == 0 {
        0
    } else {
        (seed % prompts as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the arrival clock without sleeping far: a high rate over a short
    /// time, and returns the gaps between intended arrivals in seconds.
    fn gaps(arrivals: Arrivals, rate: f64, n: u64) -> Vec<f64> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let timing = Timing::Process {
            rate: Some(Profile::constant(rate)),
            arrivals,
            phase: 0.0,
        };
        arrival_clock(
            timing,
            42,
            start,
            None,
            Some(n),
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        let mut times = Vec::new();
        while let Ok((t, _)) = rx.try_recv() {
            times.push(t.duration_since(start).as_secs_f64());
        }
        assert_eq!(times.len() as u64, n);
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_cv(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_gaps_have_the_rate_and_cv_one() {
        let (mean, cv) = mean_cv(&gaps(Arrivals::Poisson, 5000.0, 4000));
        assert!(
            (mean - 1.0 / 5000.0).abs() < 0.05 / 5000.0 * 2.0,
            "mean gap {mean}"
        );
        assert!((cv - 1.0).abs() < 0.08, "cv {cv}");
    }

    #[test]
    fn gamma_burstiness_sets_the_cv() {
        // Shape k: CV = 1/sqrt(k). k = 0.25 → CV 2 (bursty); k = 4 → CV 0.5.
        let (mean, cv) = mean_cv(&gaps(Arrivals::Gamma(0.25), 5000.0, 4000));
        assert!((mean * 5000.0 - 1.0).abs() < 0.15, "mean gap {mean}");
        assert!((cv - 2.0).abs() < 0.3, "cv {cv}");
        let (_, cv) = mean_cv(&gaps(Arrivals::Gamma(4.0), 5000.0, 4000));
        assert!((cv - 0.5).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn constant_gaps_are_equal_and_inf_fires_at_once() {
        let (mean, cv) = mean_cv(&gaps(Arrivals::Constant, 2000.0, 500));
        assert!((mean - 0.0005).abs() < 1e-9 && cv < 1e-6, "{mean} {cv}");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let timing = Timing::Process {
            rate: None,
            arrivals: Arrivals::Poisson,
            phase: 0.0,
        };
        arrival_clock(
            timing,
            1,
            start,
            None,
            Some(7),
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        let mut n = 0;
        while let Ok((t, _)) = rx.try_recv() {
            assert_eq!(t, start);
            n += 1;
        }
        assert_eq!(n, 7);
    }
}
