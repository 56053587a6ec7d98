//! The `gpu-exporter` command: flags ([`Cli`]), the start-up checks (token,
//! exposure, TLS files), `--once`, and [`run`], which the binary calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use barrage_common::auth::{Token, TokenError};
use barrage_common::tls::{ServerTls, TlsError};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::host::{HostSource, SysinfoHost};
use crate::model::{Mode, SampleRecord};
use crate::sampler::{SamplerConfig, take_sample};
use crate::server::{Exporter, ServeError};
use crate::source::{self, NvmlOptions, SourceChoice};

/// Environment variable read for the token when `--token-env` is not given.
pub const DEFAULT_TOKEN_ENV: &str = "BARRAGE_TOKEN";

/// Samples GPUs (NVML) and the host; serves them over gRPC and Prometheus.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gpu-exporter", version, about)]
pub struct Cli {
    /// gRPC listen address. A non-loopback address needs a token (or --insecure).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address (no authentication).
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub metrics_listen: SocketAddr,
    /// Do not serve `/metrics`.
    #[arg(long)]
    pub no_metrics: bool,
    /// Sampling interval (e.g. 500ms, 1s).
    #[arg(long, default_value = "500ms", value_parser = parse_interval)]
    pub interval: Duration,
    /// Environment variable holding the shared token [default: BARRAGE_TOKEN,
    /// used if set]. Named here, it must be set. The token is never logged.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Allow a non-loopback --listen without a token (anyone who can reach it
    /// can read GPU, process and host data).
    #[arg(long)]
    pub insecure: bool,
    /// Use N fake GPUs with known values instead of NVML (tests, demos).
    #[arg(long, value_name = "N")]
    pub fake_gpus: Option<u32>,
    /// Print one sample as JSON and exit (diagnosis).
    #[arg(long)]
    pub once: bool,
    /// Skip PCIe throughput (each read blocks NVML for 20 ms per counter per GPU).
    #[arg(long)]
    pub no_pcie: bool,
    /// Serve gRPC over TLS with this certificate (PEM; the chain, leaf
    /// first). Needs --tls-key. `/metrics` stays plaintext.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse every client without a certificate signed by
    /// this CA (PEM). Needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside 1ms..1h"));
    }
    Ok(d)
}

/// Why `gpu-exporter` stopped; [`RunError::exit_code`] maps it for the shell.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "refusing to listen on {addr} without a token: anyone who can reach it could read this \
         host's GPU, process and host data. Set the token in ${DEFAULT_TOKEN_ENV} (or name another \
         variable with --token-env), listen on loopback, or pass --insecure to accept the risk"
    )]
    Exposed { addr: SocketAddr },
    #[error("token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl RunError {
    /// 64 (EX_USAGE) for configuration the user must change, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Exposed { .. } | RunError::Token(_) | RunError::Tls(_) => 64,
            _ => 1,
        }
    }
}

/// The token: from `--token-env VAR` (which must then be set), else from
/// `$BARRAGE_TOKEN` if set.
pub fn resolve_token(token_env: Option<&str>) -> Result<Option<Token>, TokenError> {
    match token_env {
        Some(var) => Token::from_env(var).map(Some),
        None => match Token::from_env(DEFAULT_TOKEN_ENV) {
            Ok(t) => Ok(Some(t)),
            Err(TokenError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// Refuses a non-loopback listen address without a token unless `insecure`.
pub fn check_exposure(listen: SocketAddr, has_token: bool, insecure: bool) -> Result<(), RunError> {
    if listen.ip().is_loopback() || has_token {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            %listen,
            "!!! --insecure: serving GPU, process and host data WITHOUT AUTHENTICATION to anyone \
             who can reach {listen} !!!"
        );
        return Ok(());
    }
    Err(RunError::Exposed { addr: listen })
}

/// `--tls-cert`/`--tls-key`/`--tls-client-ca`, read and checked (clap makes
/// sure the first two come together).
pub fn load_tls(cli: &Cli) -> Result<Option<ServerTls>, TlsError> {
    match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            ServerTls::load(cert, key, cli.tls_client_ca.as_deref()).map(Some)
        }
        _ => Ok(None),
    }
}

/// What `--once` prints.
#[derive(Debug, Serialize)]
struct OnceReport {
    version: &'static str,
    mode: Mode,
    mode_detail: String,
    gpu_count: u32,
    sample: SampleRecord,
}

async fn once(choice: SourceChoice) -> Result<(), RunError> {
    let report = tokio::task::spawn_blocking(move || {
        let mut source = source::open(choice);
        let mut host = SysinfoHost::new();
        // CPU usage is a difference: give it a baseline first.
        std::thread::sleep(SysinfoHost::MIN_FIRST_SAMPLE_DELAY);
        let sample = take_sample(1, source.as_mut(), &mut host as &mut dyn HostSource);
        OnceReport {
            version: env!("CARGO_PKG_VERSION"),
            mode: source.mode(),
            mode_detail: source.name().to_owned(),
            gpu_count: source.gpu_count(),
            sample: sample.into(),
        }
    })
    .await
    .map_err(|e| RunError::Internal(e.to_string()))?;
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| RunError::Internal(e.to_string()))?;
    println!("{json}");
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
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

/// Runs the exporter as the flags say, until Ctrl-C/SIGTERM (or, with
/// `--once`, after printing one sample).
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let choice = match cli.fake_gpus {
        Some(n) => SourceChoice::Fake(n),
        None => SourceChoice::Nvml(NvmlOptions { pcie: !cli.no_pcie }),
    };
    if cli.once {
        return once(choice).await;
    }
    // Configuration first, so a refused start touches nothing.
    let token = resolve_token(cli.token_env.as_deref())?;
    check_exposure(cli.listen, token.is_some(), cli.insecure)?;
    let tls = load_tls(&cli)?;
    if tls.is_none() && !cli.listen.ip().is_loopback() {
        tracing::warn!("no --tls-cert: the token and the samples cross the network in clear text");
    }
    let grpc = bind(cli.listen).await?;
    let metrics = if cli.no_metrics {
        None
    } else {
        Some(bind(cli.metrics_listen).await?)
    };
    let source = tokio::task::spawn_blocking(move || source::open(choice))
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?;
    let exporter = Exporter::start(
        source,
        Box::new(SysinfoHost::new()),
        SamplerConfig {
            interval: cli.interval,
            ..SamplerConfig::default()
        },
    )?;
    let info = exporter.sampler().info();
    tracing::info!(
        grpc = %grpc.local_addr().map_or(cli.listen, |a| a),
        metrics = %metrics.as_ref().and_then(|l| l.local_addr().ok()).map_or("off".to_owned(), |a| a.to_string()),
        mode = %info.mode,
        gpus = info.gpu_count,
        interval = ?info.interval,
        auth = if token.is_some() { "token" } else { "none" },
        tls = match &tls {
            None => "off",
            Some(t) if t.is_mutual() => "mutual-tls",
            Some(_) => "tls",
        },
        "gpu-exporter listening"
    );
    exporter
        .serve_with(grpc, metrics, token, tls, shutdown_signal())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn exposure_rules() {
        let lo: SocketAddr = "127.0.0.1:7100".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:7100".parse().expect("addr");
        assert!(check_exposure(lo, false, false).is_ok());
        assert!(check_exposure(any, true, false).is_ok());
        assert!(check_exposure(any, false, true).is_ok());
        let refused = check_exposure(any, false, false).expect_err("refused");
        assert_eq!(refused.exit_code(), 64);
        assert!(
            refused
                .to_string()
                .contains("refusing to listen on 0.0.0.0:7100 without a token")
        );
    }

    #[test]
    fn flags_parse_with_defaults_and_reject_bad_intervals() {
        let cli = Cli::parse_from(["gpu-exporter"]);
        assert_eq!(cli.listen, "127.0.0.1:7100".parse().expect("addr"));
        assert_eq!(cli.metrics_listen, "127.0.0.1:9400".parse().expect("addr"));
        assert_eq!(cli.interval, Duration::from_millis(500));
        let cli = Cli::parse_from(["gpu-exporter", "--interval", "2s", "--fake-gpus", "8"]);
        assert_eq!(
            (cli.interval, cli.fake_gpus),
            (Duration::from_secs(2), Some(8))
        );
        assert!(Cli::try_parse_from(["gpu-exporter", "--interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["gpu-exporter", "--interval", "fast"]).is_err());
    }

    #[test]
    fn tls_flags_come_together_and_bad_files_are_named() {
        assert!(Cli::try_parse_from(["gpu-exporter", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["gpu-exporter", "--tls-key", "k.pem"]).is_err());
        assert!(Cli::try_parse_from(["gpu-exporter", "--tls-client-ca", "ca.pem"]).is_err());
        let cli = Cli::parse_from([
            "gpu-exporter",
            "--tls-cert",
            "/surely/missing/c.pem",
            "--tls-key",
            "/surely/missing/k.pem",
        ]);
        let err = RunError::from(load_tls(&cli).expect_err("missing file"));
        assert_eq!(err.exit_code(), 64);
        assert!(
            err.to_string()
                .starts_with("--tls-cert: cannot read /surely/missing/c.pem"),
            "{err}"
        );
        assert!(
            load_tls(&Cli::parse_from(["gpu-exporter"]))
                .expect("no TLS")
                .is_none()
        );
    }

    #[test]
    fn a_named_token_variable_must_be_set() {
        let err = resolve_token(Some("BARRAGE_TEST_SURELY_UNSET_TOKEN_VAR")).expect_err("unset");
        assert!(matches!(err, TokenError::Missing(_)));
    }
}
