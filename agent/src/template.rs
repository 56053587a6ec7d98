//! The `template` API: any JSON-over-HTTP server. The request body is a JSON
//! template with placeholders (`%m` model, `%p` prompt text — EvalScope's
//! meaning —, `%messages` the messages array, `%max_tokens`), and JSON
//! pointers say where the response keeps its text, reasoning, usage and end
//! marker, in SSE, NDJSON or one body. Chunks are parsed into a JSON value
//! (one allocation per chunk): the generic path is slower than the built-in
//! APIs, and says so in docs.

use barrage_proto::agent::v1 as pb;
use serde_json::Value;

use crate::chunk::{ChunkInfo, MalformedChunk};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("target.template.body: after filling the placeholders it is not JSON: {0}")]
    Body(String),
}

/// Fills the placeholders for one prompt (its text and messages, built by
/// the client) and checks the result is JSON.
pub fn render(
    t: &pb::TemplateApi,
    model: &str,
    text: &str,
    messages: Vec<Value>,
    max_tokens: u32,
) -> Result<Vec<u8>, TemplateError> {
    let body = barrage_common::template::fill(&t.body, model, text, messages, max_tokens);
    serde_json::from_str::<Value>(&body).map_err(|e| TemplateError::Body(e.to_string()))?;
    Ok(body.into_bytes())
}

fn pointer<'a>(v: &'a Value, p: &str) -> Option<&'a Value> {
    if p.is_empty() { None } else { v.pointer(p) }
}

fn has_text(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Null) | None => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Interprets one event / line / body with the template's pointers.
pub fn parse(t: &pb::TemplateApi, data: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
    let marker = if t.done_marker.is_empty() {
        "[DONE]"
    } else {
        t.done_marker.as_str()
    };
    if data.trim_ascii() == marker.as_bytes() {
        return Ok(ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        });
    }
    let v: Value = serde_json::from_slice(data).map_err(|e| MalformedChunk(e.to_string()))?;
    let answer = has_text(pointer(&v, &t.text_pointer));
    let reasoning = has_text(pointer(&v, &t.reasoning_pointer));
    let done = pointer(&v, &t.done_pointer).is_some_and(|d| match d {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    });
    Ok(ChunkInfo {
        output: answer || reasoning,
        answer,
        done,
        prompt_tokens: pointer(&v, &t.prompt_tokens_pointer).and_then(Value::as_u64),
        completion_tokens: pointer(&v, &t.completion_tokens_pointer).and_then(Value::as_u64),
        error: v.get("error").is_some_and(|e| !e.is_null()),
        server_ns: None,
        text_span: None,
        tool_span: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> pb::TemplateApi {
        pb::TemplateApi {
            body: r#"{"model": "%m", "prompt": "%p", "max_tokens": %max_tokens, "stream": true}"#
                .into(),
            format: pb::TemplateFormat::Sse as i32,
            text_pointer: "/choices/0/text".into(),
            completion_tokens_pointer: "/usage/completion_tokens".into(),
            ..pb::TemplateApi::default()
        }
    }

    #[test]
    fn placeholders_are_escaped_into_json() {
        let prompt = pb::Prompt {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "say \"hi\"\nplease".into(),
            }],
            ..pb::Prompt::default()
        };
        let text = &prompt.messages[0].content;
        let body = render(&template(), "m-1", text, Vec::new(), 7).expect("json");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["prompt"], "say \"hi\"\nplease");
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["model"], "m-1");
        let bad = pb::TemplateApi {
            body: "{\"a\": %p}".into(),
            ..template()
        };
        assert!(render(&bad, "m", text, Vec::new(), 1).is_err());
    }

    #[test]
    fn pointers_find_text_usage_and_the_end() {
        let t = template();
        let c = parse(&t, br#"{"choices":[{"text":"tok "}]}"#).expect("chunk");
        assert!(c.output && c.answer);
        let c = parse(
            &t,
            br#"{"choices":[{"text":""}],"usage":{"completion_tokens":5}}"#,
        )
        .expect("chunk");
        assert!(!c.output);
        assert_eq!(c.completion_tokens, Some(5));
        assert!(parse(&t, b"[DONE]").expect("done").done);
        assert!(parse(&t, b"{oops").is_err());
    }
}
