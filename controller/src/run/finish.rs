//! Finish: per-agent reports, notes, monitors on the timeline.

use crate::merge::Merger;
use crate::report::{self, AgentReport, RunFacts};
use barrage_proto::agent::v1 as pb;
use std::time::{Duration, Instant};

use super::*;

/// Per agent, what the run loop saw: start lateness (ms), why it was lost,
/// why it stopped.
pub(super) type AgentEnds<'a> = (
    &'a [Option<f64>],
    &'a [Option<String>],
    &'a [Option<pb::StopReason>],
);

/// Each agent's part of the report: its share, counts, timing and faults.
pub(super) fn agent_reports(
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
pub(super) async fn attach_monitors(
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

/// Requests cut by a stop the plan did not ask for (lease expired, hard
/// deadline, shutdown): failure looks like failure.
pub(super) fn unasked_stop_notes(
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

/// The part of the load that ran on lost agents.
pub(super) fn lost_share_note(
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
pub(super) fn saturation_notes(
    agents: &[AgentReport],
    merger: &Merger,
    embedded: bool,
) -> Vec<String> {
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
pub(super) fn open_loop_report(
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

/// A run in which requests ended and none succeeded failed, whatever the
/// thresholds say (there may be none).
pub(super) fn every_request_failed(c: &barrage_common::metrics::Counters) -> bool {
    c.requests_ok == 0 && c.requests_failed > 0
}

/// What the sequence check found for one agent: reconnects, resent
/// intervals dropped, intervals that never arrived.
pub(super) fn sequence_note(a: &AgentReport) -> Option<String> {
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

/// What the stream-and-merge phase leaves for the finish.
pub(super) struct Ran {
    pub(super) merger: Merger,
    pub(super) streamed: Streamed,
    pub(super) infos: Vec<(String, String, u64, f64)>,
    pub(super) offsets: Vec<barrage_common::clock::ClockOffset>,
    pub(super) slices: Vec<pb::Slice>,
    pub(super) start_local: u64,
    pub(super) start_instant: Instant,
    pub(super) checks: Vec<barrage_common::thresholds::Check>,
    pub(super) drain: Duration,
}

/// Finish: settle the timeline (and send its last rows to the outputs), put
/// the monitors on it, judge the step and build its summary.
pub(super) async fn finish_step(
    plan: &PlanFile,
    trace: Option<&crate::trace::Trace>,
    (run_id, url): (&str, &str),
    monitors: crate::monitor::Monitors,
    mut ran: Ran,
    out: &StepOut<'_>,
) -> (Summary, Verdict) {
    let load = &plan.load;
    let interval = plan.metrics.interval;
    let end = if ran.streamed.interrupted {
        Instant::now()
    } else {
        ran.streamed.last_final
    };
    let mut timeline = ran.merger.finish().to_vec();
    emit_settled(&mut ran.merger, out.events, out.step);
    let monitor_report = attach_monitors(
        monitors,
        &mut timeline,
        (ran.start_local, end),
        interval,
        ran.merger.counters.output_tokens,
    )
    .await;
    let s = &ran.streamed;
    let merger = &ran.merger;
    let agents = agent_reports(
        &ran.infos,
        merger,
        (&s.late, &s.lost, &s.stops),
        &ran.offsets,
    );
    let stop_notes = unasked_stop_notes(&agents, &s.stops, merger);
    let degraded = agents
        .iter()
        .any(|a| a.lost.is_some() || a.totals_mismatch.is_some() || a.intervals_missing > 0)
        || !s.merge_errors.is_empty()
        || !stop_notes.is_empty();
    let warmup_s = crate::edges::warmup_window(load.warmup.unwrap_or_default(), interval).1;
    let run_s = end
        .saturating_duration_since(ran.start_instant)
        .as_secs_f64();
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
    let offered_rate = offered_rate(load, &ran.slices, trace);
    let figures = crate::verdict::RunFigures {
        duration_s: measured_s,
        offered_rate,
        achieved_rate: Some(achieved_rate),
    };
    let results = crate::verdict::evaluate(&ran.checks, &merger.totals, &merger.counters, figures);
    let breached = results.iter().any(|r| !r.passed) || s.aborted.is_some();
    let verdict = verdict_of(s.interrupted, &merger.counters, degraded, breached);
    let mut notes = s.merge_errors.clone();
    notes.extend(stop_notes);
    notes.extend(end_notes(plan, &agents, merger, s, ran.drain));
    let facts = RunFacts {
        name: plan.name.clone(),
        run_id: run_id.to_owned(),
        started_at: String::new(),
        target: barrage_common::redact::redact_url(url),
        api: plan.target.api.as_str().to_owned(),
        status: verdict.name().to_owned(),
        duration_s: measured_s,
        users: load.peak_users(),
        streamed: plan.streams(),
    };
    let mut summary = Summary::build(
        facts,
        &merger.totals,
        &merger.counters,
        agents,
        timeline,
        notes,
    );
    summary.warmup_s = warmup_s.min(run_s);
    summary.drain_s = load.effective_duration().map(|_| ran.drain.as_secs_f64());
    summary.thresholds = results;
    if request_slo(plan) != pb::RequestSlo::default() && measured_s > 0.0 {
        summary.goodput = Some(merger.counters.requests_good as f64 / measured_s);
    }
    if let Some(m) = monitor_report {
        summary.notes.extend(m.notes.iter().cloned());
        summary.monitor = Some(m);
    }
    if load.open_loop() {
        summary.open_loop = Some(open_loop_report(merger, offered_rate, achieved_rate));
    }
    if plan.conversation.is_some() {
        summary.conversations = Some(crate::turns::ConversationsReport::of(
            &merger.counters.conversations,
            &merger.turns,
        ));
    }
    (summary, verdict)
}

/// The step's status, worst first: interrupted, every request failed,
/// degraded, a threshold breached.
fn verdict_of(
    interrupted: bool,
    counters: &barrage_common::metrics::Counters,
    degraded: bool,
    breached: bool,
) -> Verdict {
    if interrupted {
        Verdict::Interrupted
    } else if every_request_failed(counters) {
        Verdict::Failed
    } else {
        match (degraded, breached) {
            (true, _) => Verdict::Degraded,
            (false, true) => Verdict::Breached,
            (false, false) => Verdict::Completed,
        }
    }
}

/// Notes on how the step ended: resends and gaps, requests cut, late
/// starts, unpooled connections, an abort, lost load, a saturated client.
fn end_notes(
    plan: &PlanFile,
    agents: &[AgentReport],
    merger: &Merger,
    s: &Streamed,
    drain: Duration,
) -> Vec<String> {
    let load = &plan.load;
    let mut notes: Vec<String> = agents.iter().filter_map(sequence_note).collect();
    notes.extend(crate::edges::cut_note(
        merger.counters.requests_incomplete,
        drain,
        load.effective_duration().is_some(),
        s.interrupted,
    ));
    notes.extend(crate::edges::late_start_notes(agents));
    notes.extend(crate::edges::unpooled_notes(agents));
    if let Some(key) = &s.aborted {
        notes.push(format!(
            "stopped early: threshold {key} was clearly lost (abort_on_breach)"
        ));
    }
    notes.extend(lost_share_note(agents, load));
    notes.extend(saturation_notes(
        agents,
        merger,
        plan.cluster.agents.is_empty(),
    ));
    notes
}
