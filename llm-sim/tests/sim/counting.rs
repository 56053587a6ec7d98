//! Counting prompt tokens with a tokenizer and a chat template, as a real
//! server does: chat requests on the rendered template, completions on
//! their text; a template that refuses the messages is a 400; a missing
//! file stops the simulator from starting, naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

use crate::support::*;

/// ChatML, as Qwen ships it (without the default system message).
const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// One token per whitespace-separated word (unknown words are `[UNK]`),
/// and the ChatML markers as special tokens, with the template beside it.
fn model(dir: &Path, template: &str) -> PathBuf {
    let vocab: HashMap<String, u32> = [("[UNK]".to_owned(), 0)].into_iter().collect();
    let wl = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
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
    let config = json!({"chat_template": template, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_count_the_rendered_template_and_completions_their_text() {
    bounded(async {
        let dir = scratch("count");
        let cfg = SimConfig {
            tokenizer: Some(model(&dir, CHATML)),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        // "say something nice" as a user message renders to
        // <|im_start|> user say something nice <|im_end|> <|im_start|> assistant:
        // 3 markers + 5 words.
        let reply = post(
            &client,
            &format!("{base}/v1/chat/completions"),
            &chat(2, true),
            Framing::Sse,
        )
        .await;
        assert_eq!(reply.last_json()["usage"]["prompt_tokens"], 3 + 5);
        let body = json!({"prompt": "say something nice", "max_tokens": 2});
        let url = format!("{base}/v1/completions");
        let whole = post(&client, &url, &body, Framing::Whole).await.last_json();
        assert_eq!(whole["usage"]["prompt_tokens"], 3, "the text alone");
        let body = json!({"model": "m", "stream": false, "options": {"num_predict": 2},
            "messages": [{"role": "system", "content": "be kind"},
                         {"role": "user", "content": "hi"}]});
        let url = format!("{base}/api/chat");
        let whole = post(&client, &url, &body, Framing::Whole).await.last_json();
        // system: 2 markers + "system be kind"; user: 2 markers + "user hi";
        // the generation prompt: 1 marker + "assistant".
        assert_eq!(whole["prompt_eval_count"], 2 + 3 + 2 + 2 + 2);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_refuses_the_messages_is_a_bad_request() {
    bounded(async {
        let dir = scratch("refuse");
        let refusing = "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ messages[0].content }}";
        let cfg = SimConfig {
            tokenizer: Some(model(&dir, refusing)),
            ..fast()
        };
        let (server, base, client) = start(cfg).await;
        let body = json!({"messages": [{"role": "system", "content": "x"}], "max_tokens": 2});
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 400);
        let text = r.text().await.expect("body");
        assert!(text.contains("no system role"), "{text}");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tokenizer_or_template_stops_the_start_naming_the_file() {
    let dir = scratch("missing");
    let cfg = SimConfig {
        tokenizer: Some(dir.join("nope.json")),
        ..fast()
    };
    let e = SimServer::spawn(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect_err("no tokenizer");
    assert!(e.to_string().starts_with("simulator.tokenizer "), "{e}");
    assert!(e.to_string().contains("nope.json"), "{e}");
    let cfg = SimConfig {
        tokenizer: Some(model(&dir, CHATML)),
        chat_template: Some(dir.join("nope.jinja")),
        ..fast()
    };
    let e = SimServer::spawn(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect_err("no template");
    assert!(e.to_string().starts_with("simulator.chat_template "), "{e}");
    assert!(e.to_string().contains("nope.jinja"), "{e}");
}
