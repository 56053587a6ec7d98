//! `/metrics` scraped over real HTTP shows the fake backend's values.

use std::time::Duration;

use barrage_gpu_exporter::client::ExporterClient;
use barrage_gpu_exporter::host::FakeHost;
use barrage_gpu_exporter::source::FakeSource;
use futures::StreamExt;

use crate::support::{TestExporter, within};

#[tokio::test]
async fn metrics_endpoint_serves_the_fake_values() {
    // A one-value pattern makes every sample identical, so the scrape is exact
    // whichever sample it shows.
    let server = TestExporter::start(
        Box::new(
            FakeSource::new(2)
                .with_pattern(vec![73])
                .without_energy_counter(),
        ),
        Box::new(FakeHost::new().with_pattern(vec![12.5])),
        Duration::from_millis(20),
        None,
    )
    .await;
    // Wait for a first sample the deterministic way: receive it.
    let mut client = ExporterClient::connect(&server.addr, None)
        .await
        .expect("connect");
    within("first sample", Box::pin(client.watch()).next())
        .await
        .expect("item")
        .expect("sample");

    let response = within("scrape", reqwest::get(&server.metrics_url))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = within("body", response.text()).await.expect("body");

    let gpu1 = r#"{gpu="1",uuid="GPU-fa4e0000-0000-4000-8000-000000000001"}"#;
    for line in [
        "# TYPE barrage_gpu_utilization_percent gauge".to_owned(),
        format!("barrage_gpu_utilization_percent{gpu1} 73"),
        format!("barrage_gpu_memory_utilization_percent{gpu1} 36"),
        format!("barrage_gpu_memory_total_bytes{gpu1} 85899345920"),
        // 100 W + 4 W × 73
        format!("barrage_gpu_power_watts{gpu1} 392"),
        format!("barrage_gpu_power_limit_watts{gpu1} 700"),
        format!("barrage_gpu_temperature_celsius{gpu1} 71"),
        format!("barrage_gpu_sm_clock_hertz{gpu1} 1980000000"),
        format!("barrage_gpu_throttle_reasons{gpu1} 0"),
        format!("barrage_gpu_pcie_tx_bytes_per_second{gpu1} 7300000"),
        "barrage_host_cpu_percent 12.5".to_owned(),
        "barrage_host_cpu_count 16".to_owned(),
        "barrage_exporter_gpus 2".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in\n{text}"
        );
    }
    assert!(text.contains(r#"mode="fake""#));
    assert!(text.contains(r#"pid="4001",process="fake-worker""#));
    // Unsupported on this fake: left out, not 0.
    assert!(!text.contains("barrage_gpu_energy_joules_total"), "{text}");
    server.stop().await;
}
