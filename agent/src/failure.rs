//! Turning what went wrong with one request into a `RequestError` that keeps
//! its detail: the HTTP status with `Location` and the body's first bytes,
//! or the whole error chain down to the OS error.

use std::error::Error as _;
use std::time::Duration;

use barrage_common::error_detail::RequestError;
use barrage_common::metrics::ErrorClass;
use futures::StreamExt;
use reqwest::header::{HeaderValue, LOCATION};

/// Bytes of a failed response's body kept in its error message.
pub const BODY_BYTES: usize = 200;
/// How long reading an error response's first bytes may take.
const BODY_WAIT: Duration = Duration::from_secs(2);

/// Classifies a transport error the way METRICS.md does.
pub fn classify(e: &reqwest::Error) -> ErrorClass {
    if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_connect() {
        ErrorClass::Connect
    } else if e.is_body() || e.is_decode() {
        ErrorClass::Stream
    } else if let Some(s) = e.status() {
        ErrorClass::from_status(s.as_u16())
    } else if e.is_request() {
        // Connection reset or closed mid-response shows up as a request error.
        ErrorClass::Stream
    } else {
        ErrorClass::Other
    }
}

/// A transport error with its whole `source()` chain; the innermost source
/// (the OS or DNS error) is its cause. The URL is left out: its query may
/// carry a key.
pub fn from_reqwest(e: reqwest::Error, after_bytes: u64) -> RequestError {
    let class = classify(&e);
    let e = e.without_url();
    let mut r = from_chain(class, &e, after_bytes);
    r.status = e.status().map(|s| s.as_u16());
    r
}

/// Any error with its whole `source()` chain, classified as `class`.
pub fn from_chain(
    class: ErrorClass,
    e: &(dyn std::error::Error + 'static),
    after_bytes: u64,
) -> RequestError {
    let mut message = e.to_string();
    let mut cause = None;
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and reqwest often repeat the inner message in the outer one.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = Some(text);
        source = s.source();
    }
    if after_bytes > 0 {
        message.push_str(&format!(" (after {after_bytes} response bytes)"));
    }
    RequestError {
        class,
        status: None,
        cause,
        message,
    }
}

/// True when a request failed before any response byte in a way that means
/// the (pooled) connection had already been closed by the server: resending
/// it once on a new connection is safe, the server never answered it.
pub fn is_stale_connection(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() || e.status().is_some() {
        return false;
    }
    e.source().is_some_and(stale_in_chain)
}

/// True when `e` or one of its sources says the connection was closed
/// under the request (see `is_stale_connection`).
pub fn stale_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && closed_under_request(io)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// How a request sent on a connection the server had already closed fails.
pub fn closed_under_request(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// A response that is not a success: its status, `Location` for a redirect
/// (never followed), and the first bytes of its body.
pub async fn from_status(resp: reqwest::Response) -> RequestError {
    let status = resp.status().as_u16();
    let location = resp.headers().get(LOCATION).cloned();
    let sample = first_bytes(resp.bytes_stream()).await;
    status_error(status, location.as_ref(), &sample)
}

/// The error of a response with a failing `status`.
pub fn status_error(status: u16, location: Option<&HeaderValue>, body: &[u8]) -> RequestError {
    let class = ErrorClass::from_status(status);
    let mut message = match reqwest::StatusCode::from_u16(status) {
        Ok(s) => format!("HTTP {s}"),
        Err(_) => format!("HTTP {status}"),
    };
    if let Some(loc) = location {
        message.push_str(&format!(
            "; Location: {}",
            String::from_utf8_lossy(loc.as_bytes())
        ));
    }
    if !body.is_empty() {
        message.push_str(&format!("; body: {}", lossy(body)));
    }
    RequestError {
        class,
        status: Some(status),
        cause: None,
        message,
    }
}

/// Up to `BODY_BYTES` of a body, read for at most `BODY_WAIT`.
pub async fn first_bytes<E>(body: impl futures::Stream<Item = Result<bytes::Bytes, E>>) -> Vec<u8> {
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    let read = async {
        while out.len() < BODY_BYTES {
            match body.next().await {
                Some(Ok(piece)) => out.extend_from_slice(&piece),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(BODY_WAIT, read).await;
    out.truncate(BODY_BYTES);
    out
}

/// The first `BODY_BYTES` of `bytes` as text.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_BYTES)])
        .trim()
        .to_owned()
}

/// A stream fault found by barrage itself (no transport error).
pub fn stream(cause: &str, detail: String) -> RequestError {
    let message = if detail.is_empty() {
        cause.to_owned()
    } else {
        format!("{cause}: {detail}")
    };
    RequestError::new(ErrorClass::Stream, message).with_cause(cause)
}
