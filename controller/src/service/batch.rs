//! The batch-test request shape (`num_prompts_list`, `max_concurrency_list`,
//! `input_output_pairs`) turned into a zipped sweep plan (docs/service.md).
//! Owned by the batch part.

use barrage_common::plan::PlanFile;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub num_prompts_list: Vec<u64>,
    #[serde(default)]
    pub max_concurrency_list: Vec<u64>,
    #[serde(default)]
    pub input_output_pairs: Vec<[u32; 2]>,
    /// A base plan as TOML (target, dataset...).
    pub plan: Option<String>,
    pub url: Option<String>,
    pub model: Option<String>,
    pub api: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Invalid(String),
}

/// The sweep plan of a batch request.
pub fn to_plan(req: &BatchRequest) -> Result<PlanFile, BatchError> {
    let _ = req;
    Err(BatchError::Invalid(
        "batch requests are not supported yet".into(),
    ))
}
