//! `controller`: parse flags, build the runtime, run, map to an exit status.

use clap::Parser;

fn main() {
    let cli = barrage_controller::cli::Cli::parse();
    // --debug: every request and response of the embedded agents.
    let debug = matches!(&cli.command, barrage_controller::cli::Command::Run(a) if a.debug);
    let serving = matches!(&cli.command, barrage_controller::cli::Command::Serve(_));
    let default = if debug {
        "warn,barrage_agent::client=debug"
    } else if serving {
        // A service logs what it does (runs queued, started, ended).
        "warn,barrage_controller=info"
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
