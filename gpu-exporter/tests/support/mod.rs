//! Test support: an in-process exporter on ephemeral loopback ports with an
//! explicit shutdown, the `gpu-exporter` binary as a child process, and a
//! time bound for every wait.

use std::future::Future;
use std::time::Duration;

use barrage_common::auth::Token;
use barrage_gpu_exporter::host::HostSource;
use barrage_gpu_exporter::sampler::SamplerConfig;
use barrage_gpu_exporter::source::GpuSource;
use barrage_gpu_exporter::{Exporter, ServeError};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{ChildStderr, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// An exporter serving gRPC and `/metrics` on `127.0.0.1:0`.
pub struct TestExporter {
    /// gRPC address, `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT/metrics`.
    pub metrics_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestExporter {
    /// Binds both listeners first, then serves: no wait for "the server to start".
    pub async fn start(
        source: Box<dyn GpuSource>,
        host: Box<dyn HostSource>,
        interval: Duration,
        token: Option<Token>,
    ) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let addr = grpc.local_addr().expect("grpc addr").to_string();
        let metrics_url = format!("http://{}/metrics", metrics.local_addr().expect("addr"));
        let exporter = Exporter::start(
            source,
            host,
            SamplerConfig {
                interval,
                ..SamplerConfig::default()
            },
        )
        .expect("start exporter");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(exporter.serve(grpc, Some(metrics), token, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_url,
            shutdown: Some(tx),
            task,
        }
    }

    /// Graceful shutdown; fails the test if serving errored, panicked or hung.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        within("exporter shutdown", &mut self.task)
            .await
            .expect("serve task panicked")
            .expect("serve returned an error");
    }
}

/// The `gpu-exporter` binary running as a child, its stderr read line by line.
pub struct Binary {
    pub child: tokio::process::Child,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

impl Binary {
    /// Starts the binary with `args`, `BARRAGE_TOKEN` set to `token` (or removed).
    pub fn spawn(args: &[&str], token: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-exporter"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        match token {
            Some(t) => cmd.env("BARRAGE_TOKEN", t),
            None => cmd.env_remove("BARRAGE_TOKEN"),
        };
        let mut child = cmd.spawn().expect("spawn gpu-exporter");
        let stderr = child.stderr.take().expect("piped stderr");
        Self {
            child,
            stderr: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle`, and returns that line.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        within(&format!("stderr line containing {needle:?}"), async {
            loop {
                match self.stderr.next_line().await.expect("read stderr") {
                    Some(line) => {
                        self.seen.push(line.clone());
                        if line.contains(needle) {
                            return line;
                        }
                    }
                    None => panic!("stderr closed before {needle:?}; saw {:#?}", self.seen),
                }
            }
        })
        .await
    }

    /// The gRPC address from the "listening" log line.
    pub async fn grpc_addr(&mut self) -> String {
        let line = self.wait_for_line("gpu-exporter listening").await;
        let start = line.find("grpc=").expect("grpc= in the listening line") + "grpc=".len();
        line[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }
}
