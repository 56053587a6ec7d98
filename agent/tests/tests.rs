//! Integration tests of the agent: separate `agent` processes driven over
//! real gRPC by the controller library (or a raw session client), loading
//! llm-sim over real HTTP on loopback.

mod support;

mod cluster;
mod partition;
mod records;
mod safety;
mod start;
mod tls;
