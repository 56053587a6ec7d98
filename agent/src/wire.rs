//! A TCP stream for the direct HTTP/1 client that knows when its bytes
//! really moved: each read carries the kernel's software receive timestamp
//! (`SO_TIMESTAMPING`, read from `recvmsg`'s control messages), and each
//! write the instant its syscall was issued.
//!
//! Why: a chunk that reached the socket on time but waited for a busy agent
//! to be scheduled would otherwise be stamped late, and that wait would land
//! inside TTFT, ITL and e2e. The read time is kept beside the kernel time;
//! their difference is the agent's own scheduling lag (`read_lag`).
//!
//! Where the kernel gives no timestamp (another OS, a kernel that refuses
//! the option) reads are stamped with the read time, and
//! `StampedTcp::kernel` says so.

use std::io;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// A kernel timestamp further back than this from its read is not trusted
/// (the wall clock was stepped between the two).
const MAX_KERNEL_LAG: Duration = Duration::from_secs(60);

/// When one piece of response arrived, and when the agent read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at: Instant,
    pub read: Instant,
}

impl Arrival {
    /// Read at `read`; the kernel stamped it `stamp` (wall clock), if at all.
    fn of(read: Instant, stamp: Option<SystemTime>) -> Self {
        let at = stamp
            .and_then(lag_since)
            .and_then(|lag| read.checked_sub(lag))
            .unwrap_or(read);
        Arrival { at, read }
    }
}

/// How long ago, by the wall clock, the kernel stamped what was just read.
fn lag_since(stamp: SystemTime) -> Option<Duration> {
    match SystemTime::now().duration_since(stamp) {
        Ok(lag) if lag <= MAX_KERNEL_LAG => Some(lag),
        Ok(_) => None,
        // Stamped "in the future": the clock stepped back; no lag seen.
        Err(_) => Some(Duration::ZERO),
    }
}

/// A connected TCP stream whose reads and writes are stamped.
pub struct StampedTcp {
    tcp: TcpStream,
    /// Reads carry kernel receive timestamps (once the kernel has turned
    /// them on: the very first reads after the first socket asks may not).
    kernel: bool,
}

/// Reads land here first, then are copied into the connection's buffer:
/// one buffer per thread, so an idle connection holds none (the
/// connection's spare room is uninitialised memory, which safe code cannot
/// hand to `recvmsg`).
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl StampedTcp {
    /// Wraps `tcp`, asking the kernel for receive timestamps where it can.
    pub fn new(tcp: TcpStream) -> Self {
        let kernel = sys::enable_rx_timestamps(&tcp);
        Self { tcp, kernel }
    }

    /// Whether this connection's reads carry kernel receive timestamps.
    pub fn kernel(&self) -> bool {
        self.kernel
    }

    /// Reads what the socket holds onto the end of `buf`, after making room
    /// for at least `room` bytes: how many it read (all of the room when
    /// it filled it) and when they arrived, or None at the end of the
    /// stream. Cancel-safe: a read is taken whole within one poll.
    pub async fn read_into(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
    ) -> io::Result<Option<(usize, Arrival)>> {
        buf.reserve(room);
        loop {
            self.tcp.readable().await?;
            let got = SCRATCH.with_borrow_mut(|scratch| {
                if scratch.is_empty() {
                    scratch.resize(SCRATCH_BYTES, 0);
                }
                let room = (buf.capacity() - buf.len()).clamp(1, scratch.len());
                let dst = &mut scratch[..room];
                let got = self.tcp.try_io(tokio::io::Interest::READABLE, || {
                    sys::recv_stamped(&self.tcp, dst, self.kernel)
                });
                if let Ok((n, _)) = &got {
                    buf.extend_from_slice(&scratch[..*n]);
                }
                got
            });
            match got {
                Ok((0, _)) => return Ok(None),
                Ok((n, stamp)) => return Ok(Some((n, Arrival::of(Instant::now(), stamp)))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `data`: the instant the write that sent its last bytes
    /// was issued. Stamped just before that syscall, not after: on a shared
    /// core the wake-up the write causes on the server can preempt the
    /// writer before a stamp taken after it, which would shorten TTFT.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<Instant> {
        if data.is_empty() {
            return Ok(Instant::now());
        }
        loop {
            self.tcp.writable().await?;
            let issued = Instant::now();
            match self.tcp.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) if n == data.len() => return Ok(issued),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// False when an idle connection can no longer carry a request: the
    /// server closed it (or sent bytes nobody asked for).
    pub fn idle_is_usable(&self) -> bool {
        sys::idle_is_usable(&self.tcp)
    }
}

#[cfg(target_os = "linux")]
mod sys {
    //! `SO_TIMESTAMPING` with software receive stamps, read by `recvmsg`.
    use std::io::{self, IoSliceMut};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, SystemTime};

    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, TimestampingFlag, Timestamps, recv, recvmsg, setsockopt,
        sockopt,
    };
    use tokio::net::TcpStream;

    /// Room for one `scm_timestamping` control message, aligned for its header.
    #[repr(align(8))]
    struct ControlSpace([u8; 128]);

    /// Asks for software receive timestamps; false when the kernel refuses.
    pub fn enable_rx_timestamps(tcp: &TcpStream) -> bool {
        let flags = TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
        setsockopt(tcp, sockopt::Timestamping, &flags).is_ok()
    }

    /// A non-blocking peek: nothing to read (the connection is open and
    /// quiet) is the only usable state of an idle connection.
    pub fn idle_is_usable(tcp: &TcpStream) -> bool {
        let mut one = [0u8; 1];
        matches!(
            recv(
                tcp.as_raw_fd(),
                &mut one,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Err(nix::errno::Errno::EAGAIN)
        )
    }

    /// One `recvmsg` into `dst`: the bytes read and, when asked for and
    /// given, the kernel's software receive timestamp of the newest of them.
    pub fn recv_stamped(
        tcp: &TcpStream,
        dst: &mut [u8],
        stamped: bool,
    ) -> io::Result<(usize, Option<SystemTime>)> {
        let mut iov = [IoSliceMut::new(dst)];
        let mut control = ControlSpace([0; 128]);
        let msg = recvmsg::<()>(
            tcp.as_raw_fd(),
            &mut iov,
            stamped.then_some(&mut control.0[..]),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut stamp = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmTimestampsns(Timestamps { system, .. }) = c
                    && system.tv_sec() > 0
                {
                    stamp = Some(
                        SystemTime::UNIX_EPOCH
                            + Duration::new(system.tv_sec() as u64, system.tv_nsec() as u32),
                    );
                }
            }
        }
        Ok((msg.bytes, stamp))
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! No kernel receive timestamps here: reads are stamped when read.
    use std::io;
    use std::time::SystemTime;

    use tokio::net::TcpStream;

    pub fn enable_rx_timestamps(_tcp: &TcpStream) -> bool {
        false
    }

    /// Not checked here: a closed idle connection fails its next request
    /// before any response byte, which is resent once on a new one.
    pub fn idle_is_usable(_tcp: &TcpStream) -> bool {
        true
    }

    pub fn recv_stamped(
        tcp: &TcpStream,
        dst: &mut [u8],
        _stamped: bool,
    ) -> io::Result<(usize, Option<SystemTime>)> {
        tcp.try_read(dst).map(|n| (n, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads once into a fresh buffer: the bytes and their arrival.
    async fn read_once(s: &mut StampedTcp) -> (Vec<u8>, Arrival) {
        let mut buf = BytesMut::new();
        let (n, a) = s
            .read_into(&mut buf, 4096)
            .await
            .expect("read")
            .expect("bytes");
        assert_eq!(n, buf.len());
        (buf.to_vec(), a)
    }

    /// A stamped client stream and the server's end of it, on loopback.
    async fn pair() -> (StampedTcp, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (StampedTcp::new(client), server)
    }

    #[tokio::test]
    async fn a_read_that_waited_is_stamped_when_its_bytes_arrived() {
        let (mut s, mut server) = pair().await;
        // The kernel turns receive stamping on a moment after the first
        // socket asks (a deferred switch): wait until a read is stamped.
        for _ in 0..100 {
            server.write_all(b"ping").await.expect("write");
            let (got, a) = read_once(&mut s).await;
            assert_eq!(got, b"ping");
            if a.at != a.read || !cfg!(target_os = "linux") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.write_all(b"first").await.expect("write");
        let sent = Instant::now();
        // The agent is "busy" for 80 ms before it reads.
        std::thread::sleep(Duration::from_millis(80));
        let (got, a) = read_once(&mut s).await;
        assert_eq!(got, b"first");
        assert!(a.read.duration_since(sent) >= Duration::from_millis(80));
        if cfg!(target_os = "linux") {
            assert!(s.kernel(), "the kernel gave no receive timestamps");
            let lag = a.read.duration_since(a.at);
            assert!(
                lag >= Duration::from_millis(75),
                "the wait before the read is the lag: {lag:?}"
            );
            let off = a.at.max(sent) - a.at.min(sent);
            assert!(
                off < Duration::from_millis(5),
                "arrival {off:?} from the send"
            );
        } else {
            assert_eq!(a.at, a.read);
        }
    }

    #[tokio::test]
    async fn writes_are_stamped_when_issued_and_the_end_of_stream_is_none() {
        let (mut s, mut server) = pair().await;
        let before = Instant::now();
        let w = s.write_all(b"hello").await.expect("write");
        assert!(w >= before && w <= Instant::now());
        // A write larger than the socket takes at once: stamped at its
        // last part, issued after the server had read the first ones.
        let big = vec![1u8; 8 << 20];
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 1 << 20];
            let mut first = None;
            let mut left = 5 + (8 << 20);
            while left > 0 {
                let n = server.read(&mut sink).await.expect("read");
                first.get_or_insert_with(Instant::now);
                left -= n;
            }
            (server, first.expect("read something"))
        });
        let w = s.write_all(&big).await.expect("write");
        let (server, first_read) = reader.await.expect("reader");
        assert!(w > first_read, "stamped at the last write, not the first");
        assert!(s.idle_is_usable(), "open and quiet");
        drop(server);
        let mut buf = BytesMut::new();
        assert_eq!(s.read_into(&mut buf, 16).await.expect("eof"), None);
        if cfg!(target_os = "linux") {
            assert!(!s.idle_is_usable(), "closed by the server");
        }
    }
}
