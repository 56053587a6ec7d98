//! The direct HTTP/1.1 client for plain `http://` targets: hyper's
//! connection API over `StampedTcp`, with barrage's own small pool.
//!
//! Why not reqwest here: reqwest owns its sockets, so the kernel's receive
//! timestamps cannot be read under it, and it parses the URL again for every
//! request. TLS and HTTP/2 targets still go through reqwest.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use tokio::net::TcpStream;

use crate::wire::{Arrival, StampedTcp, Stamps};

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
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("error sending request: {0}")]
    Send(#[source] hyper::Error),
    #[error("error reading the response body: {0}")]
    Body(#[source] hyper::Error),
    #[error("building the request failed: {0}")]
    Request(#[source] hyper::http::Error),
}

impl DirectError {
    /// A connection-phase failure (METRICS.md's `connect` class).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            DirectError::Resolve { .. }
                | DirectError::NoAddress { .. }
                | DirectError::Connect { .. }
                | DirectError::Handshake { .. }
        )
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, DirectError::ConnectTimeout { .. })
    }

    /// True when a reused connection failed before any response byte in a
    /// way that means the server had already closed it: resending the
    /// request on a new connection is safe.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            DirectError::Send(e) => crate::failure::stale_in_chain(e),
            _ => false,
        }
    }
}

/// Where connections go: the allow-list's checked addresses, or the host
/// resolved at each connect.
#[derive(Debug, Clone)]
enum Dest {
    Pinned(Vec<SocketAddr>),
    Lookup { host: String, port: u16 },
}

/// One open connection, ready for its next request.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    stamps: Arc<Stamps>,
}

#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = idle.pop() {
            if !c.send.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: Conn, max_idle: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < max_idle && !c.send.is_closed() {
            idle.push(c);
        }
    }
}

pub struct DirectClient {
    dest: Dest,
    /// The request target in origin form (path and query).
    path: Uri,
    /// Default headers with `Host`, sent on every request.
    headers: HeaderMap,
    pool: Arc<Pool>,
    max_idle: usize,
    connect_timeout: Duration,
}

/// A response whose body is still to be read. Its connection goes back to
/// the pool only when the body was read to its end.
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    max_idle: usize,
    /// Whether this connection's arrivals are kernel-stamped.
    pub kernel: bool,
    /// On a reused connection: when the request's last write returned.
    pub sent: Option<std::time::Instant>,
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
            .entry(hyper::header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let path = path_and_query
            .parse::<Uri>()
            .map_err(|e| format!("path {path_and_query:?}: {e}"))?;
        let dest = match pinned {
            Some(addrs) => Dest::Pinned(addrs),
            None => Dest::Lookup { host, port },
        };
        Ok(Self {
            dest,
            path,
            headers,
            pool: Arc::default(),
            max_idle,
            connect_timeout,
        })
    }

    /// Sends `body` as a POST. `pooled`: try an idle connection first and
    /// keep the connection afterwards; else a new one, closed after.
    pub async fn post(&self, body: Bytes, pooled: bool) -> Result<Exchange, DirectError> {
        let (mut conn, reused) = match self.idle_conn(pooled).await {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let mut req = Request::post(self.path.clone())
            .body(Full::new(body))
            .map_err(DirectError::Request)?;
        *req.headers_mut() = self.headers.clone();
        let resp = conn
            .send
            .send_request(req)
            .await
            .map_err(DirectError::Send)?;
        let (parts, body) = resp.into_parts();
        // The last write before the response is the request's end.
        let sent = reused.then(|| conn.stamps.last_write()).flatten();
        Ok(Exchange {
            sent,
            status: parts.status,
            headers: parts.headers,
            body,
            kernel: conn.stamps.kernel(),
            conn: Some(conn),
            pool: self.pool.clone(),
            max_idle: if pooled { self.max_idle } else { 0 },
        })
    }

    /// An idle pooled connection that is still open and ready.
    async fn idle_conn(&self, pooled: bool) -> Option<Conn> {
        if !pooled {
            return None;
        }
        let mut c = self.pool.take()?;
        c.send.ready().await.ok()?;
        Some(c)
    }

    async fn connect(&self) -> Result<Conn, DirectError> {
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
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return handshake(tcp, addr).await,
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

async fn handshake(tcp: TcpStream, addr: SocketAddr) -> Result<Conn, DirectError> {
    // Small requests and streamed chunks must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let io = StampedTcp::new(tcp);
    let stamps = io.stamps();
    let (send, conn) = http1::handshake(io)
        .await
        .map_err(|source| DirectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, source = ?e.source(), "connection ended");
        }
    });
    Ok(Conn { send, stamps })
}

impl Exchange {
    /// The next piece of the body with its arrival; None at its end (the
    /// connection then goes back to the pool).
    pub async fn next(&mut self) -> Option<Result<(Bytes, Arrival), DirectError>> {
        loop {
            match self.body.frame().await {
                None => {
                    if let Some(c) = self.conn.take() {
                        self.pool.put(c, self.max_idle);
                    }
                    return None;
                }
                Some(Err(e)) => {
                    self.conn = None;
                    return Some(Err(DirectError::Body(e)));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    let arrival = self.arrival();
                    return Some(Ok((data, arrival)));
                }
            }
        }
    }

    /// The body's pieces without their arrivals (an error response's sample).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, DirectError>> {
        futures::stream::unfold(self, |mut x| async move {
            let piece = x.next().await?;
            Some((piece.map(|(b, _)| b), x))
        })
    }

    /// The latest read's arrival on this connection: the read that handed
    /// hyper the bytes just taken (hyper reads no further while a frame
    /// waits to be taken).
    fn arrival(&self) -> Arrival {
        self.conn
            .as_ref()
            .and_then(|c| c.stamps.last_arrival())
            .unwrap_or_else(|| {
                let now = std::time::Instant::now();
                Arrival { at: now, read: now }
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
