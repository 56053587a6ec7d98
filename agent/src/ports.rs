//! The local ports of the direct client's new connections, chosen by the
//! agent instead of by `connect()`.
//!
//! Why: Linux picks a connecting socket's port by probing the ephemeral
//! range from a hashed offset, even ports first, looking each taken one up
//! in the established table. Once one destination holds more connections
//! than half the range (~14,100 of the default 28,232), every connect
//! probes all the taken even ports before it tries an odd one. At 19,000
//! streams that was 80 % of the load thread's CPU during the ramp, and
//! streams fell seconds behind their chunks (BENCHMARKS.md, "Connect cost
//! at 19,000 streams"). The agent knows which ports its own connections
//! hold: it hands out the next free one after a cursor and binds it.
//!
//! Bound with `SO_REUSEADDR`, so a port whose last connection is in
//! TIME_WAIT can be bound; `connect()` still refuses a taken 4-tuple, and
//! then the next port is tried. Ports another program holds fail the bind
//! and are skipped. After a few refusals the kernel chooses, as before.
//! `BARRAGE_SOURCE_PORTS=kernel` leaves every choice to the kernel.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::net::{TcpSocket, TcpStream};

/// Ports tried for one connection before the kernel is left to choose.
const TRIES: usize = 16;

/// The ports one process hands out: a bit per port of the range, set while
/// a connection (or a reservation) holds it.
#[derive(Debug)]
pub struct SourcePorts {
    first: u16,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    taken: Vec<u64>,
    /// Where the search for the next free port starts: handing ports out
    /// in turn leaves a closed connection's port alone (TIME_WAIT) for as
    /// long as possible.
    cursor: usize,
}

/// A port held for one connection; released when dropped.
#[derive(Debug)]
pub struct PortLease {
    ports: Arc<SourcePorts>,
    port: u16,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let i = usize::from(self.port - self.ports.first);
        let mut s = self.ports.lock();
        s.taken[i / 64] &= !(1 << (i % 64));
    }
}

impl SourcePorts {
    /// Hands out the ports of `range`, never those of `reserved`.
    pub fn new(range: RangeInclusive<u16>, reserved: &[RangeInclusive<u16>]) -> Arc<Self> {
        let (first, last) = (*range.start(), *range.end());
        let len = usize::from(last.saturating_sub(first)) + 1;
        let mut taken = vec![0u64; len.div_ceil(64)];
        // The bits past the range's end are never free.
        for i in len..taken.len() * 64 {
            taken[i / 64] |= 1 << (i % 64);
        }
        for r in reserved {
            for port in r.clone().filter(|p| range.contains(p)) {
                let i = usize::from(port - first);
                taken[i / 64] |= 1 << (i % 64);
            }
        }
        Arc::new(Self {
            first,
            state: Mutex::new(State { taken, cursor: 0 }),
        })
    }

    /// The process's allocator over this host's ephemeral range, or None
    /// where the kernel chooses: `BARRAGE_SOURCE_PORTS=kernel`, another
    /// OS, or a range that cannot be read.
    pub fn system() -> Option<Arc<Self>> {
        static SYSTEM: OnceLock<Option<Arc<SourcePorts>>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                if std::env::var("BARRAGE_SOURCE_PORTS").is_ok_and(|v| v == "kernel") {
                    return None;
                }
                let read =
                    |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"));
                let range = parse_range(&read("ip_local_port_range").ok()?)?;
                let reserved = parse_reserved(&read("ip_local_reserved_ports").unwrap_or_default());
                Some(Self::new(range, &reserved))
            })
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next free port after the cursor, held until the lease drops;
    /// None when every port is held.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut s = self.lock();
        let i = next_free(&s.taken, s.cursor)?;
        s.taken[i / 64] |= 1 << (i % 64);
        s.cursor = (i + 1) % (s.taken.len() * 64);
        let port = self.first + u16::try_from(i).ok()?;
        Some(PortLease {
            ports: Arc::clone(self),
            port,
        })
    }
}

/// The first clear bit at or after `from`, wrapping around.
fn next_free(taken: &[u64], from: usize) -> Option<usize> {
    let words = taken.len();
    let (start, bit) = (from / 64, from % 64);
    // The start word's bits below `from` count as taken on the first pass;
    // the wrap-around visits the start word again, whole.
    let first = taken.get(start)? | ((1u64 << bit) - 1);
    if first != u64::MAX {
        return Some(start * 64 + first.trailing_ones() as usize);
    }
    (1..=words)
        .map(|k| (start + k) % words)
        .find(|&w| taken[w] != u64::MAX)
        .map(|w| w * 64 + taken[w].trailing_ones() as usize)
}

/// `ip_local_port_range`: "32768\t60999".
pub fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if 0 < lo && lo <= hi => Some(lo..=hi),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: "8080,9000-9002", or empty. Unreadable parts
/// are left out (the kernel would refuse to write them).
pub fn parse_reserved(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            Some(lo.trim().parse().ok()?..=hi.trim().parse().ok()?)
        })
        .collect()
}

/// Connects to `addr` from a port of `ports`, trying the next port when
/// one is taken; after `TRIES` refusals, from the port the kernel picks.
/// The lease is None when the kernel picked.
pub async fn connect_from(
    ports: &Arc<SourcePorts>,
    addr: SocketAddr,
) -> io::Result<(TcpStream, Option<PortLease>)> {
    // The local address of the target's family; the route picks the IP.
    let any = if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    for _ in 0..TRIES {
        let Some(lease) = ports.lease() else { break };
        // From the destination's own port, a connect to a local address
        // with nothing listening would reach itself (TCP simultaneous open).
        if lease.port == addr.port() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(SocketAddr::new(any, lease.port)) {
            if is_taken(&e) {
                continue;
            }
            return Err(e);
        }
        match socket.connect(addr).await {
            Ok(tcp) => return Ok((tcp, Some(lease))),
            Err(e) if is_taken(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((TcpStream::connect(addr).await?, None))
}

/// The port (or, at connect, the 4-tuple) is someone else's.
fn is_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tokio::net::TcpListener;

    #[test]
    fn leases_go_in_turn_skip_held_and_reserved_ports_and_come_back_when_dropped() {
        let ports = SourcePorts::new(40_000..=40_069, &[40_002..=40_003, 50_000..=50_001]);
        let a = ports.lease().expect("a port");
        let b = ports.lease().expect("a port");
        let c = ports.lease().expect("a port");
        assert_eq!((a.port(), b.port(), c.port()), (40_000, 40_001, 40_004));
        drop(b);
        // In turn: the port just released waits until the cursor wraps.
        let rest: Vec<PortLease> = std::iter::from_fn(|| ports.lease()).collect();
        let got: Vec<u16> = rest.iter().map(PortLease::port).collect();
        let want: Vec<u16> = (40_005..=40_069).chain([40_001]).collect();
        assert_eq!(got, want, "the rest of the range, then the released port");
        assert!(ports.lease().is_none(), "every port is held");
        drop(rest);
        assert_eq!(ports.lease().map(|l| l.port()), Some(40_005));
    }

    #[test]
    fn the_free_bit_search_wraps_and_stops_at_a_full_map() {
        let full = vec![u64::MAX; 3];
        assert_eq!(next_free(&full, 70), None);
        let mut t = vec![u64::MAX; 3];
        t[0] &= !(1 << 5);
        assert_eq!(next_free(&t, 70), Some(5), "wrapped to the first word");
        assert_eq!(next_free(&t, 5), Some(5));
        assert_eq!(
            next_free(&t, 6),
            Some(5),
            "the start word, whole, on the wrap"
        );
    }

    #[test]
    fn kernel_range_and_reserved_lists_parse_and_bad_ones_do_not() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("61000 60000"), None);
        assert_eq!(parse_range("1024"), None);
        assert_eq!(parse_range("x 2"), None);
        assert_eq!(parse_reserved("\n"), vec![]);
        assert_eq!(
            parse_reserved("8080,9000-9002,bad\n"),
            vec![8080..=8080, 9000..=9002]
        );
    }

    /// Every port of the range is held by someone else: after the bind
    /// refusals the kernel picks, and the connection still opens.
    #[tokio::test]
    async fn when_every_port_is_taken_the_kernel_picks() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = target.local_addr().expect("addr");
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let held = holder.local_addr().expect("addr").port();
        let ports = SourcePorts::new(held..=held, &[]);
        let (tcp, lease) = connect_from(&ports, addr).await.expect("connect");
        assert!(lease.is_none(), "no lease: the kernel's port");
        assert_ne!(tcp.local_addr().expect("local").port(), held);
        let _ = target.accept().await.expect("accepted");
        let _ = ports
            .lease()
            .expect("the held port is free in the map again");
    }

    /// A closed local port is refused, not reached from itself: the
    /// destination's own port is never the source.
    #[tokio::test]
    async fn a_closed_local_port_is_refused_not_connected_to_itself() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let ports = SourcePorts::new(closed.port()..=closed.port(), &[]);
        match connect_from(&ports, closed).await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
            Ok((tcp, _)) => panic!("connected to {:?}", tcp.local_addr()),
        }
    }

    /// Real sockets: connections leave from the allocator's ports, in
    /// turn, skipping one a listener holds; their ports are freed on close.
    #[tokio::test]
    async fn connections_leave_from_leased_ports_and_skip_a_port_held_elsewhere() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = target.local_addr().expect("addr");
        // A port another socket holds, as the first of the range.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let held = holder.local_addr().expect("addr").port();
        let last = held.saturating_add(40);
        let ports = SourcePorts::new(held..=last, &[]);
        let accept = tokio::spawn(async move {
            let mut open = Vec::new();
            for _ in 0..8 {
                open.push(target.accept().await.expect("accept").0);
            }
            open
        });
        let mut conns = Vec::new();
        for _ in 0..8 {
            conns.push(connect_from(&ports, addr).await.expect("connect"));
        }
        let _server_side = accept.await.expect("accept task");
        let mut seen = HashSet::new();
        for (tcp, lease) in &conns {
            let local = tcp.local_addr().expect("local").port();
            // Another test's socket may hold a port of the range: it is
            // skipped like the listener's, and the kernel's pick is None.
            let lease = lease.as_ref().expect("a leased port");
            assert_eq!(local, lease.port(), "the socket left from its lease");
            assert!((held + 1..=last).contains(&local), "port {local} outside");
            assert!(seen.insert(local), "port {local} handed out twice");
        }
        let first = conns[0].1.as_ref().map(PortLease::port);
        drop(conns);
        let again: Vec<PortLease> = std::iter::from_fn(|| ports.lease()).collect();
        assert!(
            first.is_some_and(|p| again.iter().any(|l| l.port() == p)),
            "closed connections' ports are free again"
        );
    }
}
