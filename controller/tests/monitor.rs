//! `[monitor]` end to end: a fake-NVML gpu-exporter over real gRPC and a
//! Prometheus endpoint over real HTTP, both on loopback, onto the timeline
//! of a run against the built-in simulator.

use std::time::Duration;

use barrage_common::auth::Token;
use barrage_controller::prometheus::Aggregation;
use barrage_controller::run::{RunOptions, Verdict, execute};
use barrage_gpu_exporter::Exporter;
use barrage_gpu_exporter::host::FakeHost;
use barrage_gpu_exporter::sampler::SamplerConfig;
use barrage_gpu_exporter::source::FakeSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, run_text, scratch};

pub(crate) const TOKEN: &str = "monitor-token";

/// A fake exporter: every GPU at 70 % utilisation, 380 W.
pub(crate) async fn exporter(gpus: u32) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let ex = Exporter::start(
        Box::new(
            FakeSource::new(gpus)
                .with_pattern(vec![70])
                .with_step(Duration::from_millis(200)),
        ),
        Box::new(FakeHost::new().with_pattern(vec![25.0])),
        SamplerConfig {
            interval: Duration::from_millis(200),
            ..SamplerConfig::default()
        },
    )
    .expect("exporter");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ex.serve(listener, None, Some(Token::new(TOKEN)), async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// A minimal Prometheus endpoint: every scrape answers the same text.
pub(crate) async fn prometheus(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

pub(crate) fn plan(exporter: &str, prom: &str) -> String {
    format!(
        r#"
        name = "monitor"
        [request]
        max_tokens = 16
        [load]
        users = 8
        duration = "3s"
        [cluster]
        embedded_agents = 1
        [monitor]
        gpu_exporters = ["{exporter}"]
        prometheus = ["{prom}"]
        prometheus_metrics = ["vllm:num_requests_running", "vllm:gpu_cache_usage_perc"]
        scrape_interval = "200ms"
        [output]
        dir = "{}"
        [simulator]
        ttft = "20ms"
        itl = "10ms"
        "#,
        scratch("monitor").display()
    )
}

pub(crate) fn opts() -> RunOptions {
    RunOptions {
        monitor_token: Some(Token::new(TOKEN)),
        ..RunOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_and_server_metrics_land_on_the_run_timeline() {
    let _serial = LOAD.lock().await;
    let (addr, _stop) = exporter(2).await;
    let prom = prometheus("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 3\nvllm:num_requests_running{engine=\"1\"} 2\nvllm:gpu_cache_usage_perc 0.5\n").await;
    let outcome = run_text(&plan(&addr, &prom), opts()).await;
    assert_eq!(outcome.verdict, Verdict::Completed);
    let m = outcome.summary.monitor.clone().expect("monitor report");
    assert_eq!(m.exporters.len(), 1);
    let e = &m.exporters[0];
    assert!(e.disconnected.is_none());
    assert!(
        e.summary.samples >= 10,
        "~15 samples in 3 s: {}",
        e.summary.samples
    );
    assert_eq!(e.summary.gpus.len(), 2);
    for g in &e.summary.gpus {
        let util = g.utilization_gpu_pct.as_ref().expect("util");
        assert_eq!((util.avg, util.max), (70.0, 70.0), "the fake's value");
        let power = g.power_w.as_ref().expect("power");
        assert_eq!(power.avg, 380.0);
        assert!(g.energy_j.is_some_and(|j| j > 0.0));
    }
    assert!(m.output_tokens_per_joule.is_some_and(|t| t > 0.0));
    // A gauge: the two engines' series are averaged, not added.
    assert_eq!(m.server_metrics["vllm:num_requests_running"].avg, 2.5);
    assert_eq!(m.server_metrics["vllm:gpu_cache_usage_perc"].max, 0.5);
    // On the timeline: every full interval carries the GPU average.
    let rows: Vec<_> = outcome
        .summary
        .timeline
        .iter()
        .filter(|r| r.monitor.gpu_util_pct.is_some())
        .collect();
    assert!(rows.len() >= 2, "{:?}", outcome.summary.timeline);
    assert!(rows.iter().all(|r| r.monitor.gpu_util_pct == Some(70.0)));
    assert!(
        rows.iter()
            .any(|r| r.monitor.server.get("vllm:num_requests_running") == Some(&2.5))
    );
    let csv = std::fs::read_to_string(outcome.dir.join("timeline.csv")).expect("csv");
    assert!(
        csv.lines()
            .next()
            .is_some_and(|h| h.ends_with("gpu_util_pct,gpu_mem_pct,gpu_power_w"))
    );
    // report.html charts them over time and tables the GPUs and the host.
    let html = std::fs::read_to_string(outcome.dir.join("report.html")).expect("report.html");
    for want in [
        "GPU utilisation (%)</figcaption>",
        "GPU power (W)</figcaption>",
        "Server: vllm:num_requests_running</figcaption>",
        "(CPU % / memory %)",
        "Output tokens per joule",
    ] {
        assert!(html.contains(want), "{want} in report.html");
    }
}

/// Records the live GPU readings a run emits.
struct LiveGpu(std::sync::Arc<std::sync::Mutex<Vec<f64>>>);

impl barrage_controller::events::Consumer for LiveGpu {
    fn name(&self) -> &'static str {
        "live gpu"
    }
    fn event(
        &mut self,
        ev: &barrage_controller::events::RunEvent,
    ) -> Result<(), barrage_controller::events::OutputError> {
        if let barrage_controller::events::RunEvent::Monitor(m) = ev
            && let Ok(mut v) = self.0.lock()
        {
            v.extend(m.sample.gpu_util_pct);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_gpu_readings_stream_to_the_outputs_while_the_run_goes_on() {
    let _serial = LOAD.lock().await;
    let (addr, _stop) = exporter(2).await;
    let prom = prometheus("vllm:num_requests_running 1\n").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut outputs = barrage_controller::outputs::defaults(&opts());
    outputs.push(Box::new(LiveGpu(seen.clone())));
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        barrage_controller::run::execute_with(
            plan_from(&plan(&addr, &prom)),
            opts(),
            CancellationToken::new(),
            outputs,
        ),
    )
    .await
    .expect("bounded")
    .expect("run");
    assert_eq!(outcome.verdict, Verdict::Completed);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() >= 2, "a reading per settled interval: {seen:?}");
    assert!(
        seen.iter().all(|u| *u == 70.0),
        "the fake's value: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_lost_mid_run_leaves_a_gap_and_a_note_not_a_failure() {
    let _serial = LOAD.lock().await;
    let (addr, stop) = exporter(1).await;
    let prom = prometheus("vllm:num_requests_running 1\n").await;
    let run = tokio::spawn(execute(
        plan_from(&plan(&addr, &prom)),
        opts(),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(());
    let outcome = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("bounded")
        .expect("join")
        .expect("run");
    assert_eq!(
        outcome.verdict,
        Verdict::Completed,
        "never fails the load test"
    );
    let m = outcome.summary.monitor.clone().expect("monitor");
    assert!(m.exporters[0].disconnected.is_some());
    assert!(
        outcome
            .summary
            .notes
            .iter()
            .any(|n| n.contains("disconnected")),
        "{:?}",
        outcome.summary.notes
    );
    let last = outcome.summary.timeline.iter().rev().find(|r| r.index >= 2);
    assert!(
        last.is_some_and(|r| r.monitor.gpu_util_pct.is_none()),
        "a gap after the loss"
    );
    assert!(outcome.summary.requests_ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_exporter_is_a_note_and_the_run_goes_on() {
    let _serial = LOAD.lock().await;
    let prom = prometheus("vllm:num_requests_running 1\n").await;
    let outcome = run_text(&plan("127.0.0.1:9", &prom), opts()).await;
    assert_eq!(outcome.verdict, Verdict::Completed);
    assert!(
        outcome
            .summary
            .notes
            .iter()
            .any(|n| n.contains("gpu exporter 127.0.0.1:9")),
        "{:?}",
        outcome.summary.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpus_at_55_percent_read_55_and_counters_add_up() {
    let _serial = LOAD.lock().await;
    let prom = prometheus(
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-a\",modelName=\"NVIDIA H100 80GB HBM3\"} 55\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"1\",UUID=\"GPU-b\",modelName=\"NVIDIA H100 80GB HBM3\"} 55\n\
         # TYPE vllm:prompt_tokens counter\n\
         vllm:prompt_tokens_total{engine=\"0\"} 100.0\nvllm:prompt_tokens_total{engine=\"1\"} 300.0\n",
    )
    .await;
    let plan = format!(
        r#"
        name = "monitor-series"
        [request]
        max_tokens = 4
        [load]
        users = 2
        duration = "2s"
        [cluster]
        embedded_agents = 1
        [monitor]
        prometheus = ["{prom}"]
        prometheus_metrics = ["DCGM_FI_DEV_GPU_UTIL", "vllm:prompt_tokens_total", "vllm:absent"]
        scrape_interval = "200ms"
        [output]
        dir = "{}"
        [simulator]
        ttft = "5ms"
        itl = "5ms"
        "#,
        scratch("monitor-series").display()
    );
    let outcome = run_text(&plan, RunOptions::default()).await;
    let m = outcome.summary.monitor.clone().expect("monitor report");
    let util = &m.server_metrics["DCGM_FI_DEV_GPU_UTIL"];
    assert_eq!((util.avg, util.max, util.series), (55.0, 55.0, 2));
    assert_eq!(util.aggregation, Aggregation::Mean);
    let tokens = &m.server_metrics["vllm:prompt_tokens_total"];
    assert_eq!((tokens.last, tokens.aggregation), (400.0, Aggregation::Sum));
    let text = barrage_controller::report::render(&outcome.summary);
    assert!(
        text.contains("server DCGM_FI_DEV_GPU_UTIL: avg 55.000")
            && text.contains("mean of 2 series"),
        "{text}"
    );
    assert!(
        outcome
            .summary
            .notes
            .iter()
            .any(|n| n.contains("vllm:absent")),
        "{:?}",
        outcome.summary.notes
    );
}
