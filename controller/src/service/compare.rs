//! Comparing runs of the service: the figures and page of `controller
//! compare`, for runs named by id.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::queue::RunRow;
use crate::compare::{self, Run, Verdict};

/// Most runs on one comparison.
const MOST: usize = 12;

/// The runs of `ids` ("a,b,c") with their results read; the first is the
/// baseline.
pub fn load_runs(state: &AppState, ids: &str) -> Result<Vec<(RunRow, Run)>, ApiError> {
    let ids: Vec<&str> = ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() < 2 || ids.len() > MOST {
        return Err(ApiError::bad_request(format!(
            "ids: give 2 to {MOST} run ids, comma-separated (got {})",
            ids.len()
        )));
    }
    ids.into_iter()
        .map(|id| {
            let row = super::api::find(state, id)?;
            let dir = state
                .0
                .results_dir(&row)
                .ok_or_else(|| ApiError::conflict(format!("run {id} has no results yet")))?;
            let run = compare::load(&dir)
                .map_err(|e| ApiError::conflict(format!("run {id} cannot be compared yet: {e}")))?;
            Ok((row, run))
        })
        .collect()
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Beyond => "beyond_noise",
        Verdict::WithinNoise => "within_noise",
        Verdict::Unknown => "unknown",
    }
}

/// The comparison as JSON: runs (with their letter), then groups of rows.
pub fn to_json(runs: &[(RunRow, Run)]) -> Value {
    let plain: Vec<Run> = runs.iter().map(|(_, r)| r.clone()).collect();
    let groups = compare::compare(&plain);
    let runs_json: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(i, (row, run))| {
            json!({"id": row.id, "name": row.name, "letter": compare::letter(i),
                   "status": run.status, "steps": run.steps.len()})
        })
        .collect();
    let groups_json: Vec<Value> = groups
        .iter()
        .map(|g| {
            let rows: Vec<Value> = g
                .rows
                .iter()
                .map(|(figure, cells)| {
                    let cells: Vec<Value> = cells
                        .iter()
                        .map(|c| {
                            let (delta, pct, verdict) = match c.change {
                                Some((d, p, v)) => (Some(d), p, Some(verdict_name(v))),
                                None => (None, None, None),
                            };
                            json!({"value": c.value, "change": delta, "change_pct": pct, "noise": verdict})
                        })
                        .collect();
                    json!({"figure": figure, "cells": cells})
                })
                .collect();
            json!({"step": g.step, "rows": rows})
        })
        .collect();
    json!({"runs": runs_json, "groups": groups_json})
}

#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    ids: String,
}

/// `GET /compare?ids=a,b`: the comparison page of `controller compare`.
pub async fn page(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let runs = load_runs(&state, &q.ids)?;
    let plain: Vec<Run> = runs.into_iter().map(|(_, r)| r).collect();
    let groups = compare::compare(&plain);
    // The same page as `controller compare` writes, with a way back to
    // the dashboard.
    let html = compare::page::page(&plain, &groups).replacen(
        "<body>",
        "<body><p class=\"back\"><a href=\"/\">&larr; Runs</a></p>",
        1,
    );
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}
