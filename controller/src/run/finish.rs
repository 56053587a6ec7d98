//! Finish: per-agent reports, notes, monitors on the timeline.

use crate::merge::Merger;
use crate::report::{self, AgentReport};
use barrage_proto::agent::v1 as pb;
use std::time::{Duration, Instant};

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
