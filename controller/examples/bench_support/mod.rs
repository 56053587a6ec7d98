//! Shared by the benchmark examples: the release binaries beside the
//! example, children that print their listening address, plans from TOML
//! text, and a peak-RSS sampler.

#![allow(dead_code)] // each example uses its own subset

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use barrage_agent::health::rss_bytes;
use barrage_common::plan::PlanFile;

/// `target/<profile>/<name>`, beside `target/<profile>/examples/`.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join(name))
        .context("locating binaries")?;
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p barrage-agent -p barrage-llm-sim)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A release `agent serve` on an ephemeral loopback port with one load
/// thread, its token in `BENCH_TOKEN`; the child and its address.
pub fn spawn_agent(id: &str, token: &str) -> Result<(Child, String)> {
    spawn_listening(
        sibling("agent")?,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-env",
            "BENCH_TOKEN",
            "--threads",
            "1",
            "--id",
            id,
        ],
        &[("BENCH_TOKEN", token)],
    )
}

/// Starts `bin` and reads the "... listening on ADDR" line it prints;
/// returns the child and ADDR (without a scheme).
pub fn spawn_listening(
    bin: PathBuf,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<(Child, String)> {
    let mut child = Command::new(&bin)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .context("address line")?
        .trim_start_matches("http://")
        .to_owned();
    Ok((child, addr))
}

pub fn plan(text: &str) -> Result<PlanFile> {
    use figment::providers::{Format, Toml};
    Ok(barrage_common::plan::from_figment(
        figment::Figment::new().merge(Toml::string(text)),
    )?)
}

/// Samples this process's RSS until `finish`; reports growth over the start.
pub struct PeakRss {
    base: u64,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    pub fn start(every: Duration) -> Self {
        let base = rss_bytes().unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(base));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (peak.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes().unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        Self {
            base,
            peak,
            done,
            thread,
        }
    }

    /// (peak bytes, growth over the start in bytes).
    pub fn finish(self) -> (u64, u64) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let peak = self.peak.load(Ordering::Relaxed);
        (peak, peak.saturating_sub(self.base))
    }
}
