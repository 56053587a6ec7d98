//! barrage agent: turns a slice of a test plan into traffic against an LLM
//! inference service and streams mergeable measurements back to the
//! controller over the gRPC `Agent` service.

pub mod allow;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod conversation;
pub mod direct;
pub mod engine;
pub mod failure;
pub mod h1;
pub mod health;
pub mod measure;
pub mod ndjson;
pub mod pacing;
pub mod ports;
pub mod profile;
pub mod recorder;
pub mod records;
mod resume;
pub mod server;
pub mod service;
mod session;
pub mod sse;
pub mod template;
pub mod wire;

pub use service::{AgentOptions, AgentService};
pub use session::SessionError;
