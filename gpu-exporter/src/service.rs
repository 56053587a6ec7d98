//! The tonic `GpuExporter` service: `Health`, `Clock` and the `WatchSamples`
//! server stream, all reading from the shared [`Sampler`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use barrage_common::clock::mono_now_ns;
use barrage_proto::exporter::v1::gpu_exporter_server::GpuExporter;
use barrage_proto::exporter::v1::{
    ClockRequest, ClockResponse, HealthRequest, HealthResponse, Sample, WatchSamplesRequest,
};
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::{Request, Response, Status};

use crate::sampler::Sampler;

/// The `WatchSamples` response stream.
pub type SampleStream = Pin<Box<dyn Stream<Item = Result<Sample, Status>> + Send>>;

/// Serves one sampler to any number of subscribers.
#[derive(Clone)]
pub struct ExporterService {
    sampler: Arc<Sampler>,
}

impl ExporterService {
    pub fn new(sampler: Arc<Sampler>) -> Self {
        Self { sampler }
    }
}

#[tonic::async_trait]
impl GpuExporter for ExporterService {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let info = self.sampler.info();
        let stats = self.sampler.stats();
        Ok(Response::new(HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: info.mode.to_proto() as i32,
            gpu_count: info.gpu_count,
            interval_ns: u64::try_from(info.interval.as_nanos()).unwrap_or(u64::MAX),
            mode_detail: info.detail.clone(),
            instance_id: info.instance_id,
            exporter_mono_ns: mono_now_ns(),
            samples_taken: stats.samples.load(Ordering::Relaxed),
            overruns: stats.overruns.load(Ordering::Relaxed),
            lagged_samples: stats.lagged.load(Ordering::Relaxed),
        }))
    }

    async fn clock(&self, req: Request<ClockRequest>) -> Result<Response<ClockResponse>, Status> {
        Ok(Response::new(ClockResponse {
            controller_mono_ns: req.into_inner().controller_mono_ns,
            exporter_mono_ns: mono_now_ns(),
            instance_id: self.sampler.info().instance_id,
        }))
    }

    type WatchSamplesStream = SampleStream;

    async fn watch_samples(
        &self,
        req: Request<WatchSamplesRequest>,
    ) -> Result<Response<Self::WatchSamplesStream>, Status> {
        // Subscribe before reading the latest sample, so none falls between.
        let rx = self
            .sampler
            .subscribe()
            .ok_or_else(|| Status::unavailable("the exporter is shutting down"))?;
        let watch = Watch {
            rx,
            first: self.sampler.latest(),
            last_seq: 0,
            omit_processes: req.into_inner().omit_processes,
            sampler: Arc::clone(&self.sampler),
            ended: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            watch,
            |mut w| async move { w.next().await.map(|item| (item, w)) },
        ))))
    }
}

/// One subscriber's position in the sample stream.
struct Watch {
    rx: broadcast::Receiver<Arc<Sample>>,
    /// The latest sample at subscription time, sent first.
    first: Option<Arc<Sample>>,
    last_seq: u64,
    omit_processes: bool,
    sampler: Arc<Sampler>,
    ended: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<Sample, Status>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(self.emit(&first)));
        }
        loop {
            match self.rx.recv().await {
                // Already sent as `first`.
                Ok(s) if s.seq <= self.last_seq => continue,
                Ok(s) => return Some(Ok(self.emit(&s))),
                // Counted from the `seq` gap in `emit`, which is exact even
                // when a skipped sample was the one already sent as `first`.
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "slow subscriber skipped samples");
                }
                Err(RecvError::Closed) => {
                    // The sampler stopped: say so, so the client can tell an
                    // exporter shutdown from a clean end.
                    self.ended = true;
                    return Some(Err(Status::unavailable(
                        "sampling stopped: the exporter is shutting down",
                    )));
                }
            }
        }
    }

    fn emit(&mut self, sample: &Sample) -> Sample {
        let mut out = sample.clone();
        if self.omit_processes {
            for gpu in &mut out.gpus {
                gpu.processes.clear();
            }
        }
        if self.last_seq > 0 {
            let skipped = sample.seq.saturating_sub(self.last_seq + 1);
            out.lagged_before = skipped;
            self.sampler
                .stats()
                .lagged
                .fetch_add(skipped, Ordering::Relaxed);
        }
        self.last_seq = sample.seq;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::host::FakeHost;
    use crate::sampler::SamplerConfig;
    use crate::source::FakeSource;

    /// The stream is polled only when the client reads, so not reading makes
    /// it lag; the next sample then reports the gap.
    #[tokio::test]
    async fn a_lagging_stream_reports_the_gap_and_the_counter() {
        let sampler = Arc::new(
            Sampler::spawn(
                Box::new(FakeSource::new(1)),
                Box::new(FakeHost::new()),
                SamplerConfig {
                    interval: Duration::from_millis(1),
                    capacity: 4,
                },
            )
            .expect("spawn"),
        );
        let service = ExporterService::new(Arc::clone(&sampler));
        let mut latest = sampler.watch_latest();
        tokio::time::timeout(Duration::from_secs(10), latest.wait_for(|s| s.is_some()))
            .await
            .expect("first sample")
            .expect("alive");
        let mut stream = service
            .watch_samples(Request::new(WatchSamplesRequest {
                omit_processes: true,
            }))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.next().await.expect("item").expect("sample");
        assert!(first.gpus[0].processes.is_empty(), "processes omitted");
        tokio::time::timeout(
            Duration::from_secs(10),
            latest.wait_for(|s| s.as_ref().is_some_and(|s| s.seq >= first.seq + 20)),
        )
        .await
        .expect("sampler keeps going")
        .expect("alive");
        let next = stream.next().await.expect("item").expect("sample");
        assert!(next.lagged_before > 0);
        assert_eq!(next.seq, first.seq + 1 + next.lagged_before);
        assert_eq!(
            sampler.stats().lagged.load(Ordering::Relaxed),
            next.lagged_before
        );
    }
}
