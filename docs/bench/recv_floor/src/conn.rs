//! What every mode shares: a connection's end-of-response detector, the
//! counters, the user ramp and the blocking connect.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

/// The last 7 bytes of a chunked response: the end of the previous chunk
/// and the zero-length terminating chunk (`\r\n0\r\n\r\n`), big-endian.
const END: u64 = u64::from_be_bytes([0, b'\r', b'\n', b'0', b'\r', b'\n', b'\r', b'\n']);
const END_MASK: u64 = (1 << 56) - 1;

/// Counters of one run.
#[derive(Default)]
pub struct Tally {
    pub bytes: u64,
    pub reads: u64,
    /// Calls that waited for readiness or completions (`epoll_wait`,
    /// `io_uring_enter` with GETEVENTS).
    pub waits: u64,
    pub responses: u64,
    pub bad_status: u64,
    pub reconnects: u64,
    /// uring: multishot receives that ended for want of buffers.
    pub nobufs: u64,
    /// epoll-ts: reads that carried a kernel receive stamp, and their lag.
    pub stamps: u64,
    pub lag_ns_sum: u64,
    pub lag_ns_max: u64,
    /// What the mode set up (printed with the result).
    pub note: String,
}

impl Tally {
    /// Counts a kernel receive stamp and its lag to now (what barrage
    /// computes per read).
    pub fn stamp(&mut self, ts: libc::timespec) {
        if ts.tv_sec <= 0 {
            return;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let lag = now.saturating_sub(stamp).as_nanos() as u64;
        self.stamps += 1;
        self.lag_ns_sum += lag;
        self.lag_ns_max = self.lag_ns_max.max(lag);
    }
}

/// `SO_TIMESTAMPING` (= `SCM_TIMESTAMPING`) on x86_64 and arm64; libc does
/// not export it for Linux.
pub const SO_TIMESTAMPING: libc::c_int = 37;

/// Asks for software receive timestamps on `fd`, as barrage does.
pub fn enable_stamps(fd: RawFd) -> io::Result<()> {
    let flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    // SAFETY: the option value is a c_uint that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&flags as *const libc::c_uint).cast(),
            size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One keep-alive connection: its socket and where its response stands.
pub struct Conn {
    pub fd: RawFd,
    /// The last (up to 8) bytes received, newest lowest.
    tail: u64,
    /// The next byte read starts a response (its status line).
    fresh: bool,
}

impl Conn {
    pub fn new(fd: RawFd) -> Self {
        Conn {
            fd,
            tail: 0,
            fresh: true,
        }
    }

    /// Takes in one read's bytes; true when they end the response. Only the
    /// status line and the last bytes are looked at: llm-sim sends nothing
    /// after a response until it gets the next request, so a response's end
    /// is always the end of a read.
    pub fn on_bytes(&mut self, data: &[u8], t: &mut Tally) -> bool {
        t.bytes += data.len() as u64;
        t.reads += 1;
        if self.fresh {
            self.fresh = false;
            if !data.starts_with(b"HTTP/1.1 200") {
                t.bad_status += 1;
            }
        }
        for &b in &data[data.len().saturating_sub(7)..] {
            self.tail = (self.tail << 8) | u64::from(b);
        }
        if self.tail & END_MASK == END {
            self.tail = 0;
            self.fresh = true;
            t.responses += 1;
            return true;
        }
        false
    }
}

/// Starts users evenly over the ramp, like the other benchmarks' spawn rate.
pub struct Ramp {
    start: Instant,
    users: usize,
    ramp: Duration,
    pub spawned: usize,
}

impl Ramp {
    pub fn new(users: usize, ramp_secs: f64) -> Self {
        Ramp {
            start: Instant::now(),
            users,
            ramp: Duration::from_secs_f64(ramp_secs),
            spawned: 0,
        }
    }

    fn at(&self, i: usize) -> Instant {
        self.start + self.ramp.mul_f64(i as f64 / self.users as f64)
    }

    /// How many users are due to start by `now` and have not yet.
    pub fn due(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.spawned + n < self.users && self.at(self.spawned + n) <= now {
            n += 1;
        }
        n
    }

    /// When the next user is due, if any is left.
    pub fn next_at(&self) -> Option<Instant> {
        (self.spawned < self.users).then(|| self.at(self.spawned))
    }
}

/// A loopback connect is immediate: done blocking, then the socket is made
/// non-blocking for the event loop. `no_quickack`: leave quick-ACK mode
/// (the kernel may re-enter it; this is a one-off hint).
pub fn connect(addr: SocketAddr, no_quickack: bool) -> io::Result<RawFd> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let fd = s.into_raw_fd();
    if no_quickack {
        let off: libc::c_int = 0;
        // SAFETY: the option value is a c_int that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&off as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            close(fd);
            return Err(e);
        }
    }
    Ok(fd)
}

/// Closes a socket this program owns.
pub fn close(fd: RawFd) {
    // SAFETY: fd came from `connect` and is closed once, by its owner.
    unsafe { libc::close(fd) };
}

/// Time from now to `until`, rounded up to whole milliseconds (epoll_wait's
/// unit; rounding down would spin just before a deadline).
pub fn ms_until(until: Instant) -> i32 {
    let d = until.saturating_duration_since(Instant::now());
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}
