//! Shared-token authentication for every barrage gRPC service (agents and GPU
//! exporters). The token travels in the `authorization` metadata as
//! `Bearer <token>` and is compared in constant time. Tokens are read from an
//! environment variable whose *name* is configured, never from a flag value,
//! and are never logged.

use std::fmt;

use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

/// A secret token. `Debug` prints a redaction, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads the token from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, TokenError> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Self(v)),
            Ok(_) => Err(TokenError::Empty(var.to_owned())),
            Err(_) => Err(TokenError::Missing(var.to_owned())),
        }
    }

    /// The secret itself, to send it (never to log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token (constant time over its contents).
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("environment variable {0} (named as the token source) is not set")]
    Missing(String),
    #[error("environment variable {0} (named as the token source) is empty")]
    Empty(String),
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret-dependent in a useful way; contents are compared fully.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server side: rejects requests without the expected token. `None` accepts
/// everything (loopback-only or explicitly `--insecure` deployments).
#[derive(Clone, Debug)]
pub struct RequireToken {
    expected: Option<Token>,
}

impl RequireToken {
    pub fn new(expected: Option<Token>) -> Self {
        Self { expected }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing authorization token"))?;
        if constant_time_eq(presented.as_bytes(), expected.bearer().as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("wrong authorization token"))
        }
    }
}

/// Client side: attaches the token to every request.
#[derive(Clone, Debug)]
pub struct AttachToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachToken {
    /// Fails if the token cannot be a header value (non-ASCII or control bytes).
    pub fn new(token: Option<&Token>) -> Result<Self, Status> {
        let header = match token {
            Some(t) => Some(
                t.bearer()
                    .parse()
                    .map_err(|_| Status::invalid_argument("token is not a valid header value"))?,
            ),
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = value {
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn accepts_only_the_expected_token() {
        let mut check = RequireToken::new(Some(Token::new("s3cret")));
        assert!(check.call(with_auth(Some("Bearer s3cret"))).is_ok());
        let wrong = check
            .call(with_auth(Some("Bearer s3creT")))
            .expect_err("wrong");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = check.call(with_auth(None)).expect_err("missing");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn attach_then_require_round_trips_and_debug_redacts() {
        let token = Token::new("abc");
        let mut attach = AttachToken::new(Some(&token)).expect("ascii token");
        let req = attach.call(Request::new(())).expect("attach");
        assert!(RequireToken::new(Some(token.clone())).call(req).is_ok());
        assert!(!format!("{token:?}").contains("abc"));
    }
}
