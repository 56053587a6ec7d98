//! Integration tests of the controller: real gRPC to agents, real HTTP to
//! llm-sim on loopback, real files.

mod support;

mod accuracy;
mod apis;
mod chat_counts;
mod cli;
mod cluster_edges;
mod conversations;
mod datasets;
mod e2e;
mod edges;
mod events;
mod failures;
mod fleet;
mod limits;
mod live;
mod load_models;
mod monitor;
mod odd_servers;
mod reports;
mod secrets;
mod service_api;
mod service_batch;
mod service_browser;
mod service_metrics;
mod store;
mod sweeps;
