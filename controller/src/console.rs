//! The console as a consumer of the run's events: one plain line per
//! settled interval on stderr (fit for journalctl and kubectl logs).

use crate::events::{Consumer, OutputError, RunEvent};
use crate::merge::IntervalRow;

pub struct PlainProgress;

impl Consumer for PlainProgress {
    fn name(&self) -> &'static str {
        "console"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::Interval(iv) => eprintln!("{}", progress_line(&iv.row)),
            RunEvent::Message(m) => eprintln!("{m}"),
            _ => {}
        }
        Ok(())
    }
}

/// The line printed for one interval.
pub fn progress_line(r: &IntervalRow) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
    format!(
        "[{:>6.1}s] ok {:>6}  failed {:>4}  in-flight {:>5}  out tok {:>7}  ttft p50 {:>7} ms  itl p50 {:>6} ms  e2e p99 {:>8} ms",
        r.t_s + 0.0,
        r.requests_ok,
        r.requests_failed,
        r.in_flight,
        r.output_tokens,
        f(r.ttft_p50_ms),
        f(r.itl_p50_ms),
        f(r.e2e_p99_ms)
    )
}
