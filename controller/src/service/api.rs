//! The REST API (docs/service.md). Every handler is annotated for the
//! OpenAPI document, and registered through the same annotation
//! (`utoipa_axum::routes!`), so the document and the routes cannot differ.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::batch::BatchRequest;
use super::error::ApiError;
use super::files;
use super::live::Progress;
use super::queue::{ListFilter, NewRun, RunRow, RunStatus};
use super::runner::{Cancelled, parse_plan};
use crate::report::Summary;
use crate::sweep::SweepReport;

/// One run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: RunStatus,
    pub pool: String,
    pub sweep: bool,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// The run's results folder (a sweep's: its steps are below).
    pub dir: Option<String>,
    /// Headline figures of the finished run.
    #[schema(value_type = Option<Object>)]
    pub headline: Option<Value>,
    /// While it runs: the latest interval.
    pub progress: Option<Progress>,
    /// The plan (secrets redacted); single-run responses only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_toml: Option<String>,
}

impl RunInfo {
    pub fn of(row: RunRow, progress: Option<Progress>, with_plan: bool) -> Self {
        let plan_toml = with_plan.then(|| shown_plan(&row.plan_toml));
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            status: row.status,
            pool: row.pool,
            sweep: row.sweep,
            submitted_at: row.submitted_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            error: row.error,
            dir: row.dir,
            headline: row.headline,
            progress,
            plan_toml,
        }
    }
}

/// The plan as shown: parsed and redacted (header values, URL
/// credentials); the stored text as is when it no longer parses.
fn shown_plan(text: &str) -> String {
    parse_plan(text)
        .ok()
        .and_then(|p| barrage_common::redact::plan_for_display(&p).to_toml().ok())
        .unwrap_or_else(|| "# (the submitted plan no longer parses)\n".into())
}

/// A finished run's headline figures.
pub fn headline_of(s: &Summary) -> Value {
    let p = |metric: &str, q: &str| {
        s.metrics
            .get(metric)
            .and_then(|d| d.percentiles.get(q).copied())
    };
    json!({
        "requests_ok": s.requests_ok,
        "requests_failed": s.requests_failed,
        "request_throughput": s.request_throughput,
        "output_throughput": s.output_throughput,
        "ttft_p50_ms": p("ttft", "p50"),
        "ttft_p99_ms": p("ttft", "p99"),
        "itl_p50_ms": p("itl", "p50"),
        "e2e_p99_ms": p("e2e", "p99"),
    })
}

/// A sweep's headline: requests summed over its steps; throughput and
/// latency of its step with the highest request throughput.
pub fn sweep_headline(r: &SweepReport) -> Value {
    let best = r
        .steps
        .iter()
        .max_by(|a, b| a.request_throughput.total_cmp(&b.request_throughput));
    let failed: u64 = r
        .steps
        .iter()
        .map(|s| {
            let total = s.requests_ok as f64 / s.success_rate.max(1e-12);
            (total - s.requests_ok as f64).max(0.0).round() as u64
        })
        .sum();
    json!({
        "steps": r.steps.len(),
        "requests_ok": r.steps.iter().map(|s| s.requests_ok).sum::<u64>(),
        "requests_failed": failed,
        "best_step": best.map(|s| s.label.clone()),
        "request_throughput": best.map(|s| s.request_throughput),
        "output_throughput": best.map(|s| s.output_throughput),
        "ttft_p50_ms": best.and_then(|s| s.ttft_p50_ms),
        "ttft_p99_ms": best.and_then(|s| s.ttft_p99_ms),
        "itl_p50_ms": best.and_then(|s| s.itl_p50_ms),
        "e2e_p99_ms": best.and_then(|s| s.e2e_p99_ms),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PoolQuery {
    /// The agent pool to queue in (default "default").
    pool: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Part of the run's name (any case).
    name: Option<String>,
    /// One state: queued, running, completed, degraded, breached, failed,
    /// cancelled, interrupted or error.
    status: Option<String>,
    /// Submitted at or after (RFC 3339, or YYYY-MM-DD).
    since: Option<String>,
    /// Submitted at or before (RFC 3339, or YYYY-MM-DD: the whole day).
    until: Option<String>,
    /// At most this many (default 1000).
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    runs: Vec<RunInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    files: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CompareQuery {
    /// Run ids, comma-separated; the first is the baseline.
    ids: String,
}

/// The API's routes and its OpenAPI document.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_run, list_runs))
        .routes(routes!(submit_batch))
        .routes(routes!(get_run, delete_run))
        .routes(routes!(cancel_run))
        .routes(routes!(list_files))
        .routes(routes!(get_file))
        .routes(routes!(run_events))
        .routes(routes!(compare_runs))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(e.body_text()),
        _ => ApiError::bad_request(e.body_text()),
    })
}

/// The plan text of a body: TOML as is; JSON converted to TOML.
fn plan_text(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid_plan(format!("the plan is not UTF-8 text: {e}")))?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Ok(text.to_owned());
    }
    let value: toml::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid_plan(format!("the plan is not valid JSON: {e}")))?;
    if !value.is_table() {
        return Err(ApiError::invalid_plan("a JSON plan is an object"));
    }
    toml::to_string(&value)
        .map_err(|e| ApiError::invalid_plan(format!("the JSON plan has no TOML form: {e}")))
}

fn enqueue(
    state: &AppState,
    plan_toml: String,
    description: String,
    pool: Option<String>,
) -> Result<Response, ApiError> {
    let plan = parse_plan(&plan_toml).map_err(|e| ApiError::invalid_plan(e.to_string()))?;
    let svc = &state.0;
    let pool = pool.unwrap_or_else(|| "default".into());
    let row = svc.queue.insert(NewRun {
        name: plan.name.clone(),
        description,
        pool,
        sweep: plan.sweep.is_some(),
        plan_toml,
    })?;
    svc.hub.register(&row.id);
    svc.runner.wake();
    tracing::info!(run = %row.id, name = %row.name, "run queued");
    let location = format!("/api/runs/{}", row.id);
    let info = RunInfo::of(row, None, false);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

/// Submit a plan (TOML, or JSON with `Content-Type: application/json`).
#[utoipa::path(post, path = "/api/runs", params(PoolQuery),
    request_body(content = String, description = "The plan: TOML, or the same as JSON", content_type = "application/toml"),
    responses((status = 201, body = RunInfo), (status = 400, body = ApiError), (status = 413, body = ApiError)))]
async fn submit_run(
    State(state): State<AppState>,
    Query(q): Query<PoolQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let text = plan_text(&headers, &body)?;
    enqueue(&state, text, String::new(), q.pool)
}

/// Submit a batch test (the batch-test framework's request): a zipped sweep.
#[utoipa::path(post, path = "/api/batch", params(PoolQuery), request_body = BatchRequest,
    responses((status = 201, body = RunInfo), (status = 400, body = ApiError)))]
async fn submit_batch(
    State(state): State<AppState>,
    Query(q): Query<PoolQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_batch(format!("not a batch request: {e}")))?;
    let plan = super::batch::to_plan(&req).map_err(|e| ApiError::invalid_batch(e.to_string()))?;
    let text = plan
        .to_toml()
        .map_err(|e| ApiError::invalid_batch(e.to_string()))?;
    enqueue(&state, text, req.description.clone(), q.pool)
}

fn day_bound(v: Option<String>, end: bool) -> Option<String> {
    v.map(|s| match (s.len(), end) {
        // A bare date covers the whole day.
        (10, true) => format!("{s}T23:59:59.999Z"),
        (10, false) => format!("{s}T00:00:00.000Z"),
        _ => s,
    })
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/runs", params(ListQuery),
    responses((status = 200, body = RunList), (status = 400, body = ApiError)))]
async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: unknown state {s:?} (one of queued, running, completed, degraded, breached, failed, cancelled, interrupted, error)"
            ))
        })?),
    };
    let filter = ListFilter {
        name: q.name.filter(|n| !n.is_empty()),
        status,
        since: day_bound(q.since.filter(|s| !s.is_empty()), false),
        until: day_bound(q.until.filter(|s| !s.is_empty()), true),
        limit: q.limit,
    };
    let svc = &state.0;
    let runs = svc
        .queue
        .list(&filter)?
        .into_iter()
        .map(|r| {
            let progress = svc.hub.progress(&r.id);
            RunInfo::of(r, progress, false)
        })
        .collect();
    Ok(Json(RunList { runs }))
}

pub(super) fn find(state: &AppState, id: &str) -> Result<RunRow, ApiError> {
    state.0.queue.get(id)?.ok_or_else(|| ApiError::no_run(id))
}

/// One run, with its plan and live progress.
#[utoipa::path(get, path = "/api/runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = RunInfo), (status = 404, body = ApiError)))]
async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let row = find(&state, &id)?;
    Ok(Json(RunInfo::of(row, state.0.hub.progress(&id), true)))
}

/// Cancel a queued or running run (its agents stop within 2 s; what it
/// measured is kept).
#[utoipa::path(post, path = "/api/runs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 202, body = RunInfo), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let svc = &state.0;
    match svc.runner.cancel(svc, &id)? {
        Cancelled::Dequeued | Cancelled::Stopping => {
            tracing::info!(run = %id, "cancel requested");
            let row = find(&state, &id)?;
            let info = RunInfo::of(row, svc.hub.progress(&id), false);
            Ok((StatusCode::ACCEPTED, Json(info)).into_response())
        }
        Cancelled::NotFound => Err(ApiError::no_run(&id)),
        Cancelled::NotCancellable(RunStatus::Running) => {
            Err(ApiError::conflict(format!("run {id} is already stopping")))
        }
        Cancelled::NotCancellable(s) => Err(ApiError::conflict(format!(
            "run {id} already ended ({}): nothing to cancel",
            s.as_str()
        ))),
    }
}

/// Delete an ended run and its files.
#[utoipa::path(delete, path = "/api/runs/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let svc = &state.0;
    let row = find(&state, &id)?;
    if !row.status.is_terminal() {
        return Err(ApiError::conflict(format!(
            "run {id} is {}: cancel it first",
            row.status.as_str()
        )));
    }
    let folder = svc.run_folder(&id);
    if folder.exists() {
        tokio::fs::remove_dir_all(&folder)
            .await
            .map_err(|e| ApiError::internal(format!("cannot delete {}: {e}", folder.display())))?;
    }
    svc.queue.delete(&id)?;
    tracing::info!(run = %id, "run deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The files of a run's results folder.
#[utoipa::path(get, path = "/api/runs/{id}/files", params(("id" = String, Path)),
    responses((status = 200, body = FileList), (status = 404, body = ApiError)))]
async fn list_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FileList>, ApiError> {
    let row = find(&state, &id)?;
    let files = match state.0.results_dir(&row) {
        Some(dir) => files::list(&dir).await,
        None => Vec::new(),
    };
    Ok(Json(FileList { files }))
}

/// One file of a run's results folder (report.html, results.sqlite,
/// requests.csv, histograms.hlog...).
#[utoipa::path(get, path = "/api/runs/{id}/files/{*path}",
    params(("id" = String, Path), ("path" = String, Path, description = "relative to the results folder")),
    responses((status = 200, description = "the file"), (status = 404, body = ApiError)))]
async fn get_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let row = find(&state, &id)?;
    let dir = state
        .0
        .results_dir(&row)
        .ok_or_else(|| ApiError::not_found(format!("run {id} has no results yet")))?;
    files::serve(&dir, &path).await
}

/// Live updates (Server-Sent Events): the history so far, then live
/// events until the run ends.
#[utoipa::path(get, path = "/api/runs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
              (status = 404, body = ApiError)))]
async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let svc = &state.0;
    // Subscribe before reading the history: nothing falls between.
    let live = svc.hub.subscribe(&id);
    let row = find(&state, &id)?;
    let terminal = row.status.is_terminal();
    let dir = svc.results_dir(&row);
    let history = match dir {
        Some(d) => tokio::task::spawn_blocking(move || super::live::history(&d))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let info =
        serde_json::to_value(RunInfo::of(row, svc.hub.progress(&id), false)).unwrap_or(Value::Null);
    let first = super::live::LiveItem::new("run", &info, super::live::ItemKey::Any);
    let (live, end_now) = match (live, terminal) {
        (Some(rx), false) => (Some(rx), None),
        _ => (
            None,
            Some(super::live::LiveItem::new(
                "end",
                &info,
                super::live::ItemKey::End,
            )),
        ),
    };
    let stream = super::live::watch(first, history, live, end_now);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Compare runs: the figures of `controller compare`, the first run as the
/// baseline.
#[utoipa::path(get, path = "/api/compare", params(CompareQuery),
    responses((status = 200, body = Object), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn compare_runs(
    State(state): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> Result<Json<Value>, ApiError> {
    let runs = super::compare::load_runs(&state, &q.ids)?;
    Ok(Json(super::compare::to_json(&runs)))
}

/// Prometheus metrics of the service and its runs.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts: BTreeMap<String, u64> = state.0.queue.counts()?;
    let text = state.0.metrics.render(&counts);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        Body::from(text),
    )
        .into_response())
}

/// Liveness: `ok` (no token needed).
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}
