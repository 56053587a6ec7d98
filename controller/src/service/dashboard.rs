//! The web dashboard: pages and assets embedded in the binary (no external
//! loads). Owned by the dashboard part; see docs/service.md.

use axum::Router;

use super::AppState;

/// The dashboard's routes (`/`, `/login` page, `/new`, `/runs/{id}`,
/// `/compare`, `/assets/...`).
pub fn routes() -> Router<AppState> {
    Router::new()
}
