//! `/metrics`: the latest sample in the Prometheus text exposition format
//! (version 0.0.4), so the exporter also plugs into an existing Prometheus
//! and Grafana. Readings a GPU does not support are left out, not shown as 0.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use barrage_common::clock::mono_now_ns;
use barrage_proto::exporter::v1::{GpuSample, HostSample, Sample};

use crate::sampler::{Sampler, SamplerInfo, SamplerStats};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` router (plain HTTP, no authentication: it is read-only and
/// listens on loopback unless `--metrics-listen` says otherwise).
pub fn router(sampler: Arc<Sampler>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/",
            get(|| async { "barrage gpu-exporter: metrics at /metrics\n" }),
        )
        .with_state(sampler)
}

async fn metrics(State(sampler): State<Arc<Sampler>>) -> impl IntoResponse {
    let body = render(sampler.latest().as_deref(), sampler.info(), sampler.stats());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

use barrage_common::exposition::escape_label as escape;

/// One metric family: HELP and TYPE once, then one line per labelled value.
/// A family with no values is left out entirely.
fn family(out: &mut String, name: &str, kind: &str, help: &str, rows: Rows) {
    if rows.is_empty() {
        return;
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn gpu_labels(g: &GpuSample) -> String {
    format!("gpu=\"{}\",uuid=\"{}\"", g.index, escape(&g.uuid))
}

fn one(value: impl ToString) -> Rows {
    vec![(String::new(), value.to_string())]
}

/// Labelled values of one family: (`k="v",...` labels, value).
type Rows = Vec<(String, String)>;
type GpuValue = fn(&GpuSample) -> Option<String>;
type HostValue = fn(&HostSample) -> String;

/// Per-GPU families: name, type, help, value (`None`: unsupported, left out).
const GPU_FAMILIES: &[(&str, &str, &str, GpuValue)] = &[
    (
        "barrage_gpu_utilization_percent",
        "gauge",
        "Percent of time a kernel was running (NVML sample period).",
        |g| g.utilization_gpu_pct.map(|v| v.to_string()),
    ),
    (
        "barrage_gpu_memory_utilization_percent",
        "gauge",
        "Percent of time device memory was read or written (NVML sample period).",
        |g| g.utilization_memory_pct.map(|v| v.to_string()),
    ),
    (
        "barrage_gpu_memory_used_bytes",
        "gauge",
        "Device memory allocated.",
        |g| g.memory_used_bytes.map(|v| v.to_string()),
    ),
    (
        "barrage_gpu_memory_total_bytes",
        "gauge",
        "Device memory installed.",
        |g| g.memory_total_bytes.map(|v| v.to_string()),
    ),
    ("barrage_gpu_power_watts", "gauge", "Power draw.", |g| {
        g.power_mw.map(|v| (f64::from(v) / 1e3).to_string())
    }),
    (
        "barrage_gpu_power_limit_watts",
        "gauge",
        "Enforced power limit.",
        |g| g.power_limit_mw.map(|v| (f64::from(v) / 1e3).to_string()),
    ),
    (
        "barrage_gpu_energy_joules_total",
        "counter",
        "Energy used since the driver was loaded.",
        |g| g.energy_total_mj.map(|v| (v as f64 / 1e3).to_string()),
    ),
    (
        "barrage_gpu_temperature_celsius",
        "gauge",
        "GPU die temperature.",
        |g| g.temperature_c.map(|v| v.to_string()),
    ),
    (
        "barrage_gpu_sm_clock_hertz",
        "gauge",
        "Current SM clock.",
        |g| {
            g.sm_clock_mhz
                .map(|v| (u64::from(v) * 1_000_000).to_string())
        },
    ),
    (
        "barrage_gpu_throttle_reasons",
        "gauge",
        "NVML clock throttle reason bitmask (0 = none, 1 = idle).",
        |g| g.throttle_reasons.map(|v| v.to_string()),
    ),
    (
        "barrage_gpu_pcie_tx_bytes_per_second",
        "gauge",
        "PCIe transmit throughput.",
        |g| g.pcie_tx_kbps.map(|v| (u64::from(v) * 1000).to_string()),
    ),
    (
        "barrage_gpu_pcie_rx_bytes_per_second",
        "gauge",
        "PCIe receive throughput.",
        |g| g.pcie_rx_kbps.map(|v| (u64::from(v) * 1000).to_string()),
    ),
];

/// Host families: name, help, value (all gauges).
const HOST_FAMILIES: &[(&str, &str, HostValue)] = &[
    (
        "barrage_host_cpu_percent",
        "Host CPU busy percent over the last interval, all logical CPUs.",
        |h| h.cpu_percent.to_string(),
    ),
    (
        "barrage_host_cpu_max_core_percent",
        "Busiest single logical CPU over the last interval, percent.",
        |h| h.cpu_max_core_percent.to_string(),
    ),
    ("barrage_host_cpu_count", "Logical CPUs.", |h| {
        h.cpu_count.to_string()
    }),
    (
        "barrage_host_memory_used_bytes",
        "Host memory in use.",
        |h| h.memory_used_bytes.to_string(),
    ),
    (
        "barrage_host_memory_total_bytes",
        "Host memory installed.",
        |h| h.memory_total_bytes.to_string(),
    ),
    (
        "barrage_host_network_receive_bytes_per_second",
        "Bytes received per second, all interfaces but loopback.",
        |h| h.net_rx_bytes_per_sec.to_string(),
    ),
    (
        "barrage_host_network_transmit_bytes_per_second",
        "Bytes sent per second, all interfaces but loopback.",
        |h| h.net_tx_bytes_per_sec.to_string(),
    ),
];

/// Renders the exposition text for the latest sample (`None`: exporter
/// metadata only, before the first sample).
pub fn render(sample: Option<&Sample>, info: &SamplerInfo, stats: &SamplerStats) -> String {
    let mut out = String::with_capacity(4096);
    let hostname = sample
        .and_then(|s| s.host.as_ref())
        .map_or("", |h| h.hostname.as_str());
    let info_labels = format!(
        "version=\"{}\",mode=\"{}\",hostname=\"{}\"",
        env!("CARGO_PKG_VERSION"),
        info.mode,
        escape(hostname)
    );
    let load = |c: &std::sync::atomic::AtomicU64| one(c.load(Ordering::Relaxed));
    let exporter: [(&str, &str, &str, Rows); 7] = [
        (
            "barrage_exporter_info",
            "gauge",
            "Exporter version, GPU source mode and host name (value always 1).",
            vec![(info_labels, "1".into())],
        ),
        (
            "barrage_exporter_gpus",
            "gauge",
            "Number of GPUs sampled (0 in host-only mode).",
            one(info.gpu_count),
        ),
        (
            "barrage_exporter_interval_seconds",
            "gauge",
            "Sampling interval.",
            one(info.interval.as_secs_f64()),
        ),
        (
            "barrage_exporter_samples_total",
            "counter",
            "Samples taken since start.",
            load(&stats.samples),
        ),
        (
            "barrage_exporter_overruns_total",
            "counter",
            "Sampling ticks skipped because a sample took longer than the interval.",
            load(&stats.overruns),
        ),
        (
            "barrage_exporter_lagged_samples_total",
            "counter",
            "Samples skipped for slow gRPC subscribers.",
            load(&stats.lagged),
        ),
        (
            "barrage_exporter_source_errors_total",
            "counter",
            "Samples in which the GPU source failed as a whole.",
            load(&stats.source_errors),
        ),
    ];
    for (name, kind, help, rows) in exporter {
        family(&mut out, name, kind, help, rows);
    }
    let Some(s) = sample else {
        return out;
    };
    let age_s = mono_now_ns().saturating_sub(s.exporter_mono_ns) as f64 / 1e9;
    family(
        &mut out,
        "barrage_exporter_sample_age_seconds",
        "gauge",
        "Age of the sample shown here (grows if the sampler is stuck).",
        one(age_s),
    );
    family(
        &mut out,
        "barrage_exporter_sample_duration_seconds",
        "gauge",
        "Time taken by the last sample.",
        one(f64::from(s.sample_duration_us) / 1e6),
    );

    let info_rows = s.gpus.iter().map(|g| {
        (
            format!("{},name=\"{}\"", gpu_labels(g), escape(&g.name)),
            "1".to_owned(),
        )
    });
    family(
        &mut out,
        "barrage_gpu_info",
        "gauge",
        "GPU product name (value always 1).",
        info_rows.collect(),
    );
    for (name, kind, help, value) in GPU_FAMILIES {
        let rows = s
            .gpus
            .iter()
            .filter_map(|g| value(g).map(|v| (gpu_labels(g), v)));
        family(&mut out, name, kind, help, rows.collect());
    }
    let process_rows = s.gpus.iter().flat_map(|g| {
        g.processes.iter().filter_map(move |p| {
            let labels = format!(
                "{},pid=\"{}\",process=\"{}\"",
                gpu_labels(g),
                p.pid,
                escape(&p.name)
            );
            p.used_memory_bytes.map(|m| (labels, m.to_string()))
        })
    });
    family(
        &mut out,
        "barrage_gpu_process_memory_used_bytes",
        "gauge",
        "Device memory used by a process.",
        process_rows.collect(),
    );

    if let Some(h) = &s.host {
        for (name, help, value) in HOST_FAMILIES {
            family(&mut out, name, "gauge", help, one(value(h)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{GpuReading, Mode};

    fn info() -> SamplerInfo {
        SamplerInfo {
            mode: Mode::Fake,
            detail: String::new(),
            gpu_count: 1,
            interval: Duration::from_millis(500),
            instance_id: 1,
        }
    }

    #[test]
    fn renders_values_with_help_type_and_escaped_labels_and_skips_unsupported() {
        let gpu = GpuReading {
            index: 0,
            uuid: "GPU-\"x\"".into(),
            name: "A\\B".into(),
            utilization_gpu_pct: Some(42),
            power_mw: Some(350_500),
            power_limit_mw: None,
            ..GpuReading::default()
        };
        let sample = Sample {
            seq: 1,
            gpus: vec![gpu.into()],
            host: Some(barrage_proto::exporter::v1::HostSample {
                cpu_percent: 12.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(Some(&sample), &info(), &SamplerStats::default());
        assert!(text.contains("# HELP barrage_gpu_utilization_percent "));
        assert!(text.contains("# TYPE barrage_gpu_utilization_percent gauge\n"));
        assert!(
            text.contains("barrage_gpu_utilization_percent{gpu=\"0\",uuid=\"GPU-\\\"x\\\"\"} 42\n")
        );
        assert!(text.contains("barrage_gpu_power_watts{gpu=\"0\",uuid=\"GPU-\\\"x\\\"\"} 350.5\n"));
        assert!(text.contains("name=\"A\\\\B\""));
        assert!(text.contains("barrage_host_cpu_percent 12.5\n"));
        assert!(text.contains("mode=\"fake\""));
        assert!(
            !text.contains("barrage_gpu_power_limit_watts"),
            "unsupported is left out"
        );
        // Every non-comment line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        }
    }

    #[test]
    fn before_the_first_sample_only_exporter_metadata_is_shown() {
        let text = render(None, &info(), &SamplerStats::default());
        assert!(text.contains("barrage_exporter_samples_total 0\n"));
        assert!(!text.contains("barrage_gpu_"));
    }
}
