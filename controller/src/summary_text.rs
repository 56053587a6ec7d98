//! `summary.txt`: the console tables as a file, so a results folder read
//! later (or a CI log that lost the console) has them: each step's summary in
//! its folder, and a sweep's comparison of its steps in the sweep's folder.

use std::path::{Path, PathBuf};

use crate::events::{Consumer, OutputError, RunEvent};

/// The file's name in a step's (or a sweep's) results folder.
pub const FILE: &str = "summary.txt";

/// Writes summary.txt when a step ends, and a sweep's when the plan ends.
#[derive(Debug, Default)]
pub struct SummaryText {
    written: Vec<PathBuf>,
}

impl SummaryText {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&mut self, dir: &Path, text: &str) -> Result<(), OutputError> {
        std::fs::create_dir_all(dir).map_err(|e| OutputError::io(dir, e))?;
        let path = dir.join(FILE);
        // Write-then-rename: a reader never sees half a file.
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| OutputError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| OutputError::io(&path, e))?;
        self.written.push(path);
        Ok(())
    }
}

impl Consumer for SummaryText {
    fn name(&self) -> &'static str {
        "summary.txt"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::StepFinished(s) => self.write(&s.dir, &crate::report::render(&s.summary)),
            RunEvent::PlanFinished(p) => match &p.sweep {
                Some(sweep) => self.write(&p.dir, &crate::sweep::render(sweep)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        Ok(std::mem::take(&mut self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PlanEnd, StepEnd};
    use crate::report::{RunFacts, Summary};
    use crate::run::Verdict;
    use barrage_common::metrics::{Counters, Layouts, MetricSet};

    fn summary() -> Summary {
        let facts = RunFacts {
            name: "smoke".into(),
            run_id: "r1".into(),
            started_at: String::new(),
            target: "http://127.0.0.1:1".into(),
            api: "openai-chat".into(),
            status: "completed".into(),
            duration_s: 2.0,
            users: 1,
            streamed: true,
        };
        let c = Counters {
            requests_ok: 3,
            ..Counters::default()
        };
        let totals = MetricSet::new(Layouts::default()).expect("layouts");
        Summary::build(facts, &totals, &c, Vec::new(), Vec::new(), Vec::new())
    }

    #[test]
    fn writes_the_console_tables_of_each_step_and_of_the_sweep() {
        let root =
            std::env::temp_dir().join(format!("barrage-summary-txt-{:08x}", rand::random::<u32>()));
        let step_dir = root.join("step-1");
        let mut out = SummaryText::new();
        let s = summary();
        let expected = crate::report::render(&s);
        out.event(&RunEvent::StepFinished(Box::new(StepEnd {
            step: 1,
            summary: s,
            verdict: Verdict::Completed,
            dir: step_dir.clone(),
            plan_toml: String::new(),
        })))
        .expect("step");
        let sweep = crate::sweep::SweepReport {
            name: "sw".into(),
            status: "completed".into(),
            steps: Vec::new(),
            search: None,
        };
        let sweep_text = crate::sweep::render(&sweep);
        out.event(&RunEvent::PlanFinished(PlanEnd {
            verdict: Verdict::Completed,
            dir: root.clone(),
            sweep: Some(sweep),
        }))
        .expect("plan");
        let files = out.finish().expect("finish");
        assert_eq!(files, vec![step_dir.join(FILE), root.join(FILE)]);
        let step_text = std::fs::read_to_string(step_dir.join(FILE)).expect("step file");
        assert_eq!(step_text, expected);
        assert!(step_text.contains("Summary: smoke") && step_text.contains("Accuracy budget"));
        assert_eq!(
            std::fs::read_to_string(root.join(FILE)).expect("sweep file"),
            sweep_text
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
