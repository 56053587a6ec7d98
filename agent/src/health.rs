//! Generator health: the agent's own CPU and memory, and how late its load
//! runtime wakes up (scheduler lag). A saturated generator inflates the
//! latencies it measures, so these travel with every interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use barrage_proto::agent::v1::GeneratorHealth;
use tokio_util::sync::CancellationToken;

/// Process CPU time and RSS from /proc (Linux); zeros elsewhere.
#[derive(Debug)]
pub struct ProcessSampler {
    last: Option<(Instant, Duration)>,
    ticks_per_sec: f64,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self {
            last: None,
            // USER_HZ is 100 on every Linux ABI barrage builds for.
            ticks_per_sec: 100.0,
        }
    }
}

impl ProcessSampler {
    /// CPU percent (100 = one core) since the previous call, and RSS bytes.
    pub fn sample(&mut self) -> (f64, u64) {
        let now = Instant::now();
        let cpu = process_cpu_time(self.ticks_per_sec);
        let percent = match (self.last, cpu) {
            (Some((t, prev)), Some(cur)) => {
                let wall = now.duration_since(t).as_secs_f64();
                if wall > 0.0 {
                    100.0 * cur.saturating_sub(prev).as_secs_f64() / wall
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(c) = cpu {
            self.last = Some((now, c));
        }
        (percent, rss_bytes().unwrap_or(0))
    }
}

/// utime + stime of this process.
pub fn process_cpu_time(ticks_per_sec: f64) -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / ticks_per_sec))
}

pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Largest wake-up delay seen on the load runtime since the last `take`.
#[derive(Debug, Default)]
pub struct LagProbe {
    max_lag_us: AtomicU64,
}

impl LagProbe {
    /// Spawns the probe on the current runtime until `stop`.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(50);
            loop {
                let t = Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.cancelled() => return,
                }
                let lag = t.elapsed().saturating_sub(period);
                me.max_lag_us.fetch_max(
                    u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        });
    }

    pub fn take(&self) -> u64 {
        self.max_lag_us.swap(0, Ordering::Relaxed)
    }
}

pub fn health(sampler: &mut ProcessSampler, lag: &LagProbe, in_flight: u64) -> GeneratorHealth {
    let (cpu_percent, rss) = sampler.sample();
    GeneratorHealth {
        cpu_percent,
        rss_bytes: rss,
        scheduler_lag_us: lag.take(),
        in_flight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|r| r > 0));
            assert!(process_cpu_time(100.0).is_some());
        }
    }
}
