//! `controller serve`: the controller behind a REST API, a run queue in
//! SQLite, live Server-Sent Events, a web dashboard and a Prometheus
//! `/metrics` (docs/service.md). Submitted plans run through the same code
//! as `controller run`.

pub mod api;
pub mod auth;
pub mod batch;
pub mod compare;
pub mod dashboard;
pub mod error;
pub mod files;
pub mod live;
pub mod metrics;
pub mod queue;
pub mod runner;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use barrage_common::auth::Token;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::auth::Auth;
use self::live::{ItemKey, LiveHub, LiveItem};
use self::queue::Queue;
use self::runner::Runner;

/// Largest plan or batch body accepted by default.
pub const MAX_UPLOAD: usize = 4 << 20;

/// How long a shutdown waits for running runs to write what they measured.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(pub Arc<Service>);

/// The service: its data folder and parts.
pub struct Service {
    /// Absolute: runs' folders are checked to be inside it.
    pub data: PathBuf,
    pub queue: Queue,
    pub runner: Runner,
    pub hub: Arc<LiveHub>,
    pub metrics: Arc<metrics::ServiceMetrics>,
    pub auth: Auth,
    pub max_upload: usize,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub token: Option<Token>,
    /// Runs at once per pool (default 1 for any pool).
    pub pools: BTreeMap<String, usize>,
    pub max_upload: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("barrage-data"),
            token: None,
            pools: BTreeMap::new(),
            max_upload: MAX_UPLOAD,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    OpenListen(#[from] auth::OpenListen),
    #[error("data folder {path}: {source}")]
    Data {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Service {
    /// Opens the data folder and its queue; runs a previous process left
    /// running become interrupted.
    pub fn open(cfg: &ServeConfig) -> Result<Arc<Self>, ServeError> {
        let data_err = |source| ServeError::Data {
            path: cfg.data.clone(),
            source,
        };
        std::fs::create_dir_all(cfg.data.join("runs")).map_err(data_err)?;
        let data = std::fs::canonicalize(&cfg.data).map_err(data_err)?;
        let svc = Arc::new(Self {
            queue: Queue::open(&data)?,
            data,
            runner: Runner::new(cfg.pools.clone()),
            hub: Arc::new(LiveHub::default()),
            metrics: Arc::new(metrics::ServiceMetrics::new()),
            auth: Auth {
                token: cfg.token.clone(),
            },
            max_upload: cfg.max_upload,
        });
        let cut = runner::recover(&svc)?;
        if !cut.is_empty() {
            tracing::warn!(runs = ?cut, "runs cut by the last stop are marked interrupted");
        }
        Ok(svc)
    }

    /// Where run `id` writes its results.
    pub fn run_folder(&self, id: &str) -> PathBuf {
        self.data.join("runs").join(id)
    }

    /// A run's results folder, if it has one inside the data folder (a
    /// guard against a queue edited by hand).
    pub fn results_dir(&self, row: &queue::RunRow) -> Option<PathBuf> {
        let dir = PathBuf::from(row.dir.as_deref()?);
        dir.starts_with(&self.data).then_some(dir)
    }

    fn info_json(&self, id: &str) -> Option<serde_json::Value> {
        let row = self.queue.get(id).ok().flatten()?;
        let info = api::RunInfo::of(row, self.hub.progress(id), false);
        serde_json::to_value(info).ok()
    }

    /// Tells watchers of `id` its new state.
    pub fn publish_state(&self, id: &str) {
        if let Some(info) = self.info_json(id) {
            self.hub
                .publish(id, LiveItem::new("run", &info, ItemKey::Any));
        }
    }

    /// The run ended: its watchers get its final state.
    pub fn end_live(&self, id: &str) {
        let info = self.info_json(id).unwrap_or(serde_json::Value::Null);
        self.hub.end(id, &info);
    }
}

/// The whole app: API (with its OpenAPI document), dashboard, login, all
/// behind the token check.
pub fn app(svc: Arc<Service>) -> Router {
    let state = AppState(Arc::clone(&svc));
    let (api, doc) = api::router().split_for_parts();
    let doc = Arc::new(openapi_json(doc));
    Router::new()
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/login", post(auth::login))
        .route("/logout", get(auth::logout))
        .route("/compare", get(compare::page))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(svc.max_upload))
        .with_state(state)
}

/// The OpenAPI document as served: axum's `{*path}` wildcard written the
/// OpenAPI way, `{path}`.
fn openapi_json(mut doc: utoipa::openapi::OpenApi) -> String {
    doc.info.title = "barrage controller service".into();
    doc.info.description = Some(
        "Load tests as a service: submit plans, watch them, keep their results (docs/service.md)."
            .into(),
    );
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(p, item)| (p.replace("{*", "{"), item))
        .collect();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Binds the configured address (checking the loopback rule first).
pub async fn bind(cfg: &ServeConfig, auth: &Auth) -> Result<TcpListener, ServeError> {
    auth::check_listen(cfg.listen, auth)?;
    TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })
}

/// Serves until `stop`; then stops running runs (they end interrupted,
/// with what they measured kept) and returns.
pub async fn serve_on(listener: TcpListener, svc: Arc<Service>, stop: CancellationToken) {
    let scheduler = tokio::spawn(Runner::schedule(Arc::clone(&svc), stop.clone()));
    let app = app(Arc::clone(&svc));
    let graceful = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        graceful.cancelled().await;
    });
    // Open event streams would hold a graceful shutdown forever: the runs
    // are stopped first, then the server gets a bounded time.
    let runs_stopped = async {
        stop.cancelled().await;
        svc.runner.shutdown(SHUTDOWN_GRACE).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server");
        },
        _ = runs_stopped => {}
    }
    svc.runner.shutdown(SHUTDOWN_GRACE).await;
    let _ = scheduler.await;
}

/// `controller serve`: opens, binds, prints the address, serves until
/// `stop`.
pub async fn serve(cfg: ServeConfig, stop: CancellationToken) -> Result<(), ServeError> {
    let auth = Auth {
        token: cfg.token.clone(),
    };
    let listener = bind(&cfg, &auth).await?;
    let svc = Service::open(&cfg)?;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    println!(
        "barrage service listening on http://{addr}/ (data: {})",
        svc.data.display()
    );
    serve_on(listener, svc, stop).await;
    Ok(())
}
