//! The prefix cache as a client sees it: a conversation sent turn by turn
//! (each turn = the history, the server's actual reply, a new user message)
//! reports its history as `cached_tokens` and gets a TTFT shorter by
//! `prefill_per_token` × those tokens; unrelated prompts miss; a shared
//! system prompt hits its full blocks only; a small cache evicts the least
//! recently used prompts; unusable sizes stop the simulator, naming the key.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use barrage_common::simulator::PrefixCache;
use serde_json::{Value, json};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

use crate::support::*;

const BLOCK: u64 = 16;

/// `n` distinct words starting with `tag`: "a0 a1 a2 …".
fn words(tag: &str, n: usize) -> String {
    let w: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    w.join(" ")
}

fn cache(capacity_tokens: u64) -> PrefixCache {
    PrefixCache {
        enabled: true,
        block_tokens: BLOCK as u32,
        capacity_tokens,
    }
}

/// `n` rounded down to whole blocks.
fn blocks(n: u64) -> u64 {
    n / BLOCK * BLOCK
}

/// What one turn saw.
#[derive(Debug)]
struct Turn {
    ttft_ms: f64,
    prompt: u64,
    cached: u64,
    reply: String,
}

/// Sends one streamed chat turn and reads its reply and usage.
async fn turn(client: &reqwest::Client, base: &str, messages: &[Value], max_tokens: u32) -> Turn {
    let body = json!({"model": "m", "messages": messages, "max_tokens": max_tokens,
        "stream": true, "stream_options": {"include_usage": true}});
    let url = format!("{base}/v1/chat/completions");
    let reply = post(client, &url, &body, Framing::Sse).await;
    assert_eq!(reply.status, 200);
    let usage = reply.last_json()["usage"].clone();
    Turn {
        ttft_ms: as_ms(reply.ttft()),
        prompt: usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        cached: usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        reply: reply.outputs().into_iter().map(|(_, t)| t).collect(),
    }
}

/// Three turns, each carrying the history with the actual replies.
async fn conversation(client: &reqwest::Client, base: &str, users: &[String]) -> Vec<Turn> {
    let mut messages = Vec::new();
    let mut turns = Vec::new();
    for user in users {
        messages.push(json!({"role": "user", "content": user}));
        let t = turn(client, base, &messages, 40).await;
        messages.push(json!({"role": "assistant", "content": t.reply}));
        turns.push(t);
    }
    turns
}

fn users() -> Vec<String> {
    vec![words("a", 200), words("b", 100), words("c", 100)]
}

fn slow_prefill(prefix_cache: PrefixCache) -> SimConfig {
    SimConfig {
        ttft: ms(10),
        prefill_per_token: ms(1),
        prefix_cache,
        ..fast()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_turns_hit_their_history_and_start_sooner() {
    timed(|| async {
        let (on_server, on_base, on_client) = start(slow_prefill(cache(1 << 18))).await;
        let on = conversation(&on_client, &on_base, &users()).await;
        let stats = on_server.stats();
        on_server.shutdown().await;
        let (off_server, off_base, off_client) = start(slow_prefill(PrefixCache::default())).await;
        let off = conversation(&off_client, &off_base, &users()).await;
        off_server.shutdown().await;
        // Turn 2's history: 200 words + the 40-token reply; turn 3's: that,
        // 100 words and another reply. Full blocks of it hit.
        let prompts: Vec<u64> = on.iter().map(|t| t.prompt).collect();
        assert_eq!(prompts, [200, 340, 480]);
        let cached: Vec<u64> = on.iter().map(|t| t.cached).collect();
        assert_eq!(cached, [0, blocks(240), blocks(380)]);
        assert!(on[0].reply.starts_with("tok ") && on[0].reply.split_whitespace().count() == 40);
        assert!(off.iter().all(|t| t.cached == 0), "no cache, no details");
        assert_eq!(
            (stats.prefix_cache_lookups, stats.prefix_cache_hits),
            (3, 2)
        );
        assert_eq!(stats.prefix_cache_query_tokens, 200 + 340 + 480);
        assert_eq!(stats.prefix_cache_hit_tokens, cached.iter().sum::<u64>());
        for ((a, b), cached) in on.iter().zip(&off).zip(&cached) {
            let saved = b.ttft_ms - a.ttft_ms;
            println!(
                "ttft {:.1} ms cached vs {:.1} ms not: {saved:.1} ms saved for {cached} tokens",
                a.ttft_ms, b.ttft_ms
            );
            ensure!(
                (saved - *cached as f64).abs() < 25.0,
                "saved {saved:.1} ms for {cached} tokens"
            );
        }
        Ok(())
    })
    .await;
}

/// A non-streamed chat request of `messages`; its usage.
async fn whole(client: &reqwest::Client, url: &str, body: Value) -> Value {
    let reply = post(client, url, &body, Framing::Whole).await;
    assert_eq!(reply.status, 200);
    reply.last_json()["usage"].clone()
}

fn chat_of(system: &str, user: &str) -> Value {
    json!({"model": "m", "max_tokens": 2, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_prompts_miss() {
    bounded(async {
        let (server, base, client) = start(SimConfig {
            prefix_cache: cache(1 << 18),
            ..fast()
        })
        .await;
        let url = format!("{base}/v1/chat/completions");
        for tag in ["p", "q", "r"] {
            let usage = whole(&client, &url, chat_of(&words(tag, 50), &words("u", 30))).await;
            assert_eq!(usage["prompt_tokens"], 80);
            assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0, "{tag}");
        }
        let stats = server.stats();
        assert_eq!(
            (stats.prefix_cache_lookups, stats.prefix_cache_hits),
            (3, 0)
        );
        assert_eq!(stats.prefix_cache_hit_tokens, 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_system_prompt_hits_its_full_blocks_only() {
    bounded(async {
        let (server, base, client) = start(SimConfig {
            prefix_cache: cache(1 << 18),
            ..fast()
        })
        .await;
        let url = format!("{base}/v1/chat/completions");
        // 40 system words: blocks 0 and 1 are all system; block 2 mixes in the user's.
        let system = words("s", 40);
        let first = whole(&client, &url, chat_of(&system, &words("x", 30))).await;
        assert_eq!(first["prompt_tokens_details"]["cached_tokens"], 0);
        let second = whole(&client, &url, chat_of(&system, &words("y", 30))).await;
        assert_eq!(second["prompt_tokens"], 70);
        assert_eq!(second["prompt_tokens_details"]["cached_tokens"], blocks(40));
        // A completion of the same words shares the cache (words are its units):
        // every full block of its 70 tokens hits.
        let text = format!("{system} {}", words("y", 30));
        let body = json!({"prompt": text, "max_tokens": 2});
        let usage = whole(&client, &format!("{base}/v1/completions"), body).await;
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], blocks(69));
        // The whole prompt again: its last token is always computed.
        let again = whole(&client, &url, chat_of(&words("s", 32), "")).await;
        assert_eq!(again["prompt_tokens"], 32);
        assert_eq!(again["prompt_tokens_details"]["cached_tokens"], BLOCK);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_evicts_the_least_recently_used_prompt() {
    bounded(async {
        // Room for 4 blocks: two prompts of 2 full blocks each.
        let (server, base, client) = start(SimConfig {
            prefix_cache: cache(4 * BLOCK),
            ..fast()
        })
        .await;
        let url = format!("{base}/v1/completions");
        let cached = |tag: &'static str| {
            let body = json!({"prompt": words(tag, 40), "max_tokens": 1});
            let (client, url) = (client.clone(), url.clone());
            async move {
                let usage = whole(&client, &url, body).await;
                usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .expect("cached_tokens")
            }
        };
        assert_eq!((cached("p").await, cached("q").await), (0, 0));
        assert_eq!(server.stats().prefix_cache_evicted_blocks, 0);
        // A third prompt evicts the oldest one, p.
        assert_eq!(cached("r").await, 0);
        assert_eq!(server.stats().prefix_cache_evicted_blocks, 2);
        assert_eq!(cached("q").await, blocks(40), "q stayed");
        assert_eq!(cached("p").await, 0, "p was evicted");
        assert_eq!(
            server.stats().prefix_cache_evicted_blocks,
            4,
            "r made room for p"
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_cache_sizes_are_refused_naming_the_key() {
    bounded(async {
        let spawn = |block_tokens, capacity_tokens| {
            let prefix_cache = PrefixCache {
                enabled: true,
                block_tokens,
                capacity_tokens,
            };
            let cfg = SimConfig {
                prefix_cache,
                ..fast()
            };
            SimServer::spawn(cfg, "127.0.0.1:0".parse().expect("address"))
        };
        let e = spawn(0, 1024).await.expect_err("block_tokens 0");
        assert!(
            e.to_string()
                .contains("simulator.prefix_cache.block_tokens"),
            "{e}"
        );
        let e = spawn(16, 8).await.expect_err("less than a block");
        assert!(
            e.to_string()
                .contains("simulator.prefix_cache.capacity_tokens"),
            "{e}"
        );
        let bad = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--prefix-cache",
                "--prefix-cache-block-tokens",
                "0",
            ])
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("prefix_cache.block_tokens"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_models_the_cache_with_its_flags() {
    bounded(async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
            .args(["--listen", "127.0.0.1:0", "--ttft", "1ms", "--itl", "1ms"])
            .args(["--prefix-cache", "--prefix-cache-block-tokens", "4"])
            .args(["--prefix-cache-capacity-tokens", "8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("llm-sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("a line");
            line
        })
        .await
        .expect("reader");
        let base = line
            .trim()
            .strip_prefix("llm-sim listening on ")
            .expect("the address line");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let url = format!("{base}/v1/completions");
        let mut cached = Vec::new();
        // 4-word blocks, room for 2: "a" fills it, "b" evicts it.
        for tag in ["a", "a", "b", "a"] {
            let body = json!({"prompt": words(tag, 9), "max_tokens": 1});
            let usage = whole(&client, &url, body).await;
            cached.push(usage["prompt_tokens_details"]["cached_tokens"].clone());
        }
        child.kill().expect("kill");
        let _ = child.wait();
        assert_eq!(cached, [json!(0), json!(8), json!(0), json!(0)]);
    })
    .await;
}

/// ChatML, as Qwen ships it.
const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One token per word of `vocab` (others are `[UNK]`), ChatML markers as
/// special tokens, the template beside it.
fn tokenizer(vocab: &[String]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sim-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ids: HashMap<String, u32> = std::iter::once("[UNK]".to_owned())
        .chain(vocab.iter().cloned())
        .zip(0..)
        .collect();
    let wl = WordLevel::builder()
        .vocab(ids.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .expect("word level");
    let mut t = Tokenizer::new(wl);
    t.with_pre_tokenizer(Some(WhitespaceSplit));
    t.add_special_tokens(&[
        AddedToken::from("<|im_start|>", true),
        AddedToken::from("<|im_end|>", true),
    ]);
    let path = dir.join("tokenizer.json");
    t.save(&path, false).expect("save");
    let config = json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_chat_template_the_next_turn_hits_up_to_the_reply() {
    bounded(async {
        let users = [words("a", 100), words("b", 20)];
        let vocab: Vec<String> = ["user", "assistant", "tok"]
            .iter()
            .map(|w| (*w).to_owned())
            .chain(users.iter().flat_map(|u| u.split(' ').map(str::to_owned)))
            .collect();
        let cfg = SimConfig {
            tokenizer: Some(tokenizer(&vocab)),
            prefix_cache: cache(1 << 18),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let mut messages = vec![json!({"role": "user", "content": users[0]})];
        let first = turn(&client, &base, &messages, 30).await;
        // <|im_start|> user a0…a99 <|im_end|> <|im_start|> assistant
        assert_eq!((first.prompt, first.cached), (105, 0));
        messages.push(json!({"role": "assistant", "content": first.reply}));
        messages.push(json!({"role": "user", "content": users[1]}));
        let second = turn(&client, &base, &messages, 30).await;
        // + tok×30 <|im_end|> <|im_start|> user b0…b19 <|im_end|> <|im_start|> assistant:
        // turn 1's prompt and reply are cached; the template's end marker is not.
        assert_eq!(second.prompt, 105 + 30 + 1 + 2 + 20 + 1 + 2);
        assert_eq!(second.cached, blocks(105 + 30));
        server.shutdown().await;
    })
    .await;
}
