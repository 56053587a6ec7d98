//! The outputs a run starts with: each is a consumer of the run's events
//! (crate::events). Add an output here, never in the run loop.

use std::io::IsTerminal;

use crate::events::Consumer;
use crate::run::RunOptions;

/// Name of the results-folder output: the one whose failure fails the run
/// (the files users keep).
pub const RESULTS_FOLDER: &str = "results folder";

/// The consumers of `controller run`, in no particular order (each runs on
/// its own thread).
pub fn defaults(opts: &RunOptions) -> Vec<Box<dyn Consumer>> {
    let mut outputs: Vec<Box<dyn Consumer>> = vec![
        Box::new(crate::folder::ResultsFolder::default()),
        Box::new(crate::html::HtmlReport::new()),
        Box::new(crate::summary_text::SummaryText::new()),
    ];
    if opts.progress {
        // A terminal gets the live view; a log (journalctl, kubectl logs)
        // a plain line per interval.
        if std::io::stderr().is_terminal() {
            outputs.push(Box::new(crate::live::LiveConsole::new()));
        } else {
            outputs.push(Box::new(crate::console::PlainProgress));
        }
    }
    outputs.extend(crate::store::consumers());
    outputs
}
