//! Command line of the `agent` binary: `agent serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use barrage_common::auth::Token;
use barrage_common::tls::ServerTls;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::server::{self, ServeError};
use crate::service::{AgentOptions, AgentService};

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "barrage load agent, driven by a controller over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Agent gRPC service until SIGTERM / Ctrl-C.
    Serve {
        /// Address to listen on. Non-loopback addresses need a token.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Name of the environment variable holding the shared token.
        #[arg(long)]
        token_env: Option<String>,
        /// Allow a non-loopback listener without a token (logged loudly).
        #[arg(long)]
        insecure: bool,
        /// Most users accepted in one run (0 = no limit).
        #[arg(long, default_value_t = 0)]
        max_users: u64,
        /// Load worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Stable agent id (default: random).
        #[arg(long)]
        id: Option<String>,
        /// Targets this agent may load (host name, IP or CIDR; repeatable). Default: any.
        #[arg(long = "allow-target", value_name = "HOST|CIDR")]
        allow_targets: Vec<crate::allow::AllowEntry>,
        /// Serve TLS with this certificate (PEM; the chain, leaf first). Needs --tls-key.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Mutual TLS: refuse every controller without a client certificate
        /// signed by this CA (PEM). Needs --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--token-env: {0}")]
    Token(#[from] barrage_common::auth::TokenError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Tls(#[from] barrage_common::tls::TlsError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve {
            listen,
            token_env,
            insecure,
            max_users,
            threads,
            id,
            allow_targets,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => {
            let token = token_env.as_deref().map(Token::from_env).transpose()?;
            server::check_exposure(listen, token.as_ref(), insecure)?;
            // Read and check the TLS files before binding: a bad file starts nothing.
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => {
                    Some(ServerTls::load(cert, key, tls_client_ca.as_deref())?)
                }
                _ => None,
            };
            if tls.is_none() && !listen.ip().is_loopback() {
                tracing::warn!(
                    "no --tls-cert: the token and target API keys cross the network in clear text"
                );
            }
            if allow_targets.is_empty() && !listen.ip().is_loopback() {
                tracing::warn!(
                    "no --allow-target: this agent will load any target a controller names"
                );
            }
            let mut options = AgentOptions {
                max_users,
                allow_targets: crate::allow::AllowList(allow_targets),
                ..AgentOptions::default()
            };
            if let Some(t) = threads {
                options.load_threads = t.max(1);
            }
            if let Some(id) = id {
                options.agent_id = id;
            }
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| CliError::Bind(listen, e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| CliError::Bind(listen, e))?;
            let service = AgentService::new(options).map_err(ServeError::Io)?;
            // Tests and scripts read this line to learn an ephemeral port.
            println!("agent {} listening on {addr}", service.agent_id());
            tracing::info!(
                %addr,
                auth = token.is_some(),
                tls = server::tls_mode(tls.as_ref()),
                "agent serving"
            );
            server::serve_with(listener, service, token, tls, shutdown_signal()).await?;
            Ok(())
        }
    }
}
