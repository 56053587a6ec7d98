//! A TCP stream for the direct HTTP/1 client that knows when its bytes
//! really moved: each read carries the kernel's software receive timestamp
//! (`SO_TIMESTAMPING`, read from `recvmsg`'s control messages), and each
//! write the instant its syscall returned.
//!
//! Why: a chunk that reached the socket on time but waited for a busy agent
//! to be scheduled would otherwise be stamped late, and that wait would land
//! inside TTFT, ITL and e2e. The read time is kept beside the kernel time;
//! their difference is the agent's own scheduling lag (`read_lag`).
//!
//! Where the kernel gives no timestamp (another OS, a kernel that refuses
//! the option) reads are stamped with the read time, and
//! `Stamps::kernel` says so.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// A kernel timestamp further back than this from its read is not trusted
/// (the wall clock was stepped between the two).
const MAX_KERNEL_LAG: Duration = Duration::from_secs(60);

/// Instants as nanoseconds since the first use, so they fit in atomics.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

fn from_ns(ns: u64) -> Instant {
    base() + Duration::from_nanos(ns)
}

/// The last read and write of one connection, shared between the stream
/// (inside hyper's connection task) and the request reading the response.
#[derive(Debug, Default)]
pub struct Stamps {
    /// When the bytes of the latest read reached the socket (0: none yet).
    arrival: AtomicU64,
    /// When the latest read returned them to the agent.
    read: AtomicU64,
    /// When the latest write returned.
    written: AtomicU64,
    /// Reads on this connection carry kernel timestamps.
    kernel: AtomicBool,
}

/// When one piece of response arrived, and when the agent read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at: Instant,
    pub read: Instant,
}

impl Stamps {
    /// Whether this connection's reads carry kernel receive timestamps.
    pub fn kernel(&self) -> bool {
        self.kernel.load(Ordering::Relaxed)
    }

    /// The latest read's arrival, or None before any read.
    pub fn last_arrival(&self) -> Option<Arrival> {
        let read = self.read.load(Ordering::Acquire);
        if read == 0 {
            return None;
        }
        let at = self.arrival.load(Ordering::Relaxed).min(read);
        Some(Arrival {
            at: from_ns(at),
            read: from_ns(read),
        })
    }

    /// When the latest write on this connection returned.
    pub fn last_write(&self) -> Option<Instant> {
        let w = self.written.load(Ordering::Relaxed);
        (w != 0).then(|| from_ns(w))
    }

    fn note_read(&self, read: Instant, kernel_lag: Option<Duration>) {
        let at = kernel_lag.map_or(read, |lag| read.checked_sub(lag).unwrap_or(read));
        self.arrival.store(to_ns(at).max(1), Ordering::Relaxed);
        self.read.store(to_ns(read).max(1), Ordering::Release);
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
    stamps: Arc<Stamps>,
}

impl StampedTcp {
    /// Wraps `tcp`, asking the kernel for receive timestamps where it can.
    pub fn new(tcp: TcpStream) -> Self {
        let stamps = Arc::new(Stamps::default());
        let kernel = sys::enable_rx_timestamps(&tcp);
        stamps.kernel.store(kernel, Ordering::Relaxed);
        Self { tcp, stamps }
    }

    pub fn stamps(&self) -> Arc<Stamps> {
        self.stamps.clone()
    }
}

/// Reads land here first, then are copied into hyper's buffer: one
/// buffer per thread, so an idle connection holds none (hyper's buffer is
/// uninitialised memory, which safe code cannot hand to `recvmsg`).
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl hyper::rt::Read for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let kernel = this.stamps.kernel();
        if buf.remaining() == 0 {
            // Nothing to read into (as tokio's own streams answer).
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let got = SCRATCH.with_borrow_mut(|scratch| {
                if scratch.is_empty() {
                    scratch.resize(SCRATCH_BYTES, 0);
                }
                let room = buf.remaining().min(scratch.len());
                let dst = &mut scratch[..room];
                let got = this.tcp.try_io(tokio::io::Interest::READABLE, || {
                    sys::recv(&this.tcp, dst, kernel)
                });
                if let Ok((n, _)) = &got {
                    buf.put_slice(&scratch[..*n]);
                }
                got
            });
            match got {
                Ok((_, stamp)) => {
                    let read = Instant::now();
                    this.stamps.note_read(read, stamp.and_then(lag_since));
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Write for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        this.note_write();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs))?;
        this.note_write();
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl StampedTcp {
    fn note_write(&self) {
        self.stamps
            .written
            .store(to_ns(Instant::now()).max(1), Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
mod sys {
    //! `SO_TIMESTAMPING` with software receive stamps, read by `recvmsg`.
    use std::io::{self, IoSliceMut};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, SystemTime};

    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, TimestampingFlag, Timestamps, recvmsg, setsockopt, sockopt,
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

    /// One `recvmsg` into `dst`: the bytes read and, when asked for and
    /// given, the kernel's software receive timestamp of the newest of them.
    pub fn recv(
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

    pub fn recv(
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
    use hyper::rt::Read as _;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// Reads once through hyper's Read trait into a fresh buffer.
    async fn read_once(s: &mut StampedTcp) -> Vec<u8> {
        let mut storage = vec![std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        poll_fn(|cx| Pin::new(&mut *s).poll_read(cx, buf.unfilled()))
            .await
            .expect("read");
        buf.filled().to_vec()
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
            assert_eq!(read_once(&mut s).await, b"ping");
            let a = s.stamps().last_arrival().expect("stamped");
            if a.at != a.read || !cfg!(target_os = "linux") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.write_all(b"first").await.expect("write");
        let sent = Instant::now();
        // The agent is "busy" for 80 ms before it reads.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(read_once(&mut s).await, b"first");
        let a = s.stamps().last_arrival().expect("a read was stamped");
        assert!(a.read.duration_since(sent) >= Duration::from_millis(80));
        if cfg!(target_os = "linux") {
            assert!(s.stamps().kernel(), "the kernel gave no receive timestamps");
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
    async fn writes_are_stamped_when_they_return() {
        let (mut s, _server) = pair().await;
        assert!(s.stamps().last_write().is_none());
        let before = Instant::now();
        let n = poll_fn(|cx| hyper::rt::Write::poll_write(Pin::new(&mut s), cx, b"hello"))
            .await
            .expect("write");
        assert_eq!(n, 5);
        let w = s.stamps().last_write().expect("stamped");
        assert!(w >= before && w <= Instant::now());
    }
}
