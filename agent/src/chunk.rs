//! What one streamed chunk means for the metrics: does it carry output,
//! reasoning or answer, usage, or an error. Parsed with borrowed raw JSON so
//! the timed path allocates nothing per chunk.

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use barrage_proto::agent::v1::Api;

/// The meaning of one SSE event / NDJSON line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Carries generated output: text, reasoning text or a tool call.
    pub output: bool,
    /// Carries non-reasoning output (answer text or tool call).
    pub answer: bool,
    /// `[DONE]` (OpenAI) or `done: true` (Ollama).
    pub done: bool,
    /// Prompt tokens as the server counted them.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens so far (continuous usage) or in total (final usage).
    pub completion_tokens: Option<u64>,
    /// The server reported an error inside the stream.
    pub error: bool,
    /// Ollama's own timings (ns): load, prompt eval, eval.
    pub server_ns: Option<[u64; 3]>,
    /// Where the generated text (a JSON string, quotes included) sits in
    /// the event's bytes, for counting it with a tokenizer later.
    pub text_span: Option<(u32, u32)>,
    /// Where the first choice's `tool_calls` array sits (raw JSON): function
    /// names and arguments are output text too.
    pub tool_span: Option<(u32, u32)>,
}

/// The byte range of the JSON string `raw` inside `data` (both borrowed
/// from the same slice).
fn span_in(data: &[u8], raw: Option<&RawValue>) -> Option<(u32, u32)> {
    raw_span(data, raw.filter(|r| r.get().starts_with('"')))
}

/// The byte range of a non-empty array `raw` inside `data`.
fn array_span(data: &[u8], raw: Option<&RawValue>) -> Option<(u32, u32)> {
    raw_span(
        data,
        raw.filter(|r| r.get().starts_with('[') && has_text(Some(r))),
    )
}

fn raw_span(data: &[u8], raw: Option<&RawValue>) -> Option<(u32, u32)> {
    let raw = raw?;
    let start = (raw.get().as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let end = start + raw.get().len();
    (end <= data.len())
        .then(|| (u32::try_from(start).ok(), u32::try_from(end).ok()))
        .and_then(|(a, b)| Some((a?, b?)))
}

/// Not JSON, or JSON of an unexpected shape: a `stream` error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed chunk: {0}")]
pub struct MalformedChunk(pub String);

fn has_text(v: Option<&RawValue>) -> bool {
    v.is_some_and(|r| !matches!(r.get(), "null" | "\"\"" | "[]" | "{}"))
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    message: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// Flags folded over the `choices` array without collecting it.
#[derive(Default)]
struct ChoicesSummary<'a> {
    output: bool,
    answer: bool,
    /// The first choice's generated text, answer or reasoning.
    text: Option<&'a RawValue>,
    /// The first choice's tool calls.
    tools: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ChoicesSummary<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ChoicesSummary<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a choices array")
            }
            fn visit_unit<E>(self) -> Result<ChoicesSummary<'a>, E> {
                Ok(ChoicesSummary::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ChoicesSummary<'a>, A::Error> {
                let mut s = ChoicesSummary::default();
                while let Some(c) = seq.next_element::<Choice<'de>>()? {
                    let d = c.delta.as_ref().or(c.message.as_ref());
                    let answer = has_text(c.text)
                        || d.is_some_and(|d| has_text(d.content) || has_text(d.tool_calls));
                    let reasoning =
                        d.is_some_and(|d| has_text(d.reasoning_content) || has_text(d.reasoning));
                    s.answer |= answer;
                    s.output |= answer || reasoning;
                    if s.tools.is_none() {
                        s.tools = d.and_then(|d| d.tool_calls).filter(|t| has_text(Some(t)));
                    }
                    if s.text.is_none() {
                        s.text = [
                            c.text,
                            d.and_then(|d| d.content),
                            d.and_then(|d| d.reasoning_content),
                            d.and_then(|d| d.reasoning),
                        ]
                        .into_iter()
                        .flatten()
                        .find(|r| has_text(Some(r)));
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Serialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl Usage {
    /// Completion tokens as reported, or total − prompt when only those
    /// are (embeddings: total = prompt, so 0 generated).
    fn completion(&self) -> Option<u64> {
        self.completion_tokens.or_else(|| {
            let (total, prompt) = (self.total_tokens?, self.prompt_tokens?);
            total.checked_sub(prompt)
        })
    }
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<ChoicesSummary<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OllamaMessage<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OllamaChunk<'a> {
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<OllamaMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    load_duration: Option<u64>,
    #[serde(default)]
    prompt_eval_duration: Option<u64>,
    #[serde(default)]
    eval_duration: Option<u64>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(default, rename = "choices")]
    _choices: Option<IgnoredAny>,
}

/// How the chunks of one target are read: a built-in API, or a template.
#[derive(Debug, Clone)]
pub enum ChunkReader {
    Api(Api),
    Template(std::sync::Arc<barrage_proto::agent::v1::TemplateApi>),
}

impl ChunkReader {
    pub fn parse(&self, data: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
        match self {
            ChunkReader::Api(api) => parse(*api, data),
            ChunkReader::Template(t) => crate::template::parse(t, data),
        }
    }

    pub fn parse_body(&self, body: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
        let mut info = self.parse(body)?;
        info.done = true;
        Ok(info)
    }
}

/// Interprets one event's data (SSE) or line (NDJSON) for `api`.
pub fn parse(api: Api, data: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
    match api {
        Api::OllamaGenerate | Api::OllamaChat => parse_ollama(data),
        _ => parse_openai(data),
    }
}

fn malformed(e: serde_json::Error) -> MalformedChunk {
    MalformedChunk(e.to_string())
}

fn parse_openai(data: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        });
    }
    let c: OpenAiChunk = serde_json::from_slice(data).map_err(malformed)?;
    let choices = c.choices.unwrap_or_default();
    let usage = c.usage.unwrap_or_default();
    Ok(ChunkInfo {
        output: choices.output,
        answer: choices.answer,
        done: false,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion(),
        error: c.error.is_some_and(|e| e.get() != "null"),
        server_ns: None,
        text_span: span_in(data, choices.text),
        tool_span: array_span(data, choices.tools),
    })
}

fn parse_ollama(data: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
    let c: OllamaChunk = serde_json::from_slice(data).map_err(malformed)?;
    let (content, thinking, tools) = match &c.message {
        Some(m) => (m.content, m.thinking, m.tool_calls),
        None => (c.response, c.thinking, None),
    };
    let answer = has_text(content) || has_text(tools);
    let reasoning = has_text(thinking);
    Ok(ChunkInfo {
        output: answer || reasoning,
        answer,
        done: c.done,
        prompt_tokens: c.prompt_eval_count,
        completion_tokens: c.eval_count,
        error: c.error.is_some(),
        server_ns: match (c.load_duration, c.prompt_eval_duration, c.eval_duration) {
            (None, None, None) => None,
            (l, p, e) => Some([l.unwrap_or(0), p.unwrap_or(0), e.unwrap_or(0)]),
        },
        text_span: span_in(
            data,
            [content, thinking]
                .into_iter()
                .flatten()
                .find(|r| has_text(Some(r))),
        ),
        tool_span: array_span(data, tools),
    })
}

/// A whole non-streamed response body.
pub fn parse_body(api: Api, body: &[u8]) -> Result<ChunkInfo, MalformedChunk> {
    let mut info = parse(api, body)?;
    info.done = true;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(s: &str) -> ChunkInfo {
        parse(Api::OpenaiChat, s.as_bytes()).expect("valid")
    }

    #[test]
    fn role_only_and_empty_chunks_carry_no_output() {
        let c =
            chat(r#"{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#);
        assert!(!c.output && !c.answer);
        let c = chat(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
        assert!(!c.output);
        let c = chat(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#,
        );
        assert!(!c.output);
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(7), Some(3)));
    }

    #[test]
    fn reasoning_is_output_but_not_answer() {
        let c = chat(r#"{"choices":[{"delta":{"reasoning_content":"hmm "}}]}"#);
        assert!(c.output && !c.answer);
        let c = chat(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
        assert!(c.output && c.answer);
        let c = chat(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#);
        assert!(c.answer);
        let c = parse(Api::OpenaiCompletions, br#"{"choices":[{"text":"x"}]}"#).expect("valid");
        assert!(c.answer);
    }

    #[test]
    fn usage_without_completion_tokens_gives_total_minus_prompt() {
        let e = parse_body(
            Api::OpenaiEmbeddings,
            br#"{"object":"list","data":[],"usage":{"prompt_tokens":12,"total_tokens":12}}"#,
        )
        .expect("valid");
        assert_eq!((e.prompt_tokens, e.completion_tokens), (Some(12), Some(0)));
        let c = chat(r#"{"choices":[],"usage":{"completion_tokens":4}}"#);
        assert_eq!((c.prompt_tokens, c.completion_tokens), (None, Some(4)));
    }

    #[test]
    fn tool_calls_are_located_for_counting() {
        let data = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\""}}]}}]}"#;
        let c = chat(data);
        let (a, b) = c.tool_span.expect("tool span");
        let raw = &data[a as usize..b as usize];
        assert!(raw.starts_with('[') && raw.ends_with(']') && raw.contains("arguments"));
        assert!(
            chat(r#"{"choices":[{"delta":{"content":"x"}}]}"#)
                .tool_span
                .is_none()
        );
    }

    #[test]
    fn done_marker_and_malformed() {
        assert!(chat("[DONE]").done);
        assert!(parse(Api::OpenaiChat, b"{not json").is_err());
        assert!(chat(r#"{"error":{"message":"overloaded"}}"#).error);
    }

    #[test]
    fn ollama_lines() {
        let c = parse(
            Api::OllamaChat,
            br#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#,
        )
        .expect("valid");
        assert!(c.answer && !c.done);
        let c = parse(
            Api::OllamaGenerate,
            br#"{"response":"","done":true,"prompt_eval_count":5,"eval_count":9}"#,
        )
        .expect("valid");
        assert!(c.done && !c.output);
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(5), Some(9)));
    }
}
