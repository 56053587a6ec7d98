//! Who may use the service: with a token set, every route but `/healthz`,
//! the login page and the dashboard's assets needs it, as
//! `Authorization: Bearer <token>` (scripts, Prometheus) or as the
//! `barrage_token` cookie that the login form sets (browsers: pages, the
//! event stream). Without a token the service only listens on loopback.

use std::net::SocketAddr;

use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use barrage_common::auth::Token;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;

pub const COOKIE: &str = "barrage_token";

/// The service's token, if any.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub token: Option<Token>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to listen on {0} without a token: anyone who can reach it could run load tests from this machine; set --token-env (or listen on 127.0.0.1 / [::1])"
)]
pub struct OpenListen(pub SocketAddr);

/// No token: loopback only.
pub fn check_listen(addr: SocketAddr, auth: &Auth) -> Result<(), OpenListen> {
    if auth.token.is_none() && !addr.ip().is_loopback() {
        return Err(OpenListen(addr));
    }
    Ok(())
}

fn open_path(path: &str) -> bool {
    path == "/healthz" || path == "/login" || path.starts_with("/assets/")
}

/// The token a request presents: bearer header first, then the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| decode(v))
    })
}

/// The middleware: lets a request with the token (or an open path) on.
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.0.auth.token.as_ref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if open_path(path) {
        return next.run(req).await;
    }
    if presented(req.headers()).is_some_and(|t| token.matches(&t)) {
        return next.run(req).await;
    }
    let wants_page =
        req.method() == Method::GET && !path.starts_with("/api/") && path != "/metrics";
    if wants_page {
        let back = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        return Redirect::to(&format!("/login?next={}", encode(&back))).into_response();
    }
    ApiError::unauthorized(
        "missing or wrong token: send Authorization: Bearer <token> (the value of the service's --token-env variable)",
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Only a path of this site: never an open redirect.
fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".into(),
    }
}

/// `POST /login`: sets the cookie when the token is right.
pub async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = local_next(form.next.as_deref());
    let Some(token) = state.0.auth.token.as_ref() else {
        return Redirect::to(&next).into_response();
    };
    if !token.matches(form.token.trim()) {
        tracing::info!("login with a wrong token");
        return Redirect::to(&format!("/login?error=1&next={}", encode(&next))).into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        encode(form.token.trim())
    );
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct LogoutQuery {
    next: Option<String>,
}

/// `GET /logout`: forgets the cookie.
pub async fn logout(Query(q): Query<LogoutQuery>) -> Response {
    let next = local_next(q.next.as_deref());
    let mut resp = Redirect::to(&format!("/login?next={}", encode(&next))).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("barrage_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// Percent-encodes everything but unreserved characters (cookie values and
/// query parameters).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Our own encoding never writes `+`, so query-style decoding reads it back.
fn decode(s: &str) -> String {
    barrage_common::redact::percent_decoded(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_the_cookie_round_trip() {
        let t = "a b;c=d%/é";
        assert_eq!(decode(&encode(t)), t);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={}", encode(t))).expect("header"),
        );
        assert_eq!(presented(&h).as_deref(), Some(t));
    }

    #[test]
    fn redirects_stay_on_this_site() {
        assert_eq!(local_next(Some("/runs/r-1")), "/runs/r-1");
        assert_eq!(local_next(Some("//evil.example/x")), "/");
        assert_eq!(local_next(Some("https://evil.example/")), "/");
        assert_eq!(local_next(None), "/");
    }

    #[test]
    fn without_a_token_only_loopback_is_allowed() {
        let open = Auth::default();
        assert!(check_listen("127.0.0.1:8080".parse().expect("addr"), &open).is_ok());
        assert!(check_listen("[::1]:8080".parse().expect("addr"), &open).is_ok());
        assert!(check_listen("0.0.0.0:8080".parse().expect("addr"), &open).is_err());
        let closed = Auth {
            token: Some(Token::new("t")),
        };
        assert!(check_listen("0.0.0.0:8080".parse().expect("addr"), &closed).is_ok());
    }
}
