//! [`Exporter`]: one sampler wired to the gRPC server (token-checked, TLS or
//! mutual TLS when configured) and the `/metrics` HTTP server, with a
//! shutdown that ends every open stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use barrage_common::auth::{RequireToken, Token};
use barrage_common::tls::{ServerTls, error_chain};
use barrage_proto::exporter::v1::gpu_exporter_server::GpuExporterServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;

use crate::host::HostSource;
use crate::prometheus;
use crate::sampler::{Sampler, SamplerConfig};
use crate::service::ExporterService;
use crate::source::GpuSource;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the sampler thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// (The message holds the whole cause chain.)
    #[error("gRPC server failed: {}", error_chain(.0))]
    Grpc(tonic::transport::Error),
    #[error("TLS: {}", error_chain(.0))]
    Tls(tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Metrics(#[source] std::io::Error),
}

/// A running sampler plus the means to serve it.
pub struct Exporter {
    sampler: Arc<Sampler>,
}

/// The gRPC server builder every exporter uses.
fn grpc_server_builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        // Detects controllers that vanished without closing the connection.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// [`grpc_server_builder`] with TLS when given.
fn grpc_server_builder_with(tls: Option<&ServerTls>) -> Result<Server, ServeError> {
    let builder = grpc_server_builder();
    match tls {
        Some(tls) => tls.apply(builder).map_err(ServeError::Tls),
        None => Ok(builder),
    }
}

impl Exporter {
    /// Starts sampling `source` and `host` on the dedicated thread.
    pub fn start(
        source: Box<dyn GpuSource>,
        host: Box<dyn HostSource>,
        config: SamplerConfig,
    ) -> Result<Self, ServeError> {
        let sampler = Sampler::spawn(source, host, config).map_err(ServeError::Spawn)?;
        Ok(Self {
            sampler: Arc::new(sampler),
        })
    }

    pub fn sampler(&self) -> &Arc<Sampler> {
        &self.sampler
    }

    /// The gRPC router: the `GpuExporter` service behind the token check
    /// (`None` accepts every caller), plaintext. Serve it with any `serve_with_*`.
    pub fn grpc_router(&self, token: Option<Token>) -> Router {
        let service = GpuExporterServer::with_interceptor(
            ExporterService::new(Arc::clone(&self.sampler)),
            RequireToken::new(token),
        );
        grpc_server_builder().add_service(service)
    }

    /// [`Exporter::grpc_router`] with TLS (mutual TLS when `tls` has a
    /// client CA): every connection completes the handshake before any call.
    pub fn grpc_router_with(
        &self,
        token: Option<Token>,
        tls: Option<&ServerTls>,
    ) -> Result<Router, ServeError> {
        let service = GpuExporterServer::with_interceptor(
            ExporterService::new(Arc::clone(&self.sampler)),
            RequireToken::new(token),
        );
        Ok(grpc_server_builder_with(tls)?.add_service(service))
    }

    /// The `/metrics` router.
    pub fn metrics_router(&self) -> axum::Router {
        prometheus::router(Arc::clone(&self.sampler))
    }

    /// Serves gRPC in plaintext: [`Exporter::serve_with`] without TLS.
    pub async fn serve(
        self,
        grpc: TcpListener,
        metrics: Option<TcpListener>,
        token: Option<Token>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        self.serve_with(grpc, metrics, token, None, shutdown).await
    }

    /// Serves gRPC on `grpc` (over TLS when `tls` is given) and, if given,
    /// `/metrics` on `metrics` (always plaintext) until `shutdown`
    /// completes. Shutdown stops the sampler, which ends every open
    /// `WatchSamples` stream with `UNAVAILABLE`, then both servers drain.
    pub async fn serve_with(
        self,
        grpc: TcpListener,
        metrics: Option<TcpListener>,
        token: Option<Token>,
        tls: Option<ServerTls>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        // Before anything starts: a TLS configuration that cannot be used
        // stops here.
        let router = self.grpc_router_with(token, tls.as_ref())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let sampler = Arc::clone(&self.sampler);
        let trigger = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            sampler.shutdown();
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // Err: the trigger task is gone, which also means "stop".
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grpc_server = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped(stop_rx.clone()));
        let metrics_server = async {
            match metrics {
                Some(listener) => axum::serve(listener, self.metrics_router())
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .await
                    .map_err(ServeError::Metrics),
                None => Ok(()),
            }
        };
        let result = tokio::try_join!(
            async { grpc_server.await.map_err(ServeError::Grpc) },
            metrics_server
        );
        trigger.abort();
        self.sampler.shutdown();
        result.map(|_| ())
    }
}
