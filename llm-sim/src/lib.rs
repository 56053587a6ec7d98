//! llm-sim: a simulated OpenAI/Ollama-compatible model server with exact,
//! configurable and observable timing — the ground truth for barrage's tests
//! and benchmarks. This module owns the public surface ([`SimServer`],
//! [`SimStats`], [`SimError`]); the configuration schema is
//! [`barrage_common::simulator::SimConfig`].
//!
//! # Endpoints
//! `POST /v1/chat/completions`, `POST /v1/completions` (SSE when
//! `"stream": true`), `GET /v1/models`, `POST /api/generate`, `POST /api/chat`
//! (NDJSON unless `"stream": false`), `GET /api/tags`, `GET /health`,
//! `GET /sim/stats` (a [`SimStats`] as JSON, the `prefix_cache_*` counters
//! included) and `POST /sim/reset` (zeroes the counters, answers with their
//! values just before).
//!
//! # Tokens
//! * Input tokens: whitespace-separated words of every prompt / message text
//!   × `tokens_per_word`, rounded up, at least 1 (token-id prompts of
//!   `/v1/completions` count one token per id). With `tokenizer` set, counted
//!   as a real server counts them instead: chat requests (`/v1/chat/completions`,
//!   `/api/chat`) on the messages rendered with the model's chat template
//!   (`chat_template`, else the one beside the tokenizer; without one, each
//!   message's text), other requests on their prompt text; a template that
//!   refuses the messages is a 400.
//! * Answer length: the request's `max_completion_tokens` / `max_tokens`
//!   (OpenAI) or `options.num_predict` (Ollama) when `honour_max_tokens`
//!   (`finish_reason: "length"`), else a draw from `output_tokens`
//!   (`"stop"`); at least 1.
//! * Every output token is the text `"tok "`, so the words of the output are
//!   its token count.
//! * `reasoning_tokens` come first (chat `reasoning_content` deltas, Ollama
//!   `thinking`) and count in `completion_tokens` / `eval_count` **in addition
//!   to** the answer length. `/v1/completions` has no reasoning channel and
//!   carries none.
//! * With `tokens_per_chunk = k` every chunk carries k tokens (the last of the
//!   reasoning and of the answer may carry fewer; the two never share a chunk).
//!
//! # Timing
//! Every write waits on an absolute deadline with `tokio::time::sleep_until`,
//! so nothing is ever early; tokio's timer wheel has a 1 ms tick, so a write
//! is typically 0–2 ms late (more on a CPU-starved machine), and that
//! lateness never accumulates along a stream.
//! * `t0` is when the request's head reached the simulator, before its
//!   body is read and parsed (the simulator's handling is inside the
//!   injected times, not added to them). A `role_chunk` (chat: a
//!   role-only delta; other APIs: an empty-text chunk) is written at once.
//! * The request then waits FIFO for one of `max_batch` slots (0 = no limit).
//! * The first token-bearing chunk is due at slot + `ttft` +
//!   `prefill_per_token` × uncached input tokens + `ttft_jitter` (all input
//!   tokens are uncached without `prefix_cache`); the intended TTFT (queue
//!   wait included) is what `ttft_injected_*` sums.
//! * Each next chunk of k tokens is due k × step later, step = `itl` ×
//!   (1 + `batch_slowdown` × (A − 1)) + `itl_jitter` per token, A = the
//!   sequences holding a slot at that moment. Deadlines are absolute, so
//!   lateness never accumulates. The end events (usage chunk, `[DONE]`,
//!   `done: true`) follow the last chunk at once.
//! * A non-streaming body is sent when the last chunk would have been.
//!
//! # Prefix cache
//! `prefix_cache = { enabled = true, block_tokens = 16, capacity_tokens = 262144 }`
//! (`--prefix-cache`, `--prefix-cache-block-tokens`,
//! `--prefix-cache-capacity-tokens`): vLLM's automatic prefix caching,
//! reduced to what a client can see.
//! * Units: the prompt's token ids with `tokenizer` (of the rendered chat
//!   template, when there is one) or of a token-id prompt; else its words
//!   (one word = `tokens_per_word` tokens), a chat request's messages read in
//!   order, role names left out.
//! * The units are cut into full blocks of `block_tokens`, each named by a
//!   hash chained over all earlier blocks, so a block matches only after the
//!   same whole prefix. A request's cached tokens are its longest run of
//!   leading blocks in the cache, within its first `len − 1` units (the last
//!   prompt token is always computed, as in vLLM); they cost no prefill time.
//! * Inserted: the prompt's full blocks when the request is admitted (after
//!   any injected HTTP fault); those of the prompt followed by the output
//!   (`"tok "` × completion tokens, reasoning first) when it completes (not
//!   when it is cut).
//! * So without a tokenizer, a conversation's next turn (history, the reply's
//!   text as an assistant message, a new user message) hits every full block
//!   of its history, reply included. With a chat template it hits up to the
//!   end of the reply: the template's tokens after it (end-of-turn marker,
//!   next role header) are new, as on a real server. As the simulator's
//!   reasoning and answer are the same `tok` text, a next turn carrying only
//!   the answer still matches that many output tokens (a real server's would
//!   stop at the prompt).
//! * One LRU of `capacity_tokens / block_tokens` blocks serves every request;
//!   a sequence's blocks are touched last-first, so its tail is evicted
//!   before its head; blocks of running requests are not pinned.
//! * OpenAI responses report `usage.prompt_tokens_details.cached_tokens`
//!   (only with the cache enabled, as vLLM with
//!   `--enable-prompt-tokens-details`); Ollama responses report nothing new,
//!   their `prompt_eval_duration` is shorter.
//!
//! # Faults (drawn per request from `StdRng(seed, request number)`)
//! Request numbers count parsed generation requests in arrival order, so N
//! requests draw the same set of faults on every run with the same seed
//! (which concurrent request gets which one may vary).
//! `http_500` / `http_429`: that status and an error body, nothing generated.
//! With n token-bearing chunks: `malformed` replaces chunk ⌊(n−1)/2⌋ by
//! `data: {not json` (Ollama: `{not json`), its tokens count as sent, and the
//! stream continues to the end; `cut` drops the connection (no terminating
//! chunk, no usage, no `[DONE]`) when chunk ⌈n/2⌉ — or the end, for n = 1 —
//! is due; `stall` delays chunk max(1, ⌊n/2⌋) — or the end — by
//! `stall_duration`. Non-streaming: `stall` delays the body, `cut` sends half
//! of it and drops the connection, `malformed` sends `{not json`.

mod count;
mod embeddings;
mod engine;
mod ollama;
mod openai;
mod plan;
mod precise;
mod prefix;
mod server;
mod stats;
mod stream;

use std::net::SocketAddr;

pub use barrage_common::simulator::SimConfig;
pub use barrage_common::simulator::SimConfigError;
pub use server::SimServer;
pub use stats::SimStats;

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] SimConfigError),
    /// A tokenizer or chat template file that cannot be used.
    #[error("simulator.{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
