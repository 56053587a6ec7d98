//! [`NvmlSource`]: every GPU through NVML (`nvml-wrapper`).
//!
//! One unsupported or failing field never fails the sample: `NotSupported`
//! becomes `None` silently, any other per-field error becomes `None` with one
//! warning per (GPU, field). Only a failure that loses every GPU (the device
//! count) fails the whole sample.

use std::collections::{HashMap, HashSet};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;

use super::{GpuSource, SourceError};
use crate::model::{GpuReading, Mode, ProcessReading};

/// Longest process name asked from NVML (it truncates to this).
const PROCESS_NAME_LEN: usize = 64;

/// NVML sampling options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmlOptions {
    /// Read PCIe TX/RX throughput. Each counter makes NVML measure over 20 ms,
    /// so this costs about 40 ms per GPU per sample; `--no-pcie` turns it off.
    pub pcie: bool,
}

impl Default for NvmlOptions {
    fn default() -> Self {
        Self { pcie: true }
    }
}

/// Samples every GPU NVML reports.
pub struct NvmlSource {
    nvml: Nvml,
    options: NvmlOptions,
    name: String,
    /// (uuid, name) per index, read once at start: they do not change.
    identity: Vec<(String, String)>,
    /// pid -> process name; refreshed as processes come and go.
    process_names: HashMap<u32, String>,
    /// (gpu, field) pairs already warned about.
    warned: HashSet<(u32, &'static str)>,
}

impl NvmlSource {
    /// Loads NVML and enumerates the GPUs. Fails (so the caller can fall
    /// back to host-only mode) when the library, the driver or any GPU is
    /// missing.
    pub fn init(options: NvmlOptions) -> Result<Self, SourceError> {
        let nvml = Nvml::init().map_err(|e| SourceError::Init(e.to_string()))?;
        let count = nvml.device_count().map_err(|source| SourceError::Nvml {
            call: "device_count",
            source,
        })?;
        if count == 0 {
            return Err(SourceError::NoDevices);
        }
        let driver = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        let identity = (0..count)
            .map(|i| match nvml.device_by_index(i) {
                Ok(d) => (d.uuid().unwrap_or_default(), d.name().unwrap_or_default()),
                Err(_) => (String::new(), String::new()),
            })
            .collect();
        Ok(Self {
            nvml,
            options,
            name: format!("NVML, driver {driver}, {count} GPU(s)"),
            identity,
            process_names: HashMap::new(),
            warned: HashSet::new(),
        })
    }
}

/// `Ok` → `Some`; `NotSupported` → `None` quietly; anything else → `None`
/// with one warning per (GPU, field).
fn field<T>(
    warned: &mut HashSet<(u32, &'static str)>,
    gpu: u32,
    what: &'static str,
    result: Result<T, NvmlError>,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            if warned.insert((gpu, what)) {
                tracing::warn!(gpu, field = what, error = %e, "NVML reading failed; reported as unset");
            }
            None
        }
    }
}

impl GpuSource for NvmlSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn mode(&self) -> Mode {
        Mode::Nvml
    }

    fn gpu_count(&self) -> u32 {
        u32::try_from(self.identity.len()).unwrap_or(u32::MAX)
    }

    fn sample(&mut self) -> Result<Vec<GpuReading>, SourceError> {
        let Self {
            nvml,
            options,
            identity,
            process_names,
            warned,
            ..
        } = self;
        let mut readings = Vec::with_capacity(identity.len());
        let mut seen_pids = HashSet::new();
        // Pass 1: the fast readings of every GPU, close together in time.
        for (index, (uuid, name)) in (0u32..).zip(identity.iter()) {
            let mut r = GpuReading {
                index,
                uuid: uuid.clone(),
                name: name.clone(),
                ..GpuReading::default()
            };
            let Some(dev) = field(warned, index, "device handle", nvml.device_by_index(index))
            else {
                readings.push(r);
                continue;
            };
            if let Some(u) = field(warned, index, "utilization", dev.utilization_rates()) {
                r.utilization_gpu_pct = Some(u.gpu);
                r.utilization_memory_pct = Some(u.memory);
            }
            if let Some(m) = field(warned, index, "memory", dev.memory_info()) {
                r.memory_used_bytes = Some(m.used);
                r.memory_total_bytes = Some(m.total);
            }
            r.power_mw = field(warned, index, "power", dev.power_usage());
            r.power_limit_mw = field(warned, index, "power limit", dev.enforced_power_limit());
            r.energy_total_mj = field(warned, index, "energy", dev.total_energy_consumption());
            r.temperature_c = field(
                warned,
                index,
                "temperature",
                dev.temperature(TemperatureSensor::Gpu),
            );
            r.sm_clock_mhz = field(warned, index, "sm clock", dev.clock_info(Clock::SM));
            r.throttle_reasons = field(
                warned,
                index,
                "throttle reasons",
                dev.current_throttle_reasons(),
            )
            .map(|t| t.bits());
            let mut procs: Vec<ProcessInfo> = field(
                warned,
                index,
                "compute processes",
                dev.running_compute_processes(),
            )
            .unwrap_or_default();
            procs.extend(
                field(
                    warned,
                    index,
                    "graphics processes",
                    dev.running_graphics_processes(),
                )
                .unwrap_or_default(),
            );
            for p in procs {
                if r.processes.iter().any(|q| q.pid == p.pid) {
                    continue; // a process with both contexts is listed once
                }
                seen_pids.insert(p.pid);
                let name = process_names
                    .entry(p.pid)
                    .or_insert_with(|| {
                        // Fails for pids outside our pid namespace; an empty name is fine.
                        nvml.sys_process_name(p.pid, PROCESS_NAME_LEN)
                            .unwrap_or_default()
                    })
                    .clone();
                r.processes.push(ProcessReading {
                    pid: p.pid,
                    name,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                });
            }
            readings.push(r);
        }
        process_names.retain(|pid, _| seen_pids.contains(pid));
        // Pass 2: PCIe throughput, last, because each counter blocks ~20 ms.
        if options.pcie {
            for r in &mut readings {
                let Ok(dev) = nvml.device_by_index(r.index) else {
                    continue;
                };
                r.pcie_tx_kbps = field(
                    warned,
                    r.index,
                    "pcie tx",
                    dev.pcie_throughput(PcieUtilCounter::Send),
                );
                r.pcie_rx_kbps = field(
                    warned,
                    r.index,
                    "pcie rx",
                    dev.pcie_throughput(PcieUtilCounter::Receive),
                );
            }
        }
        Ok(readings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_supported_is_quietly_none_and_other_errors_warn_once() {
        let mut warned = HashSet::new();
        assert_eq!(field(&mut warned, 0, "power", Ok(5u32)), Some(5));
        assert_eq!(
            field::<u32>(&mut warned, 0, "power", Err(NvmlError::NotSupported)),
            None
        );
        assert!(warned.is_empty(), "NotSupported is not worth a warning");
        assert_eq!(
            field::<u32>(&mut warned, 0, "power", Err(NvmlError::GpuLost)),
            None
        );
        assert_eq!(
            field::<u32>(&mut warned, 0, "power", Err(NvmlError::GpuLost)),
            None
        );
        assert_eq!(warned.len(), 1);
    }

    /// On this machine (no GPU) NVML must fail to start, not panic.
    #[test]
    fn init_without_a_gpu_fails_cleanly_or_finds_gpus() {
        match NvmlSource::init(NvmlOptions::default()) {
            Ok(source) => assert!(source.gpu_count() > 0),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
