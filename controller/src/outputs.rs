//! The outputs a run starts with: each is a consumer of the run's events
//! (crate::events). Add an output here, never in the run loop.

use crate::events::Consumer;
use crate::run::RunOptions;

/// The consumers of `controller run`, in no particular order (each runs on
/// its own thread).
pub fn defaults(opts: &RunOptions) -> Vec<Box<dyn Consumer>> {
    let _ = opts;
    let mut outputs: Vec<Box<dyn Consumer>> = Vec::new();
    outputs.extend(crate::store::consumers());
    outputs
}
