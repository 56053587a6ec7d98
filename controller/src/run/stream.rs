//! Stream and merge: every agent's events until all links end, emitted
//! to the run's outputs as they settle.

use crate::events::{Events, IntervalEvent, MonitorEvent, RequestsEvent, RunEvent};
use crate::link::LinkEvent;
use crate::merge::Merger;
use barrage_common::plan::PlanFile;
use barrage_proto::agent::v1 as pb;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the run loop saw besides the merged figures.
pub(super) struct Streamed {
    pub(super) late: Vec<Option<f64>>,
    pub(super) lost: Vec<Option<String>>,
    pub(super) stops: Vec<Option<pb::StopReason>>,
    pub(super) interrupted: bool,
    pub(super) last_final: Instant,
    pub(super) merge_errors: Vec<String>,
    pub(super) aborted: Option<String>,
}

/// What the run loop watches besides the agents' events.
pub(super) struct Watch<'a> {
    pub(super) plan: &'a PlanFile,
    pub(super) checks: &'a [barrage_common::thresholds::Check],
    pub(super) cancel: &'a CancellationToken,
    pub(super) stop: &'a CancellationToken,
    /// Where settled intervals and request records go.
    pub(super) events: &'a Events,
    pub(super) step: u32,
    pub(super) monitors: &'a crate::monitor::Monitors,
}

/// Stream and merge: every agent's events until all links end; stops every
/// agent on Ctrl-C/SIGTERM or a threshold that is clearly lost.
pub(super) async fn stream_and_merge(
    mut ev_rx: mpsc::Receiver<LinkEvent>,
    merger: &mut Merger,
    infos: &[(String, String, u64, f64)],
    start_instant: Instant,
    w: Watch<'_>,
) -> Streamed {
    let mut late = vec![None; infos.len()];
    let mut lost: Vec<Option<String>> = vec![None; infos.len()];
    let mut stops: Vec<Option<pb::StopReason>> = vec![None; infos.len()];
    let mut interrupted = false;
    let mut aborted: Option<String> = None;
    let mut last_final = start_instant;
    let mut merge_errors = Vec::new();
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    LinkEvent::Started { agent, late_ns } => late[agent] = Some(late_ns as f64 / 1e6),
                    LinkEvent::Interval { agent, interval } => {
                        if let Err(e) = merger.add_interval(agent, &interval) {
                            merge_errors.push(format!("agent {}: interval {} rejected: {e}", infos[agent].1, interval.index));
                        }
                    }
                    LinkEvent::Final { agent, fin } => {
                        last_final = Instant::now();
                        stops[agent] = Some(final_reason(&infos[agent].1, &fin));
                        if let Err(e) = merger.add_final(agent, &fin) {
                            merge_errors.push(format!("agent {}: final totals rejected: {e}", infos[agent].1));
                        }
                    }
                    LinkEvent::Resumed { agent } => merger.agent_resumed(agent),
                    LinkEvent::Requests { agent, batch } => w.events.emit(RunEvent::Requests(RequestsEvent {
                        step: w.step,
                        agent,
                        records: batch.records,
                    })),
                    LinkEvent::Lost { agent, reason } => {
                        tracing::warn!(agent = %infos[agent].1, %reason, "agent lost");
                        lost[agent] = Some(reason);
                        merger.agent_gone(agent);
                    }
                }
                if w.plan.thresholds.abort_on_breach && aborted.is_none() {
                    let lost = w.checks
                        .iter()
                        .find(|c| crate::verdict::clearly_lost(c, &merger.totals, &merger.counters, w.plan.load.requests));
                    if let Some(c) = lost {
                        w.events.emit(RunEvent::Message(format!("threshold {c} is clearly lost: stopping every agent")));
                        aborted = Some(c.key.clone());
                        w.stop.cancel();
                    }
                }
                if let Some(t_s) = emit_settled(merger, w.events, w.step)
                    && let Some(sample) = w.monitors.live()
                {
                    w.events.emit(RunEvent::Monitor(MonitorEvent { step: w.step, t_s, sample }));
                }
            }
            _ = w.cancel.cancelled(), if !interrupted => {
                interrupted = true;
                w.events.emit(RunEvent::Message("interrupted: stopping all agents and writing what was measured".into()));
                w.stop.cancel();
            }
        }
    }
    Streamed {
        late,
        lost,
        stops,
        interrupted,
        last_final,
        merge_errors,
        aborted,
    }
}

/// The stop reason of an agent's final totals; one the plan did not ask
/// for is logged at once (it also degrades the run).
pub(super) fn final_reason(addr: &str, fin: &pb::Final) -> pb::StopReason {
    let reason = pb::StopReason::try_from(fin.reason).unwrap_or(pb::StopReason::Unspecified);
    if let Some(why) = crate::edges::unasked_stop(reason, crate::link::LEASE) {
        tracing::warn!(agent = %addr, "agent stopped its load itself: {why}");
    }
    reason
}

/// Sends the intervals that settled since the last call to the outputs;
/// returns the start (s) of the last one sent.
pub(super) fn emit_settled(merger: &mut Merger, events: &Events, step: u32) -> Option<f64> {
    let mut last = None;
    for settled in merger.take_settled() {
        last = Some(settled.row.t_s);
        events.emit(RunEvent::Interval(IntervalEvent {
            step,
            row: settled.row,
            metrics: settled.metrics,
            counters: settled.counters,
            totals: merger.counters.clone(),
        }));
    }
    last
}
