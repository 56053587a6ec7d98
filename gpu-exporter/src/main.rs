//! `gpu-exporter`: parse flags, build the runtime, run the library, map the
//! error to an exit code (64: configuration to fix, 1: anything else).

use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = barrage_gpu_exporter::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match start(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = e
                .downcast_ref::<barrage_gpu_exporter::RunError>()
                .map_or(1, |r| r.exit_code());
            eprintln!("gpu-exporter: {e:#}");
            code
        }
    };
    std::process::exit(code);
}

fn start(cli: barrage_gpu_exporter::Cli) -> anyhow::Result<()> {
    // The exporter's async work is light (a few streams and scrapes); sampling
    // has its own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(barrage_gpu_exporter::run(cli))?;
    Ok(())
}
