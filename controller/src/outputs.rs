//! The outputs a run starts with: each is a consumer of the run's events
//! (crate::events). Add an output here, never in the run loop.

use std::io::IsTerminal;

use std::path::PathBuf;

use crate::events::{Consumer, OutputError, RunEvent};
use crate::run::RunOptions;

/// Name of the results-folder output: the one whose failure fails the run
/// (the files users keep).
pub const RESULTS_FOLDER: &str = "results folder";

/// The consumers of `controller run`, in no particular order (each runs on
/// its own thread).
pub fn defaults(opts: &RunOptions) -> Vec<Box<dyn Consumer>> {
    let mut outputs: Vec<Box<dyn Consumer>> = vec![
        Box::new(NoRecords(crate::folder::ResultsFolder::default())),
        Box::new(NoRecords(crate::html::HtmlReport::new())),
        Box::new(NoRecords(crate::summary_text::SummaryText::new())),
    ];
    if opts.progress {
        // A terminal gets the live view; a log (journalctl, kubectl logs)
        // a plain line per interval.
        if std::io::stderr().is_terminal() {
            outputs.push(Box::new(NoRecords(crate::live::LiveConsole::new())));
        } else {
            outputs.push(Box::new(NoRecords(crate::console::PlainProgress)));
        }
    }
    outputs.extend(crate::store::consumers());
    outputs
}

/// An output that ignores the per-request records: it is not woken for
/// them (tens of thousands of requests a second come in ~100 batches).
struct NoRecords<C>(C);

impl<C: Consumer> Consumer for NoRecords<C> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        self.0.event(ev)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        self.0.finish()
    }
}
