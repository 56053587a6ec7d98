//! Limits on values that are legal in type but cannot run: a tiny spawn rate
//! (the last user would start after the end of time), ten million users (the
//! slice no longer fits a gRPC message), a duration that overflows a clock.
//! Each is refused at plan check, naming the key and the limit, before any
//! arithmetic on the value can panic or any traffic starts. The README's
//! plan reference lists the same numbers.

use std::time::Duration;

use crate::dataset::{DatasetKind, DatasetSection, length_bounds};
use crate::load::{LoadSection, RateValue};
use crate::plan::PlanFile;
use crate::sweep::{SearchOver, SweepSection};

/// Closed-loop users (and `max_concurrency`, and requests sent at once).
pub const MAX_USERS: u64 = 100_000;
/// Lowest non-zero rate or spawn rate, per second (one per ~17 minutes).
pub const MIN_RATE: f64 = 0.001;
/// Highest rate or spawn rate, per second.
pub const MAX_RATE: f64 = 100_000.0;
/// Requests of one step.
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// User turns of one synthetic conversation (each one request).
pub const MAX_TURNS: u64 = 10_000;
/// Output (and input) tokens of one request: the token histograms' top.
pub const MAX_TOKENS: u32 = 10_000_000;
/// Distinct random prompts generated.
pub const MAX_PROMPTS: u32 = 1_000_000;
/// Tokens of all random prompts together (built in memory, sent to every agent).
pub const MAX_DATASET_TOKENS: u64 = 100_000_000;
/// Length of a run (`duration`, stages, warmup, a trace's span).
pub const MAX_RUN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Timeouts and waits.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Metrics interval and scrape interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// In-process agents.
pub const MAX_EMBEDDED_AGENTS: usize = 256;
/// `cluster.min_agents`.
pub const MAX_AGENTS: usize = 10_000;
/// Gamma shape (`burstiness`).
pub const BURSTINESS: (f64, f64) = (0.01, 100.0);
/// Trace `time_scale`.
pub const TIME_SCALE: (f64, f64) = (0.000_001, 1_000_000.0);
/// Steps of a sweep matrix.
pub const MAX_SWEEP_STEPS: u64 = 10_000;
/// Probes of an SLO search.
pub const MAX_SEARCH_STEPS: u32 = 1_000;

/// (full key, problem).
pub type Problem = (String, String);

fn refuse(key: &str, problem: String) -> Result<(), Problem> {
    Err((key.to_owned(), problem))
}

fn at_most(key: &str, v: Option<u64>, max: u64) -> Result<(), Problem> {
    match v {
        Some(v) if v > max => refuse(key, format!("must be at most {max} (got {v})")),
        _ => Ok(()),
    }
}

/// A number as a person reads it: 0.5, 1e-300, 1e300.
pub fn show(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `v` in [min, max]; NaN and infinities are refused too.
fn within(key: &str, v: Option<f64>, (min, max): (f64, f64), unit: &str) -> Result<(), Problem> {
    match v {
        Some(v) if !(min..=max).contains(&v) => refuse(
            key,
            format!("must be between {min} and {max}{unit} (got {})", show(v)),
        ),
        _ => Ok(()),
    }
}

fn finite(key: &str, v: Option<f64>) -> Result<(), Problem> {
    match v {
        Some(v) if !v.is_finite() => {
            refuse(key, format!("must be a finite number (got {})", show(v)))
        }
        _ => Ok(()),
    }
}

fn not_longer(key: &str, v: Option<Duration>, max: Duration) -> Result<(), Problem> {
    match v {
        Some(d) if d > max => refuse(
            key,
            format!(
                "must be at most {} (got {})",
                humantime::format_duration(max),
                humantime::format_duration(d)
            ),
        ),
        _ => Ok(()),
    }
}

/// Every limit of the plan; runs before the other checks so none of them
/// computes with an extreme value.
pub fn check(plan: &PlanFile) -> Result<(), Problem> {
    target(plan)?;
    request(plan)?;
    load(&plan.load)?;
    dataset(&plan.dataset)?;
    if let Some(c) = &plan.conversation {
        not_longer("conversation.think_time", Some(c.think_time), MAX_WAIT)?;
        at_most("conversation.turns", c.turns.map(u64::from), MAX_TURNS)?;
    }
    not_longer(
        "metrics.interval",
        Some(plan.metrics.interval),
        MAX_INTERVAL,
    )?;
    not_longer(
        "monitor.scrape_interval",
        Some(plan.monitor.scrape_interval),
        MAX_INTERVAL,
    )?;
    cluster(plan)?;
    if let Some(s) = &plan.sweep {
        sweep(plan, s)?;
    }
    Ok(())
}

fn target(plan: &PlanFile) -> Result<(), Problem> {
    let t = &plan.target;
    not_longer("target.timeout", Some(t.timeout), MAX_WAIT)?;
    not_longer("target.connect_timeout", Some(t.connect_timeout), MAX_WAIT)?;
    not_longer("target.idle_timeout", t.idle_timeout, MAX_WAIT)
}

fn request(plan: &PlanFile) -> Result<(), Problem> {
    let r = &plan.request;
    let max = u64::from(MAX_TOKENS);
    at_most("request.max_tokens", Some(r.max_tokens.into()), max)?;
    at_most("request.min_tokens", r.min_tokens.map(u64::from), max)?;
    within("request.top_p", r.top_p, (0.0, 1.0), "")?;
    finite("request.frequency_penalty", r.frequency_penalty)?;
    finite("request.presence_penalty", r.presence_penalty)?;
    if r.n == Some(0) {
        return refuse("request.n", "must be at least 1".into());
    }
    Ok(())
}

fn load(l: &LoadSection) -> Result<(), Problem> {
    const PER_S: &str = " per second";
    at_most("load.users", l.users, MAX_USERS)?;
    at_most("load.max_concurrency", l.max_concurrency, MAX_USERS)?;
    at_most("load.requests", l.requests, MAX_REQUESTS)?;
    at_most("load.conversations", l.conversations, MAX_REQUESTS)?;
    let positive = |v: Option<f64>| v.filter(|x| *x > 0.0);
    // Zero and negative values keep their own message (LoadSection::validate).
    within(
        "load.spawn_rate",
        positive(l.spawn_rate),
        (MIN_RATE, MAX_RATE),
        " users per second",
    )?;
    match &l.rate {
        Some(RateValue::PerSecond(r)) if r.is_finite() && *r > 0.0 => {
            within("load.rate", Some(*r), (MIN_RATE, MAX_RATE), PER_S)?;
        }
        Some(rate) if rate.per_second() == Ok(None) => {
            at_most("load.requests", l.requests, MAX_USERS)
                .map_err(|(k, p)| (k, format!("{p}: rate = \"inf\" starts them all at once")))?
        }
        _ => {}
    }
    within("load.burstiness", positive(l.burstiness), BURSTINESS, "")?;
    within("load.time_scale", positive(l.time_scale), TIME_SCALE, "")?;
    not_longer("load.duration", l.duration, MAX_RUN)?;
    not_longer("load.warmup", l.warmup, MAX_RUN)?;
    stages(l)
}

fn stages(l: &LoadSection) -> Result<(), Problem> {
    let mut total = Duration::ZERO;
    for (i, s) in l.stages.iter().enumerate() {
        let key = format!("load.stages[{i}]");
        not_longer(&format!("{key}.duration"), Some(s.duration), MAX_RUN)?;
        total = total.saturating_add(s.duration);
        at_most(&format!("{key}.users"), s.users, MAX_USERS)?;
        // 0 holds the rate at nothing; anything else must be a usable rate.
        let rate = s.rate.filter(|r| *r != 0.0);
        within(
            &format!("{key}.rate"),
            rate,
            (MIN_RATE, MAX_RATE),
            " per second",
        )?;
    }
    not_longer("load.stages", Some(total), MAX_RUN)
        .map_err(|(k, p)| (k, format!("all stages together {p}")))
}

fn dataset(d: &DatasetSection) -> Result<(), Problem> {
    let max = u64::from(MAX_TOKENS);
    at_most("dataset.input_tokens", Some(d.input_tokens.into()), max)?;
    at_most("dataset.output_tokens", d.output_tokens.map(u64::from), max)?;
    at_most(
        "dataset.prompts",
        Some(d.prompts.into()),
        MAX_PROMPTS.into(),
    )?;
    // A bad range_ratio gets its own message from DatasetSection::validate.
    if d.kind != DatasetKind::Random || !(0.0..1.0).contains(&d.range_ratio) {
        return Ok(());
    }
    let (_, longest) = length_bounds(d.input_tokens, d.range_ratio);
    let total = u64::from(d.prompts) * u64::from(longest);
    if total > MAX_DATASET_TOKENS {
        return refuse(
            "dataset.input_tokens",
            format!(
                "{} prompts (dataset.prompts) of up to {longest} tokens make {total} tokens to \
                 build and send; at most {MAX_DATASET_TOKENS}: lower input_tokens or prompts",
                d.prompts
            ),
        );
    }
    Ok(())
}

fn cluster(plan: &PlanFile) -> Result<(), Problem> {
    let c = &plan.cluster;
    at_most(
        "cluster.embedded_agents",
        c.embedded_agents.map(|n| n as u64),
        MAX_EMBEDDED_AGENTS as u64,
    )?;
    at_most(
        "cluster.min_agents",
        c.min_agents.map(|n| n as u64),
        MAX_AGENTS as u64,
    )?;
    not_longer("cluster.agent_wait", Some(c.agent_wait), MAX_WAIT)
}

fn sweep(plan: &PlanFile, s: &SweepSection) -> Result<(), Problem> {
    for u in &s.users {
        at_most("sweep.users", Some(*u), MAX_USERS)?;
    }
    for r in &s.rate {
        within("sweep.rate", Some(*r), (MIN_RATE, MAX_RATE), " per second")?;
    }
    for n in &s.requests {
        at_most("sweep.requests", Some(*n), MAX_REQUESTS)?;
    }
    for [input, output] in &s.io {
        let mut d = plan.dataset.clone();
        d.input_tokens = *input;
        d.output_tokens = Some(*output);
        dataset(&d)
            .map_err(|(_, p)| ("sweep.io".to_owned(), format!("[{input}, {output}]: {p}")))?;
    }
    not_longer("sweep.cooldown", Some(s.cooldown), MAX_WAIT)?;
    let len = |n: usize| (n.max(1)) as u64;
    let steps = len(s.users.len().max(s.rate.len()))
        .saturating_mul(len(s.requests.len()))
        .saturating_mul(len(s.io.len()));
    at_most("sweep", Some(steps), MAX_SWEEP_STEPS)
        .map_err(|(k, p)| (k, format!("the matrix has too many steps: {p}")))?;
    let Some(over) = s.search else {
        return Ok(());
    };
    let bounds = match over {
        SearchOver::Users => (1.0, MAX_USERS as f64),
        SearchOver::Rate => (MIN_RATE, MAX_RATE),
    };
    within("sweep.search_min", Some(s.search_min), bounds, "")?;
    within("sweep.search_max", Some(s.search_max), bounds, "")?;
    if !(1..=MAX_SEARCH_STEPS).contains(&s.search_max_steps) {
        return refuse(
            "sweep.search_max_steps",
            format!(
                "must be between 1 and {MAX_SEARCH_STEPS} (got {})",
                s.search_max_steps
            ),
        );
    }
    Ok(())
}
