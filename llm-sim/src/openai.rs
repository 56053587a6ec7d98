//! The OpenAI-compatible API: `POST /v1/chat/completions` and
//! `POST /v1/completions` (request parsing, input-token counting, and the SSE
//! and JSON shapes vLLM/OpenAI send). Chat streams carry `reasoning_content`
//! deltas for reasoning tokens; text completions have no reasoning channel
//! and so never carry reasoning tokens.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::engine::{
    Call, Counted, Piece, Shared, Summary, Usage, Wire, respond, unix_now, write_json,
};
use crate::plan::{Ask, Kind, token_text};
use crate::server::Arrived;
use crate::stats::InFlight;
use barrage_common::chat_template::ChatMessage;

/// The request fields the simulator reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Request {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    prompt: Option<Prompt>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
    continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u64>),
    IdLists(Vec<Vec<u64>>),
}

/// Which OpenAI endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(t0)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    handle(shared, t0, body, Api::Chat).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(t0)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    handle(shared, t0, body, Api::Completions).await
}

async fn handle(shared: Arc<Shared>, t0: Instant, body: Bytes, api: Api) -> Response {
    let in_flight = InFlight::begin(Arc::clone(&shared.counters));
    let req: Request = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => return bad_request(&format!("invalid request body: {e}")),
    };
    let prompt = match count(&shared, api, &req) {
        Ok(prompt) => prompt,
        Err(e) => return bad_request(&e),
    };
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if max_tokens == Some(0) {
        return bad_request("max_tokens must be at least 1");
    }
    let options = req.stream_options.as_ref();
    let flag = |f: fn(&StreamOptions) -> Option<bool>| options.and_then(f).unwrap_or(false);
    let number = shared.next_request();
    let wire = OpenAi {
        api,
        id: match api {
            Api::Chat => format!("chatcmpl-sim{number:08x}"),
            Api::Completions => format!("cmpl-sim{number:08x}"),
        },
        created: unix_now(),
        model: req.model.unwrap_or_else(|| shared.cfg.model.clone()),
        role_sent: shared.cfg.role_chunk,
        include_usage: flag(|o| o.include_usage),
    };
    let call = Call {
        number,
        wire,
        ask: Ask {
            input_tokens: prompt.tokens,
            max_tokens,
            reasoning: api == Api::Chat,
        },
        prompt,
        stream: req.stream.unwrap_or(false),
        continuous: shared.cfg.continuous_usage || flag(|o| o.continuous_usage_stats),
    };
    respond(shared, in_flight, t0, call).await
}

/// The request's prompt, counted (and cut into cache blocks) as the server does.
fn count(shared: &Shared, api: Api, req: &Request) -> Result<Counted, String> {
    match (api, &req.messages, &req.prompt) {
        (Api::Chat, Some(messages), _) => {
            let texts: Vec<String> = messages.iter().map(Message::text).collect();
            let msgs: Vec<ChatMessage<'_>> = messages
                .iter()
                .zip(&texts)
                .map(|(m, t)| ChatMessage {
                    role: &m.role,
                    content: t,
                })
                .collect();
            shared.count_chat(&msgs)
        }
        (Api::Completions, _, Some(prompt)) => {
            let (texts, ids) = prompt.parts();
            shared.count_texts(&texts, &ids)
        }
        (Api::Chat, None, _) => Err("`messages` is required".to_owned()),
        (Api::Completions, _, None) => Err("`prompt` is required".to_owned()),
    }
}

impl Message {
    /// The text of the message (text parts joined by newlines).
    fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl Prompt {
    /// The prompt texts and the lists of literal token ids.
    fn parts(&self) -> (Vec<&str>, Vec<&[u64]>) {
        match self {
            Prompt::Text(text) => (vec![text.as_str()], Vec::new()),
            Prompt::Texts(texts) => (texts.iter().map(String::as_str).collect(), Vec::new()),
            Prompt::Ids(ids) => (Vec::new(), vec![ids.as_slice()]),
            Prompt::IdLists(lists) => (Vec::new(), lists.iter().map(Vec::as_slice).collect()),
        }
    }
}

fn bad_request(message: &str) -> Response {
    OpenAi::error(StatusCode::BAD_REQUEST, message)
}

/// The per-request rendering state of an OpenAI response.
#[derive(Debug)]
struct OpenAi {
    api: Api,
    id: String,
    created: u64,
    model: String,
    /// A role chunk went first, so the first content chunk carries no role.
    role_sent: bool,
    include_usage: bool,
}

#[derive(Serialize)]
struct Out<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    /// Only with the prefix cache modelled (vLLM sends it with
    /// `--enable-prompt-tokens-details`).
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt,
            completion_tokens: u.completion,
            total_tokens: u.prompt + u.completion,
            prompt_tokens_details: u
                .cached
                .map(|cached_tokens| PromptDetails { cached_tokens }),
        }
    }
}

/// A chat choice: `delta` when streaming, `message` when whole.
#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Delta<'a>>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

impl OpenAi {
    fn out<C>(&self, object: &'static str, choices: C, usage: Option<Usage>) -> Out<'_, C> {
        Out {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage: usage.map(UsageOut::from),
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        }
    }

    /// One SSE event carrying `delta` (chat) or `text` (completions).
    fn event(&self, delta: Delta<'_>, finish: Option<&'static str>, usage: Option<Usage>) -> Bytes {
        let object = self.chunk_object();
        match self.api {
            Api::Chat => {
                let choice = ChatChoice {
                    index: 0,
                    delta: Some(delta),
                    message: None,
                    logprobs: None,
                    finish_reason: finish,
                };
                sse(&self.out(object, [choice], usage))
            }
            Api::Completions => {
                let text = delta.content.or(delta.reasoning_content).unwrap_or("");
                let choice = TextChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: finish,
                };
                sse(&self.out(object, [choice], usage))
            }
        }
    }
}

/// `data: {json}\n\n`.
fn sse(value: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"data: ");
    write_json(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Wire for OpenAi {
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const STABLE_PIECES: bool = true;

    fn preamble(&self, usage: Option<Usage>) -> Bytes {
        let delta = match self.api {
            Api::Chat => Delta {
                role: Some("assistant"),
                ..Delta::default()
            },
            Api::Completions => Delta {
                content: Some(""),
                ..Delta::default()
            },
        };
        self.event(delta, None, usage)
    }

    fn piece(&self, piece: &Piece) -> Bytes {
        let text = token_text(piece.tokens);
        let mut delta = Delta {
            role: (piece.first && !self.role_sent).then_some("assistant"),
            ..Delta::default()
        };
        match piece.kind {
            Kind::Reasoning => delta.reasoning_content = Some(&text),
            Kind::Answer => delta.content = Some(&text),
        }
        self.event(delta, piece.finish.map(|f| f.as_str()), piece.usage)
    }

    fn malformed(&self) -> Bytes {
        Bytes::from_static(b"data: {not json\n\n")
    }

    fn end(&self, summary: &Summary) -> Bytes {
        let mut out = Vec::with_capacity(256);
        if self.include_usage {
            let choices: [(); 0] = [];
            out.extend_from_slice(&sse(&self.out(
                self.chunk_object(),
                choices,
                Some(summary.usage),
            )));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }

    fn whole(&self, summary: &Summary) -> Bytes {
        let answer = token_text(summary.answer);
        let finish = Some(summary.finish.as_str());
        let usage = Some(summary.usage);
        let mut out = Vec::with_capacity(answer.len() + 320);
        match self.api {
            Api::Chat => {
                let reasoning = token_text(summary.reasoning);
                let message = Delta {
                    role: Some("assistant"),
                    content: Some(&answer),
                    reasoning_content: (summary.reasoning > 0).then_some(&*reasoning),
                };
                let choice = ChatChoice {
                    index: 0,
                    delta: None,
                    message: Some(message),
                    logprobs: None,
                    finish_reason: finish,
                };
                write_json(&mut out, &self.out("chat.completion", [choice], usage));
            }
            Api::Completions => {
                let choice = TextChoice {
                    index: 0,
                    text: &answer,
                    logprobs: None,
                    finish_reason: finish,
                };
                write_json(&mut out, &self.out("text_completion", [choice], usage));
            }
        }
        Bytes::from(out)
    }

    fn error(status: StatusCode, message: &str) -> Response {
        let kind = match status.as_u16() {
            400 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        let body = serde_json::json!({
            "error": { "message": message, "type": kind, "param": null, "code": status.as_u16() }
        });
        (status, Json(body)).into_response()
    }
}
