//! [`FakeSource`]: N synthetic GPUs with known, deterministic values, so tests
//! and benchmarks drive the whole exporter path without a GPU.
//!
//! Every value derives from the GPU index and the step (the number of
//! `sample` calls before this one) through [`FakeSource::reading`], which
//! tests call to compute exactly what they must receive.

use std::time::Duration;

use super::{GpuSource, SourceError};
use crate::model::{GpuReading, Mode, ProcessReading};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Energy counter value at step 0, mJ (a counter that has been running a while).
const ENERGY_BASE_MJ: u64 = 1_000_000_000;

/// Synthetic GPUs. GPU `i` at step `k` has utilisation
/// `pattern[(k + i) % pattern.len()]` and every other reading follows from it
/// (see [`FakeSource::reading`]).
#[derive(Debug, Clone)]
pub struct FakeSource {
    gpus: u32,
    step: u64,
    pattern: Vec<u32>,
    step_ms: u64,
    energy_counter: bool,
    pcie: bool,
    name: String,
}

impl FakeSource {
    /// The default utilisation pattern, percent.
    pub const DEFAULT_PATTERN: [u32; 4] = [20, 40, 60, 100];

    /// `gpus` fake GPUs with the default pattern and a 500 ms step.
    pub fn new(gpus: u32) -> Self {
        Self {
            gpus,
            step: 0,
            pattern: Self::DEFAULT_PATTERN.to_vec(),
            step_ms: 500,
            energy_counter: true,
            pcie: true,
            name: format!("fake, {gpus} GPU(s)"),
        }
    }

    /// Utilisation values (percent, clamped to 100) cycled through sample by
    /// sample. An empty pattern means always 0.
    pub fn with_pattern(mut self, pattern: Vec<u32>) -> Self {
        self.pattern = if pattern.is_empty() {
            vec![0]
        } else {
            pattern.into_iter().map(|p| p.min(100)).collect()
        };
        self
    }

    /// How much time one step represents for the energy counter (default
    /// 500 ms): each step adds `power × step` to it.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Leaves the energy counter unset, as on pre-Volta GPUs.
    pub fn without_energy_counter(mut self) -> Self {
        self.energy_counter = false;
        self
    }

    /// Leaves PCIe throughput unset, as on vGPUs.
    pub fn without_pcie(mut self) -> Self {
        self.pcie = false;
        self
    }

    fn utilization(&self, gpu: u32, step: u64) -> u32 {
        let len = self.pattern.len() as u64;
        // `with_pattern` keeps the pattern non-empty.
        self.pattern
            .get(((step + u64::from(gpu)) % len) as usize)
            .copied()
            .unwrap_or(0)
    }

    fn power_mw(util: u32) -> u32 {
        100_000 + util * 4_000
    }

    /// The reading GPU `gpu` gives at step `step` (0 for the first sample).
    pub fn reading(&self, gpu: u32, step: u64) -> GpuReading {
        let util = self.utilization(gpu, step);
        let memory_used = 16 * GIB + u64::from(util) * 512 * MIB;
        let energy = self.energy_counter.then(|| {
            // Sum of power over steps 0..=step, each lasting `step_ms`.
            let len = self.pattern.len() as u64;
            let steps = step + 1;
            let cycle: u64 = (0..len)
                .map(|k| u64::from(Self::power_mw(self.utilization(gpu, k))))
                .sum();
            let partial: u64 = (0..steps % len)
                .map(|k| u64::from(Self::power_mw(self.utilization(gpu, k))))
                .sum();
            let mw_steps = (steps / len) * cycle + partial;
            ENERGY_BASE_MJ + mw_steps * self.step_ms / 1000
        });
        GpuReading {
            index: gpu,
            uuid: format!("GPU-fa4e0000-0000-4000-8000-{gpu:012x}"),
            name: "Fake GPU (barrage)".into(),
            utilization_gpu_pct: Some(util),
            utilization_memory_pct: Some(util / 2),
            memory_used_bytes: Some(memory_used),
            memory_total_bytes: Some(80 * GIB),
            power_mw: Some(Self::power_mw(util)),
            power_limit_mw: Some(700_000),
            energy_total_mj: energy,
            temperature_c: Some(35 + util / 2),
            sm_clock_mhz: Some(if util == 0 { 345 } else { 1980 }),
            // 0x1 = GPU idle, as NVML reports an idle GPU.
            throttle_reasons: Some(if util == 0 { 0x1 } else { 0 }),
            pcie_tx_kbps: self.pcie.then_some(util * 100),
            pcie_rx_kbps: self.pcie.then_some(util * 200),
            processes: vec![ProcessReading {
                pid: 4000 + gpu,
                name: "fake-worker".into(),
                used_memory_bytes: Some(memory_used - 512 * MIB),
            }],
        }
    }
}

impl GpuSource for FakeSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn mode(&self) -> Mode {
        Mode::Fake
    }

    fn gpu_count(&self) -> u32 {
        self.gpus
    }

    fn sample(&mut self) -> Result<Vec<GpuReading>, SourceError> {
        let step = self.step;
        self.step += 1;
        Ok((0..self.gpus).map(|g| self.reading(g, step)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_pattern_per_gpu_and_step() {
        let mut fake = FakeSource::new(2).with_pattern(vec![10, 90]);
        let first = fake.sample().expect("sample");
        let second = fake.sample().expect("sample");
        assert_eq!(first[0].utilization_gpu_pct, Some(10));
        assert_eq!(first[1].utilization_gpu_pct, Some(90));
        assert_eq!(second[0].utilization_gpu_pct, Some(90));
        assert_eq!(second[0], fake.reading(0, 1));
        assert_eq!(first[0].power_mw, Some(140_000));
    }

    #[test]
    fn energy_counter_adds_power_times_step() {
        let fake = FakeSource::new(1)
            .with_pattern(vec![0, 50, 100])
            .with_step(Duration::from_millis(500));
        let e = |k| fake.reading(0, k).energy_total_mj.expect("energy");
        // Step k adds power(k) × 0.5 s.
        assert_eq!(e(1) - e(0), 300_000 / 2);
        assert_eq!(e(2) - e(1), 500_000 / 2);
        assert_eq!(e(3) - e(2), 100_000 / 2);
        assert_eq!(e(7) - e(4), (300_000 + 500_000 + 100_000) / 2);
    }

    #[test]
    fn optional_fields_can_be_unsupported() {
        let fake = FakeSource::new(1).without_energy_counter().without_pcie();
        let r = fake.reading(0, 0);
        assert_eq!(r.energy_total_mj, None);
        assert_eq!(r.pcie_tx_kbps, None);
        assert_eq!(r.pcie_rx_kbps, None);
        assert!(r.power_mw.is_some());
    }
}
