//! Serving the `Agent` service on a listener, with token auth and optional
//! TLS / mutual TLS, for both the `agent serve` daemon and the controller's
//! embedded in-process agents (plaintext, loopback).

use std::future::Future;
use std::net::SocketAddr;

use barrage_common::auth::{RequireToken, Token};
use barrage_common::tls::{ServerTls, error_chain};
use barrage_proto::agent::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::AgentService;

/// Largest message accepted: dataset chunks are cut well below this.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without a token: set --token-env, or pass --insecure to accept anyone who can reach this port"
    )]
    NoToken(SocketAddr),
    #[error("gRPC server failed: {}", error_chain(.0))]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {}", error_chain(.0))]
    Tls(tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a non-loopback listener without a token unless `insecure`. TLS
/// does not replace the token (it is checked either way); a non-loopback
/// listener without TLS is allowed but warned about.
pub fn check_exposure(
    addr: SocketAddr,
    token: Option<&Token>,
    insecure: bool,
) -> Result<(), ServeError> {
    if token.is_none() && !addr.ip().is_loopback() {
        if !insecure {
            return Err(ServeError::NoToken(addr));
        }
        tracing::warn!(%addr, "INSECURE: serving without a token on a non-loopback address; anyone who reaches this port can aim this agent's traffic");
    }
    Ok(())
}

/// What the log says about transport security: `"off"`, `"tls"` or `"mutual-tls"`.
pub fn tls_mode(tls: Option<&ServerTls>) -> &'static str {
    match tls {
        None => "off",
        Some(t) if t.is_mutual() => "mutual-tls",
        Some(_) => "tls",
    }
}

/// Serves plaintext until `shutdown` resolves (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    service: AgentService,
    token: Option<Token>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, service, token, None, shutdown).await
}

/// Serves until `shutdown` resolves; with `tls`, every connection must
/// complete a TLS handshake (and, for mutual TLS, present a client
/// certificate signed by the client CA) before any request is read.
pub async fn serve_with(
    listener: TcpListener,
    service: AgentService,
    token: Option<Token>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let stop_sessions = service.shutdown_token();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: stopping any running step and flushing its totals");
        stop_sessions.cancel();
    };
    let svc = AgentServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let svc = tonic::service::interceptor::InterceptedService::new(svc, RequireToken::new(token));
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)));
    if let Some(tls) = &tls {
        builder = tls.apply(builder).map_err(ServeError::Tls)?;
    }
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
