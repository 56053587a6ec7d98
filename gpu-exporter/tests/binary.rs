//! The `gpu-exporter` binary: `--once`, the refusal to expose itself without
//! a token, `--insecure`, token secrecy, and a killed exporter mid-stream.

use std::process::Command;

use barrage_gpu_exporter::client::ExporterClient;
use barrage_gpu_exporter::model::SampleRecord;
use barrage_gpu_exporter::source::FakeSource;
use futures::StreamExt;

use crate::support::{Binary, within};

fn once(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-exporter"))
        .arg("--once")
        .args(args)
        .output()
        .expect("run gpu-exporter --once");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn once_with_fake_gpus_prints_the_fake_sample_as_json() {
    let report = once(&["--fake-gpus", "2"]);
    assert_eq!(report["mode"], "fake");
    assert_eq!(report["gpu_count"], 2);
    let sample: SampleRecord =
        serde_json::from_value(report["sample"].clone()).expect("sample fields");
    let fake = FakeSource::new(2);
    assert_eq!(sample.gpus, vec![fake.reading(0, 0), fake.reading(1, 0)]);
    let host = sample.host.expect("host");
    assert!(host.cpu_count > 0 && host.memory_total_bytes > 0);
}

/// Without a GPU (this test's usual machine) it says host-only and why; with
/// one, it reports NVML. Either way it exits 0 with JSON.
#[test]
fn once_without_flags_reports_its_mode() {
    let report = once(&[]);
    match report["mode"].as_str() {
        Some("host-only") => {
            let detail = report["mode_detail"].as_str().expect("detail");
            assert!(detail.starts_with("NVML unavailable ("), "{detail}");
            assert_eq!(report["sample"]["gpus"], serde_json::json!([]));
        }
        Some("nvml") => assert!(report["gpu_count"].as_u64() > Some(0)),
        other => panic!("unexpected mode {other:?}"),
    }
}

#[tokio::test]
async fn non_loopback_listen_without_token_is_refused() {
    let mut bin = Binary::spawn(&["--listen", "0.0.0.0:0", "--no-metrics"], None);
    let status = within("exit", bin.child.wait()).await.expect("wait");
    assert_eq!(status.code(), Some(64));
    bin.wait_for_line("refusing to listen on 0.0.0.0:0 without a token")
        .await;
}

#[tokio::test]
async fn insecure_starts_with_a_loud_warning() {
    let mut bin = Binary::spawn(
        &[
            "--listen",
            "0.0.0.0:0",
            "--no-metrics",
            "--insecure",
            "--fake-gpus",
            "1",
        ],
        None,
    );
    bin.wait_for_line("WITHOUT AUTHENTICATION").await;
    bin.wait_for_line("gpu-exporter listening").await;
    bin.child.kill().await.expect("kill");
}

#[tokio::test]
async fn the_token_is_never_logged() {
    let secret = "s3cret-value-that-must-not-appear";
    let mut bin = Binary::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--fake-gpus",
            "1",
        ],
        Some(secret),
    );
    let line = bin.wait_for_line("gpu-exporter listening").await;
    assert!(
        line.contains("auth=\"token\"") || line.contains("auth=token"),
        "{line}"
    );
    bin.child.kill().await.expect("kill");
    assert!(
        bin.seen.iter().all(|l| !l.contains(secret)),
        "{:#?}",
        bin.seen
    );
}

#[tokio::test]
async fn a_killed_exporter_ends_the_stream_with_an_error() {
    let mut bin = Binary::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--fake-gpus",
            "2",
            "--interval",
            "20ms",
        ],
        None,
    );
    let addr = bin.grpc_addr().await;
    let mut client = ExporterClient::connect(&addr, None).await.expect("connect");
    let mut stream = Box::pin(client.watch());
    let first = within("sample", stream.next())
        .await
        .expect("item")
        .expect("sample");
    assert_eq!(first.gpus.len(), 2);
    bin.child.kill().await.expect("kill -9");
    let err = loop {
        match within("stream end", stream.next()).await {
            Some(Ok(_)) => continue, // already in flight
            Some(Err(e)) => break e,
            None => panic!("stream ended cleanly after a crash"),
        }
    };
    assert!(err.code().is_some(), "{err}");
    assert!(within("after error", stream.next()).await.is_none());
}
