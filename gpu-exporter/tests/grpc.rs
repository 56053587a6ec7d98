//! The gRPC path end to end: fake backend → sampler → `GpuExporter` service
//! → `ExporterClient`, with auth, host-only mode and shutdown mid-stream.

use std::time::Duration;

use barrage_common::auth::Token;
use barrage_gpu_exporter::client::{ClientError, ExporterClient, SeqEvent, SeqTracker};
use barrage_gpu_exporter::host::{FakeHost, SysinfoHost};
use barrage_gpu_exporter::model::Mode;
use barrage_gpu_exporter::source::{self, FakeSource, SourceError};
use barrage_gpu_exporter::summary::{EnergySource, Window, summarize};
use barrage_proto::exporter::v1::{GpuSample, HostSample, Sample};
use futures::{Stream, StreamExt};

use crate::support::{TestExporter, within};

const INTERVAL: Duration = Duration::from_millis(20);

async fn take(
    stream: &mut (impl Stream<Item = Result<Sample, ClientError>> + Unpin),
    n: usize,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = within("next sample", stream.next()).await;
        out.push(item.expect("stream ended early").expect("sample"));
    }
    out
}

#[tokio::test]
async fn fake_values_arrive_exactly_and_summarize_to_known_aggregates() {
    let pattern = vec![10, 50, 90, 30];
    let fake = FakeSource::new(2)
        .with_pattern(pattern.clone())
        .with_step(INTERVAL);
    let host = FakeHost::new().with_pattern(vec![10.0, 20.0, 30.0, 40.0]);
    let server = TestExporter::start(
        Box::new(fake.clone()),
        Box::new(host.clone()),
        INTERVAL,
        None,
    )
    .await;
    let mut client = within("connect", ExporterClient::connect(&server.addr, None))
        .await
        .expect("connect");

    let health = within("health", client.health()).await.expect("health");
    assert_eq!(Mode::from_proto(health.mode), Some(Mode::Fake));
    assert_eq!(health.gpu_count, 2);
    assert_eq!(health.interval_ns, 20_000_000);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    // Same process, same monotonic epoch: the offset must be within the round trip.
    let offset = within("clock", client.clock_offset())
        .await
        .expect("clock offset");
    assert!(
        offset.offset_ns.unsigned_abs() <= offset.rtt_ns,
        "{offset:?}"
    );

    let mut stream = Box::pin(client.watch());
    // 8 consecutive samples = two whole cycles of the 4-step patterns.
    let samples = take(&mut stream, 8).await;
    let mut seq = SeqTracker::default();
    for (i, s) in samples.iter().enumerate() {
        let event = seq.observe(s.seq);
        assert!(
            i == 0 || event == SeqEvent::InOrder,
            "{event:?} at {}",
            s.seq
        );
        let step = s.seq - 1;
        let expected: Vec<GpuSample> = (0..2).map(|g| fake.reading(g, step).into()).collect();
        assert_eq!(s.gpus, expected, "GPU values of sample {}", s.seq);
        assert_eq!(s.host, Some(HostSample::from(host.reading(step))));
        assert_eq!(s.lagged_before, 0);
        assert!(s.source_error.is_none());
    }

    let summary = summarize(&samples, Window::ALL);
    assert_eq!(summary.samples, 8);
    assert_eq!(summary.missed_samples, 0);
    assert_eq!(summary.gpus.len(), 2);
    for g in &summary.gpus {
        let util = g.utilization_gpu_pct.expect("utilization");
        assert_eq!(
            (util.avg, util.max, util.p95, util.samples),
            (45.0, 90.0, 90.0, 8)
        );
        // power = 100 W + 4 W per utilisation point.
        let power = g.power_w.expect("power");
        assert_eq!((power.avg, power.max), (280.0, 460.0));
        assert_eq!(g.energy_source, Some(EnergySource::Counter));
        let counter = |s: &Sample| s.gpus[g.index as usize].energy_total_mj.expect("energy");
        let expected_j = (counter(&samples[7]) - counter(&samples[0])) as f64 / 1e3;
        assert_eq!(g.energy_j, Some(expected_j));
        // Seven 20 ms steps at 100..460 W: a handful of joules.
        assert!((10.0..70.0).contains(&expected_j), "{expected_j}");
    }
    let h = summary.host.expect("host");
    assert_eq!((h.cpu_percent.avg, h.cpu_percent.max), (25.0, 40.0));
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_unauthenticated() {
    let token = Token::new("s3cret-token");
    let server = TestExporter::start(
        Box::new(FakeSource::new(1)),
        Box::new(FakeHost::new()),
        INTERVAL,
        Some(token.clone()),
    )
    .await;

    let mut anonymous = ExporterClient::connect(&server.addr, None)
        .await
        .expect("connect");
    let err = within("health", anonymous.health())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    let first = within("watch", Box::pin(anonymous.watch()).next()).await;
    let err = first.expect("one item").expect_err("no token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");

    let mut wrong = ExporterClient::connect(&server.addr, Some(Token::new("s3cret-tokeN")))
        .await
        .expect("connect");
    let err = within("clock", wrong.clock_offset())
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    let mut stream = Box::pin(wrong.watch());
    let err = within("watch", stream.next())
        .await
        .expect("one item")
        .expect_err("wrong token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    assert!(
        within("end", stream.next()).await.is_none(),
        "nothing after the error"
    );

    let mut right = ExporterClient::connect(&server.addr, Some(token))
        .await
        .expect("connect");
    within("health", right.health()).await.expect("right token");
    take(&mut Box::pin(right.watch()), 1).await;
    server.stop().await;
}

#[tokio::test]
async fn host_only_mode_still_streams_host_samples() {
    // What `source::open` does when NVML cannot start.
    let source = source::or_host_only(Err(SourceError::Init(
        "libnvidia-ml.so.1: cannot open shared object file".into(),
    )));
    let server = TestExporter::start(source, Box::new(SysinfoHost::new()), INTERVAL, None).await;
    let mut client = ExporterClient::connect(&server.addr, None)
        .await
        .expect("connect");
    let health = within("health", client.health()).await.expect("health");
    assert_eq!(Mode::from_proto(health.mode), Some(Mode::HostOnly));
    assert_eq!(health.gpu_count, 0);
    assert!(
        health
            .mode_detail
            .contains("NVML unavailable (libnvidia-ml.so.1"),
        "{}",
        health.mode_detail
    );

    let samples = take(&mut Box::pin(client.watch()), 3).await;
    for s in &samples {
        assert!(s.gpus.is_empty());
        assert!(s.source_error.is_none(), "host-only is not an error");
        let host = s.host.as_ref().expect("host sample");
        assert!(
            host.cpu_count > 0 && host.memory_total_bytes > 0,
            "{host:?}"
        );
    }
    let summary = summarize(&samples, Window::ALL);
    assert!(summary.gpus.is_empty());
    assert_eq!(summary.host.expect("host").samples, 3);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_mid_stream_ends_the_stream_with_an_error_and_a_restart_is_detectable() {
    let fast = Duration::from_millis(1);
    let server = TestExporter::start(
        Box::new(FakeSource::new(1)),
        Box::new(FakeHost::new()),
        fast,
        None,
    )
    .await;
    let mut client = ExporterClient::connect(&server.addr, None)
        .await
        .expect("connect");
    let before = within("health", client.health()).await.expect("health");
    let mut stream = Box::pin(client.watch());
    let mut tracker = SeqTracker::default();
    let first = take(&mut stream, 1).await.remove(0);
    assert_eq!(tracker.observe(first.seq), SeqEvent::First);
    // Run until seq 200, so the restarted exporter below is surely behind it.
    loop {
        let s = take(&mut stream, 1).await.remove(0);
        assert!(
            matches!(
                tracker.observe(s.seq),
                SeqEvent::InOrder | SeqEvent::Gap { .. }
            ),
            "seq {} went backwards",
            s.seq
        );
        if s.seq >= 200 {
            break;
        }
    }

    // Graceful shutdown must not wait forever on the open stream...
    server.stop().await;
    // ...and the client sees why its stream ended, then the end.
    let err = loop {
        match within("stream end", stream.next()).await {
            Some(Ok(s)) => {
                tracker.observe(s.seq); // sent before the shutdown
            }
            Some(Err(e)) => break e,
            None => panic!("stream ended without an error"),
        }
    };
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(within("after error", stream.next()).await.is_none());

    // A restarted exporter: new instance id, and `seq` starts over.
    let again = TestExporter::start(
        Box::new(FakeSource::new(1)),
        Box::new(FakeHost::new()),
        INTERVAL,
        None,
    )
    .await;
    let mut client = ExporterClient::connect(&again.addr, None)
        .await
        .expect("reconnect");
    let after = within("health", client.health()).await.expect("health");
    assert_ne!(after.instance_id, before.instance_id);
    let first = take(&mut Box::pin(client.watch()), 1).await.remove(0);
    assert_eq!(tracker.observe(first.seq), SeqEvent::Restarted);
    again.stop().await;
}
