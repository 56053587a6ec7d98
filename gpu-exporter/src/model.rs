//! Plain serde mirrors of the wire types: what a GPU source and the host
//! sampler return, what `--once` prints, what a controller can store as JSON,
//! and the conversions to and from `barrage_proto::exporter::v1`.

use std::fmt;

use barrage_proto::exporter::v1 as pb;
use serde::{Deserialize, Serialize};

/// Where GPU readings come from (`SourceMode` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Real GPUs through NVML.
    Nvml,
    /// NVML unavailable: host readings only.
    HostOnly,
    /// Synthetic GPUs with known values.
    Fake,
}

impl Mode {
    /// The name used in logs, JSON and Prometheus labels: `nvml`, `host-only`, `fake`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nvml => "nvml",
            Mode::HostOnly => "host-only",
            Mode::Fake => "fake",
        }
    }

    pub fn to_proto(self) -> pb::SourceMode {
        match self {
            Mode::Nvml => pb::SourceMode::Nvml,
            Mode::HostOnly => pb::SourceMode::HostOnly,
            Mode::Fake => pb::SourceMode::Fake,
        }
    }

    /// The mode in a `HealthResponse.mode`; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::SourceMode::try_from(value).ok()? {
            pb::SourceMode::Nvml => Some(Mode::Nvml),
            pb::SourceMode::HostOnly => Some(Mode::HostOnly),
            pb::SourceMode::Fake => Some(Mode::Fake),
            pb::SourceMode::Unspecified => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GPU at one tick. `None` means the reading is unsupported or failed,
/// never 0. Field meanings and units are those of `GpuSample` in the proto.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization_gpu_pct: Option<u32>,
    pub utilization_memory_pct: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_mw: Option<u32>,
    pub power_limit_mw: Option<u32>,
    pub energy_total_mj: Option<u64>,
    pub temperature_c: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub throttle_reasons: Option<u64>,
    pub pcie_tx_kbps: Option<u32>,
    pub pcie_rx_kbps: Option<u32>,
    pub processes: Vec<ProcessReading>,
}

/// A process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessReading {
    pub pid: u32,
    pub name: String,
    pub used_memory_bytes: Option<u64>,
}

/// The host at one tick (`HostSample` in the proto).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostReading {
    pub cpu_percent: f32,
    pub cpu_count: u32,
    pub cpu_max_core_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub net_rx_bytes_per_sec: u64,
    pub net_tx_bytes_per_sec: u64,
    pub hostname: String,
}

/// One whole sample (`Sample` in the proto).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SampleRecord {
    pub seq: u64,
    pub exporter_mono_ns: u64,
    pub wall_unix_ms: i64,
    pub gpus: Vec<GpuReading>,
    pub host: Option<HostReading>,
    pub lagged_before: u64,
    pub sample_duration_us: u32,
    pub source_error: Option<String>,
}

impl From<ProcessReading> for pb::GpuProcess {
    fn from(p: ProcessReading) -> Self {
        Self {
            pid: p.pid,
            name: p.name,
            used_memory_bytes: p.used_memory_bytes,
        }
    }
}

impl From<pb::GpuProcess> for ProcessReading {
    fn from(p: pb::GpuProcess) -> Self {
        Self {
            pid: p.pid,
            name: p.name,
            used_memory_bytes: p.used_memory_bytes,
        }
    }
}

impl From<GpuReading> for pb::GpuSample {
    fn from(g: GpuReading) -> Self {
        Self {
            index: g.index,
            uuid: g.uuid,
            name: g.name,
            utilization_gpu_pct: g.utilization_gpu_pct,
            utilization_memory_pct: g.utilization_memory_pct,
            memory_used_bytes: g.memory_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
            power_mw: g.power_mw,
            power_limit_mw: g.power_limit_mw,
            energy_total_mj: g.energy_total_mj,
            temperature_c: g.temperature_c,
            sm_clock_mhz: g.sm_clock_mhz,
            throttle_reasons: g.throttle_reasons,
            pcie_tx_kbps: g.pcie_tx_kbps,
            pcie_rx_kbps: g.pcie_rx_kbps,
            processes: g.processes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::GpuSample> for GpuReading {
    fn from(g: pb::GpuSample) -> Self {
        Self {
            index: g.index,
            uuid: g.uuid,
            name: g.name,
            utilization_gpu_pct: g.utilization_gpu_pct,
            utilization_memory_pct: g.utilization_memory_pct,
            memory_used_bytes: g.memory_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
            power_mw: g.power_mw,
            power_limit_mw: g.power_limit_mw,
            energy_total_mj: g.energy_total_mj,
            temperature_c: g.temperature_c,
            sm_clock_mhz: g.sm_clock_mhz,
            throttle_reasons: g.throttle_reasons,
            pcie_tx_kbps: g.pcie_tx_kbps,
            pcie_rx_kbps: g.pcie_rx_kbps,
            processes: g.processes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<HostReading> for pb::HostSample {
    fn from(h: HostReading) -> Self {
        Self {
            cpu_percent: h.cpu_percent,
            cpu_count: h.cpu_count,
            cpu_max_core_percent: h.cpu_max_core_percent,
            memory_used_bytes: h.memory_used_bytes,
            memory_total_bytes: h.memory_total_bytes,
            net_rx_bytes_per_sec: h.net_rx_bytes_per_sec,
            net_tx_bytes_per_sec: h.net_tx_bytes_per_sec,
            hostname: h.hostname,
        }
    }
}

impl From<pb::HostSample> for HostReading {
    fn from(h: pb::HostSample) -> Self {
        Self {
            cpu_percent: h.cpu_percent,
            cpu_count: h.cpu_count,
            cpu_max_core_percent: h.cpu_max_core_percent,
            memory_used_bytes: h.memory_used_bytes,
            memory_total_bytes: h.memory_total_bytes,
            net_rx_bytes_per_sec: h.net_rx_bytes_per_sec,
            net_tx_bytes_per_sec: h.net_tx_bytes_per_sec,
            hostname: h.hostname,
        }
    }
}

impl From<SampleRecord> for pb::Sample {
    fn from(s: SampleRecord) -> Self {
        Self {
            seq: s.seq,
            exporter_mono_ns: s.exporter_mono_ns,
            wall_unix_ms: s.wall_unix_ms,
            gpus: s.gpus.into_iter().map(Into::into).collect(),
            host: s.host.map(Into::into),
            lagged_before: s.lagged_before,
            sample_duration_us: s.sample_duration_us,
            source_error: s.source_error,
        }
    }
}

impl From<pb::Sample> for SampleRecord {
    fn from(s: pb::Sample) -> Self {
        Self {
            seq: s.seq,
            exporter_mono_ns: s.exporter_mono_ns,
            wall_unix_ms: s.wall_unix_ms,
            gpus: s.gpus.into_iter().map(Into::into).collect(),
            host: s.host.map(Into::into),
            lagged_before: s.lagged_before,
            sample_duration_us: s.sample_duration_us,
            source_error: s.source_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_round_trips_through_proto_and_json() {
        let record = SampleRecord {
            seq: 7,
            exporter_mono_ns: 123,
            wall_unix_ms: 1_700_000_000_000,
            gpus: vec![GpuReading {
                index: 1,
                uuid: "GPU-1".into(),
                utilization_gpu_pct: Some(0),
                power_mw: None,
                processes: vec![ProcessReading {
                    pid: 9,
                    name: "python3".into(),
                    used_memory_bytes: None,
                }],
                ..GpuReading::default()
            }],
            host: Some(HostReading {
                cpu_count: 2,
                ..HostReading::default()
            }),
            lagged_before: 3,
            sample_duration_us: 40,
            source_error: None,
        };
        let wire: pb::Sample = record.clone().into();
        // 0 and "unsupported" stay distinct on the wire.
        assert_eq!(wire.gpus[0].utilization_gpu_pct, Some(0));
        assert_eq!(wire.gpus[0].power_mw, None);
        assert_eq!(SampleRecord::from(wire), record);
        let json = serde_json::to_string(&record).expect("serialize");
        let back: SampleRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, record);
    }

    #[test]
    fn mode_names_and_proto_values_round_trip() {
        for mode in [Mode::Nvml, Mode::HostOnly, Mode::Fake] {
            assert_eq!(Mode::from_proto(mode.to_proto() as i32), Some(mode));
        }
        assert_eq!(Mode::HostOnly.to_string(), "host-only");
        assert_eq!(Mode::from_proto(0), None);
        assert_eq!(Mode::from_proto(99), None);
    }
}
