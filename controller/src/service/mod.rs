//! `controller serve`: the controller behind a REST API, a run queue in
//! SQLite, live Server-Sent Events, a web dashboard and a Prometheus
//! `/metrics` (docs/service.md). Submitted plans run through the same code
//! as `controller run`.

pub mod batch;
pub mod dashboard;
pub mod metrics;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(pub Arc<Service>);

/// The service: its data folder and parts.
pub struct Service {
    pub data: PathBuf,
    pub metrics: Arc<metrics::ServiceMetrics>,
}

/// The whole app: API, dashboard, metrics.
pub fn app(state: AppState) -> Router {
    Router::new().merge(dashboard::routes()).with_state(state)
}
