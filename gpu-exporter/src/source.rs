//! Where GPU readings come from: the [`GpuSource`] trait, its NVML and fake
//! implementations, and the host-only stand-in used when NVML is unavailable.
//!
//! The trait is deliberately small (one blocking `sample` call) so the sampler
//! thread can drive any of them, and tests without a GPU can drive the whole
//! path with known values through [`FakeSource`].

mod fake;
mod nvml;

pub use fake::FakeSource;
pub use nvml::{NvmlOptions, NvmlSource};

use crate::model::{GpuReading, Mode};

/// A blocking source of per-GPU readings. Called from the dedicated sampler
/// thread only, so an implementation may take its time (NVML calls can take
/// milliseconds) without stalling the async runtime.
pub trait GpuSource: Send {
    /// Short description for logs and `Health.mode_detail`, e.g.
    /// `"NVML, driver 550.54.15"`.
    fn name(&self) -> &str;
    /// Where the readings come from.
    fn mode(&self) -> Mode;
    /// How many GPUs each sample covers.
    fn gpu_count(&self) -> u32;
    /// Reads every GPU once. A field that one GPU does not support is `None`
    /// in its reading; `Err` means the source failed as a whole for this tick.
    fn sample(&mut self) -> Result<Vec<GpuReading>, SourceError>;
}

/// Why a GPU source could not start or could not sample.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not start (NVML library or driver missing, ...).
    #[error("{0}")]
    Init(String),
    /// NVML started but reports no GPU.
    #[error("NVML found no GPUs")]
    NoDevices,
    /// An NVML call needed for the whole sample failed.
    #[error("NVML {call} failed: {source}")]
    Nvml {
        call: &'static str,
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },
}

/// Stand-in source when NVML is unavailable: no GPUs, host readings only.
#[derive(Debug, Clone)]
pub struct HostOnlySource {
    detail: String,
}

impl HostOnlySource {
    /// `reason` says why NVML is unavailable; it ends up in `Health.mode_detail`.
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self {
            detail: format!("NVML unavailable ({reason}): host-only mode, GPU fields empty"),
        }
    }
}

impl GpuSource for HostOnlySource {
    fn name(&self) -> &str {
        &self.detail
    }
    fn mode(&self) -> Mode {
        Mode::HostOnly
    }
    fn gpu_count(&self) -> u32 {
        0
    }
    fn sample(&mut self) -> Result<Vec<GpuReading>, SourceError> {
        Ok(Vec::new())
    }
}

/// Which GPU source to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// Real GPUs through NVML, falling back to host-only mode.
    Nvml(NvmlOptions),
    /// `n` fake GPUs with known values.
    Fake(u32),
}

/// Starts the chosen source; an NVML failure falls back to host-only mode
/// (see [`or_host_only`]), so this never fails.
pub fn open(choice: SourceChoice) -> Box<dyn GpuSource> {
    match choice {
        SourceChoice::Fake(n) => Box::new(FakeSource::new(n)),
        SourceChoice::Nvml(opts) => {
            or_host_only(NvmlSource::init(opts).map(|s| Box::new(s) as Box<dyn GpuSource>))
        }
    }
}

/// Turns a failed start into a [`HostOnlySource`], logging the reason once
/// and clearly; a started source passes through.
pub fn or_host_only(started: Result<Box<dyn GpuSource>, SourceError>) -> Box<dyn GpuSource> {
    match started {
        Ok(source) => {
            tracing::info!(
                source = source.name(),
                gpus = source.gpu_count(),
                mode = %source.mode(),
                "GPU source ready"
            );
            source
        }
        Err(e) => {
            let fallback = HostOnlySource::new(&e);
            tracing::warn!("{}", fallback.name());
            Box::new(fallback)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_start_becomes_host_only_with_the_reason() {
        let source = or_host_only(Err(SourceError::Init(
            "libnvidia-ml.so.1: cannot open shared object file".into(),
        )));
        assert_eq!(source.mode(), Mode::HostOnly);
        assert_eq!(source.gpu_count(), 0);
        assert_eq!(
            source.name(),
            "NVML unavailable (libnvidia-ml.so.1: cannot open shared object file): \
             host-only mode, GPU fields empty"
        );
    }

    #[test]
    fn fake_choice_opens_fake_gpus() {
        let mut source = open(SourceChoice::Fake(3));
        assert_eq!(source.mode(), Mode::Fake);
        assert_eq!(source.sample().expect("fake never fails").len(), 3);
    }
}
