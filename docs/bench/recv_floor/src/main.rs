//! recv-floor: the least CPU a client can spend per streamed token.
//!
//! Opens N keep-alive connections to an llm-sim, sends each a hand-written
//! streaming chat request, reads the response bytes only to find its end
//! (the chunked terminator), sends the next request, for a fixed time. No
//! SSE parsing, no timing records: a floor under any real client. CPU is the
//! process's own (`getrusage`), tokens are what llm-sim counted
//! (`output_tokens_sent` of `GET /sim/stats`). Modes: `epoll` (one `recv`
//! per ready socket per wake), `epoll-ts` (the same with `recvmsg` and
//! `SO_TIMESTAMPING` receive stamps, as barrage reads), `uring` (io_uring
//! multishot receive into a provided-buffer ring, completions in batches),
//! `uring-ts` (multishot `recvmsg` with the same receive stamps).
//!
//! Not a workspace member: see BENCHMARKS.md, "The receive floor".

mod conn;
mod epoll;
mod uring;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: recv-floor --url http://HOST:PORT [--mode epoll|epoll-ts|uring|uring-ts] \
[--users 1000] [--secs 20] [--ramp-secs 2] [--coalesce-us 0] [--buf-size 2048] [--no-defer] [--no-quickack]";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Epoll,
    EpollTs,
    Uring,
    UringTs,
}

/// What the command line asked for.
pub struct Args {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    pub mode: Mode,
    pub users: usize,
    pub secs: f64,
    pub ramp_secs: f64,
    /// Least time between two waits for readiness/completions (0: none):
    /// batches reads at the cost of read lag.
    pub coalesce_us: u32,
    /// Read buffer (epoll) or size of each provided buffer (uring).
    pub buf_size: usize,
    /// uring without `IORING_SETUP_DEFER_TASKRUN`.
    pub no_defer: bool,
    /// `TCP_QUICKACK` off once after connect: fewer ACKs sent from `recv`.
    pub no_quickack: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let (mut mode, mut users, mut secs, mut ramp_secs) = (Mode::Epoll, 1000, 20.0_f64, 2.0_f64);
    let (mut coalesce_us, mut buf_size, mut no_defer, mut no_quickack) = (0, 2048, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--no-defer" || k == "--no-quickack" {
            no_defer |= k == "--no-defer";
            no_quickack |= k == "--no-quickack";
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--url" => url = Some(v),
            "--mode" => {
                mode = match v.as_str() {
                    "epoll" => Mode::Epoll,
                    "epoll-ts" => Mode::EpollTs,
                    "uring" => Mode::Uring,
                    "uring-ts" => Mode::UringTs,
                    _ => return Err(bad(&"expected epoll, epoll-ts, uring or uring-ts")),
                }
            }
            "--users" => users = v.parse().map_err(|e| bad(&e))?,
            "--secs" => secs = v.parse().map_err(|e| bad(&e))?,
            "--ramp-secs" => ramp_secs = v.parse().map_err(|e| bad(&e))?,
            "--coalesce-us" => coalesce_us = v.parse().map_err(|e| bad(&e))?,
            "--buf-size" => buf_size = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    let url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    let host = url
        .strip_prefix("http://")
        .ok_or(format!("--url {url}: only http:// is read"))?
        .trim_end_matches('/')
        .to_string();
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("--url {url}: {e}"))?
        .next()
        .ok_or(format!("--url {url}: no address"))?;
    if users == 0
        || users > u32::MAX as usize
        || !secs.is_finite()
        || secs <= 0.0
        || !(0.0..=1e6).contains(&ramp_secs)
        || !(64..=65536).contains(&buf_size)
    {
        return Err(
            "--users must be 1.., --secs > 0, --ramp-secs >= 0, --buf-size 64..=65536".into(),
        );
    }
    Ok(Args {
        url: url.trim_end_matches('/').to_string(),
        addr,
        host,
        mode,
        users,
        secs,
        ramp_secs,
        coalesce_us,
        buf_size,
        no_defer,
        no_quickack,
    })
}

impl Args {
    /// The raw HTTP/1.1 request every connection sends, again and again.
    pub fn request(&self) -> Vec<u8> {
        let words = vec!["word"; 32].join(" ");
        let body = format!(
            r#"{{"model":"sim","messages":[{{"role":"user","content":"{words}"}}],"max_tokens":64,"stream":true}}"#
        );
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )
        .into_bytes()
    }
}

/// `GET /sim/stats` → `output_tokens_sent`.
fn sim_tokens(args: &Args) -> io::Result<u64> {
    let mut s = TcpStream::connect(args.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /sim/stats HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        args.host
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let key = "\"output_tokens_sent\":";
    let at = text.find(key).ok_or_else(|| {
        io::Error::other(format!("{}/sim/stats: no {key} in the reply", args.url))
    })?;
    let digits: String = text[at + key.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|e| io::Error::other(format!("{}/sim/stats: {key} {e}", args.url)))
}

/// This process's (user, system) CPU seconds so far.
fn cpu_now() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// Raises the soft open-files limit to the hard one (1000 sockets and more).
fn raise_nofile() {
    // SAFETY: get/setrlimit read and write only the struct given.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run(args: &Args) -> io::Result<()> {
    raise_nofile();
    let load = loadavg();
    let tokens0 = sim_tokens(args)?;
    let (u0, s0) = cpu_now();
    let t0 = Instant::now();
    let tally = match args.mode {
        Mode::Epoll | Mode::EpollTs => epoll::run(args, args.mode == Mode::EpollTs)?,
        Mode::Uring | Mode::UringTs => uring::run(args, args.mode == Mode::UringTs)?,
    };
    let wall = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_now();
    // In-flight streams were cut when the connections closed; let llm-sim
    // notice before counting.
    std::thread::sleep(Duration::from_millis(500));
    let tokens = sim_tokens(args)? - tokens0;
    report(args, &tally, tokens, wall, (u1 - u0, s1 - s0), &load);
    Ok(())
}

fn report(args: &Args, t: &conn::Tally, tokens: u64, wall: f64, cpu: (f64, f64), load: &str) {
    let per = |x: f64| x / tokens.max(1) as f64;
    let (user, sys) = cpu;
    println!(
        "mode={:?} users={} secs={:.1} coalesce_us={} no_quickack={} load=[{load}] {}",
        args.mode, args.users, wall, args.coalesce_us, args.no_quickack, t.note
    );
    println!(
        "tokens={tokens} tokens/s={:.0} responses={} bytes/token={:.1} reads/token={:.3} \
         waits/token={:.3} reconnects={} bad_status={} nobufs={}",
        tokens as f64 / wall,
        t.responses,
        per(t.bytes as f64),
        per(t.reads as f64),
        per(t.waits as f64),
        t.reconnects,
        t.bad_status,
        t.nobufs
    );
    if t.stamps > 0 {
        println!(
            "read lag (kernel stamp to read): mean {:.1} µs, max {:.1} µs over {} stamped reads",
            t.lag_ns_sum as f64 / t.stamps as f64 / 1e3,
            t.lag_ns_max as f64 / 1e3,
            t.stamps
        );
    }
    println!(
        "cpu user={user:.2}s sys={sys:.2}s → µs/token total={:.2} user={:.2} sys={:.2}",
        per(user + sys) * 1e6,
        per(user) * 1e6,
        per(sys) * 1e6
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recv-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
