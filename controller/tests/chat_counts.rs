//! Input tokens as the server counts them: llm-sim given a tokenizer and a
//! chat template counts `prompt_tokens` on the rendered template, as a real
//! chat server does, and barrage's own count (with the same tokenizer
//! and template, found beside `tokenizer.json` or named by the plan) must
//! agree request by request, for chat and completions APIs, across
//! datasets, whether the server's usage is sent or withheld.

use std::path::{Path, PathBuf};

use barrage_common::plan::{ApiKind, DatasetKind, DatasetSection};
use barrage_controller::dataset::load_for;
use barrage_controller::run::RunOptions;
use barrage_controller::store::csv as requests_csv;
use tokenizers::{AddedToken, Tokenizer};

use crate::datasets::tokenized::byte_bpe;
use crate::support::{LOAD, run_text, scratch};

/// Qwen2.5-Instruct's template without its tools branch: ChatML with a
/// default system message, block tags on their own lines as shipped.
const CHATML: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

/// Meta-Llama-3-8B-Instruct's template, as shipped.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const SPECIALS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// A model folder as Hugging Face ships one: a byte-level BPE
/// `tokenizer.json` with the templates' special tokens, and a
/// `tokenizer_config.json` holding the ChatML template; `llama3.jinja`
/// beside them for plans that name it.
fn model_dir(out: &Path) -> PathBuf {
    let dir = out.join("model");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut tok = Tokenizer::from_file(byte_bpe(out)).expect("bpe");
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    tok.save(dir.join("tokenizer.json"), false).expect("save");
    let config = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": CHATML,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("config");
    std::fs::write(dir.join("llama3.jinja"), LLAMA3).expect("llama3");
    dir
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

/// One run's plan: `dataset` lines go under `[dataset]`, the simulator
/// counts with the same tokenizer (and `template`, when named).
fn plan(out: &Path, api: &str, usage: bool, dataset: &str, template: Option<&str>) -> String {
    let model = out.join("model");
    let tok = model.join("tokenizer.json").display().to_string();
    let sim_template = template.map_or(String::new(), |t| {
        format!("chat_template = \"{}\"", model.join(t).display())
    });
    format!(
        r#"
        name = "chat-counts"
        [target]
        api = "{api}"
        include_usage = {usage}
        [request]
        max_tokens = 2
        [dataset]
        tokenizer = "{tok}"
        {dataset}
        [load]
        users = 4
        requests = 12
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "1ms"
        itl = "1ms"
        tokenizer = "{tok}"
        {sim_template}
        "#,
        out.join(format!("run-{api}-{usage}")).display()
    )
}

/// Per request: (prompt index, input tokens, their source), from requests.csv.
fn rows(dir: &Path) -> Vec<(usize, u64, String)> {
    let text = std::fs::read_to_string(dir.join("requests.csv")).expect("requests.csv");
    let mut rows = requests_csv::parse(&text).into_iter();
    let header = rows.next().expect("header");
    let col = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (p, n, s) = (
        col("prompt_index"),
        col("input_tokens"),
        col("input_source"),
    );
    rows.filter(|r| r.len() == header.len())
        .map(|r| {
            (
                r[p].parse().expect("index"),
                r[n].parse().expect("tokens"),
                r[s].clone(),
            )
        })
        .collect()
}

/// The dataset the controller loads for `api`, as a section.
fn section(
    out: &Path,
    kind: DatasetKind,
    extra: impl FnOnce(&mut DatasetSection),
) -> DatasetSection {
    let mut d = DatasetSection {
        kind,
        tokenizer: Some(out.join("model/tokenizer.json")),
        ..DatasetSection::default()
    };
    extra(&mut d);
    d
}

const CHAT: (&str, ApiKind) = ("openai-chat", ApiKind::OpenaiChat);
const COMPLETIONS: (&str, ApiKind) = ("openai-completions", ApiKind::OpenaiCompletions);

/// Runs `dataset` against the simulator for `apis`, usage sent and
/// withheld; every request's count equals the server's.
async fn agree(
    out: &Path,
    apis: &[(&str, ApiKind)],
    d: &DatasetSection,
    toml: &str,
    template: Option<&str>,
) {
    for &(api, kind) in apis {
        let chat = kind == ApiKind::OpenaiChat;
        let loaded = load_for(d, None, Some(kind)).expect("dataset");
        let client: Vec<u64> = loaded
            .prompts
            .iter()
            .map(|p| u64::from(p.input_tokens))
            .collect();
        assert!(client.iter().all(|&n| n > 0), "{api}: {client:?}");
        let sim_template = if chat { template } else { None };
        for usage in [true, false] {
            let text = plan(out, api, usage, toml, sim_template);
            let outcome = run_text(&text, RunOptions::default()).await;
            let s = &outcome.summary;
            let sim = s.simulator.clone().expect("simulator stats");
            let what = format!("{api}, usage {usage}, {toml}");
            assert_eq!(s.requests_ok, 12, "{what}");
            assert_eq!(s.input_tokens, sim.input_tokens, "{what}: totals");
            let from = &s.token_source.input;
            let rows = rows(&outcome.dir);
            assert_eq!(rows.len(), 12, "{what}");
            let source = match (usage, chat) {
                (true, _) => "server",
                (false, true) => "tokenizer_chat_template",
                (false, false) => "tokenizer",
            };
            for (i, n, src) in &rows {
                assert_eq!(*n, client[*i], "{what}: prompt {i}, client vs row");
                assert_eq!(src, source, "{what}");
            }
            let check = &s.accuracy.token_counts.client_server_mismatch;
            if usage {
                assert_eq!(from.server, 12, "{what}");
                // Counted both ways, request by request, and equal.
                assert_eq!(
                    (check.requests_compared, check.requests_mismatched),
                    (12, 0),
                    "{what}"
                );
                assert_eq!(check.client_input_tokens, check.server_input_tokens);
            } else {
                assert!(!check.measured, "{what}");
                assert_eq!(from.tokenizer, 12, "{what}");
                let templated = if chat { 12 } else { 0 };
                assert_eq!(from.tokenizer_chat_template, templated, "{what}");
            }
            assert_eq!(
                s.token_source.chat_template.is_some(),
                chat,
                "{what}: {:?}",
                s.token_source
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_counts_equal_the_server_counts_for_chat_and_completions_across_datasets() {
    let _serial = LOAD.lock().await;
    let out = scratch("chat-counts");
    model_dir(&out);
    // Random prompts of exact lengths as the server counts them; a length
    // the template alone fills (Qwen's default system message) is refused.
    let short = section(&out, DatasetKind::Random, |d| d.input_tokens = 48);
    let e = load_for(&short, None, Some(ApiKind::OpenaiChat)).expect_err("too short");
    assert!(e.to_string().contains("leaves no room for text"), "{e}");
    assert!(e.to_string().contains("tokenizer_config.json makes"), "{e}");
    let random = section(&out, DatasetKind::Random, |d| {
        d.input_tokens = 160;
        d.prompts = 12;
    });
    agree(
        &out,
        &[CHAT, COMPLETIONS],
        &random,
        "input_tokens = 160\nprompts = 12",
        None,
    )
    .await;
    // A messages dataset (system, user, assistant history) and plain lines.
    let messages = section(&out, DatasetKind::Messages, |d| {
        d.path = Some(data("messages.jsonl").into());
    });
    let toml = format!("kind = \"messages\"\npath = \"{}\"", data("messages.jsonl"));
    agree(&out, &[CHAT, COMPLETIONS], &messages, &toml, None).await;
    let lines = section(&out, DatasetKind::Lines, |d| {
        d.path = Some(data("prompts.txt").into());
    });
    let toml = format!("kind = \"lines\"\npath = \"{}\"", data("prompts.txt"));
    agree(&out, &[CHAT, COMPLETIONS], &lines, &toml, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lengths_are_exact_with_the_template_the_plan_names() {
    let _serial = LOAD.lock().await;
    let out = scratch("chat-counts-llama");
    let model = model_dir(&out);
    let random = section(&out, DatasetKind::Random, |d| {
        d.input_tokens = 40;
        d.prompts = 12;
        d.chat_template = Some(model.join("llama3.jinja"));
    });
    let toml = format!(
        "input_tokens = 40\nprompts = 12\nchat_template = \"{}\"",
        model.join("llama3.jinja").display()
    );
    // The template applies to chat APIs only (a completions plan naming one
    // is refused at load).
    agree(&out, &[CHAT], &random, &toml, Some("llama3.jinja")).await;
    let e = load_for(&random, None, Some(ApiKind::OpenaiCompletions)).expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("dataset.chat_template: applies only to chat APIs"),
        "{e}"
    );
    // Exact as the server counts: 40 tokens each, template included, and
    // fewer in the raw text alone.
    let chat = load_for(&random, None, Some(ApiKind::OpenaiChat)).expect("chat");
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).expect("tokenizer");
    for p in &chat.prompts {
        assert_eq!(p.input_tokens, 40);
        assert!(p.input_chat_template);
        let raw = tok
            .encode(p.messages[0].content.as_str(), false)
            .expect("encode");
        assert!(
            raw.get_ids().len() < 40,
            "the template's tokens are counted"
        );
    }
    let info = chat.counted.expect("counted");
    assert_eq!(info.chat_template, Some(model.join("llama3.jinja")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_stops_the_run_before_traffic_naming_the_file() {
    let dir = scratch("chat-broken");
    model_dir(&dir);
    std::fs::write(
        dir.join("broken.jinja"),
        "{% for m in messages %}{{ m.content }}",
    )
    .expect("write");
    let body = r#"
        [target]
        url = "SIM_URL"
        [dataset]
        tokenizer = "model/tokenizer.json"
        chat_template = "broken.jinja"
        [load]
        users = 1
        requests = 4
        [output]
        dir = "OUT"
        "#;
    let (code, stderr, seen) = crate::support::run_binary_with(&dir, body, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("dataset.chat_template") && stderr.contains("broken.jinja"),
        "{stderr}"
    );
    assert!(stderr.contains("not a valid Jinja template"), "{stderr}");
    assert_eq!(seen, 0, "nothing was sent");
}

#[test]
fn bad_configs_and_refusing_templates_name_the_file_and_the_problem() {
    let out = scratch("chat-bad");
    let model = model_dir(&out);
    let chat = Some(ApiKind::OpenaiChat);
    // A tokenizer_config.json that is not JSON.
    std::fs::write(model.join("tokenizer_config.json"), "{\"chat_template\": ").expect("write");
    let d = section(&out, DatasetKind::Random, |d| d.input_tokens = 200);
    let e = load_for(&d, None, chat).expect_err("bad json").to_string();
    assert!(
        e.starts_with("dataset.tokenizer ") && e.contains("tokenizer_config.json: not valid JSON"),
        "{e}"
    );
    // A named file that is missing.
    let missing = section(&out, DatasetKind::Random, |d| {
        d.chat_template = Some(out.join("nope.jinja"));
    });
    let e = load_for(&missing, None, chat)
        .expect_err("missing")
        .to_string();
    assert!(
        e.starts_with("dataset.chat_template ") && e.contains("nope.jinja"),
        "{e}"
    );
    // A template that refuses a system message, as Gemma's does.
    std::fs::write(model.join("tokenizer_config.json"), "{}").expect("write");
    std::fs::write(
        model.join("no-system.jinja"),
        "{% for m in messages %}{% if m.role == 'system' %}\
         {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}",
    )
    .expect("write");
    let refusing = section(&out, DatasetKind::Messages, |d| {
        d.path = Some(data("messages.jsonl").into());
        d.chat_template = Some(model.join("no-system.jinja"));
    });
    let e = load_for(&refusing, None, chat)
        .expect_err("raised")
        .to_string();
    assert!(
        e.starts_with("dataset.chat_template ") && e.contains("no-system.jinja"),
        "{e}"
    );
    assert!(e.contains("System role not supported"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_template_chat_counts_fall_back_to_raw_text_and_the_summary_says_so() {
    let _serial = LOAD.lock().await;
    let out = scratch("chat-fallback");
    let model = model_dir(&out);
    // A config without chat_template (and no chat_template.jinja).
    std::fs::write(
        model.join("tokenizer_config.json"),
        r#"{"bos_token": "<|begin_of_text|>"}"#,
    )
    .expect("write");
    let text = plan(
        &out,
        "openai-chat",
        false,
        "input_tokens = 30\nprompts = 12",
        None,
    );
    let outcome = run_text(&text, RunOptions::default()).await;
    let s = &outcome.summary;
    let sim = s.simulator.clone().expect("simulator stats");
    assert_eq!(s.requests_ok, 12);
    // The simulator, finding no template either, counts raw text too.
    assert_eq!(s.input_tokens, 12 * 30);
    assert_eq!(s.input_tokens, sim.input_tokens);
    let t = &s.token_source;
    assert_eq!(
        (t.input.tokenizer, t.input.tokenizer_chat_template),
        (12, 0)
    );
    assert_eq!(t.chat_template, None);
    let how = t.input_counting.clone().expect("input_counting");
    assert!(
        how.contains("raw text") && how.contains("has no \"chat_template\""),
        "{how}"
    );
    assert!(s.notes.contains(&how), "{:?}", s.notes);
    let html = std::fs::read_to_string(outcome.dir.join("report.html")).expect("report.html");
    assert!(html.contains("Input tokens counted"), "the report says how");
    let json = std::fs::read_to_string(outcome.dir.join("summary.json")).expect("summary.json");
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["token_source"]["input"]["tokenizer_chat_template"], 0);
    assert_eq!(json["token_source"]["input_counting"], how.as_str());

    // A server that does apply a template, reporting usage: every request's
    // count differs from the client's raw one, and the summary counts it.
    let text = plan(
        &out,
        "openai-chat",
        true,
        "input_tokens = 30\nprompts = 12",
        Some("llama3.jinja"),
    );
    let outcome = run_text(&text, RunOptions::default()).await;
    let s = &outcome.summary;
    let m = &s.accuracy.token_counts.client_server_mismatch;
    assert_eq!((m.requests_compared, m.requests_mismatched), (12, 12));
    assert_eq!(m.client_input_tokens, 12 * 30);
    assert_eq!(
        m.server_input_tokens, s.input_tokens,
        "the figures are the server's"
    );
    assert!(m.server_input_tokens > m.client_input_tokens);
    assert!(
        m.note.contains("differed from the server's on 12 of 12"),
        "{}",
        m.note
    );
}

#[test]
fn a_traces_input_lengths_are_exact_as_a_chat_server_counts_them() {
    let out = scratch("chat-trace");
    let model = model_dir(&out);
    let lens = [120u32, 150, 200];
    let rows: String = lens
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!("{{\"timestamp\": {i}, \"input_length\": {n}, \"output_length\": 2}}\n")
        })
        .collect();
    let path = out.join("trace.jsonl");
    std::fs::write(&path, rows).expect("trace");
    let load = barrage_common::load::LoadSection {
        trace: Some(path),
        ..barrage_common::load::LoadSection::default()
    };
    let d = section(&out, DatasetKind::Random, |_| {});
    let t = barrage_controller::trace::load_for(&load, &d, None, Some(ApiKind::OpenaiChat))
        .expect("trace")
        .expect("some");
    // Rendered with the ChatML template beside the tokenizer and re-encoded
    // here: exactly each row's length.
    let tmpl = barrage_common::chat_template::ChatTemplate::beside(&model.join("tokenizer.json"));
    let Ok(barrage_common::chat_template::Found::Template(tmpl)) = tmpl else {
        panic!("the template is beside the tokenizer");
    };
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).expect("tokenizer");
    for (p, n) in t.prompts.iter().zip(lens) {
        let msg = barrage_common::chat_template::ChatMessage {
            role: "user",
            content: &p.messages[0].content,
        };
        let rendered = tmpl.render(&[msg]).expect("renders");
        let ids = tok.encode(rendered.as_str(), false).expect("encode");
        assert_eq!(ids.get_ids().len(), n as usize);
        assert_eq!((p.input_tokens, p.input_chat_template), (n, true));
    }
    let counted = t.counted.expect("counted");
    assert_eq!(
        counted.chat_template,
        Some(model.join("tokenizer_config.json"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_chat_counts_equal_the_servers_prompt_eval_count() {
    let _serial = LOAD.lock().await;
    let out = scratch("chat-ollama");
    model_dir(&out);
    let toml = format!("kind = \"messages\"\npath = \"{}\"", data("messages.jsonl"));
    let d = section(&out, DatasetKind::Messages, |d| {
        d.path = Some(data("messages.jsonl").into());
    });
    let client = load_for(&d, None, Some(ApiKind::OllamaChat)).expect("dataset");
    let outcome = run_text(
        &plan(&out, "ollama-chat", true, &toml, None),
        RunOptions::default(),
    )
    .await;
    let s = &outcome.summary;
    assert_eq!(s.requests_ok, 12);
    // Ollama always reports prompt_eval_count: every request is compared.
    for (i, n, src) in rows(&outcome.dir) {
        assert_eq!(src, "server");
        assert_eq!(n, u64::from(client.prompts[i].input_tokens), "prompt {i}");
    }
    let m = &s.accuracy.token_counts.client_server_mismatch;
    assert_eq!((m.requests_compared, m.requests_mismatched), (12, 0));
}

#[test]
fn random_lengths_in_a_range_with_a_shared_prefix_are_exact_rendered() {
    let out = scratch("chat-range");
    let model = model_dir(&out);
    let d = section(&out, DatasetKind::Random, |d| {
        d.input_tokens = 60;
        d.range_ratio = 0.3;
        d.prefix_tokens = 10;
        d.prompts = 20;
        d.chat_template = Some(model.join("llama3.jinja"));
    });
    let ps = load_for(&d, None, Some(ApiKind::OpenaiChat))
        .expect("prompts")
        .prompts;
    let tmpl = barrage_common::chat_template::ChatTemplate::from_file(
        &model.join("llama3.jinja"),
        Some(&model.join("tokenizer_config.json")),
    )
    .expect("template");
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).expect("tokenizer");
    let (low, high) = barrage_common::dataset::length_bounds(60, 0.3);
    let first = tok
        .encode(ps[0].messages[0].content.as_str(), false)
        .expect("encode");
    let prefix = &first.get_ids()[..10];
    for p in &ps {
        let content = &p.messages[0].content;
        let msg = barrage_common::chat_template::ChatMessage {
            role: "user",
            content,
        };
        let rendered = tmpl.render(&[msg]).expect("renders");
        assert!(
            rendered.starts_with("<|begin_of_text|><|start_header_id|>user"),
            "{rendered}"
        );
        let n = tok
            .encode(rendered.as_str(), false)
            .expect("encode")
            .get_ids()
            .len();
        assert_eq!(n as u32, p.input_tokens, "{content:?}");
        assert!((low..=high).contains(&p.input_tokens));
        let ids = tok.encode(content.as_str(), false).expect("encode");
        assert_eq!(&ids.get_ids()[..10], prefix, "the shared prefix");
    }
}

/// Multi-turn: each turn's history (the server's own replies included) is
/// counted by the agent with the plan's tokenizer and template, and equals
/// the server's count turn by turn; without usage the tokenizer's count is
/// the one used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_histories_are_counted_as_the_server_counts_them() {
    let _serial = LOAD.lock().await;
    let out = scratch("chat-counts-turns");
    model_dir(&out);
    for usage in [true, false] {
        let text = plan(out.as_path(), "openai-chat", usage, "input_tokens = 20\nprompts = 4", None)
            .replace(
                "[load]\n        users = 4\n        requests = 12",
                "[conversation]\n        turns = 3\n        [load]\n        users = 2\n        conversations = 4",
            );
        assert!(text.contains("[conversation]"), "plan shape changed");
        let o = run_text(&text, RunOptions::default()).await;
        let s = &o.summary;
        let what = format!("usage {usage}");
        assert_eq!(s.requests_ok, 12, "{what}: {:?}", s.errors);
        let sim = s.simulator.clone().expect("simulator stats");
        assert_eq!(s.input_tokens, sim.input_tokens, "{what}: totals");
        let check = &s.accuracy.token_counts.client_server_mismatch;
        if usage {
            assert_eq!(
                (check.requests_compared, check.requests_mismatched),
                (12, 0),
                "{what}"
            );
        } else {
            assert_eq!(s.token_source.input.tokenizer_chat_template, 12, "{what}");
        }
        let c = s.conversations.as_ref().expect("conversations");
        let means: Vec<f64> = c
            .turns
            .iter()
            .map(|t| t.input_tokens.mean.expect("mean"))
            .collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "{what}: {means:?}");
    }
}
