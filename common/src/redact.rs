//! Credentials inside a target URL (`user:pass@`, `?api_key=…`) hidden for
//! everything that shows or writes the URL: console, reports, written plans,
//! logs. The request itself always uses the real URL.

use crate::plan::PlanFile;

/// What replaces a hidden value.
pub const REDACTED: &str = "<redacted>";

/// The URL with its userinfo and the values of credential-like query
/// parameters replaced by [`REDACTED`]. Anything that does not parse as a
/// URL is returned unchanged except for those two parts.
pub fn redact_url(url: &str) -> String {
    let (head, fragment) = split_at_first(url, '#');
    let (head, query) = split_at_first(head, '?');
    let mut out = redact_userinfo(head);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// The plan as shown and written (`plan.toml`, `--print-plan`): header
/// values (they may carry keys) and the URL's credentials hidden.
pub fn plan_for_display(plan: &PlanFile) -> PlanFile {
    let mut shown = plan.clone();
    shown
        .target
        .headers
        .values_mut()
        .for_each(|v| *v = REDACTED.to_owned());
    shown.target.url = shown.target.url.as_deref().map(redact_url);
    shown
}

/// True when a query parameter of this name carries a credential.
pub fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    const PARTS: [&str; 7] = [
        "key",
        "token",
        "secret",
        "pass",
        "auth",
        "credential",
        "signature",
    ];
    const WHOLE: [&str; 3] = ["sig", "pwd", "code"];
    PARTS.iter().any(|p| n.contains(p)) || WHOLE.contains(&n.as_str())
}

fn split_at_first(s: &str, c: char) -> (&str, Option<&str>) {
    match s.split_once(c) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

/// `scheme://user:pass@host/path` → `scheme://<redacted>@host/path`.
fn redact_userinfo(head: &str) -> String {
    let (scheme, rest) = match head.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, head),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(&percent_decoded(k)) => format!("{k}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-decoding of a URL query part (`api%5Fkey`, `api+key`); invalid
/// escapes stay as written.
pub fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_credential_parameters_are_hidden() {
        assert_eq!(
            redact_url("https://alice:s3cret@api.example.com:8443/v1/chat?api_key=abc&model=x"),
            "https://<redacted>@api.example.com:8443/v1/chat?api_key=<redacted>&model=x"
        );
        assert_eq!(
            redact_url("http://h/v1?Token=1&sig=2&X-Amz-Signature=3&password=4&api%5Fkey=5#top"),
            "http://h/v1?Token=<redacted>&sig=<redacted>&X-Amz-Signature=<redacted>\
             &password=<redacted>&api%5Fkey=<redacted>#top"
        );
    }

    #[test]
    fn plain_urls_are_unchanged() {
        for u in [
            "http://127.0.0.1:8000/v1/chat/completions",
            "http://h:1/v1?model=m&stream=true",
            "not a url",
            "http://h/path@with-at",
        ] {
            assert_eq!(redact_url(u), u);
        }
    }
}
