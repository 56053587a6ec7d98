//! `[target.template]` request bodies: the placeholders and how they are
//! filled, shared by the agent (which renders one body per request) and the
//! plan check (which renders one with sample values, so a misspelled
//! placeholder or a body that is not JSON is refused before any traffic).

use serde_json::Value;

/// The placeholders, longest first: that is the order they are replaced in
/// (`%max_tokens` before `%m`).
pub const PLACEHOLDERS: [&str; 4] = ["%messages", "%max_tokens", "%m", "%p"];

/// A body that cannot be rendered into JSON.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error(
        "unknown placeholder %{0}: the placeholders are %m (model), %p (prompt text), \
         %messages (the messages array) and %max_tokens"
    )]
    Placeholder(String),
    #[error("after filling the placeholders with sample values it is not JSON: {0}")]
    NotJson(String),
}

/// JSON-string contents of `s` (escaped, without the surrounding quotes).
fn escaped(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_owned()
}

/// Fills the placeholders: `%m` and `%p` go inside JSON strings (escaped),
/// `%messages` and `%max_tokens` are JSON values.
pub fn fill(body: &str, model: &str, text: &str, messages: Vec<Value>, max_tokens: u32) -> String {
    body.replace("%messages", &Value::Array(messages).to_string())
        .replace("%max_tokens", &max_tokens.to_string())
        .replace("%m", &escaped(model))
        .replace("%p", &escaped(text))
}

/// The first `%word` (lower-case letters and `_`) that is no placeholder.
/// Other `%` uses (`100%`, `%E2%80`) are left alone.
pub fn unknown_placeholder(body: &str) -> Option<String> {
    body.split('%').skip(1).find_map(|after| {
        let word: String = after
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let known = PLACEHOLDERS.iter().any(|p| p[1..] == word);
        (!word.is_empty() && !known).then_some(word)
    })
}

/// The text around byte column `col` (1-based) of line `line`, for messages.
fn near(text: &str, line: usize, col: usize) -> String {
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let end = col.min(l.len());
    let start = end.saturating_sub(30);
    let from = (start..=end)
        .find(|i| l.is_char_boundary(*i))
        .unwrap_or(end);
    let to = (end..=l.len())
        .find(|i| l.is_char_boundary(*i))
        .unwrap_or(end);
    l[from..to].to_owned()
}

/// Checks a body as the plan check does: known placeholders only, and JSON
/// once they are filled with sample values.
pub fn check_body(body: &str, model: &str, max_tokens: u32) -> Result<(), BodyError> {
    if let Some(word) = unknown_placeholder(body) {
        return Err(BodyError::Placeholder(word));
    }
    let sample = fill(
        body,
        model,
        "a sample \"prompt\"\nwith quotes",
        vec![serde_json::json!({"role": "user", "content": "a sample prompt"})],
        max_tokens,
    );
    serde_json::from_str::<Value>(&sample).map_err(|e| {
        BodyError::NotJson(format!(
            "{e}, after `{}`",
            near(&sample, e.line(), e.column())
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_placeholders_are_named_and_percent_signs_left_alone() {
        let body = r#"{"model": "%m", "prompt": "%promt", "max_tokens": %max_tokens}"#;
        assert_eq!(
            check_body(body, "m", 8),
            Err(BodyError::Placeholder("promt".into()))
        );
        let ok = r#"{"model": "%m", "note": "100% sure %E2%80", "max_tokens": %max_tokens, "messages": %messages, "prompt": "%p"}"#;
        assert_eq!(check_body(ok, "m", 8), Ok(()));
    }

    #[test]
    fn a_body_that_is_not_json_says_where() {
        let err = check_body(r#"{"max_tokens": %max_tokens,}"#, "m", 8).expect_err("trailing");
        let msg = err.to_string();
        assert!(msg.contains("not JSON") && msg.contains("8,"), "{msg}");
    }
}
