//! The direct HTTP/1.1 client for plain `http://` targets: requests
//! written and responses read by the request's own task over `StampedTcp`
//! (framing in `h1`), with barrage's own small pool.
//!
//! Why not reqwest here: reqwest owns its sockets, so the kernel's receive
//! timestamps cannot be read under it, and it parses the URL again for every
//! request. Why not hyper's connection API (used before): see `h1`. TLS and
//! HTTP/2 targets still go through reqwest.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{HOST, HeaderMap, HeaderValue};
use tokio::net::TcpStream;

use crate::failure;
use crate::h1::{self, BodyDecoder, H1Error, Piece};
use crate::pacing::{self, PACING};
use crate::ports::{self, PortLease, SourcePorts};
use crate::wire::{Arrival, StampedTcp};

/// Room made for each read: streamed events are a few hundred bytes, and
/// the buffer is most of a stream's memory. A read that fills its room
/// doubles it (up to `MAX_READ_BYTES`), one that uses under a quarter
/// halves it: large bodies and a backlog are read in fewer calls.
const READ_BYTES: usize = 1024;
const MAX_READ_BYTES: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("error resolving {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("error connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} timed out after {after:?} (target.connect_timeout_ms)")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    /// Writing the request or reading the response head failed. `stale`:
    /// on a reused connection, before any response byte, the way a
    /// connection the server had already closed fails.
    #[error("error sending request: {source}")]
    Send { source: io::Error, stale: bool },
    #[error("invalid response: {0}")]
    Protocol(#[source] H1Error),
    #[error("error reading the response body: {0}")]
    Body(#[source] io::Error),
}

impl DirectError {
    /// A connection-phase failure (METRICS.md's `connect` class).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            DirectError::Resolve { .. }
                | DirectError::NoAddress { .. }
                | DirectError::Connect { .. }
        )
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, DirectError::ConnectTimeout { .. })
    }

    /// True when a reused connection failed before any response byte in a
    /// way that means the server had already closed it: resending the
    /// request on a new connection is safe.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, DirectError::Send { stale: true, .. })
    }
}

/// Where connections go: the allow-list's checked addresses, or the host
/// resolved at each connect.
#[derive(Debug, Clone)]
enum Dest {
    Pinned(Vec<SocketAddr>),
    Lookup { host: String, port: u16 },
}

/// One open connection and the bytes read from it but not yet taken.
struct Conn {
    tcp: StampedTcp,
    buf: BytesMut,
    /// Room to make for the next read.
    room: usize,
    /// The local port, when the agent chose it (freed with the connection).
    _port: Option<PortLease>,
}

impl Conn {
    fn new(tcp: StampedTcp, port: Option<PortLease>) -> Self {
        Self {
            tcp,
            buf: BytesMut::new(),
            room: READ_BYTES,
            _port: port,
        }
    }

    /// One read onto the buffer: when its bytes arrived, None at the end.
    async fn read(&mut self) -> io::Result<Option<Arrival>> {
        let Some((n, arrival)) = self.tcp.read_into(&mut self.buf, self.room).await? else {
            return Ok(None);
        };
        self.room = if n >= self.room {
            (self.room * 2).min(MAX_READ_BYTES)
        } else if n < self.room / 4 {
            (self.room / 2).max(READ_BYTES)
        } else {
            self.room
        };
        Ok(Some(arrival))
    }
}

#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// The most recently returned idle connection that is still usable
    /// (checked outside the lock: the check is a syscall).
    fn take(&self) -> Option<Conn> {
        loop {
            let c = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if c.tcp.idle_is_usable() {
                return Some(c);
            }
        }
    }

    fn put(&self, c: Conn, max_idle: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < max_idle {
            idle.push(c);
        }
    }
}

pub struct DirectClient {
    dest: Dest,
    /// The request line and headers up to (not including) Content-Length.
    head: Vec<u8>,
    pool: Arc<Pool>,
    max_idle: usize,
    connect_timeout: Duration,
    /// Where new connections' local ports come from (None: the kernel).
    ports: Option<Arc<SourcePorts>>,
    /// Load threads may pause before parking while this client exists:
    /// its arrivals are kernel-timed (`pacing`).
    _pacing: pacing::Active,
}

/// A response whose body is still to be read. Its connection goes back to
/// the pool only when the body was read to its end.
pub struct Exchange {
    pub status: StatusCode,
    /// `Location` (a redirect is reported, never followed).
    pub location: Option<HeaderValue>,
    body: BodyDecoder,
    conn: Option<Conn>,
    keep_alive: bool,
    pool: Arc<Pool>,
    max_idle: usize,
    /// The latest read's arrival: the pieces taken from it carry it.
    arrival: Arrival,
    /// Whether this connection's arrivals are kernel-stamped.
    pub kernel: bool,
    /// On a reused connection: when the write of the request's last bytes
    /// was issued.
    pub sent: Option<Instant>,
}

impl DirectClient {
    /// `url` must be `http://`; `pinned`: the addresses to connect to.
    pub fn new(
        url: &reqwest::Url,
        mut headers: HeaderMap,
        pinned: Option<Vec<SocketAddr>>,
        max_idle: usize,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let host = url.host_str().ok_or("the URL has no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        // host_str writes an IPv6 address in brackets, as Host wants it.
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let host_value = HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
        headers.insert(HOST, host_value);
        headers
            .entry(reqwest::header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let dest = match pinned {
            Some(addrs) => Dest::Pinned(addrs),
            None => Dest::Lookup { host, port },
        };
        Ok(Self {
            dest,
            head: request_head(&path, &headers),
            pool: Arc::default(),
            max_idle,
            connect_timeout,
            ports: SourcePorts::system(),
            _pacing: PACING.active(),
        })
    }

    /// New connections take their local ports from `ports` (None: the
    /// kernel picks them).
    pub fn with_source_ports(mut self, ports: Option<Arc<SourcePorts>>) -> Self {
        self.ports = ports;
        self
    }

    /// Sends `body` as a POST. `pooled`: try an idle connection first and
    /// keep the connection afterwards; else a new one, closed after.
    pub async fn post(&self, body: Bytes, pooled: bool) -> Result<Exchange, DirectError> {
        let (mut conn, reused) = match pooled.then(|| self.pool.take()).flatten() {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let send_error = |source: io::Error, got_bytes: bool| DirectError::Send {
            stale: reused && !got_bytes && failure::closed_under_request(&source),
            source,
        };
        let request = self.request(&body);
        let written = conn
            .tcp
            .write_all(&request)
            .await
            .map_err(|e| send_error(e, false))?;
        // Not held while the response is awaited.
        drop(request);
        let mut arrival = None;
        let head = loop {
            if let Some(head) = h1::parse_head(&mut conn.buf).map_err(DirectError::Protocol)? {
                break head;
            }
            let got_bytes = !conn.buf.is_empty();
            match conn.read().await {
                Ok(Some(a)) => arrival = Some(a),
                Ok(None) => {
                    let eof = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection before the response head (EOF)",
                    );
                    return Err(send_error(eof, got_bytes));
                }
                Err(e) => return Err(send_error(e, got_bytes)),
            }
        };
        let kernel = conn.tcp.kernel();
        Ok(Exchange {
            status: head.status,
            location: head.location,
            body: BodyDecoder::new(head.framing),
            keep_alive: head.keep_alive && pooled,
            arrival: arrival.unwrap_or_else(read_now),
            kernel,
            // A new connection's latencies run from the hand-off, with its
            // setup inside (METRICS.md); a reused one's from the write.
            sent: reused.then_some(written),
            conn: Some(conn),
            pool: self.pool.clone(),
            max_idle: self.max_idle,
        })
    }

    /// The whole request: the head, its Content-Length, and the body.
    fn request(&self, body: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut r = Vec::with_capacity(self.head.len() + 32 + body.len());
        r.extend_from_slice(&self.head);
        // Writing into a Vec cannot fail.
        let _ = write!(r, "content-length: {}\r\n\r\n", body.len());
        r.extend_from_slice(body);
        r
    }

    async fn connect(&self) -> Result<Conn, DirectError> {
        // Latencies run from the hand-off: the setup must be noticed at once.
        let _setup = PACING.connecting();
        let addrs = match &self.dest {
            Dest::Pinned(a) => a.clone(),
            Dest::Lookup { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| DirectError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        for addr in addrs {
            let connecting = async {
                match &self.ports {
                    Some(p) => ports::connect_from(p, addr).await,
                    None => Ok((TcpStream::connect(addr).await?, None)),
                }
            };
            match tokio::time::timeout(self.connect_timeout, connecting).await {
                Ok(Ok((tcp, port))) => {
                    // Small requests and streamed chunks must not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    let tcp = StampedTcp::new(tcp);
                    if !tcp.kernel() {
                        PACING.read_timed();
                    }
                    return Ok(Conn::new(tcp, port));
                }
                Ok(Err(source)) => last = Some(DirectError::Connect { addr, source }),
                Err(_) => {
                    last = Some(DirectError::ConnectTimeout {
                        addr,
                        after: self.connect_timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| DirectError::NoAddress {
            host: format!("{:?}", self.dest),
        }))
    }
}

/// `POST {path} HTTP/1.1` and the headers, each line ended.
fn request_head(path: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// An arrival for bytes already in hand (no read stamped them).
fn read_now() -> Arrival {
    let now = Instant::now();
    Arrival { at: now, read: now }
}

impl Exchange {
    /// The next piece of the body with its arrival; None at its end (the
    /// connection then goes back to the pool).
    pub async fn next(&mut self) -> Option<Result<(Bytes, Arrival), DirectError>> {
        loop {
            let conn = self.conn.as_mut()?;
            match self.body.next(&mut conn.buf) {
                Ok(Piece::Data(data)) => return Some(Ok((data, self.arrival))),
                Ok(Piece::End) => {
                    self.end();
                    return None;
                }
                Ok(Piece::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(DirectError::Protocol(e)));
                }
            }
            match conn.read().await {
                Ok(Some(a)) => self.arrival = a,
                Ok(None) => {
                    // Only a body read to the connection's end may end so;
                    // the connection is not reused either way.
                    self.keep_alive = false;
                    if let Err(e) = self.body.at_eof() {
                        self.conn = None;
                        return Some(Err(DirectError::Body(e)));
                    }
                }
                Err(e) => {
                    self.conn = None;
                    return Some(Err(DirectError::Body(e)));
                }
            }
        }
    }

    /// The body is complete: its connection goes back to the pool when it
    /// may carry another request and holds no stray bytes.
    fn end(&mut self) {
        if let Some(c) = self.conn.take()
            && self.keep_alive
            && c.buf.is_empty()
        {
            self.pool.put(c, self.max_idle);
        }
    }

    /// The body's pieces without their arrivals (an error response's sample).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, DirectError>> {
        futures::stream::unfold(self, |mut x| async move {
            let piece = x.next().await?;
            Some((piece.map(|(b, _)| b), x))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A keep-alive server answering every request with "ok"; it keeps
    /// each request's head and counts connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        h.lock().expect("heads").push(text);
                        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if sock.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, conns, heads)
    }

    async fn body_of(mut x: Exchange) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = x.next().await {
            out.extend_from_slice(&piece.expect("piece").0);
        }
        out
    }

    fn client(addr: SocketAddr, pinned: bool) -> DirectClient {
        let url = reqwest::Url::parse(&format!("http://localhost:{}/v1/x?k=v", addr.port()))
            .expect("url");
        DirectClient::new(
            &url,
            HeaderMap::new(),
            pinned.then(|| vec![addr]),
            4,
            Duration::from_secs(2),
        )
        .expect("client")
    }

    /// New connections leave from the ports the agent hands out, in turn;
    /// the kernel is not asked to search the ephemeral range.
    #[tokio::test]
    async fn new_connections_leave_from_the_agents_own_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let p = peers.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, peer)) = listener.accept().await {
                p.lock().expect("peers").push(peer.port());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    if sock.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        let _ = sock.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        // The range starts at a port a listener holds: it is skipped.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let first = holder.local_addr().expect("addr").port();
        let range = first..=first.saturating_add(30);
        let c = client(addr, true).with_source_ports(Some(SourcePorts::new(range.clone(), &[])));
        for _ in 0..3 {
            let x = c
                .post(Bytes::from_static(b"{}"), false)
                .await
                .expect("post");
            assert_eq!(body_of(x).await, b"ok");
        }
        let peers = peers.lock().expect("peers").clone();
        assert_eq!(peers.len(), 3, "a new connection per request");
        for w in peers.windows(2) {
            assert!(w[0] < w[1], "ports handed out in turn: {peers:?}");
        }
        for port in &peers {
            assert!(
                range.contains(port) && *port != first,
                "port {port} of {range:?}"
            );
        }
    }

    #[tokio::test]
    async fn pooled_requests_reuse_one_connection_and_carry_path_query_and_host() {
        let (addr, conns, heads) = server().await;
        let c = client(addr, true);
        for _ in 0..3 {
            let x = c.post(Bytes::from_static(b"{}"), true).await.expect("post");
            assert_eq!(x.status, StatusCode::OK);
            assert_eq!(body_of(x).await, b"ok");
        }
        assert_eq!(conns.load(Ordering::Relaxed), 1, "one connection reused");
        let x = c
            .post(Bytes::from_static(b"{}"), false)
            .await
            .expect("post");
        assert!(x.sent.is_none(), "a new connection has no reused write");
        assert_eq!(body_of(x).await, b"ok");
        assert_eq!(conns.load(Ordering::Relaxed), 2, "unpooled: a new one");
        let heads = heads.lock().expect("heads").clone();
        assert!(
            heads[0].starts_with("POST /v1/x?k=v HTTP/1.1\r\n"),
            "{heads:?}"
        );
        let host = format!("host: localhost:{}\r\n", addr.port());
        assert!(heads[0].to_lowercase().contains(&host), "{heads:?}");
    }

    /// A server that answers one request per connection with `reply`,
    /// then closes it; counts connections.
    async fn one_shot_server(reply: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let mut buf = vec![0u8; 4096];
                if sock.read(&mut buf).await.is_ok() {
                    let _ = sock.write_all(reply.as_bytes()).await;
                }
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn closed_connections_are_not_reused() {
        // Says keep-alive, then closes: the idle check sees the close.
        let (addr, conns) = one_shot_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let c = client(addr, true);
        for _ in 0..3 {
            let x = c.post(Bytes::from_static(b"{}"), true).await.expect("post");
            assert_eq!(body_of(x).await, b"ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::Relaxed), 3);
        // Says close and ends the body by closing: read to the end.
        let (addr, conns) =
            one_shot_server("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall").await;
        let c = client(addr, true);
        for _ in 0..2 {
            let x = c.post(Bytes::from_static(b"{}"), true).await.expect("post");
            assert_eq!(body_of(x).await, b"all");
        }
        assert_eq!(conns.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_large_body_is_read_whole_as_its_reads_grow() {
        let body = "x".repeat(300_000);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, _) = one_shot_server(Box::leak(reply.into_boxed_str())).await;
        let mut x = client(addr, true)
            .post(Bytes::from_static(b"{}"), true)
            .await
            .expect("post");
        let (mut got, mut pieces) = (0, 0);
        while let Some(piece) = x.next().await {
            got += piece.expect("piece").0.len();
            pieces += 1;
        }
        assert_eq!(got, body.len());
        assert!(pieces < 100, "{pieces} pieces: the reads did not grow");
    }

    #[tokio::test]
    async fn a_new_connection_closed_before_the_head_fails_with_eof_and_is_not_stale() {
        let (addr, _) = one_shot_server("").await;
        let e = match client(addr, true).post(Bytes::new(), true).await {
            Err(e) => e,
            Ok(_) => panic!("the server answered nothing"),
        };
        assert!(!e.is_stale_connection(), "a new connection: {e}");
        assert!(e.to_string().contains("EOF"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_naming_the_address() {
        // Bind then drop: nothing listens on this port any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let e = match client(addr, true).post(Bytes::new(), true).await {
            Err(e) => e,
            Ok(_) => panic!("nothing listens on {addr}"),
        };
        assert!(e.is_connect() && !e.is_stale_connection(), "{e:?}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
