//! The figures at the edges of a run (METRICS.md, "At the edges"): the
//! drain at the end of a duration run, the warmup window, the span the
//! open-loop achieved rate is measured over, and how the summary states
//! what was cut.

use std::time::Duration;

use barrage_common::plan::PlanFile;
use barrage_proto::agent::v1::StopReason;

/// The drain of this plan's duration run (the target timeout, at most 30 s,
/// unless `[load] drain` says otherwise).
pub fn drain(plan: &PlanFile) -> Duration {
    plan.load.drain_or(plan.target.timeout)
}

/// The warmup as whole intervals: the intervals the merge leaves out and the
/// seconds taken off the run time are the same window.
pub fn warmup_window(warmup: Duration, interval: Duration) -> (u64, f64) {
    let step = interval.as_secs_f64();
    if warmup.is_zero() || step <= 0.0 {
        return (0, 0.0);
    }
    let n = (warmup.as_secs_f64() / step).ceil() as u64;
    (n, n as f64 * step)
}

/// Open loop: arrivals started per second over the span of the intended
/// arrivals (from the end of the warmup to the last intended arrival), not
/// until the last response drained. With no warmup the span runs from the
/// first arrival, so n arrivals make n − 1 gaps. Falls back to `run_s` when
/// there is no span (rate "inf": every arrival at one instant).
pub fn achieved_rate(started: u64, last_arrival_s: Option<f64>, warmup_s: f64, run_s: f64) -> f64 {
    let span = last_arrival_s.map_or(0.0, |l| l - warmup_s);
    let arrivals = if warmup_s > 0.0 {
        started as f64
    } else {
        started.saturating_sub(1) as f64
    };
    if span > 0.0 && arrivals > 0.0 {
        arrivals / span
    } else if run_s > 0.0 {
        started as f64 / run_s
    } else {
        0.0
    }
}

/// What the summary says about requests cut at the end: how many, why, and
/// that their e2e is censored. `None` when nothing needs saying.
pub fn cut_note(
    incomplete: u64,
    drain: Duration,
    duration_run: bool,
    interrupted: bool,
) -> Option<String> {
    const CENSORED: &str = "counted as incomplete; their ttft and chunk gaps are kept, their e2e is censored (not recorded)";
    if interrupted {
        return (incomplete > 0).then(|| {
            format!("{incomplete} requests in flight at the interrupt were cut at once: {CENSORED}")
        });
    }
    if !duration_run {
        return (incomplete > 0).then(|| format!("{incomplete} requests were cut: {CENSORED}"));
    }
    if drain.is_zero() {
        return Some(format!(
            "drain = 0 s: requests in flight at the end of the run were cut at once ({incomplete}): {CENSORED}"
        ));
    }
    (incomplete > 0).then(|| {
        format!(
            "{incomplete} requests were still open {} after the end of the run (the drain) and were cut: {CENSORED}",
            humantime::format_duration(drain)
        )
    })
}

/// The name of an agent's stop reason in summary.json (`agents[].stop_reason`).
pub fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Unspecified => "unspecified",
        StopReason::Completed => "completed",
        StopReason::Duration => "duration",
        StopReason::Controller => "controller",
        StopReason::LeaseExpired => "lease_expired",
        StopReason::HardDeadline => "hard_deadline",
        StopReason::Shutdown => "shutdown",
    }
}

/// Why an agent stopped its load by itself when neither the plan (budget
/// spent, duration over) nor the controller asked it to; `None` otherwise.
/// Such a stop cuts requests the plan meant to run: the run is degraded.
pub fn unasked_stop(reason: StopReason, lease: Duration) -> Option<String> {
    match reason {
        StopReason::LeaseExpired => Some(format!(
            "lease expired (no controller heartbeat for {} s)",
            lease.as_secs()
        )),
        StopReason::HardDeadline => Some("its hard deadline passed".into()),
        StopReason::Shutdown => Some("the agent was shut down (SIGTERM or Ctrl-C)".into()),
        StopReason::Unspecified
        | StopReason::Completed
        | StopReason::Duration
        | StopReason::Controller => None,
    }
}

/// The summary note for an agent that stopped its load by itself.
pub fn unasked_stop_note(agent: &crate::report::AgentReport, why: &str, incomplete: u64) -> String {
    format!(
        "agent {} ({}) stopped its load itself: {why}; {incomplete} requests cut",
        agent.id, agent.addr
    )
}

/// An agent whose `Start` arrived after the agreed moment began its load
/// that much later than the others: say so (a few ms is timer jitter).
pub fn late_start_notes(agents: &[crate::report::AgentReport]) -> Vec<String> {
    const NOTEWORTHY_MS: f64 = 50.0;
    agents
        .iter()
        .filter_map(|a| {
            let ms = a.start_late_ms.filter(|ms| *ms > NOTEWORTHY_MS)?;
            Some(format!(
                "agent {} ({}) started {ms:.0} ms after the agreed moment: its Start arrived late, so its load began that much later",
                a.id, a.addr
            ))
        })
        .collect()
}

/// An agent that met the target closing pooled connections stopped reusing
/// them: from then on connection setup is inside every ttft, so say so.
pub fn unpooled_notes(agents: &[crate::report::AgentReport]) -> Vec<String> {
    use barrage_common::metrics::STALE_RETRIES_BEFORE_NO_POOL as LIMIT;
    agents
        .iter()
        .filter(|a| a.connection_retries >= LIMIT)
        .map(|a| {
            format!(
                "agent {} ({}) stopped reusing connections after {LIMIT} stale-connection retries \
                 (the target closes connections it announces as keep-alive): its later requests \
                 each opened a new connection, whose setup is inside their ttft",
                a.id, a.addr
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_window_is_whole_intervals() {
        let s = Duration::from_secs;
        assert_eq!(warmup_window(Duration::from_millis(1500), s(1)), (2, 2.0));
        assert_eq!(warmup_window(s(2), s(1)), (2, 2.0));
        assert_eq!(warmup_window(Duration::ZERO, s(1)), (0, 0.0));
    }

    #[test]
    fn only_stops_the_plan_did_not_ask_for_are_unasked() {
        let lease = Duration::from_secs(5);
        let why = unasked_stop(StopReason::LeaseExpired, lease).expect("unasked");
        assert_eq!(why, "lease expired (no controller heartbeat for 5 s)");
        assert!(unasked_stop(StopReason::HardDeadline, lease).is_some());
        assert!(unasked_stop(StopReason::Shutdown, lease).is_some());
        for asked in [
            StopReason::Completed,
            StopReason::Duration,
            StopReason::Controller,
            StopReason::Unspecified,
        ] {
            assert_eq!(unasked_stop(asked, lease), None, "{asked:?}");
        }
    }

    #[test]
    fn achieved_rate_spans_the_arrivals_not_the_drain() {
        // 100 arrivals at 10/s, constant from 0: the last at 9.9 s; the run
        // lasted 15 s because responses took 5 s.
        let r = achieved_rate(100, Some(9.9), 0.0, 15.0);
        assert!((r - 10.0).abs() < 1e-9, "{r}");
        // "inf": one instant, no span: over the run.
        assert!((achieved_rate(10, Some(0.0), 0.0, 2.0) - 5.0).abs() < 1e-9);
    }
}
