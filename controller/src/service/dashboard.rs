//! The web dashboard: pages and assets embedded in the binary (no external
//! loads). Owned by the dashboard part; see docs/service.md.
//!
//! The pages are static shells (one layout, a body per page from
//! controller/assets/dashboard/); assets/dashboard/dashboard.js fills them
//! from the REST API and the run's Server-Sent Events, so the browser sees
//! exactly what an API client sees. `POST /login`, `/logout` and `/compare`
//! are the service core's (auth.rs, api.rs).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const RUNS_HTML: &str = include_str!("../../assets/dashboard/runs.html");
const NEW_HTML: &str = include_str!("../../assets/dashboard/new.html");
const RUN_HTML: &str = include_str!("../../assets/dashboard/run.html");
const LOGIN_HTML: &str = include_str!("../../assets/dashboard/login.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = concat!(
    include_str!("../../assets/dashboard/dashboard.css"),
    include_str!("../../assets/charts.css")
);

/// Everything from this origin, nothing from elsewhere: no inline script,
/// no external script, style, font, image or connection. Frames: the run's
/// own report.html (served by this origin).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'self'";

/// The dashboard's routes (`/`, `/login` page, `/new`, `/runs/{id}`,
/// `/assets/...`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page("runs", "Runs", RUNS_HTML) }))
        .route("/new", get(|| async { page("new", "New run", NEW_HTML) }))
        .route("/runs/{id}", get(|| async { page("run", "Run", RUN_HTML) }))
        .route(
            "/login",
            get(|| async { page("login", "Log in", LOGIN_HTML) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { asset(JS, DASHBOARD_JS) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route(
            "/assets/charts.js",
            get(|| async { asset(JS, crate::html::page::charts_js()) }),
        )
}

const JS: &str = "text/javascript; charset=utf-8";

/// A page: the shared layout around `body`; `name` selects the page's code
/// in dashboard.js.
fn page(name: &str, title: &str, body: &str) -> Response {
    let html = layout(name, title, body);
    let mut res = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = res.headers_mut();
    // Revalidated each time: a new binary's assets are never mixed with an
    // old page's.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The page around a body fragment. Titles are fixed strings of this file;
/// everything that comes from data is inserted by dashboard.js as text.
fn layout(name: &str, title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · barrage</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/assets/dashboard.css\"></head>\n\
         <body data-page=\"{name}\">\
         <header class=\"bar\"><a class=\"brand\" href=\"/\">barrage</a>\
         <nav><a href=\"/\">Runs</a><a href=\"/new\">New run</a>\
         <a href=\"/logout\" class=\"logout\">Log out</a></nav></header>\n\
         <pre id=\"script-errors\" role=\"alert\" hidden></pre>\
         <main>{body}</main>\n\
         <script src=\"/assets/charts.js\"></script>\
         <script src=\"/assets/dashboard.js\"></script>\n</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_load_nothing_from_outside_and_name_their_code() {
        for (name, body) in [
            ("runs", RUNS_HTML),
            ("new", NEW_HTML),
            ("run", RUN_HTML),
            ("login", LOGIN_HTML),
        ] {
            let html = layout(name, "t", body).to_lowercase();
            assert!(html.contains(&format!("data-page=\"{name}\"")));
            for attr in ["src=\"", "href=\"", "action=\""] {
                for value in html.split(attr).skip(1) {
                    let local = value.starts_with('/') && !value.starts_with("//");
                    assert!(local || value.starts_with("data:"), "{name}: {attr}{value}");
                }
            }
            assert!(!html.contains("<script>"), "{name}: an inline script");
            assert!(!html.contains(" onclick=") && !html.contains(" style="));
        }
        for text in [DASHBOARD_JS, DASHBOARD_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url("));
        }
        assert!(CSP.contains("default-src 'none'") && !CSP.contains("unsafe"));
    }
}
