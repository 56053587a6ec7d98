//! What the controller uses to talk to an exporter: connect with the shared
//! token, align clocks, and watch the sample stream; plus [`SeqTracker`] to
//! notice skipped samples and exporter restarts.

use std::time::Duration;

use barrage_common::auth::{AttachToken, Token};
use barrage_common::clock::{ClockOffset, ProbeSample, mono_now_ns};
use barrage_common::tls::{ClientTls, describe_failure, error_chain};
use barrage_proto::exporter::v1::gpu_exporter_client::GpuExporterClient;
use barrage_proto::exporter::v1::{
    ClockRequest, HealthRequest, HealthResponse, Sample, WatchSamplesRequest,
};
use futures::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type Inner = GpuExporterClient<InterceptedService<Channel, AttachToken>>;

/// Why a call to an exporter failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid exporter address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("the token cannot be sent: {0}")]
    Token(String),
    #[error(
        "cannot connect to the exporter at {addr}: {}",
        describe_failure(source, false)
    )]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The exporter was reached but the connection is not usable: a TLS
    /// handshake failed (unknown CA, wrong name; with TLS 1.3 a missing or
    /// unknown client certificate shows only at the first call), or one
    /// side speaks TLS and the other does not. `reason` is the whole cause
    /// chain with a hint.
    #[error("cannot connect to the exporter at {addr}: {reason}")]
    Handshake { addr: String, reason: String },
    /// The exporter answered with an error (e.g. `UNAUTHENTICATED`), or the
    /// connection broke mid-call or mid-stream.
    #[error("exporter call failed: {}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// No sample arrived for this long; the stream is treated as dead.
    #[error("no sample from the exporter for {0:?}")]
    Stalled(Duration),
    /// Every clock probe was inconsistent.
    #[error("no usable clock probe out of {0}")]
    NoClockProbe(usize),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

impl ClientError {
    /// The gRPC status code, for errors the exporter (or the transport) returned.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A connection to one exporter. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct ExporterClient {
    inner: Inner,
    stall_timeout: Option<Duration>,
}

impl ExporterClient {
    /// Probes per [`ExporterClient::clock_offset`].
    pub const CLOCK_PROBES: usize = 8;
    /// Default for [`ExporterClient::with_stall_timeout`].
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects to `addr` (`host:port` or `http://host:port`) in plaintext,
    /// attaching `token` to every call: [`ExporterClient::connect_with`]
    /// without TLS.
    pub async fn connect(addr: &str, token: Option<Token>) -> Result<Self, ClientError> {
        Self::connect_with(addr, token, None).await
    }

    /// Connects to `addr`, attaching `token` to every call. With `tls`
    /// (`host:port` or `https://host:port`), the exporter's certificate must
    /// be signed by the CA and carry the name (`tls`'s domain, else the
    /// host); with a client identity, it is presented (mutual TLS).
    ///
    /// The connection is proven here by a first `Health` call (with or
    /// without TLS), so a wrong CA, name or client certificate, or TLS on
    /// one side only, fails here as [`ClientError::Handshake`] naming the
    /// reason, not at the first sample. An unreachable exporter is
    /// [`ClientError::Connect`]; a wrong token is still only seen by the
    /// first call the caller makes.
    pub async fn connect_with(
        addr: &str,
        token: Option<Token>,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason,
        };
        let uri = match (addr.split_once("://"), tls) {
            (None, None) => format!("http://{addr}"),
            (None, Some(_)) => format!("https://{addr}"),
            (Some(("http", _)), Some(_)) => {
                return Err(invalid(
                    "http:// with TLS configured: write host:port or https://".into(),
                ));
            }
            (Some(_), _) => addr.to_owned(),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(Self::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            endpoint = tls
                .apply(endpoint)
                .map_err(|e| invalid(format!("TLS: {}", error_chain(&e))))?;
        }
        let attach = AttachToken::new(token.as_ref())
            .map_err(|status| ClientError::Token(status.message().to_owned()))?;
        let channel = endpoint.connect().await.map_err(|source| {
            let chain = error_chain(&source);
            let unreachable = ["tcp connect error", "dns error", "timed out"]
                .iter()
                .any(|w| chain.contains(w));
            match tls {
                Some(_) if !unreachable => ClientError::Handshake {
                    addr: addr.to_owned(),
                    reason: describe_failure(&source, true),
                },
                _ => ClientError::Connect {
                    addr: addr.to_owned(),
                    source,
                },
            }
        })?;
        let mut client = Self {
            inner: GpuExporterClient::with_interceptor(channel, attach),
            stall_timeout: Some(Self::DEFAULT_STALL_TIMEOUT),
        };
        // The connection is only known to work after a first call: with TLS
        // 1.3 the server judges the client certificate after the client's
        // side of the handshake is done, and a plaintext client talking to a
        // TLS port learns it only from the reply. A refusal by the service
        // itself (a wrong token) is left to the caller's first call.
        if let Err(status) = client.inner.health(HealthRequest {}).await
            && std::error::Error::source(&status).is_some()
        {
            return Err(ClientError::Handshake {
                addr: addr.to_owned(),
                reason: describe_failure(&status, tls.is_some()),
            });
        }
        Ok(client)
    }

    /// How long [`ExporterClient::watch`] waits for the next sample before
    /// ending with [`ClientError::Stalled`] (default 10 s; `None`: forever).
    /// Keep it well above the exporter's interval (`Health.interval_ns`).
    pub fn with_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// The exporter's mode, GPU count, interval and instance id.
    pub async fn health(&mut self) -> Result<HealthResponse, ClientError> {
        Ok(self.inner.health(HealthRequest {}).await?.into_inner())
    }

    /// Estimates `exporter clock − our clock` (both
    /// `barrage_common::clock::mono_now_ns`) from [`Self::CLOCK_PROBES`]
    /// `Clock` round trips, keeping the one with the smallest round trip.
    /// Redo it after a reconnect if `instance_id` changed.
    pub async fn clock_offset(&mut self) -> Result<ClockOffset, ClientError> {
        let mut probes = Vec::with_capacity(Self::CLOCK_PROBES);
        for _ in 0..Self::CLOCK_PROBES {
            let sent_ns = mono_now_ns();
            let reply = self
                .inner
                .clock(ClockRequest {
                    controller_mono_ns: sent_ns,
                })
                .await?
                .into_inner();
            let received_ns = mono_now_ns();
            // A reply that does not echo our send time is not ours to trust.
            if reply.controller_mono_ns == sent_ns {
                probes.push(ProbeSample {
                    sent_ns,
                    peer_ns: reply.exporter_mono_ns,
                    received_ns,
                });
            }
        }
        ClockOffset::from_probes(&probes).ok_or(ClientError::NoClockProbe(Self::CLOCK_PROBES))
    }

    /// Every sample from now on (the latest one first). The stream ends with
    /// an `Err` when the exporter shuts down (`UNAVAILABLE`), the connection
    /// breaks, the token is refused (`UNAUTHENTICATED`) or no sample arrives
    /// within the stall timeout; after an `Err` it yields nothing more.
    pub fn watch(&mut self) -> impl Stream<Item = Result<Sample, ClientError>> + Send + 'static {
        self.watch_with(WatchSamplesRequest::default())
    }

    /// [`ExporterClient::watch`] with options (e.g. `omit_processes`).
    pub fn watch_with(
        &mut self,
        request: WatchSamplesRequest,
    ) -> impl Stream<Item = Result<Sample, ClientError>> + Send + 'static {
        let start = WatchState::Start(self.inner.clone(), request);
        let stall = self.stall_timeout;
        futures::stream::unfold(start, move |state| async move {
            match state {
                WatchState::Start(mut client, request) => match client.watch_samples(request).await
                {
                    Ok(response) => next_sample(response.into_inner(), stall).await,
                    Err(status) => Some((Err(status.into()), WatchState::Done)),
                },
                WatchState::Streaming(stream) => next_sample(stream, stall).await,
                WatchState::Done => None,
            }
        })
    }
}

enum WatchState {
    Start(Inner, WatchSamplesRequest),
    Streaming(tonic::Streaming<Sample>),
    Done,
}

async fn next_sample(
    mut stream: tonic::Streaming<Sample>,
    stall: Option<Duration>,
) -> Option<(Result<Sample, ClientError>, WatchState)> {
    let next = match stall {
        Some(limit) => match tokio::time::timeout(limit, stream.message()).await {
            Ok(next) => next,
            Err(_) => return Some((Err(ClientError::Stalled(limit)), WatchState::Done)),
        },
        None => stream.message().await,
    };
    match next {
        Ok(Some(sample)) => Some((Ok(sample), WatchState::Streaming(stream))),
        Ok(None) => None,
        Err(status) => Some((Err(status.into()), WatchState::Done)),
    }
}

/// What one received `seq` says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first sample seen.
    First,
    /// The next sample, nothing skipped.
    InOrder,
    /// `missed` samples were skipped before this one (slow reader, or a
    /// reconnect to the same exporter).
    Gap { missed: u64 },
    /// `seq` went backwards or repeated: a different (restarted) exporter;
    /// redo the clock alignment.
    Restarted,
}

/// Follows `Sample.seq` across a stream and its reconnects.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    last: Option<u64>,
    /// Samples skipped so far, over every gap.
    pub missed: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> SeqEvent {
        let event = match self.last {
            None => SeqEvent::First,
            Some(last) if seq == last + 1 => SeqEvent::InOrder,
            Some(last) if seq > last => {
                let missed = seq - last - 1;
                self.missed = self.missed.saturating_add(missed);
                SeqEvent::Gap { missed }
            }
            Some(_) => SeqEvent::Restarted,
        };
        self.last = Some(seq);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_reports_gaps_and_restarts() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(5), SeqEvent::First);
        assert_eq!(t.observe(6), SeqEvent::InOrder);
        assert_eq!(t.observe(9), SeqEvent::Gap { missed: 2 });
        assert_eq!(t.observe(1), SeqEvent::Restarted);
        assert_eq!(t.observe(2), SeqEvent::InOrder);
        assert_eq!(t.missed, 2);
    }

    #[tokio::test]
    async fn bad_address_is_a_clear_error() {
        let err = ExporterClient::connect("http://exa mple:1", None)
            .await
            .expect_err("invalid");
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
    }
}
