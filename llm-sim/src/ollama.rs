//! The Ollama API: `POST /api/generate` and `POST /api/chat` (request
//! parsing and the NDJSON / JSON shapes Ollama sends). Streaming is the
//! default, as in Ollama; the output length comes from `options.num_predict`.
//! Reasoning tokens go out as `thinking` text and count in `eval_count`.
//! The final `done: true` object reports, in nanoseconds: `load_duration` =
//! the wait for a decoding slot (the simulator has no model to load),
//! `prompt_eval_duration` = slot to first token, `eval_duration` = first to
//! last token, `total_duration` = request parsed to end.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::engine::{Call, Piece, Shared, Summary, Usage, Wire, respond, write_json};
use crate::plan::{Ask, Kind, nanos, token_text};
use crate::server::Arrived;
use crate::stats::InFlight;
use barrage_common::chat_template::ChatMessage;

/// The request fields the simulator reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Request {
    model: Option<String>,
    prompt: Option<String>,
    system: Option<String>,
    messages: Option<Vec<Message>>,
    stream: Option<bool>,
    options: Option<Options>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Options {
    num_predict: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Generate,
    Chat,
}

/// `POST /api/generate`.
pub(crate) async fn generate(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(t0)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    handle(shared, t0, body, Api::Generate).await
}

/// `POST /api/chat`.
pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    Extension(Arrived(t0)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    handle(shared, t0, body, Api::Chat).await
}

async fn handle(shared: Arc<Shared>, t0: Instant, body: Bytes, api: Api) -> Response {
    let in_flight = InFlight::begin(Arc::clone(&shared.counters));
    let req: Request = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => {
            let message = format!("invalid request body: {e}");
            return Ollama::error(StatusCode::BAD_REQUEST, &message);
        }
    };
    fn text(t: &Option<String>) -> &str {
        t.as_deref().unwrap_or_default()
    }
    let counted = match api {
        // The system text comes first, as Ollama's templates put it.
        Api::Generate => shared.count_texts(&[text(&req.system), text(&req.prompt)], &[]),
        Api::Chat => {
            let msgs: Vec<ChatMessage<'_>> = (req.messages.iter().flatten())
                .map(|m| ChatMessage {
                    role: &m.role,
                    content: text(&m.content),
                })
                .collect();
            shared.count_chat(&msgs)
        }
    };
    let prompt = match counted {
        Ok(prompt) => prompt,
        Err(e) => return Ollama::error(StatusCode::BAD_REQUEST, &e),
    };
    // num_predict <= 0 means "no limit" (-1) or "fill the context" (-2) in Ollama.
    let max_tokens = req
        .options
        .as_ref()
        .and_then(|o| o.num_predict)
        .filter(|&n| n > 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let wire = Ollama {
        api,
        model: req.model.unwrap_or_else(|| shared.cfg.model.clone()),
    };
    let call = Call {
        number: shared.next_request(),
        wire,
        ask: Ask {
            input_tokens: prompt.tokens,
            max_tokens,
            reasoning: true,
        },
        prompt,
        stream: req.stream.unwrap_or(true),
        continuous: false,
    };
    respond(shared, in_flight, t0, call).await
}

/// The per-request rendering state of an Ollama response.
#[derive(Debug)]
struct Ollama {
    api: Api,
    model: String,
}

#[derive(Serialize)]
struct Out<'a> {
    model: &'a str,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<MessageOut<'a>>,
    done: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    summary: Option<Final>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
}

#[derive(Serialize)]
struct Final {
    done_reason: &'static str,
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u64,
    prompt_eval_duration: u64,
    eval_count: u64,
    eval_duration: u64,
}

impl From<&Summary> for Final {
    fn from(s: &Summary) -> Self {
        Final {
            done_reason: s.finish.as_str(),
            total_duration: nanos(s.total),
            load_duration: nanos(s.queue),
            prompt_eval_count: s.usage.prompt,
            prompt_eval_duration: nanos(s.prefill),
            eval_count: s.usage.completion,
            eval_duration: nanos(s.decode),
        }
    }
}

impl Ollama {
    /// One object with the given answer and thinking text; an NDJSON line
    /// (newline-terminated) when streaming.
    fn object(
        &self,
        content: &str,
        thinking: Option<&str>,
        summary: Option<&Summary>,
        line: bool,
    ) -> Bytes {
        let created_at = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let (response, message, thinking) = match self.api {
            Api::Generate => (Some(content), None, thinking),
            Api::Chat => {
                let message = MessageOut {
                    role: "assistant",
                    content,
                    thinking,
                };
                (None, Some(message), None)
            }
        };
        let out = Out {
            model: &self.model,
            created_at,
            response,
            thinking,
            message,
            done: summary.is_some(),
            summary: summary.map(Final::from),
        };
        let mut bytes = Vec::with_capacity(256 + content.len());
        write_json(&mut bytes, &out);
        if line {
            bytes.push(b'\n');
        }
        Bytes::from(bytes)
    }
}

impl Wire for Ollama {
    const STREAM_CONTENT_TYPE: &'static str = "application/x-ndjson";
    /// Every object carries its own `created_at`.
    const STABLE_PIECES: bool = false;

    fn preamble(&self, _usage: Option<Usage>) -> Bytes {
        self.object("", None, None, true)
    }

    fn piece(&self, piece: &Piece) -> Bytes {
        let text = token_text(piece.tokens);
        match piece.kind {
            Kind::Reasoning => self.object("", Some(&text), None, true),
            Kind::Answer => self.object(&text, None, None, true),
        }
    }

    fn malformed(&self) -> Bytes {
        Bytes::from_static(b"{not json\n")
    }

    fn end(&self, summary: &Summary) -> Bytes {
        self.object("", None, Some(summary), true)
    }

    fn whole(&self, summary: &Summary) -> Bytes {
        let answer = token_text(summary.answer);
        let thinking = token_text(summary.reasoning);
        let thinking = (summary.reasoning > 0).then_some(&*thinking);
        self.object(&answer, thinking, Some(summary), false)
    }

    fn error(status: StatusCode, message: &str) -> Response {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
