//! Benchmark: one `controller` process merging a fleet of simulated agents.
//!
//! N (default 200) fake agents run in this process, each a real tonic gRPC
//! server on loopback speaking the `Agent` session protocol and streaming,
//! every second, the interval deltas of 5,000 simulated streams (every
//! metric's HdrHistogram with realistic sample counts and spreads, counters
//! consistent with them) without any HTTP traffic. The controller runs as
//! a separate process (`controller run`), so its CPU and memory are its own.
//!
//! ```text
//! cargo build --release -p barrage-controller --bin controller --example fleet_bench
//! target/release/examples/fleet_bench [--agents 200] [--streams 5000] [--duration 30]
//!     [--lost PCT] [--slow PCT] [--slow-delay-ms 2500] [--pin CPU] [--pool 16]
//! ```
//!
//! Prints controller CPU per agent-interval (steady state, and over the
//! whole run), merge latency, peak RSS, bytes per second received, and
//! checks the merge is exact: every figure of summary.json equals the sum
//! of what the fakes sent (lost agents: what they sent before dying).

#[path = "bench_support/mod.rs"]
mod bench_support;
#[path = "bench_support/fleet_agent.rs"]
mod fleet;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use barrage_controller::report::Summary;
use fleet::data::{Pool, Traffic};
use fleet::{Fault, Fleet};

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

struct Args {
    agents: usize,
    streams: u64,
    duration_s: u64,
    lost_pct: f64,
    slow_pct: f64,
    slow_delay: Duration,
    pin: Option<String>,
    pool: usize,
    /// Only time `Merger::add_interval` in this process (no gRPC, no
    /// controller process): the merge path's own cost.
    merge_only: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        agents: 200,
        streams: 5000,
        duration_s: 30,
        lost_pct: 0.0,
        slow_pct: 0.0,
        slow_delay: Duration::from_millis(2500),
        pin: None,
        pool: 16,
        merge_only: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [k, v] = pair else {
            bail!("{pair:?}: expected --flag VALUE pairs");
        };
        match k.as_str() {
            "--agents" => a.agents = v.parse()?,
            "--streams" => a.streams = v.parse()?,
            "--duration" => a.duration_s = v.parse()?,
            "--lost" => a.lost_pct = v.parse()?,
            "--slow" => a.slow_pct = v.parse()?,
            "--slow-delay-ms" => a.slow_delay = Duration::from_millis(v.parse()?),
            "--pin" => a.pin = Some(v.clone()),
            "--pool" => a.pool = v.parse()?,
            "--merge-only" => a.merge_only = v.parse()?,
            _ => bail!("unknown flag {k}"),
        }
    }
    if a.agents == 0 || a.duration_s < 8 || a.pool == 0 {
        bail!("need --agents >= 1, --duration >= 8, --pool >= 1");
    }
    Ok(a)
}

/// Which agents fail how: `lost` and `slow` spread evenly over the fleet.
fn faults(a: &Args) -> Vec<Fault> {
    let n = a.agents;
    let count = |pct: f64| ((n as f64 * pct / 100.0).round() as usize).min(n);
    let mut f = vec![Fault::None; n];
    // Killed mid-interval, so everything sent before is surely delivered.
    let lose_at = Duration::from_millis(a.duration_s * 400 + 500);
    let lost = count(a.lost_pct);
    for j in 0..lost {
        f[j * n / lost] = Fault::Lose(lose_at);
    }
    let slow = count(a.slow_pct);
    for j in 0..slow {
        let i = (j * n / slow + 1) % n;
        if f[i] == Fault::None {
            f[i] = Fault::Slow(a.slow_delay);
        }
    }
    f
}

fn plan_text(a: &Args, addrs: &[std::net::SocketAddr], out: &Path) -> String {
    let list: Vec<String> = addrs.iter().map(|x| format!("\"{x}\"")).collect();
    // The fakes ignore the slice (each simulates `streams` streams); one
    // user per agent keeps the plan within its limits.
    format!(
        r#"
        name = "fleet-bench"
        [target]
        url = "http://127.0.0.1:9/v1/chat/completions"
        [dataset]
        input_tokens = 32
        prompts = 8
        [load]
        users = {users}
        duration = "{d}s"
        [cluster]
        agents = [{agents}]
        [output]
        dir = "{out}"
        "#,
        users = a.agents,
        d = a.duration_s,
        agents = list.join(", "),
        out = out.display(),
    )
}

/// utime + stime of a process, seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / TICKS)
}

/// VmHWM (peak resident set) of a process, bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The controller process, its stderr lines (with when they were read) and
/// its peak RSS, sampled until it exits.
struct Controller {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Controller {
    fn spawn(plan: &Path, out: &Path, pin: Option<&str>) -> Result<Self> {
        let bin = bench_support::sibling("controller")?;
        let mut cmd = match pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .arg(plan)
            .arg("--output")
            .arg(out)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the controller")?;
        let stderr = child.stderr.take().context("stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((Instant::now(), line));
            }
        });
        let (peak, done) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, d, pid) = (peak.clone(), done.clone(), child.id());
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                p.fetch_max(peak_rss(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(Self {
            child,
            lines,
            peak,
            done,
        })
    }

    fn cpu(&self) -> f64 {
        cpu_s(self.child.id()).unwrap_or(f64::NAN)
    }

    /// Waits (bounded) for the exit; the whole run's CPU, taken just before.
    async fn wait(&mut self, limit: Duration) -> Result<(i32, f64)> {
        let until = Instant::now() + limit;
        let mut cpu = self.cpu();
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.done.store(true, Ordering::Relaxed);
                return Ok((status.code().unwrap_or(-1), cpu));
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                bail!("controller did not finish within {limit:?}");
            }
            cpu = self.cpu().max(cpu);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Row index and arrival of each per-interval progress line.
fn rows(lines: &[(Instant, String)], interval_s: f64) -> Vec<(u64, Instant)> {
    lines
        .iter()
        .filter_map(|(at, l)| {
            let t: f64 = l
                .strip_prefix('[')?
                .split_once("s]")?
                .0
                .trim()
                .parse()
                .ok()?;
            Some(((t / interval_s).round() as u64, *at))
        })
        .collect()
}

/// p50 and max of a list of seconds (NaN when empty).
fn p50_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (f64::NAN, f64::NAN),
        n => (v[n / 2], v[n - 1]),
    }
}

/// What the timeline looked like from outside the controller.
struct Timing {
    /// Row k printed − last agent's interval k sent (p50, max), s.
    since_k: (f64, f64),
    /// Row k printed − last agent's interval k+1 sent: the controller's own
    /// share (rows settle once every live agent has moved past them).
    since_next: (f64, f64),
    /// Longest pause between two rows.
    max_gap_s: f64,
    rows: usize,
}

fn timing(fleet: &Fleet, rows: &[(u64, Instant)], intervals: u64) -> Timing {
    let sends = fleet
        .shared
        .sends
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let last_send = |k: u64| sends.iter().filter(|(i, _)| *i == k).map(|(_, t)| *t).max();
    let steady = |k: &u64| *k >= 1 && *k + 3 < intervals;
    let lat = |shift: u64| {
        rows.iter()
            .filter(|(k, _)| steady(k))
            .filter_map(|(k, at)| {
                Some(
                    at.saturating_duration_since(last_send(k + shift)?)
                        .as_secs_f64(),
                )
            })
            .collect::<Vec<_>>()
    };
    let max_gap_s = rows
        .windows(2)
        .filter(|w| steady(&w[1].0))
        .map(|w| w[1].1.saturating_duration_since(w[0].1).as_secs_f64())
        .fold(0.0, f64::max);
    Timing {
        since_k: p50_max(lat(0)),
        since_next: p50_max(lat(1)),
        max_gap_s,
        rows: rows.len(),
    }
}

/// The single run folder the controller wrote below `out`.
fn summary(out: &Path) -> Result<Summary> {
    let dir = std::fs::read_dir(out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("summary.json").is_file())
        .context("no summary.json written")?;
    let text = std::fs::read_to_string(dir.join("summary.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleet-bench-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits (bounded) for the fakes' first interval: the run is streaming.
async fn first_send(fleet: &Fleet) -> Result<Instant> {
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let first = fleet
            .shared
            .sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map(|(_, t)| *t);
        if let Some(t) = first {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no interval sent within 120 s: the controller never started the run")
}

/// Controller CPU over the steady middle of the run, and the agent-intervals
/// sent in it.
async fn steady_cpu(c: &Controller, fleet: &Fleet, first: Instant, a: &Args) -> (f64, u64, f64) {
    let t0 = first + Duration::from_secs(2);
    let t1 = first + Duration::from_secs(a.duration_s.saturating_sub(3));
    tokio::time::sleep_until(t0.into()).await;
    let cpu0 = c.cpu();
    tokio::time::sleep_until(t1.into()).await;
    let cpu1 = c.cpu();
    let n = fleet
        .shared
        .sends
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, t)| *t >= t0 && *t < t1)
        .count() as u64;
    (cpu1 - cpu0, n, (t1 - t0).as_secs_f64())
}

/// The merge path alone: every agent's interval k, for every k, through
/// one `Merger`, as the run loop does; µs per agent-interval.
fn merge_only(pool: &Pool, a: &Args) -> Result<()> {
    use barrage_controller::merge::Merger;
    let mut merger = Merger::new(pool.layouts, a.agents, 1.0)?;
    let (mut inside, mut n, mut rows) = (Duration::ZERO, 0u64, 0usize);
    for k in 0..a.duration_s {
        for i in 0..a.agents {
            let e = &pool.entries[pool.pick(i, k)];
            let iv = barrage_proto::agent::v1::Interval {
                seq: k + 1,
                index: k,
                metrics: e.wire.clone(),
                counters: Some(e.counters_pb.clone()),
                health: None,
                turns: Vec::new(),
            };
            let t = Instant::now();
            merger.add_interval(i, &iv)?;
            rows += merger.take_settled().len();
            inside += t.elapsed();
            n += 1;
        }
    }
    println!(
        "merge only: {n} agent-intervals ({} agents × {} s), {rows} rows: {:.0} µs per agent-interval in Merger::add_interval",
        a.agents,
        a.duration_s,
        1e6 * inside.as_secs_f64() / n as f64
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = args()?;
    let t = Instant::now();
    let pool = Arc::new(Pool::generate(Traffic::chat(a.streams), a.pool, 1.0));
    let per_interval: u64 = pool.entries.iter().map(|e| e.samples).sum::<u64>() / a.pool as u64;
    let wire: usize = pool
        .entries
        .iter()
        .map(|e| e.wire.iter().map(|h| h.v2_deflate.len()).sum::<usize>())
        .sum::<usize>()
        / a.pool;
    eprintln!(
        "pool: {} intervals of {} streams ({per_interval} samples, {wire} B of histograms each) in {:.1} s",
        a.pool,
        a.streams,
        t.elapsed().as_secs_f64()
    );
    if a.merge_only {
        return merge_only(&pool, &a);
    }
    let fleet = Fleet::start(pool.clone(), a.streams, &faults(&a)).await?;
    let out = scratch()?;
    let plan = out.join("plan.toml");
    std::fs::write(&plan, plan_text(&a, &fleet.addrs, &out.join("results")))?;
    let bench_cpu0 = cpu_s(std::process::id()).unwrap_or(0.0);
    let mut c = Controller::spawn(&plan, &out.join("results"), a.pin.as_deref())?;
    let first = first_send(&fleet).await?;
    let (cpu, agent_intervals, window_s) = steady_cpu(&c, &fleet, first, &a).await;
    let (code, cpu_total) = c.wait(Duration::from_secs(a.duration_s + 120)).await?;
    let bench_cpu = cpu_s(std::process::id()).unwrap_or(0.0) - bench_cpu0;
    fleet.shutdown();
    let s = summary(&out.join("results"))?;
    let lines = c
        .lines
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let timing = timing(&fleet, &rows(&lines, 1.0), a.duration_s);
    let report = Report {
        a: &a,
        cpu_steady: (cpu, agent_intervals, window_s),
        cpu_total,
        code,
        peak: c.peak.load(Ordering::Relaxed),
        bench_cpu,
        timing,
    };
    report.print(&fleet, &s);
    let problems = fleet::exactness(&fleet, &s);
    if problems.is_empty() {
        println!(
            "exact: every metric (count, mean, min, max, percentiles), counter and per-agent count equals what the fakes sent"
        );
    } else {
        for p in &problems {
            println!("NOT EXACT: {p}");
        }
    }
    for n in &s.notes {
        println!("note: {n}");
    }
    let _ = std::fs::remove_dir_all(&out);
    if !problems.is_empty() {
        bail!("{} differences", problems.len());
    }
    Ok(())
}

struct Report<'a> {
    a: &'a Args,
    cpu_steady: (f64, u64, f64),
    cpu_total: f64,
    code: i32,
    peak: u64,
    bench_cpu: f64,
    timing: Timing,
}

impl Report<'_> {
    fn print(&self, fleet: &Fleet, s: &Summary) {
        let (cpu, n, window_s) = self.cpu_steady;
        let total_iv: u64 = fleet
            .agents
            .iter()
            .map(|a| a.tally().iter().sum::<u64>())
            .sum();
        let bytes: u64 = fleet
            .agents
            .iter()
            .map(|a| a.bytes.load(Ordering::Relaxed))
            .sum();
        let t = &self.timing;
        println!(
            "| agents × streams | lost / slow | controller CPU µs per agent-interval (steady / whole run) | controller CPU % (steady) | merge latency p50 / max ms (row k after last interval k) | controller's share p50 / max ms (after last interval k+1) | longest pause between rows s | peak RSS MiB | received KB/s | status (exit) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} × {} | {} / {} | {:.0} / {:.0} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.1} | {:.0} | {} ({}) |",
            self.a.agents,
            self.a.streams,
            fleet
                .agents
                .iter()
                .filter(|a| matches!(a.fault, Fault::Lose(_)))
                .count(),
            fleet
                .agents
                .iter()
                .filter(|a| matches!(a.fault, Fault::Slow(_)))
                .count(),
            1e6 * cpu / n.max(1) as f64,
            1e6 * self.cpu_total / total_iv.max(1) as f64,
            100.0 * cpu / window_s,
            1e3 * t.since_k.0,
            1e3 * t.since_k.1,
            1e3 * t.since_next.0,
            1e3 * t.since_next.1,
            t.max_gap_s,
            self.peak as f64 / 1048576.0,
            bytes as f64 / 1e3 / s.duration_s.max(1.0),
            s.status,
            self.code,
        );
        println!(
            "steady window {window_s:.1} s: {n} agent-intervals, controller {cpu:.2} s CPU; whole run {total_iv} agent-intervals, {:.2} s CPU; {} rows; fakes' process {:.1} s CPU; summary delta bytes {}",
            self.cpu_total,
            t.rows,
            self.bench_cpu,
            s.agents.iter().map(|a| a.delta_bytes).sum::<u64>(),
        );
    }
}
