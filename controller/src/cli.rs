//! Command-line interface of the `controller` binary and its entry point.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::run::{self, RunOptions};

/// Exit status for a plan that cannot run (bad key, file, value).
pub const EXIT_BAD_PLAN: i32 = 2;
/// Exit status for a run that failed to set up or broke down.
pub const EXIT_FAILED: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "controller",
    version,
    about = "barrage controller: load tests for LLM inference services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test plan (TOML). BARRAGE_SECTION__KEY environment variables override plan keys.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Write results below this folder instead of [output] dir.
        #[arg(long)]
        output: Option<PathBuf>,
        /// No per-interval progress lines.
        #[arg(long)]
        quiet: bool,
    },
}

/// Runs the CLI; returns the process exit status.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            plan,
            output,
            quiet,
        } => {
            let mut p = match barrage_common::plan::load(&plan) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_BAD_PLAN;
                }
            };
            if let Some(dir) = output {
                p.output.dir = dir;
            }
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    c.cancel();
                }
            });
            let opts = RunOptions {
                plan_dir: plan.parent().map(PathBuf::from),
                progress: !quiet,
                embedded_threads: None,
                agent_token: None,
                monitor_token: None,
            };
            match crate::sweep::execute_plan(p, opts, cancel).await {
                Ok(crate::sweep::PlanOutcome::Single(outcome)) => {
                    println!("{}", crate::report::render(&outcome.summary));
                    println!("Results: {}", outcome.dir.display());
                    outcome.verdict.exit_code()
                }
                Ok(crate::sweep::PlanOutcome::Sweep(outcome)) => {
                    println!("{}", crate::sweep::render(&outcome.report));
                    println!("Results: {}", outcome.dir.display());
                    outcome.verdict.exit_code()
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    match e {
                        run::RunError::Dataset(_) => EXIT_BAD_PLAN,
                        _ => EXIT_FAILED,
                    }
                }
            }
        }
    }
}
