//! What goes into a report: per-GPU and host aggregates (average, max, p95)
//! over a time window of samples, and GPU energy over that window.
//!
//! Windows are on the *exporter's* clock; build one from the controller's
//! clock with [`Window::from_local`] and the [`ClockOffset`] from
//! `ExporterClient::clock_offset`.

use std::collections::BTreeMap;

use barrage_common::clock::ClockOffset;
use barrage_proto::exporter::v1::{GpuSample, Sample};
use serde::{Deserialize, Serialize};

/// Throttle reasons that mean "slowed down by power or heat": software power
/// cap (0x4), hardware slowdown (0x8), software thermal (0x20), hardware
/// thermal (0x40) and power brake (0x80). Idle (0x1) and application clock
/// settings (0x2) are not throttling under load.
pub const POWER_THERMAL_THROTTLE_MASK: u64 = 0x4 | 0x8 | 0x20 | 0x40 | 0x80;

/// Samples with `start_ns <= exporter_mono_ns <= end_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    /// Every sample.
    pub const ALL: Window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };

    /// A window given on our clock (e.g. a run's start and end,
    /// `mono_now_ns`), translated to the exporter's clock.
    pub fn from_local(offset: &ClockOffset, start_local_ns: u64, end_local_ns: u64) -> Self {
        Self {
            start_ns: offset.to_peer(start_local_ns),
            end_ns: offset.to_peer(end_local_ns),
        }
    }

    pub fn contains(&self, mono_ns: u64) -> bool {
        (self.start_ns..=self.end_ns).contains(&mono_ns)
    }
}

/// Average, maximum and 95th percentile (nearest rank) of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub avg: f64,
    pub max: f64,
    pub p95: f64,
    /// Samples that had this reading.
    pub samples: u64,
}

impl Stat {
    /// `None` when there are no values.
    pub fn from_values(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let rank = (n * 95).div_ceil(100).max(1);
        Some(Self {
            avg: values.iter().sum::<f64>() / n as f64,
            max: values[n - 1],
            p95: values[rank - 1],
            samples: n as u64,
        })
    }
}

/// How [`GpuSummary::energy_j`] was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// Difference of NVML's total-energy counter (exact).
    Counter,
    /// Trapezoidal integral of power draw between samples (approximate).
    PowerIntegral,
}

/// One GPU over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSummary {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub samples: u64,
    pub utilization_gpu_pct: Option<Stat>,
    pub utilization_memory_pct: Option<Stat>,
    /// Device memory used as a percent of installed memory.
    pub memory_used_pct: Option<Stat>,
    pub memory_used_bytes_max: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_w: Option<Stat>,
    /// Energy between the first and last sample of the window, joules.
    pub energy_j: Option<f64>,
    pub energy_source: Option<EnergySource>,
    pub temperature_c_max: Option<u32>,
    pub sm_clock_mhz: Option<Stat>,
    /// Percent of samples throttled by power or heat
    /// ([`POWER_THERMAL_THROTTLE_MASK`]).
    pub power_thermal_throttled_pct: Option<f64>,
}

/// The host over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    pub hostname: String,
    pub samples: u64,
    pub cpu_percent: Stat,
    pub cpu_max_core_percent: Stat,
    pub memory_used_pct: Option<Stat>,
    pub memory_used_bytes_max: u64,
    pub memory_total_bytes: u64,
    pub net_rx_bytes_per_sec: Stat,
    pub net_tx_bytes_per_sec: Stat,
}

/// Everything one exporter saw over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExporterSummary {
    pub window: Window,
    /// Samples inside the window.
    pub samples: u64,
    /// Exporter-clock time between the first and last sample in the window, s.
    pub span_s: f64,
    /// Samples missing inside the window (gaps in `seq`).
    pub missed_samples: u64,
    pub gpus: Vec<GpuSummary>,
    pub host: Option<HostSummary>,
}

fn pct(used: Option<u64>, total: Option<u64>) -> Option<f64> {
    match (used, total) {
        (Some(u), Some(t)) if t > 0 => Some(u as f64 * 100.0 / t as f64),
        _ => None,
    }
}

fn stat<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    f: impl Fn(&T) -> Option<f64>,
) -> Option<Stat> {
    Stat::from_values(items.filter_map(f).collect())
}

/// Energy over `(time_ns, gpu)` points in time order: the counter difference
/// when every point has a non-decreasing counter, else the power integral.
fn energy(points: &[(u64, &GpuSample)]) -> (Option<f64>, Option<EnergySource>) {
    let counters: Option<Vec<u64>> = points.iter().map(|(_, g)| g.energy_total_mj).collect();
    if let Some(c) = counters
        && c.len() >= 2
        && c.windows(2).all(|w| w[1] >= w[0])
    {
        let mj = c[c.len() - 1] - c[0];
        return (Some(mj as f64 / 1e3), Some(EnergySource::Counter));
    }
    let mut joules = 0.0;
    let mut any = false;
    for pair in points.windows(2) {
        let ((t0, g0), (t1, g1)) = (pair[0], pair[1]);
        if let (Some(p0), Some(p1)) = (g0.power_mw, g1.power_mw) {
            let dt_s = t1.saturating_sub(t0) as f64 / 1e9;
            joules += (f64::from(p0) + f64::from(p1)) / 2.0 / 1e3 * dt_s;
            any = true;
        }
    }
    if any {
        (Some(joules), Some(EnergySource::PowerIntegral))
    } else {
        (None, None)
    }
}

fn gpu_summary(points: &[(u64, &GpuSample)]) -> Option<GpuSummary> {
    let (_, last) = points.last()?;
    let gpus = || points.iter().map(|(_, g)| *g);
    let (energy_j, energy_source) = energy(points);
    let throttle: Vec<u64> = gpus().filter_map(|g| g.throttle_reasons).collect();
    Some(GpuSummary {
        index: last.index,
        uuid: last.uuid.clone(),
        name: last.name.clone(),
        samples: points.len() as u64,
        utilization_gpu_pct: stat(gpus(), |g| g.utilization_gpu_pct.map(f64::from)),
        utilization_memory_pct: stat(gpus(), |g| g.utilization_memory_pct.map(f64::from)),
        memory_used_pct: stat(gpus(), |g| pct(g.memory_used_bytes, g.memory_total_bytes)),
        memory_used_bytes_max: gpus().filter_map(|g| g.memory_used_bytes).max(),
        memory_total_bytes: gpus().filter_map(|g| g.memory_total_bytes).max(),
        power_w: stat(gpus(), |g| g.power_mw.map(|p| f64::from(p) / 1e3)),
        energy_j,
        energy_source,
        temperature_c_max: gpus().filter_map(|g| g.temperature_c).max(),
        sm_clock_mhz: stat(gpus(), |g| g.sm_clock_mhz.map(f64::from)),
        power_thermal_throttled_pct: (!throttle.is_empty()).then(|| {
            let hit = throttle
                .iter()
                .filter(|t| *t & POWER_THERMAL_THROTTLE_MASK != 0)
                .count();
            hit as f64 * 100.0 / throttle.len() as f64
        }),
    })
}

/// Summarises the samples inside `window` (any order; duplicates by `seq`
/// are not expected). GPUs are matched across samples by (index, UUID) and
/// listed by index.
pub fn summarize(samples: &[Sample], window: Window) -> ExporterSummary {
    let mut inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| window.contains(s.exporter_mono_ns))
        .collect();
    inside.sort_by_key(|s| (s.exporter_mono_ns, s.seq));
    let span_s = match (inside.first(), inside.last()) {
        (Some(a), Some(b)) => (b.exporter_mono_ns - a.exporter_mono_ns) as f64 / 1e9,
        _ => 0.0,
    };
    let missed_samples = inside
        .windows(2)
        .map(|w| w[1].seq.saturating_sub(w[0].seq + 1))
        .sum();

    let mut per_gpu: BTreeMap<(u32, String), Vec<(u64, &GpuSample)>> = BTreeMap::new();
    for s in &inside {
        for g in &s.gpus {
            per_gpu
                .entry((g.index, g.uuid.clone()))
                .or_default()
                .push((s.exporter_mono_ns, g));
        }
    }
    let gpus = per_gpu.values().filter_map(|p| gpu_summary(p)).collect();

    let hosts: Vec<_> = inside.iter().filter_map(|s| s.host.as_ref()).collect();
    let host = hosts.last().map(|last| HostSummary {
        hostname: last.hostname.clone(),
        samples: hosts.len() as u64,
        // `hosts` is non-empty here, so these stats exist; the fallback is unreachable.
        cpu_percent: stat(hosts.iter().copied(), |h| Some(f64::from(h.cpu_percent)))
            .unwrap_or(ZERO),
        cpu_max_core_percent: stat(hosts.iter().copied(), |h| {
            Some(f64::from(h.cpu_max_core_percent))
        })
        .unwrap_or(ZERO),
        memory_used_pct: stat(hosts.iter().copied(), |h| {
            pct(Some(h.memory_used_bytes), Some(h.memory_total_bytes))
        }),
        memory_used_bytes_max: hosts.iter().map(|h| h.memory_used_bytes).max().unwrap_or(0),
        memory_total_bytes: hosts
            .iter()
            .map(|h| h.memory_total_bytes)
            .max()
            .unwrap_or(0),
        net_rx_bytes_per_sec: stat(hosts.iter().copied(), |h| {
            Some(h.net_rx_bytes_per_sec as f64)
        })
        .unwrap_or(ZERO),
        net_tx_bytes_per_sec: stat(hosts.iter().copied(), |h| {
            Some(h.net_tx_bytes_per_sec as f64)
        })
        .unwrap_or(ZERO),
    });

    ExporterSummary {
        window,
        samples: inside.len() as u64,
        span_s,
        missed_samples,
        gpus,
        host,
    }
}

const ZERO: Stat = Stat {
    avg: 0.0,
    max: 0.0,
    p95: 0.0,
    samples: 0,
};

#[cfg(test)]
mod tests;
