//! The HTTP server: [`SimServer`] (bind, serve in a background task, stop
//! within a bounded time), the route table, and the non-generation
//! endpoints (`/v1/models`, `/sim/stats`, `/sim/reset`, health probes).
//!
//! Connections are served by our own accept loop (hyper-util, TCP_NODELAY on
//! every socket so no chunk waits for Nagle) rather than `axum::serve`, so
//! that a shutdown can abort streams that outlive the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{Json, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::engine::{Shared, unix_now};
use crate::stats::{Counters, SimStats};
use crate::{SimConfig, SimError, embeddings, ollama, openai};

/// How long a shutdown lets open responses finish before cutting them.
const GRACE: Duration = Duration::from_secs(1);

/// Pending-connection queue length (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 8192;

/// A running simulator. Dropping it stops it too (without waiting).
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SimServer {
    /// Binds `listen` (use 127.0.0.1:0 for an ephemeral port), serves in a
    /// spawned tokio task, returns at once.
    pub async fn spawn(config: SimConfig, listen: SocketAddr) -> Result<SimServer, SimError> {
        config.validate()?;
        let listener = bind(listen).map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
        let counter = crate::count::Counter::load(&config)?;
        let shared = Arc::new(Shared::new(config, counter));
        let counters = Arc::clone(&shared.counters);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, router(shared), stopped));
        tracing::info!(%addr, "llm-sim serving");
        Ok(SimServer {
            addr,
            counters,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// Stops accepting, lets open responses finish for up to a second, then
    /// cuts the rest.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(GRACE * 2, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// A listener with a backlog deep enough for thousands of clients connecting at once.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The route table.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(tags))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/sim/stats", get(stats))
        .route("/sim/reset", post(reset))
        // Long-context prompts are large; this is a test server.
        .layer(DefaultBodyLimit::max(64 << 20))
        .layer(middleware::from_fn(stamp_arrival))
        .with_state(shared)
}

/// When a request's head reached the simulator: `t0`, where its timing
/// starts. Taken before the body is read and parsed, so that the
/// simulator's own handling (slow in a debug build, and queued when many
/// requests come at once) is inside the injected TTFT, not added to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrived(pub tokio::time::Instant);

async fn stamp_arrival(mut request: Request, next: Next) -> Response {
    request
        .extensions_mut()
        .insert(Arrived(tokio::time::Instant::now()));
    next.run(request).await
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": shared.cfg.model,
            "object": "model",
            "created": unix_now(),
            "owned_by": "llm-sim",
        }],
    }))
}

async fn tags(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "models": [{ "name": shared.cfg.model, "model": shared.cfg.model }],
    }))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<SimStats> {
    Json(shared.counters.snapshot())
}

/// Zeroes the counters; answers with their values just before.
async fn reset(State(shared): State<Arc<Shared>>) -> Json<SimStats> {
    Json(shared.counters.reset())
}

/// The accept loop; returns after a stop (or the [`SimServer`] being dropped)
/// once every connection ended or the grace period passed.
async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let (closing, closing_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => {
                    connections.spawn(connection(socket, router.clone(), closing_rx.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(GRACE, drained).await.is_err() {
        tracing::info!(
            open = connections.len(),
            "cutting responses still open after the grace period"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one connection (HTTP/1.1, or HTTP/2 with prior knowledge).
async fn connection(socket: TcpStream, router: Router, mut closing: watch::Receiver<bool>) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(socket), TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        }
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
