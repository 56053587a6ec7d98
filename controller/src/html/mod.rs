//! report.html: one self-contained page per run (and per sweep step), and
//! one per sweep. CSS and JS are inlined from controller/assets; the charts
//! are SVG drawn by assets/charts.js from JSON embedded in the page. Opened
//! from disk, the page requests nothing from any network.
//!
//! Pages are built from a summary as JSON (`serde_json::Value`), so a
//! summary.json read back (by `controller report` or `compare`) renders the
//! same page as the run itself.

mod accuracy;
mod definitions;
mod markdown;
pub mod page;
pub mod step;
pub mod sweep;
mod timeline;
mod turns;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::events::{Consumer, OutputError, RunEvent};

/// The report's file name in a results folder.
pub const REPORT_HTML: &str = "report.html";

pub(crate) fn get_f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

pub(crate) fn get_u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Writes `dir/report.html` for one run or step.
pub fn write_step(
    dir: &Path,
    summary: &Value,
    plan_toml: Option<&str>,
) -> Result<PathBuf, OutputError> {
    write(dir, &step::page(summary, plan_toml))
}

/// Writes `dir/report.html` for a sweep: `report` is its sweep.json, `steps`
/// the steps' summaries by step number (for their curves; may be empty).
pub fn write_sweep(
    dir: &Path,
    report: &Value,
    steps: &[(u64, Value)],
) -> Result<PathBuf, OutputError> {
    write(dir, &sweep::page(dir, report, steps))
}

fn write(dir: &Path, html: &str) -> Result<PathBuf, OutputError> {
    std::fs::create_dir_all(dir).map_err(|e| OutputError::io(dir, e))?;
    let path = dir.join(REPORT_HTML);
    let tmp = dir.join(".report.html.tmp");
    std::fs::write(&tmp, html).map_err(|e| OutputError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| OutputError::io(&path, e))?;
    Ok(path)
}

/// The report.html output of a run: one page at the end of each step, and
/// the sweep's page at the end of the plan.
#[derive(Default)]
pub struct HtmlReport {
    /// Summaries of the steps so far (a sweep's page overlays their curves).
    steps: Vec<(u64, Value)>,
    written: Vec<PathBuf>,
}

impl HtmlReport {
    pub fn new() -> Self {
        Self::default()
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, OutputError> {
    serde_json::to_value(v).map_err(|e| OutputError::Other(format!("report.html: {e}")))
}

impl Consumer for HtmlReport {
    fn name(&self) -> &'static str {
        "report.html"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::StepFinished(end) => {
                let summary = to_value(&end.summary)?;
                self.written
                    .push(write_step(&end.dir, &summary, Some(&end.plan_toml))?);
                self.steps.push((u64::from(end.step), curves_only(summary)));
            }
            RunEvent::PlanFinished(end) => {
                if let Some(report) = &end.sweep {
                    let report = to_value(report)?;
                    self.written
                        .push(write_sweep(&end.dir, &report, &self.steps)?);
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

/// What a sweep's page needs of a step: its curves and what it could not
/// observe (a long timeline is not kept for every step).
fn curves_only(mut s: Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "percentile_curves",
        "not_observable",
        "metrics",
        "name",
        "status",
    ] {
        if let Some(v) = s.get_mut(k) {
            out.insert(k.to_owned(), v.take());
        }
    }
    Value::Object(out)
}
