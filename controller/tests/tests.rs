//! Integration tests of the controller: real gRPC to agents, real HTTP to
//! llm-sim on loopback, real files.

mod support;

mod apis;
mod cli;
mod datasets;
mod e2e;
mod load_models;
mod monitor;
mod odd_servers;
mod sweeps;
