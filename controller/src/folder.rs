//! The results folder as a consumer of the run's events: each step's
//! `summary.json`, `timeline.csv` and `plan.toml` when the step finishes,
//! and a sweep's `sweep.json` / `sweep.csv` when the plan finishes.

use std::path::PathBuf;

use crate::events::{Consumer, OutputError, RunEvent};

#[derive(Default)]
pub struct ResultsFolder {
    written: Vec<PathBuf>,
}

impl Consumer for ResultsFolder {
    fn name(&self) -> &'static str {
        crate::outputs::RESULTS_FOLDER
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::StepFinished(end) => {
                let files = crate::report::write(&end.dir, &end.summary, &end.plan_toml)
                    .map_err(|e| OutputError::io(&end.dir, e))?;
                self.written.extend(files);
            }
            RunEvent::PlanFinished(end) => {
                if let Some(sweep) = &end.sweep {
                    crate::sweep::write(&end.dir, sweep)
                        .map_err(|e| OutputError::io(&end.dir, e))?;
                    self.written.push(end.dir.join("sweep.json"));
                    self.written.push(end.dir.join("sweep.csv"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        Ok(std::mem::take(&mut self.written))
    }
}
