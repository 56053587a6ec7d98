//! Benchmark: what watching a running test costs `controller serve`.
//!
//! A `controller serve` process runs a 1000-stream test (2 `agent serve`
//! processes × 500 users against an `llm-sim` process with TTFT 100 ms,
//! ITL 100 ms and 64 tokens, all on loopback; 60 s, users ramp over 5 s)
//! while 0 or N watchers look at it. A watcher does what the dashboard's
//! live page does: one SSE connection to `/api/runs/{id}/events` and a poll
//! of `/api/runs` every 2 s. With `--browsers N`, N headless chromium
//! processes open the live page `/runs/{id}` instead. The figure is the
//! controller process's CPU (utime + stime from /proc/<pid>/stat) from
//! submission to the run's end; conditions alternate, each `--reps` times.
//!
//! ```text
//! cargo build --release -p barrage-controller -p barrage-agent -p barrage-llm-sim
//! cargo run --release -p barrage-controller --example service_bench -- \
//!     [--reps 3] [--watchers 5] [--browsers 0] [--duration 60] [--agents 2] [--users 500]
//! ```

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "service-bench-token";
/// The dashboard's poll of the run list.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// Bound on one run, setup and report included.
const RUN_LIMIT: Duration = Duration::from_secs(300);
const ENDED: &[&str] = &[
    "completed",
    "degraded",
    "breached",
    "failed",
    "cancelled",
    "interrupted",
    "error",
];

struct Opts {
    reps: usize,
    watchers: usize,
    browsers: usize,
    duration_s: u64,
    agents: usize,
    users: u64,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        reps: 3,
        watchers: 5,
        browsers: 0,
        duration_s: 60,
        agents: 2,
        users: 500,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            bail!("flags take a value: {pair:?}")
        };
        let n: u64 = value.parse().with_context(|| format!("{flag} {value}"))?;
        match flag.as_str() {
            "--reps" => o.reps = n as usize,
            "--watchers" => o.watchers = n as usize,
            "--browsers" => o.browsers = n as usize,
            "--duration" => o.duration_s = n,
            "--agents" => o.agents = n as usize,
            "--users" => o.users = n,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(o)
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .context("stat")?;
    let mut f = rest.split_whitespace();
    let utime: f64 = f.nth(11).context("utime")?.parse()?;
    let stime: f64 = f.next().context("stime")?.parse()?;
    // /proc reports clock ticks of USER_HZ, 100 on Linux.
    Ok((utime + stime) / 100.0)
}

/// The bench's children, ended (by their own pid) when dropped: SIGTERM
/// first, so chromium takes its helper processes down with it.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let t0 = Instant::now();
        for c in &mut self.0 {
            while t0.elapsed() < Duration::from_secs(3) && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh `controller serve` on its own data folder; waits for /healthz.
async fn start_service(http: &reqwest::Client, data: &Path) -> Result<(Child, String)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bench_support::sibling("controller")?)
        .args(["serve", "--listen", &listen, "--data"])
        .arg(data)
        .env("BENCH_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting controller serve")?;
    let base = format!("http://{listen}");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok((child, base));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("controller serve did not answer /healthz on {listen}")
}

fn plan_text(o: &Opts, sim: &str, agents: &[String]) -> String {
    let users = o.users * o.agents as u64;
    let list: Vec<String> = agents.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
        name = "service-bench"
        [target]
        url = "http://{sim}"
        [request]
        max_tokens = 64
        [dataset]
        input_tokens = 32
        prompts = 64
        [load]
        users = {users}
        spawn_rate = {spawn}
        duration = "{d}s"
        drain = "0s"
        [cluster]
        agents = [{agents}]
        token_env = "BENCH_TOKEN"
        "#,
        spawn = users as f64 / 5.0,
        d = o.duration_s,
        agents = list.join(", "),
    )
}

#[derive(Default, Debug, Clone, Copy)]
struct Watched {
    events: u64,
    sse_bytes: u64,
    polls: u64,
}

/// One SSE stream of the run, read to its end (or the stop).
async fn follow(http: reqwest::Client, url: String, stop: CancellationToken) -> Watched {
    let mut w = Watched::default();
    let Ok(resp) = http.get(&url).send().await else {
        return w;
    };
    let mut body = resp.bytes_stream();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            chunk = body.next() => match chunk {
                Some(Ok(b)) => {
                    w.sse_bytes += b.len() as u64;
                    w.events += b.windows(6).filter(|x| x == b"event:").count() as u64;
                }
                _ => break,
            },
        }
    }
    w
}

/// What the live page does: the run's events, and the run list every 2 s.
async fn watcher(
    http: reqwest::Client,
    base: String,
    id: String,
    stop: CancellationToken,
) -> Watched {
    let sse = tokio::spawn(follow(
        http.clone(),
        format!("{base}/api/runs/{id}/events"),
        stop.clone(),
    ));
    let mut polls = 0;
    let mut tick = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Ok(r) = http.get(format!("{base}/api/runs")).send().await
                    && r.bytes().await.is_ok()
                {
                    polls += 1;
                }
            }
        }
    }
    let mut w = sse.await.unwrap_or_default();
    w.polls = polls;
    w
}

/// Headless chromium processes showing the live page.
fn browsers(n: usize, url: &str, tmp: &Path) -> Result<Kids> {
    let mut kids = Kids(Vec::new());
    for i in 0..n {
        let profile = tmp.join(format!("chromium-{i}"));
        kids.0.push(
            Command::new("chromium")
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting chromium")?,
        );
    }
    Ok(kids)
}

struct Sample {
    cpu_s: f64,
    wall_s: f64,
    status: String,
    requests_ok: u64,
    watched: Watched,
}

#[derive(Clone, Copy, PartialEq)]
enum Watch {
    None,
    Sse(usize),
    Browsers(usize),
}

impl std::fmt::Display for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Watch::None => write!(f, "0 watchers"),
            Watch::Sse(n) => write!(f, "{n} watchers (SSE + 2 s poll)"),
            Watch::Browsers(n) => write!(f, "{n} headless chromium on /runs/{{id}}"),
        }
    }
}

async fn submit(http: &reqwest::Client, base: &str, plan: &str) -> Result<String> {
    let r = http
        .post(format!("{base}/api/runs"))
        .header("content-type", "application/toml")
        .body(plan.to_owned())
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    match v["id"].as_str() {
        Some(id) if status.is_success() => Ok(id.to_owned()),
        _ => bail!("submit: {status} {v}"),
    }
}

/// Polls the run (once a second) until it reaches a terminal state.
async fn wait_end(http: &reqwest::Client, base: &str, id: &str) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    while t0.elapsed() < RUN_LIMIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v: serde_json::Value = http
            .get(format!("{base}/api/runs/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if v["status"].as_str().is_some_and(|s| ENDED.contains(&s)) {
            return Ok(v);
        }
    }
    bail!("run {id} did not end within {RUN_LIMIT:?}")
}

async fn one_run(plan: &str, watch: Watch, tmp: &Path) -> Result<Sample> {
    let http = reqwest::Client::new();
    let data = tmp.join(format!("data-{}", free_port()?));
    let (child, base) = start_service(&http, &data).await?;
    let pid = child.id();
    let _service = Kids(vec![child]);
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let id = submit(&http, &base, plan).await?;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut _chromium = Kids(Vec::new());
    match watch {
        Watch::None => {}
        Watch::Sse(n) => {
            for _ in 0..n {
                tasks.push(tokio::spawn(watcher(
                    http.clone(),
                    base.clone(),
                    id.clone(),
                    stop.clone(),
                )));
            }
        }
        Watch::Browsers(n) => _chromium = browsers(n, &format!("{base}/runs/{id}"), tmp)?,
    }
    let end = wait_end(&http, &base, &id).await?;
    let (cpu_s, wall_s) = (cpu_seconds(pid)? - cpu0, t0.elapsed().as_secs_f64());
    stop.cancel();
    let mut watched = Watched::default();
    for t in tasks {
        let w = t.await.unwrap_or_default();
        watched.events += w.events;
        watched.sse_bytes += w.sse_bytes;
        watched.polls += w.polls;
    }
    Ok(Sample {
        cpu_s,
        wall_s,
        status: end["status"].as_str().unwrap_or("?").to_owned(),
        requests_ok: end["headline"]["requests_ok"].as_u64().unwrap_or(0),
        watched,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spawn(bin: &str, args: &[&str]) -> Result<(Child, String)> {
    bench_support::spawn_listening(
        bench_support::sibling(bin)?,
        args,
        &[("BENCH_TOKEN", TOKEN)],
    )
}

/// llm-sim and the agents, shared by every run.
fn start_load(o: &Opts) -> Result<(Kids, String, Vec<String>)> {
    let mut kids = Kids(Vec::new());
    let (sim, sim_addr) = spawn(
        "llm-sim",
        &[
            "--listen",
            "127.0.0.1:0",
            "--ttft",
            "100ms",
            "--itl",
            "200ms",
        ],
    )?;
    kids.0.push(sim);
    let mut agents = Vec::new();
    for i in 0..o.agents {
        let id = format!("svc-bench-{i}");
        let (child, addr) = bench_support::spawn_agent(&id, TOKEN)?;
        kids.0.push(child);
        agents.push(addr);
    }
    Ok((kids, sim_addr, agents))
}

fn print_table(conditions: &[Watch], samples: &[(Watch, Sample)]) {
    println!(
        "| watchers | runs | controller CPU s (median) | CPU % of a core (median) | wall s | requests ok | SSE events / watcher | list polls / watcher |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut base = None;
    for c in conditions {
        let of: Vec<&Sample> = samples
            .iter()
            .filter(|(w, _)| w == c)
            .map(|(_, s)| s)
            .collect();
        let n = match c {
            Watch::None => 1.0,
            Watch::Sse(n) | Watch::Browsers(n) => *n as f64,
        };
        let cpu = median(of.iter().map(|s| s.cpu_s).collect());
        let pct = median(of.iter().map(|s| 100.0 * s.cpu_s / s.wall_s).collect());
        base.get_or_insert(cpu);
        println!(
            "| {c} | {} | {cpu:.2} ({}) | {pct:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            of.len(),
            of.iter()
                .map(|s| format!("{:.2}", s.cpu_s))
                .collect::<Vec<_>>()
                .join(", "),
            median(of.iter().map(|s| s.wall_s).collect()),
            median(of.iter().map(|s| s.requests_ok as f64).collect()),
            median(of.iter().map(|s| s.watched.events as f64 / n).collect()),
            median(of.iter().map(|s| s.watched.polls as f64 / n).collect()),
        );
    }
    if let Some(b) = base {
        for c in &conditions[1..] {
            let cpu = median(
                samples
                    .iter()
                    .filter(|(w, _)| w == c)
                    .map(|(_, s)| s.cpu_s)
                    .collect(),
            );
            println!("ratio {c} / 0 watchers: {:.3}", cpu / b);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = opts()?;
    let tmp: PathBuf =
        std::env::temp_dir().join(format!("barrage-service-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (_load, sim, agents) = start_load(&o)?;
    let plan = plan_text(&o, &sim, &agents);
    let mut conditions = vec![Watch::None, Watch::Sse(o.watchers)];
    if o.browsers > 0 {
        conditions.push(Watch::Browsers(o.browsers));
    }
    let mut samples = Vec::new();
    // Alternate the conditions so drift (other load on the machine) spreads evenly.
    for rep in 0..o.reps {
        for c in &conditions {
            let s = one_run(&plan, *c, &tmp).await?;
            eprintln!(
                "rep {rep} {c}: cpu {:.2} s over {:.1} s, {} ({} ok), {} events, {} polls",
                s.cpu_s, s.wall_s, s.status, s.requests_ok, s.watched.events, s.watched.polls
            );
            samples.push((*c, s));
        }
    }
    print_table(&conditions, &samples);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
