//! Benchmark: what the exporter costs per sample, in CPU and on the wire.
//!
//! `cargo run --release -p barrage-gpu-exporter --example wire_cost -- [--gpus 8]
//! [--fast-interval 10ms] [--samples 2000] [--interval 500ms] [--nominal-secs 10]`
//!
//! The fake backend (N GPUs, one process each) and the real `sysinfo` host
//! sampler feed a real exporter whose gRPC server runs on its own runtime
//! ("exporter-rt" threads); a client on another thread ("client-rt") reads the
//! stream over loopback. Phase 1 samples at a fast interval to get many
//! samples quickly and reports per-sample figures; phase 2 runs at the
//! nominal interval (500 ms) to confirm them at the real rate. The nominal
//! phase's CPU figure is the one to quote: below 200 ms `sysinfo` skips the
//! CPU-usage refresh, so the fast phase under-counts the host sampler.
//!
//! CPU is per-thread time from `/proc/self/task/*/schedstat` (Linux), so the
//! exporter's share (sampler thread + exporter runtime) is separated from the
//! client's. Wire bytes are the TCP payload the server wrote and read
//! (HTTP/2 framing, headers, pings included), counted by wrapping the accepted
//! sockets.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use barrage_gpu_exporter::Exporter;
use barrage_gpu_exporter::client::ExporterClient;
use barrage_gpu_exporter::host::SysinfoHost;
use barrage_gpu_exporter::sampler::{SAMPLER_THREAD_NAME, SamplerConfig};
use barrage_gpu_exporter::source::FakeSource;
use clap::Parser;
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

#[derive(Debug, Parser)]
struct Args {
    /// Fake GPUs.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Interval of the fast phase (per-sample figures).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    fast_interval: Duration,
    /// Samples measured in the fast phase (after a warm-up of 50).
    #[arg(long, default_value_t = 2000)]
    samples: u64,
    /// The nominal interval the bytes-per-second figure is for.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Seconds to run at the nominal interval (0 skips phase 2).
    #[arg(long, default_value_t = 10)]
    nominal_secs: u64,
}

/// Counts TCP payload bytes both ways on an accepted connection.
struct Counting {
    inner: TcpStream,
    wire: Arc<Wire>,
}

#[derive(Default)]
struct Wire {
    written: AtomicU64,
    read: AtomicU64,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.wire.read.fetch_add(n, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.wire.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &poll {
            self.wire.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Counting {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// CPU nanoseconds of this process's threads, by role.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    sampler_ns: u64,
    exporter_rt_ns: u64,
    client_ns: u64,
}

fn thread_cpu() -> Cpu {
    let mut cpu = Cpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        match comm.trim() {
            SAMPLER_THREAD_NAME => cpu.sampler_ns += ns,
            c if c.starts_with("exporter-rt") => cpu.exporter_rt_ns += ns,
            c if c.starts_with("client-rt") => cpu.client_ns += ns,
            _ => {}
        }
    }
    cpu
}

/// One measured phase.
#[derive(Debug)]
struct Figures {
    samples: u64,
    lagged: u64,
    elapsed: Duration,
    exporter_cpu_us: f64,
    sampler_cpu_us: f64,
    grpc_cpu_us: f64,
    client_cpu_us: f64,
    proto_bytes: f64,
    wire_out_bytes: f64,
    wire_in_bytes: f64,
}

/// Starts an exporter at `interval`, reads `warmup` then `measure` samples
/// (or for `duration`), and returns per-sample figures.
fn phase(
    gpus: u32,
    interval: Duration,
    warmup: u64,
    measure: Option<u64>,
    duration: Option<Duration>,
) -> anyhow::Result<Figures> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("exporter-rt")
        .enable_all()
        .build()?;
    let wire = Arc::new(Wire::default());
    let (addr, stop_tx, exporter_sampler) = server_rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let exporter = Exporter::start(
            Box::new(FakeSource::new(gpus).with_step(interval)),
            Box::new(SysinfoHost::new()),
            SamplerConfig {
                interval,
                ..SamplerConfig::default()
            },
        )?;
        let sampler = Arc::clone(exporter.sampler());
        let wire = Arc::clone(&wire);
        let incoming = TcpListenerStream::new(listener).map(move |s| {
            s.map(|inner| Counting {
                inner,
                wire: Arc::clone(&wire),
            })
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = exporter.grpc_router(None);
        tokio::spawn(async move {
            let _keep = exporter;
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
        });
        anyhow::Ok((addr, stop_tx, sampler))
    })?;

    let client = std::thread::Builder::new().name("client-rt".into()).spawn(
        move || -> anyhow::Result<_> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut client = ExporterClient::connect(&addr.to_string(), None).await?;
                let mut stream = Box::pin(client.watch());
                let mut next = async || -> anyhow::Result<_> {
                    Ok(stream
                        .next()
                        .await
                        .ok_or_else(|| anyhow::anyhow!("stream ended"))??)
                };
                let mut s = next().await?;
                while s.seq < warmup {
                    s = next().await?;
                }
                let (seq0, cpu0, out0, in0, t0) = (
                    s.seq,
                    thread_cpu(),
                    wire.written.load(Ordering::Relaxed),
                    wire.read.load(Ordering::Relaxed),
                    Instant::now(),
                );
                let (mut proto, mut lagged) = (0u64, 0u64);
                loop {
                    s = next().await?;
                    proto += s.encoded_len() as u64;
                    lagged += s.lagged_before;
                    let done = match (measure, duration) {
                        (Some(n), _) => s.seq >= seq0 + n,
                        (None, Some(d)) => t0.elapsed() >= d,
                        (None, None) => true,
                    };
                    if done {
                        break;
                    }
                }
                let (cpu1, elapsed) = (thread_cpu(), t0.elapsed());
                let n = (s.seq - seq0) as f64;
                let per = |ns: u64| ns as f64 / n / 1e3;
                Ok(Figures {
                    samples: s.seq - seq0,
                    lagged,
                    elapsed,
                    exporter_cpu_us: per(cpu1.sampler_ns + cpu1.exporter_rt_ns
                        - cpu0.sampler_ns
                        - cpu0.exporter_rt_ns),
                    sampler_cpu_us: per(cpu1.sampler_ns - cpu0.sampler_ns),
                    grpc_cpu_us: per(cpu1.exporter_rt_ns - cpu0.exporter_rt_ns),
                    client_cpu_us: per(cpu1.client_ns - cpu0.client_ns),
                    proto_bytes: proto as f64 / n,
                    wire_out_bytes: (wire.written.load(Ordering::Relaxed) - out0) as f64 / n,
                    wire_in_bytes: (wire.read.load(Ordering::Relaxed) - in0) as f64 / n,
                })
            })
        },
    )?;
    let figures = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    exporter_sampler.shutdown();
    let _ = stop_tx.send(());
    server_rt.shutdown_timeout(Duration::from_secs(2));
    figures
}

fn print(name: &str, interval: Duration, nominal: Duration, f: &Figures) {
    let per_s = 1.0 / nominal.as_secs_f64();
    println!(
        "{name}: interval {interval:?}, {} samples in {:.1?} ({} lagged)",
        f.samples, f.elapsed, f.lagged
    );
    println!(
        "  exporter CPU per sample  {:8.1} us  (sampler thread {:.1} us, gRPC runtime {:.1} us)",
        f.exporter_cpu_us, f.sampler_cpu_us, f.grpc_cpu_us
    );
    println!("  client CPU per sample    {:8.1} us", f.client_cpu_us);
    println!(
        "  protobuf Sample          {:8.0} bytes (+5 bytes gRPC framing)",
        f.proto_bytes
    );
    println!(
        "  TCP payload per sample   {:8.0} bytes exporter->client, {:.1} bytes client->exporter",
        f.wire_out_bytes, f.wire_in_bytes
    );
    println!(
        "  at {nominal:?}: {:.0} bytes/s exporter->client, exporter CPU {:.3} % of one core",
        f.wire_out_bytes * per_s,
        f.exporter_cpu_us * per_s / 1e4
    );
    println!(
        "RESULT {{\"phase\":\"{name}\",\"samples\":{},\"exporter_cpu_us\":{:.1},\"sampler_cpu_us\":{:.1},\"grpc_cpu_us\":{:.1},\"client_cpu_us\":{:.1},\"proto_bytes\":{:.0},\"wire_out_bytes\":{:.0},\"wire_in_bytes\":{:.0},\"bytes_per_s_at_nominal\":{:.0}}}",
        f.samples,
        f.exporter_cpu_us,
        f.sampler_cpu_us,
        f.grpc_cpu_us,
        f.client_cpu_us,
        f.proto_bytes,
        f.wire_out_bytes,
        f.wire_in_bytes,
        f.wire_out_bytes * per_s
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "wire_cost: {} fake GPUs (1 process each), real sysinfo host sampler, gRPC over loopback",
        args.gpus
    );
    let fast = phase(args.gpus, args.fast_interval, 50, Some(args.samples), None)?;
    print("fast", args.fast_interval, args.interval, &fast);
    if args.nominal_secs > 0 {
        let nominal = phase(
            args.gpus,
            args.interval,
            2,
            None,
            Some(Duration::from_secs(args.nominal_secs)),
        )?;
        print("nominal", args.interval, args.interval, &nominal);
    }
    Ok(())
}
