//! Wire types for barrage's gRPC services: the controller <-> agent `Agent`
//! service and the `GpuExporter` service. This crate is the only wire contract.

/// Protocol version spoken on the `Agent` session; majors must match exactly.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Minor version: additions that old peers can ignore.
pub const PROTOCOL_MINOR: u32 = 0;

pub mod agent {
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("barrage.agent.v1");
    }
}

pub mod exporter {
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("barrage.exporter.v1");
    }
}
