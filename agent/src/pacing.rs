//! Read pacing: a load thread with nothing to do pauses briefly before it
//! parks, so that the chunks arriving meanwhile are read in one wake-up
//! instead of one wake-up each.
//!
//! Why: at 1000 streams, half of the load threads' CPU went to parking in
//! `epoll_wait` and being woken once per chunk (`finish_task_switch` in the
//! profile, BENCHMARKS.md). Read late, a chunk is still timed when it
//! arrived: the direct client takes arrival times from the kernel's receive
//! timestamps. So the pause is taken only while that holds:
//!
//! * while a direct client exists (`Active`): targets on reqwest (TLS,
//!   HTTP/2) are timed by read times, and a pause would be inside them;
//! * not while a connection is being set up (`Connecting`): a new
//!   connection's latencies run from the hand-off, so its setup must be
//!   noticed at once;
//! * never again in this process once a connection could not get kernel
//!   timestamps (`read_timed`).
//!
//! An open-loop arrival ends the pauses at once (`interrupt`), so that
//! `schedule_lag` keeps its sub-millisecond tail. Closed-loop users' starts
//! and think times, on tokio's timer (already rounded up to its 1 ms), can
//! start up to one pause later, which is in `schedule_lag` (and, on a
//! reused connection, outside TTFT, which runs from the request's write).
//! `BARRAGE_READ_PACING_US` sets the pause (default 1000 µs; 0: off).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The pause when `BARRAGE_READ_PACING_US` is not set.
const DEFAULT_PAUSE: Duration = Duration::from_micros(1000);

/// What decides whether a load thread pauses before parking.
#[derive(Debug, Default)]
pub struct Pacing {
    active: AtomicUsize,
    connecting: AtomicUsize,
    read_timed: AtomicBool,
    pauses: AtomicU64,
    /// Bumped by each interrupt; a pause ends when it changes.
    rung: Mutex<u64>,
    bell: Condvar,
}

/// The process's pacing, consulted by every load runtime.
pub static PACING: Pacing = Pacing::new();

impl Pacing {
    pub const fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            read_timed: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            rung: Mutex::new(0),
            bell: Condvar::new(),
        }
    }

    /// Pauses for `pause`, or until the next interrupt.
    pub fn pause(&self, pause: Duration) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + pause;
        let mut rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        let at_start = *rung;
        while *rung == at_start {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            rung = match self.bell.wait_timeout(rung, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Ends every pause now: work was handed to the load threads.
    pub fn interrupt(&self) {
        let mut rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        *rung = rung.wrapping_add(1);
        self.bell.notify_all();
    }

    /// How long to pause before parking now (None: park at once).
    pub fn pause_for(&self, pause: Duration) -> Option<Duration> {
        let on = !pause.is_zero()
            && self.active.load(Ordering::Relaxed) > 0
            && self.connecting.load(Ordering::Relaxed) == 0
            && !self.read_timed.load(Ordering::Relaxed);
        on.then_some(pause)
    }

    /// Held while a kernel-timed client exists.
    pub fn active(&'static self) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self)
    }

    /// Held while a connection is being set up.
    pub fn connecting(&'static self) -> Connecting {
        self.connecting.fetch_add(1, Ordering::Relaxed);
        Connecting(self)
    }

    /// A connection is timed by read times: pausing stops for good.
    pub fn read_timed(&self) {
        self.read_timed.store(true, Ordering::Relaxed);
    }

    /// Pauses taken so far.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

/// See [`Pacing::active`].
#[derive(Debug)]
pub struct Active(&'static Pacing);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// See [`Pacing::connecting`].
#[derive(Debug)]
pub struct Connecting(&'static Pacing);

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `BARRAGE_READ_PACING_US`, read once (an unreadable value: the default).
fn configured_pause() -> Duration {
    static PAUSE: OnceLock<Duration> = OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var("BARRAGE_READ_PACING_US")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(DEFAULT_PAUSE, Duration::from_micros)
    })
}

/// The load runtimes' park hook.
pub fn before_park() {
    if let Some(pause) = PACING.pause_for(configured_pause()) {
        PACING.pause(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_only_while_a_kernel_timed_client_exists_and_nothing_connects() {
        static P: Pacing = Pacing::new();
        let ms = Duration::from_millis(1);
        assert_eq!(P.pause_for(ms), None, "no client: no pause");
        let client = P.active();
        assert_eq!(P.pause_for(ms), Some(ms));
        assert_eq!(P.pause_for(Duration::ZERO), None, "a zero pause is off");
        {
            let _setup = P.connecting();
            assert_eq!(P.pause_for(ms), None, "a connection being set up");
        }
        assert_eq!(P.pause_for(ms), Some(ms));
        drop(client);
        assert_eq!(P.pause_for(ms), None, "the client is gone");
        let _client = P.active();
        P.read_timed();
        assert_eq!(P.pause_for(ms), None, "read-timed: never again");
    }

    #[test]
    fn an_interrupt_ends_a_pause_at_once() {
        static P: Pacing = Pacing::new();
        let long = Duration::from_secs(30);
        let t0 = Instant::now();
        let pauser = std::thread::spawn(move || P.pause(long));
        // Until the pause has begun (counted before it waits), then a
        // little more; an interrupt before it begins is not its end.
        while P.pauses() == 0 {
            std::thread::yield_now();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pauser.is_finished() && Instant::now() < deadline {
            P.interrupt();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(pauser.is_finished(), "the pause outlived its interrupts");
        pauser.join().expect("pauser");
        assert!(
            t0.elapsed() < long,
            "ended by the interrupt, not its length"
        );
        let t1 = Instant::now();
        P.pause(Duration::from_millis(20));
        assert!(
            t1.elapsed() >= Duration::from_millis(20),
            "uninterrupted: whole"
        );
    }
}
