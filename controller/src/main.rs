//! `controller`: parse flags, build the runtime, run, map to an exit status.

use clap::Parser;

fn main() {
    let cli = barrage_controller::cli::Cli::parse();
    let barrage_controller::cli::Command::Run(args) = &cli.command;
    // --debug: every request and response of the embedded agents.
    let default = if args.debug {
        "warn,barrage_agent::client=debug"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(barrage_controller::cli::main(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            barrage_controller::cli::EXIT_FAILED
        }
    };
    std::process::exit(code);
}
