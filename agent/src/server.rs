//! Serving the `Agent` service on a listener, with token auth, for both the
//! `agent serve` daemon and the controller's embedded in-process agents.

use std::future::Future;
use std::net::SocketAddr;

use barrage_common::auth::{RequireToken, Token};
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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a non-loopback listener without a token unless `insecure`.
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: AgentService,
    token: Option<Token>,
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
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
