//! barrage's GPU exporter: samples every GPU through NVML (or fake GPUs, or
//! none: host-only mode) and the host through `sysinfo` on a dedicated
//! thread, and serves the samples as the `GpuExporter` gRPC stream (with
//! token auth) and as Prometheus text on `/metrics`.
//!
//! The controller side lives here too: [`client::ExporterClient`] (connect,
//! clock alignment, sample stream) and [`summary::summarize`] (report
//! aggregates). See `docs/gpu-exporter.md`.

pub mod app;
pub mod client;
pub mod host;
pub mod model;
pub mod prometheus;
pub mod sampler;
pub mod server;
pub mod service;
pub mod source;
pub mod summary;

pub use app::{Cli, RunError, run};
pub use client::{ClientError, ExporterClient, SeqEvent, SeqTracker};
pub use server::{Exporter, ServeError};
pub use summary::{ExporterSummary, Window, summarize};
