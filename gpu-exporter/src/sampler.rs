//! The dedicated sampling thread: reads the GPU source and the host at a
//! fixed interval (absolute deadlines, so the rate does not drift), and
//! publishes each [`Sample`] to subscribers through a `tokio::sync::broadcast`
//! and to `/metrics` through a `watch` holding the latest one.
//!
//! It is a plain `std::thread`, off the async runtime: a slow NVML call delays
//! the next sample, never a gRPC stream. A slow subscriber lags (it skips
//! samples, counted in [`SamplerStats::lagged`]); it never blocks the sampler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use barrage_common::clock::mono_now_ns;
use barrage_proto::exporter::v1::Sample;
use tokio::sync::{broadcast, watch};

use crate::host::HostSource;
use crate::model::{Mode, SampleRecord};
use crate::source::GpuSource;

/// Name of the sampling thread (visible in `top -H`, `/proc/<pid>/task/*/comm`).
pub const SAMPLER_THREAD_NAME: &str = "gpu-sampler";

/// How the sampler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Time between samples. Default 500 ms (`--interval`).
    pub interval: Duration,
    /// Samples buffered per subscriber before a slow one starts skipping.
    /// Default 64 (32 s at 500 ms).
    pub capacity: usize,
}

impl SamplerConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
    pub const DEFAULT_CAPACITY: usize = 64;
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval: Self::DEFAULT_INTERVAL,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }
}

/// Counters shared by the sampler thread and the servers. `Relaxed` ordering
/// is enough: they are independent statistics, never used to synchronise.
#[derive(Debug, Default)]
pub struct SamplerStats {
    /// Samples taken since start.
    pub samples: AtomicU64,
    /// Ticks skipped because a sample took longer than the interval.
    pub overruns: AtomicU64,
    /// Samples skipped for slow subscribers, summed over subscribers.
    pub lagged: AtomicU64,
    /// Samples where the GPU source failed as a whole.
    pub source_errors: AtomicU64,
}

/// What the sampler samples; fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerInfo {
    pub mode: Mode,
    /// The source's description (driver version, or why NVML is unavailable).
    pub detail: String,
    pub gpu_count: u32,
    pub interval: Duration,
    /// Random per-sampler id: changes when the exporter restarts.
    pub instance_id: u64,
}

/// Handle to the sampling thread. Dropping it stops the thread (without
/// waiting for it); every subscription then ends.
pub struct Sampler {
    info: SamplerInfo,
    stats: Arc<SamplerStats>,
    // Weak, so the channel closes when the thread exits (stop or panic) and
    // every subscriber's stream ends instead of waiting forever.
    samples: broadcast::WeakSender<Arc<Sample>>,
    latest: watch::Receiver<Option<Arc<Sample>>>,
    stop: mpsc::Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Sampler {
    /// Starts the sampling thread. The first sample is taken one interval
    /// after start (CPU usage needs a baseline read).
    pub fn spawn(
        source: Box<dyn GpuSource>,
        host: Box<dyn HostSource>,
        config: SamplerConfig,
    ) -> std::io::Result<Self> {
        let interval = config.interval.max(Duration::from_millis(1));
        let info = SamplerInfo {
            mode: source.mode(),
            detail: source.name().to_owned(),
            gpu_count: source.gpu_count(),
            interval,
            instance_id: random_id(),
        };
        let stats = Arc::new(SamplerStats::default());
        let (tx, _) = broadcast::channel(config.capacity.max(1));
        let (latest_tx, latest) = watch::channel(None);
        let (stop, stop_rx) = mpsc::channel();
        let weak = tx.downgrade();
        let loop_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(SAMPLER_THREAD_NAME.into())
            .spawn(move || {
                sample_loop(
                    source,
                    host,
                    interval,
                    &tx,
                    &latest_tx,
                    &loop_stats,
                    &stop_rx,
                )
            })?;
        Ok(Self {
            info,
            stats,
            samples: weak,
            latest,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn info(&self) -> &SamplerInfo {
        &self.info
    }

    pub fn stats(&self) -> &SamplerStats {
        &self.stats
    }

    /// A receiver of every sample from now on; `None` once the sampler stopped.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<Sample>>> {
        self.samples.upgrade().map(|tx| tx.subscribe())
    }

    /// The latest sample (`None` before the first one).
    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.latest.borrow().clone()
    }

    /// A receiver that sees each new latest sample.
    pub fn watch_latest(&self) -> watch::Receiver<Option<Arc<Sample>>> {
        self.latest.clone()
    }

    /// Asks the thread to stop after its current sample; does not wait.
    pub fn shutdown(&self) {
        // An error means the thread is already gone, which is what we want.
        let _ = self.stop.send(());
    }

    /// Stops the thread and waits for it (blocking: at most one sample).
    pub fn join(&self) {
        self.shutdown();
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the sampler thread panicked");
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance; good enough for an
    // identifier that only needs to differ between restarts.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(mono_now_ns());
    h.finish()
}

/// Takes one sample: GPUs first (at the timestamp), then the host. Used by
/// the sampler thread and by `--once`.
pub fn take_sample(seq: u64, source: &mut dyn GpuSource, host: &mut dyn HostSource) -> Sample {
    let started = Instant::now();
    let exporter_mono_ns = mono_now_ns();
    let wall_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let (gpus, source_error) = match source.sample() {
        Ok(gpus) => (gpus, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let host = host.sample();
    SampleRecord {
        seq,
        exporter_mono_ns,
        wall_unix_ms,
        gpus,
        host: Some(host),
        lagged_before: 0,
        sample_duration_us: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
        source_error,
    }
    .into()
}

fn sample_loop(
    mut source: Box<dyn GpuSource>,
    mut host: Box<dyn HostSource>,
    interval: Duration,
    tx: &broadcast::Sender<Arc<Sample>>,
    latest: &watch::Sender<Option<Arc<Sample>>>,
    stats: &SamplerStats,
    stop: &mpsc::Receiver<()>,
) {
    let mut deadline = Instant::now() + interval;
    let mut seq = 0u64;
    let mut last_error: Option<String> = None;
    loop {
        let now = Instant::now();
        let stopped = if deadline > now {
            !matches!(
                stop.recv_timeout(deadline - now),
                Err(RecvTimeoutError::Timeout)
            )
        } else {
            !matches!(stop.try_recv(), Err(TryRecvError::Empty))
        };
        if stopped {
            return;
        }
        seq += 1;
        let sample = take_sample(seq, source.as_mut(), host.as_mut());
        if sample.source_error.is_some() {
            stats.source_errors.fetch_add(1, Ordering::Relaxed);
        }
        // Log a source failure when it starts or changes, and its recovery,
        // not once per sample.
        if sample.source_error != last_error {
            match &sample.source_error {
                Some(e) => {
                    tracing::warn!(error = %e, "GPU source failed; sending host readings only")
                }
                None => tracing::info!("GPU source recovered"),
            }
            last_error.clone_from(&sample.source_error);
        }
        let sample = Arc::new(sample);
        latest.send_replace(Some(Arc::clone(&sample)));
        // Err only means nobody is subscribed right now.
        let _ = tx.send(sample);
        stats.samples.fetch_add(1, Ordering::Relaxed);

        // Absolute deadlines: the next tick is one interval after the last
        // *deadline*, not after the sample finished. Ticks missed entirely
        // (a sample slower than the interval) are skipped, not bunched up.
        deadline += interval;
        let now = Instant::now();
        if now >= deadline + interval {
            let behind = now.duration_since(deadline);
            let missed = u32::try_from(behind.as_nanos() / interval.as_nanos()).unwrap_or(u32::MAX);
            deadline += interval * missed;
            stats
                .overruns
                .fetch_add(u64::from(missed), Ordering::Relaxed);
            tracing::debug!(
                missed,
                "sampling took longer than the interval; ticks skipped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::source::FakeSource;

    fn fake_sampler(interval_ms: u64, capacity: usize) -> Sampler {
        Sampler::spawn(
            Box::new(FakeSource::new(2)),
            Box::new(FakeHost::new()),
            SamplerConfig {
                interval: Duration::from_millis(interval_ms),
                capacity,
            },
        )
        .expect("spawn sampler")
    }

    #[tokio::test]
    async fn samples_arrive_in_order_with_the_fake_values() {
        let sampler = fake_sampler(5, 16);
        let mut rx = sampler.subscribe().expect("running");
        let fake = FakeSource::new(2);
        let mut last_seq = 0;
        for _ in 0..5 {
            let s = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a sample within 5 s")
                .expect("channel open");
            assert!(s.seq > last_seq);
            last_seq = s.seq;
            let gpu: crate::model::GpuReading = s.gpus[1].clone().into();
            assert_eq!(gpu, fake.reading(1, s.seq - 1));
        }
        assert!(sampler.stats().samples.load(Ordering::Relaxed) >= 5);
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_and_never_blocks_the_sampler() {
        let sampler = fake_sampler(1, 4);
        let mut rx = sampler.subscribe().expect("running");
        let mut latest = sampler.watch_latest();
        // Read nothing until the sampler is well past the buffer.
        tokio::time::timeout(
            Duration::from_secs(10),
            latest.wait_for(|s| s.as_ref().is_some_and(|s| s.seq >= 20)),
        )
        .await
        .expect("sampler keeps going")
        .expect("sampler alive");
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert!(n >= 10, "lagged {n}"),
            other => panic!("expected a lag, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stopping_the_sampler_closes_every_subscription() {
        let sampler = fake_sampler(1, 4);
        let mut rx = sampler.subscribe().expect("running");
        sampler.join();
        assert!(sampler.subscribe().is_none());
        let closed = loop {
            match rx.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break true,
            }
        };
        assert!(closed);
    }
}
