//! HTTP/1.1 response framing for the direct client: the head (parsed by
//! `httparse`) and the body's framing (Content-Length, chunked, or to the
//! end of the connection), decoded in place in the connection's buffer.
//!
//! Why not hyper's client here: hyper runs each connection as its own task
//! and hands every body chunk across a channel to the request's task (two
//! wake-ups per streamed chunk), and keeps 8 KiB of header buffer and a read
//! buffer per connection. Reading in the request's own task, into one small
//! buffer, halves the wake-ups and the memory per stream.

use bytes::{Buf, Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;

/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers per response head.
const MAX_HEADERS: usize = 96;
/// A chunk-size or trailer line longer than this is refused.
const MAX_LINE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum H1Error {
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid chunked body: {0}")]
    Chunked(String),
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// To the end of the connection.
    Close,
}

/// What a response head says.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// `Location`, for a redirect's report (redirects are never followed).
    pub location: Option<HeaderValue>,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses the head at the start of `buf` and removes it from there; None
/// while it is incomplete. Interim (1xx) responses are skipped.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(H1Error::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Head(e.to_string())),
        };
        let code = resp.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Head(format!("status code {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Head("101 Switching Protocols, unasked".into()));
        }
        let head = head_of(status, resp.version == Some(1), resp.headers)?;
        buf.advance(len);
        if !status.is_informational() {
            return Ok(Some(head));
        }
    }
}

fn head_of(
    status: StatusCode,
    http11: bool,
    headers: &[httparse::Header<'_>],
) -> Result<Head, H1Error> {
    let mut location = None;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut keep_alive = http11;
    for h in headers {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| H1Error::Head(format!("content-length {:?}", lossy(value))))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Head("two different content-length values".into()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read to the end.
            chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keep_alive = false;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(value, b"close") {
                keep_alive = false;
            } else if has_token(value, b"keep-alive") && !http11 {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("location") {
            location = HeaderValue::from_bytes(value).ok();
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(Head {
        status,
        location,
        framing,
        keep_alive,
    })
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token(value: &[u8]) -> &[u8] {
    tokens(value).last().unwrap_or_default()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

/// One step of a body's decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes (a chunk, or part of one).
    Data(Bytes),
    /// More bytes must be read first.
    More,
    /// The body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// Decodes a body in the connection's buffer, taking each piece out of it
/// without a copy.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    /// The next piece of the body from `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Piece, H1Error> {
        loop {
            match self.state {
                State::Done => return Ok(Piece::End),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Piece::More);
                }
                State::Length(left) => {
                    let (data, left) = take_up_to(buf, left);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Piece::Data(data));
                }
                State::ChunkData(left) => {
                    let (data, left) = take_up_to(buf, left);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Piece::Data(data));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    return Ok(Piece::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Piece::More);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => match buf.first() {
                    None => return Ok(Piece::More),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = State::ChunkSize;
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(Piece::More),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err(H1Error::Chunked("no line end after a chunk".into())),
                },
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Piece::More);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    /// The connection ended: fine only for a body read to the end of the
    /// connection (or one already complete).
    pub fn at_eof(&mut self) -> Result<(), std::io::Error> {
        let inside = match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                return Ok(());
            }
            State::Length(_) => "inside a content-length body",
            State::ChunkData(_) => "inside a chunk",
            State::ChunkSize | State::ChunkEnd => "at a chunk size line",
            State::Trailers => "in the chunked body's trailers",
        };
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("unexpected EOF {inside}"),
        ))
    }
}

/// Up to `left` body bytes from `buf` (without a copy), and how many
/// remain after them.
fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    (buf.split_to(n).freeze(), left - n as u64)
}

/// A whole line (without its `\r\n` or bare `\n`) taken from `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(H1Error::Chunked("a line longer than 4 KiB".into()));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line))
}

/// The size on a chunk-size line (hexadecimal, extensions ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
    let hex = hex.trim_ascii();
    let bad = || H1Error::Chunked(format!("chunk size line {:?}", lossy(line)));
    if hex.is_empty() || hex.len() > 16 {
        return Err(bad());
    }
    let text = std::str::from_utf8(hex).map_err(|_| bad())?;
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf).expect("valid").expect("complete")
    }

    /// Decodes `wire` fed `step` bytes at a time: the body and how it ended.
    fn decode(framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, Result<(), String>) {
        let mut d = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.next(&mut buf) {
                Ok(Piece::Data(b)) => body.extend_from_slice(&b),
                Ok(Piece::End) => return (body, Ok(())),
                Ok(Piece::More) if fed < wire.len() => {
                    let to = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..to]);
                    fed = to;
                }
                Ok(Piece::More) => return (body, d.at_eof().map_err(|e| e.to_string())),
                Err(e) => return (body, Err(e.to_string())),
            }
        }
    }

    #[test]
    fn a_head_gives_status_framing_keep_alive_and_location() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (StatusCode::OK, Framing::Chunked, true)
        );
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(12), false));
        let h =
            head("HTTP/1.1 307 Temporary Redirect\r\nLocation: /b\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.location, Some(HeaderValue::from_static("/b")));
        let h = head("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
    }

    #[test]
    fn interim_responses_are_skipped_and_a_partial_head_waits() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many");
        assert!(parse_head(&mut buf).expect("valid").is_none());
        buf.extend_from_slice(b" Requests\r\ncontent-length: 2\r\n\r\nno");
        let h = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(h.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(&buf[..], b"no", "the body stays in the buffer");
    }

    #[test]
    fn bad_heads_are_refused_with_what_is_wrong() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n");
        let e = parse_head(&mut buf).expect_err("bad length");
        assert!(e.to_string().contains("content-length"), "{e}");
        let mut buf = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
        assert!(parse_head(&mut buf).is_err());
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\n");
        buf.extend_from_slice(&vec![b'x'; MAX_HEAD_BYTES + 1]);
        assert_eq!(
            parse_head(&mut buf).expect_err("too large"),
            H1Error::HeadTooLarge
        );
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, end) = decode(Framing::Chunked, wire, step);
            assert_eq!(
                (body.as_slice(), end),
                (&b"hello, world"[..], Ok(())),
                "step {step}"
            );
        }
        let (body, end) = decode(Framing::Chunked, b"a\nabcdefghij\n0\n\n", 4);
        assert_eq!(
            (body.as_slice(), end),
            (&b"abcdefghij"[..], Ok(())),
            "bare line ends"
        );
    }

    #[test]
    fn a_cut_body_ends_with_an_eof_error_saying_where() {
        let (body, end) = decode(Framing::Chunked, b"5\r\nhel", 2);
        assert_eq!(body, b"hel");
        let e = end.expect_err("cut");
        assert!(e.contains("EOF") && e.contains("inside a chunk"), "{e}");
        let (_, end) = decode(Framing::Length(10), b"12345", 5);
        assert!(end.expect_err("cut").contains("content-length"));
        let (body, end) = decode(Framing::Close, b"all of it", 4);
        assert_eq!((body.as_slice(), end), (&b"all of it"[..], Ok(())));
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_bad_chunks_are_refused() {
        let mut d = BodyDecoder::new(Framing::Length(3));
        let mut buf = BytesMut::from("abcHTTP/1.1");
        assert_eq!(
            d.next(&mut buf),
            Ok(Piece::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(d.next(&mut buf), Ok(Piece::End));
        assert_eq!(&buf[..], b"HTTP/1.1", "what follows stays");
        let (_, end) = decode(Framing::Chunked, b"zz\r\n", 4);
        assert!(end.expect_err("bad size").contains("chunk size line"));
        let (_, end) = decode(Framing::Chunked, b"2\r\nabXY", 8);
        assert!(end.expect_err("no CRLF").contains("line end"));
    }
}
