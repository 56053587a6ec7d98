//! Shared by every barrage crate: the plan schema and its validation, load
//! splitting, and the mergeable metric model (histogram sets, counters, their
//! wire encoding).

pub mod auth;
pub mod chat_template;
pub mod clock;
pub mod conversation;
pub mod dataset;
pub mod error_detail;
pub mod exposition;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod monitor;
pub mod plan;
pub mod redact;
pub mod simulator;
pub mod split;
pub mod sweep;
pub mod template;
pub mod thresholds;
pub mod tls;
pub mod turns;
