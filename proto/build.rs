//! Generates Rust bindings for `proto/**/*.proto` without a system `protoc`.
//!
//! `protox` (a pure-Rust protobuf compiler) produces a `FileDescriptorSet`,
//! which `tonic-prost-build` turns into prost messages plus tonic stubs in `OUT_DIR`.

const PROTOS: &[&str] = &[
    "barrage/agent/v1/agent.proto",
    "barrage/exporter/v1/exporter.proto",
];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, INCLUDES)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    // tonic-prost-build emits no rerun-if-changed in compile_fds mode.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
