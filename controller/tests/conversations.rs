//! Multi-turn conversations replayed turn by turn, through the real path
//! (embedded agents over gRPC, HTTP on loopback): a chat server written here
//! records every request it receives and answers each with a reply of its
//! own, so the tests can check that turn N+1 carried the server's actual
//! reply to turn N, the think time between them, how conversations end, and
//! the per-turn figures of the summary, requests.csv and report.html.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barrage_common::simulator::SimConfig;
use barrage_controller::run::{RunOptions, Verdict};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{LOAD, run_text, scratch, sim_with};

/// One request the server answered.
#[derive(Debug, Clone)]
struct Seen {
    messages: Vec<Value>,
    reply: String,
    arrived: Instant,
    answered: Instant,
    status: u16,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A loopback chat server (OpenAI streaming, one request per connection):
/// every answer is `reply-N ...` with N unique, usage counted in words;
/// a request whose first user message holds "doomed" and that has two user
/// messages gets a 500.
async fn chat_server() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let log: Log = Arc::default();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (l, c) = (l.clone(), counter.clone());
            tokio::spawn(async move {
                let _ = answer(sock, l, c).await;
            });
        }
    });
    (addr, log)
}

fn users(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect()
}

async fn answer(
    mut sock: TcpStream,
    log: Log,
    counter: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let body = crate::support::read_http_body(&mut sock).await?;
    let arrived = Instant::now();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let u = users(&messages);
    if u.len() == 2 && u[0].contains("doomed") {
        sock.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope")
            .await?;
        log.lock().expect("log").push(Seen {
            messages,
            reply: String::new(),
            arrived,
            answered: Instant::now(),
            status: 500,
        });
        return sock.shutdown().await;
    }
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reply = format!("reply-{n} to turn {} done", u.len());
    let prompt_words: usize = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(|c| c.split_whitespace().count())
        .sum();
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    )
    .await?;
    for (i, word) in reply.split(' ').enumerate() {
        let piece = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        let ev = json!({"choices": [{"delta": {"content": piece}}]});
        sock.write_all(format!("data: {ev}\n\n").as_bytes()).await?;
        sock.flush().await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let usage =
        json!({"choices": [], "usage": {"prompt_tokens": prompt_words, "completion_tokens": 5}});
    sock.write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await?;
    sock.flush().await?;
    log.lock().expect("log").push(Seen {
        messages,
        reply,
        arrived,
        answered: Instant::now(),
        status: 200,
    });
    sock.shutdown().await
}

/// A `messages` dataset: conversations of three user turns, each with a
/// recorded assistant reply that must never be sent.
fn dataset(dir: &Path, lines: &[[&str; 3]]) -> String {
    let text: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, turns)| {
            let mut msgs =
                vec![json!({"role": "system", "content": format!("system of conversation {i}")})];
            for (k, t) in turns.iter().enumerate() {
                msgs.push(json!({"role": "user", "content": t}));
                msgs.push(
                    json!({"role": "assistant", "content": format!("RECORDED answer {i}.{k}")}),
                );
            }
            Value::Array(msgs).to_string()
        })
        .collect();
    let path = dir.join("chats.jsonl");
    std::fs::write(&path, text.join("\n")).expect("write dataset");
    path.display().to_string()
}

/// A plan replaying `data` on `agents` embedded agents with `load`.
fn plan(addr: &str, data: &str, dir: &Path, agents: u32, load: &str) -> String {
    format!(
        r#"
        [target]
        url = "http://{addr}/v1/chat/completions"
        api = "openai-chat"
        timeout = "10s"
        [request]
        max_tokens = 8
        [dataset]
        kind = "messages"
        path = "{data}"
        [conversation]
        think_time = "150ms"
        [cluster]
        embedded_agents = {agents}
        [load]
        {load}
        [output]
        dir = "{}"
        "#,
        dir.display()
    )
}

/// Every request's history is the server's own: the messages before its
/// last user turn end with an assistant message that the server sent (each
/// reply is unique) to the request holding exactly the messages before it.
fn assert_histories_are_the_servers_replies(seen: &[Seen]) {
    let asked_for: HashMap<&str, String> = seen
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| {
            (
                s.reply.as_str(),
                Value::Array(s.messages.clone()).to_string(),
            )
        })
        .collect();
    for s in seen {
        let m = &s.messages;
        assert_eq!(m.last().map(|x| &x["role"]), Some(&json!("user")), "{m:?}");
        assert!(
            !Value::Array(m.clone()).to_string().contains("RECORDED"),
            "{m:?}"
        );
        if users(m).len() < 2 {
            continue;
        }
        let before = Value::Array(m[..m.len() - 2].to_vec()).to_string();
        let reply = m[m.len() - 2]["content"].as_str().unwrap_or_default();
        assert_eq!(m[m.len() - 2]["role"], "assistant");
        assert_eq!(
            asked_for.get(reply),
            Some(&before),
            "turn {} must carry the server's reply to the turn before",
            users(m).len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_turn_carries_the_servers_replies_and_waits_the_think_time() {
    let _serial = LOAD.lock().await;
    let (addr, log) = chat_server().await;
    let dir = scratch("conv-replies");
    let data = dataset(
        &dir,
        &[
            ["how are you", "and then what", "thanks bye"],
            ["tell me a story", "make it longer", "the end"],
            ["what is rust", "why is it fast", "ok"],
            ["name a river", "how long is it", "wow"],
        ],
    );
    let o = run_text(
        &plan(&addr, &data, &dir, 2, "users = 2\nconversations = 4"),
        RunOptions::default(),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Completed, "{:?}", o.summary.errors);
    let seen = log.lock().expect("log").clone();
    assert_eq!(seen.len(), 12, "4 conversations of 3 turns");
    assert_histories_are_the_servers_replies(&seen);
    // Think time: each later turn arrived at least 150 ms after the reply
    // it carries was answered.
    let answered_at: HashMap<&str, Instant> = seen
        .iter()
        .map(|s| (s.reply.as_str(), s.answered))
        .collect();
    for s in seen.iter().filter(|s| users(&s.messages).len() >= 2) {
        let m = &s.messages;
        let reply = m[m.len() - 2]["content"].as_str().unwrap_or_default();
        let gap = s.arrived - answered_at[reply];
        assert!(gap >= Duration::from_millis(140), "think time {gap:?}");
    }
    let c = o.summary.conversations.as_ref().expect("conversations");
    assert_eq!((c.started, c.completed, c.abandoned, c.cut), (4, 4, 0, 0));
    let turns: Vec<(u32, u64)> = c.turns.iter().map(|t| (t.turn, t.requests_ok)).collect();
    assert_eq!(turns, vec![(1, 4), (2, 4), (3, 4)]);
    // The server counted every word of the history: later turns carry more.
    let input: Vec<f64> = c
        .turns
        .iter()
        .map(|t| t.input_tokens.mean.expect("input"))
        .collect();
    assert!(input[0] < input[1] && input[1] < input[2], "{input:?}");
    assert_stays_on_one_agent(&o.dir);
}

/// requests.csv: every conversation's turns 1, 2, 3 come from one agent.
fn assert_stays_on_one_agent(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("requests.csv")).expect("requests.csv");
    let rows = barrage_controller::store::csv::parse(&text);
    let head = &rows[0];
    let col = |name: &str| head.iter().position(|h| h == name).expect(name);
    let (agent, conv, turn) = (col("agent"), col("conversation"), col("turn"));
    let mut by_conv: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
    for r in &rows[1..] {
        by_conv
            .entry((r[agent].clone(), r[conv].clone()))
            .or_default()
            .push(r[turn].parse().expect("turn"));
    }
    assert_eq!(by_conv.len(), 4, "{by_conv:?}");
    let agents: std::collections::BTreeSet<&String> = by_conv.keys().map(|(a, _)| a).collect();
    assert_eq!(agents.len(), 2, "both agents ran conversations");
    for turns in by_conv.values_mut() {
        turns.sort_unstable();
        assert_eq!(turns, &vec![1, 2, 3]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_abandons_its_conversation() {
    let _serial = LOAD.lock().await;
    let (addr, log) = chat_server().await;
    let dir = scratch("conv-abandon");
    let data = dataset(
        &dir,
        &[
            ["a doomed start", "this one fails", "never sent"],
            ["a fine start", "still fine", "fine end"],
        ],
    );
    let o = run_text(
        &plan(&addr, &data, &dir, 1, "users = 1\nconversations = 2"),
        RunOptions::default(),
    )
    .await;
    let seen = log.lock().expect("log").clone();
    assert!(
        !seen.iter().any(|s| users(&s.messages)
            .first()
            .is_some_and(|u| u.contains("doomed"))
            && users(&s.messages).len() == 3),
        "the turn after a failed one is never sent"
    );
    let c = o.summary.conversations.as_ref().expect("conversations");
    assert_eq!((c.started, c.completed, c.abandoned, c.cut), (2, 1, 1, 0));
    assert_eq!(o.summary.requests_failed, 1);
    assert_eq!(o.summary.requests_ok, 4);
    assert_eq!(
        o.summary.errors.get("http_5xx"),
        Some(&1),
        "{:?}",
        o.summary.errors
    );
    let t2 = &c.turns[1];
    assert_eq!((t2.turn, t2.requests_ok, t2.requests_failed), (2, 1, 1));
    let summary_txt = std::fs::read_to_string(o.dir.join("summary.txt")).expect("summary.txt");
    assert!(
        summary_txt.contains("Conversations: 2 started, 1 completed, 1 abandoned"),
        "{summary_txt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_conversations_end_with_the_run_and_their_last_turn_drains() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(5),
        ..SimConfig::default()
    })
    .await;
    let dir = scratch("conv-open");
    let text = format!(
        r#"
        [target]
        url = "http://{}/v1/chat/completions"
        api = "openai-chat"
        [request]
        max_tokens = 10
        [dataset]
        input_tokens = 12
        prompts = 8
        [conversation]
        turns = 3
        think_time = "400ms"
        [load]
        rate = 8.0
        arrival = "constant"
        duration = "1500ms"
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        "#,
        sim.addr(),
        dir.display()
    );
    let o = run_text(&text, RunOptions::default()).await;
    sim.shutdown().await;
    let c = o.summary.conversations.as_ref().expect("conversations");
    assert!(c.started >= 8, "about 12 arrivals in 1.5 s: {c:?}");
    assert_eq!(c.started, c.completed + c.abandoned + c.cut, "{c:?}");
    // A conversation needs 2 × 400 ms of think time: those that arrived in
    // the last 0.8 s cannot finish.
    assert!(c.cut >= 4 && c.completed >= 1, "{c:?}");
    assert_eq!(c.abandoned, 0);
    // The drain rule: turns in flight at the end finish; none is cut.
    assert_eq!(o.summary.requests_incomplete, 0);
    assert_eq!(o.summary.requests_failed, 0);
    let turn_ok: u64 = c.turns.iter().map(|t| t.requests_ok).sum();
    assert_eq!(turn_ok, o.summary.requests_ok);
    let html = std::fs::read_to_string(o.dir.join("report.html")).expect("report.html");
    assert!(html.contains("id=\"conversations\""));
}

#[test]
fn conversation_keys_are_checked_against_the_plan() {
    let check = |extra: &str| {
        barrage_common::plan::from_figment(figment::Figment::new().merge(
            <figment::providers::Toml as figment::providers::Format>::string(&format!(
                "[simulator]\n[load]\nusers = 1\nduration = \"1s\"\n{extra}"
            )),
        ))
        .err()
        .map(|e| e.to_string())
    };
    let e = check("conversations = 3").expect("refused");
    assert!(e.starts_with("load.conversations:"), "{e}");
    let e = check("[dataset]\nkind = \"lines\"\npath = \"x\"\n[conversation]").expect("refused");
    assert!(e.starts_with("dataset.kind:"), "{e}");
    let e = check("[target]\napi = \"openai-completions\"\n[conversation]").expect("refused");
    assert!(e.starts_with("target.api:"), "{e}");
    let e = check("[conversation]\nturns = 0").expect("refused");
    assert!(e.starts_with("conversation.turns:"), "{e}");
    let e = check("[conversation]\nthink = \"1s\"").expect("refused");
    assert!(e.contains("think"), "{e}");
    assert_eq!(check("[conversation]\nturns = 2"), None);
}

/// A run of synthetic 3-turn conversations on the built-in simulator, its
/// prefix cache on or off; the per-turn TTFT p50s in ms.
async fn ttft_by_turn(cache: bool) -> (Vec<f64>, barrage_controller::run::RunOutcome) {
    let dir = scratch("conv-cache");
    let text = format!(
        r#"
        [target]
        api = "openai-chat"
        [request]
        max_tokens = 8
        [dataset]
        input_tokens = 300
        prompts = 6
        [conversation]
        turns = 3
        [load]
        users = 2
        conversations = 6
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "10ms"
        itl = "2ms"
        prefill_per_token = "500us"
        prefix_cache = {{ enabled = {cache}, block_tokens = 16 }}
        "#,
        dir.display()
    );
    let o = run_text(&text, RunOptions::default()).await;
    assert_eq!(o.verdict, Verdict::Completed, "{:?}", o.summary.errors);
    let c = o.summary.conversations.as_ref().expect("conversations");
    assert_eq!(c.completed, 6);
    let p50s = c.turns.iter().map(|t| t.ttft.percentiles["p50"]).collect();
    (p50s, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_turns_get_faster_with_the_simulators_prefix_cache() {
    let _serial = LOAD.lock().await;
    let (off, _) = ttft_by_turn(false).await;
    let (on, o) = ttft_by_turn(true).await;
    // Without a cache every turn prefills its whole history (300, ~608,
    // ~916 words at 0.5 ms): TTFT grows by ~150 ms per turn.
    assert!(off[2] - off[0] > 200.0, "no cache: {off:?}");
    // With it, later turns prefill only their new user turn (and the part
    // of a block the reply left): about turn 1's TTFT, far below no cache.
    assert!(on[2] < off[2] - 200.0, "cache {on:?} vs none {off:?}");
    assert!((on[2] - on[0]).abs() < 60.0, "cache: {on:?}");
    let sim = o.summary.simulator.as_ref().expect("simulator stats");
    assert!(sim.prefix_cache_hit_tokens > 0, "{sim:?}");
}

/// examples/multi-turn.toml, run as written by the `controller` binary
/// (only its results folder moved): every conversation completes, and with
/// the prefix cache later turns keep turn 1's TTFT although their history
/// is 4× longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_turn_example_runs_as_written() {
    let _serial = LOAD.lock().await;
    let out = scratch("conv-example");
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/multi-turn.toml");
    let mut cmd = crate::support::controller();
    cmd.env("BARRAGE_OUTPUT__DIR", &out)
        .arg("run")
        .arg(&plan)
        .arg("--quiet");
    let o = tokio::time::timeout(crate::support::TEST_LIMIT, crate::support::output(cmd))
        .await
        .expect("bounded");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = std::fs::read_dir(&out)
        .expect("results")
        .filter_map(Result::ok)
        .map(|e| e.path().join("summary.json"))
        .find(|p| p.exists())
        .expect("summary.json");
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(summary).expect("read")).expect("json");
    let c = &s["conversations"];
    assert_eq!(c["started"], 64);
    assert_eq!(c["completed"], 64);
    let turns = c["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 4);
    let p50 = |k: usize| {
        turns[k]["ttft"]["percentiles"]["p50"]
            .as_f64()
            .expect("p50")
    };
    let input = |k: usize| turns[k]["input_tokens"]["mean"].as_f64().expect("mean");
    assert!(input(3) > 3.5 * input(0), "history grows");
    assert!(
        p50(3) < p50(0) * 1.5,
        "turn 4 {} vs turn 1 {}",
        p50(3),
        p50(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_request_budget_cuts_the_conversation_in_progress() {
    let _serial = LOAD.lock().await;
    let (addr, log) = chat_server().await;
    let dir = scratch("conv-budget");
    let data = dataset(
        &dir,
        &[
            ["first one", "first two", "first three"],
            ["second one", "second two", "second three"],
        ],
    );
    let o = run_text(
        &plan(&addr, &data, &dir, 1, "users = 1\nrequests = 5"),
        RunOptions::default(),
    )
    .await;
    assert_eq!(log.lock().expect("log").len(), 5);
    assert_eq!(o.summary.requests_ok, 5);
    let c = o.summary.conversations.as_ref().expect("conversations");
    assert_eq!((c.started, c.completed, c.abandoned, c.cut), (2, 1, 0, 1));
    let turns: Vec<(u32, u64)> = c.turns.iter().map(|t| (t.turn, t.requests_ok)).collect();
    assert_eq!(turns, vec![(1, 2), (2, 2), (3, 1)]);
}
