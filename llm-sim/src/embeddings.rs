//! `POST /v1/embeddings`: one whole JSON body after the prefill time of the
//! input (`ttft` + `prefill_per_token` × input tokens, no decode), with
//! `usage.prompt_tokens`. Each input gets an 8-float embedding. Faults and the
//! batch limit do not apply to embeddings.

use std::sync::Arc;

use crate::precise::sleep_until;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::engine::{Shared, after};
use crate::server::Arrived;
use crate::stats::InFlight;

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Request {
    input: Input,
    model: Option<String>,
}

pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(t0)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::begin(Arc::clone(&shared.counters));
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("invalid request body: {e}");
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
            )
                .into_response();
        }
    };
    let texts: Vec<String> = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
    };
    let parts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = match shared.count_texts(&parts, &[]).map(|c| c.tokens) {
        Ok(n) => n,
        Err(msg) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
            )
                .into_response();
        }
    };
    let prefill = shared
        .cfg
        .prefill_per_token
        .saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX));
    sleep_until(after(after(t0, shared.cfg.ttft), prefill)).await;
    shared.counters.record_completed(tokens, 0);
    let data: Vec<_> = (0..texts.len())
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.125, -0.25, 0.5, 0.0, 0.75, -0.5, 0.25, 1.0]}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| shared.cfg.model.clone()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    }))
    .into_response()
}
