//! Integration tests: real gRPC and HTTP on ephemeral loopback ports, the
//! fake GPU backend for known values, and the `gpu-exporter` binary itself.

mod support;

mod binary;
mod grpc;
mod metrics;
mod tls;
