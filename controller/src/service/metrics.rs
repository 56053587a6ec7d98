//! Prometheus `/metrics` of the service (docs/service.md). Owned by the
//! metrics part: a consumer per run feeds live figures; `render` writes the
//! text exposition with the queue's run counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::events::Consumer;

/// Every run's live figures, shared by the run consumers and `/metrics`.
#[derive(Debug, Default)]
pub struct ServiceMetrics {}

impl ServiceMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The consumer that feeds run `run_id`'s figures (added to the run's
    /// outputs by the runner).
    pub fn consumer(self: &Arc<Self>, run_id: &str) -> Box<dyn Consumer> {
        Box::new(RunFigures {
            _run: run_id.to_owned(),
        })
    }

    /// The text exposition (format 0.0.4); `runs_by_status`: the queue's
    /// count of runs per state.
    pub fn render(&self, runs_by_status: &BTreeMap<String, u64>) -> String {
        let mut out = String::from("# TYPE barrage_runs gauge\n");
        for (status, n) in runs_by_status {
            out.push_str(&format!("barrage_runs{{status=\"{status}\"}} {n}\n"));
        }
        out
    }
}

struct RunFigures {
    _run: String,
}

impl Consumer for RunFigures {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn event(&mut self, _ev: &crate::events::RunEvent) -> Result<(), crate::events::OutputError> {
        Ok(())
    }
}
