//! Datasets through `dataset::load`: one small file per format under
//! `tests/data/`, bad files naming the file and the line, and one run whose
//! simulator counts what the dataset predicted. Tokenizer-driven cases
//! (exact random prompts, counts, filters) are in `tokenized`.

pub(crate) mod tokenized;

use std::path::{Path, PathBuf};

use barrage_common::plan::{DatasetKind, DatasetSection};
use barrage_controller::dataset::{DatasetError, load};
use barrage_controller::run::{RunOptions, Verdict};
use barrage_proto::agent::v1 as pb;

use crate::support::{LOAD, run_text, scratch};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn file(kind: DatasetKind, name: &str) -> DatasetSection {
    DatasetSection {
        kind,
        path: Some(data(name)),
        ..DatasetSection::default()
    }
}

fn roles(p: &pb::Prompt) -> Vec<(&str, &str)> {
    p.messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect()
}

fn users(ps: &[pb::Prompt]) -> Vec<&str> {
    ps.iter()
        .map(|p| match roles(p)[..] {
            [("user", text)] => text,
            _ => panic!("not a single user message: {p:?}"),
        })
        .collect()
}

fn err(r: Result<Vec<pb::Prompt>, DatasetError>) -> String {
    r.expect_err("an error").to_string()
}

#[test]
fn every_format_loads_its_file() {
    let lines = load(&file(DatasetKind::Lines, "prompts.txt"), None).expect("lines");
    assert_eq!(
        users(&lines),
        [
            "What is the capital of France?",
            "Explain prefix caching in two sentences.",
            "Write a haiku about load testing."
        ]
    );
    let json = load(&file(DatasetKind::Json, "pairs.json"), None).expect("json");
    assert_eq!(
        users(&json),
        [
            "Translate 'good morning' into German.",
            "Name three prime numbers."
        ]
    );
    let qa = load(&file(DatasetKind::OpenQa, "openqa.jsonl"), None).expect("openqa");
    assert_eq!(
        users(&qa),
        ["Why is the sky blue?", "How do vaccines work?"]
    );
    let la = load(&file(DatasetKind::LongAlpaca, "longalpaca.json"), None).expect("longalpaca");
    assert_eq!(users(&la).len(), 2);
    assert!(users(&la)[1].starts_with("Read the story"));

    let chat = load(&file(DatasetKind::JsonlChat, "chat.jsonl"), None).expect("jsonl-chat");
    assert_eq!(
        roles(&chat[0]),
        [
            ("user", "Hi, who are you?"),
            ("assistant", "I am an assistant."),
            ("user", "What can you do?")
        ]
    );
    assert_eq!(roles(&chat[1]), [("user", "Tell me a joke.")]);

    let sg = load(&file(DatasetKind::ShareGpt, "sharegpt.json"), None).expect("sharegpt");
    assert_eq!(
        sg.len(),
        2,
        "the conversation without a human turn is skipped"
    );
    assert_eq!(
        roles(&sg[0]),
        [
            ("user", "Plan a trip to Rome."),
            ("assistant", "Day 1: the Colosseum."),
            ("user", "Add a day in Florence.")
        ]
    );
    assert_eq!(
        roles(&sg[1]),
        [("system", "Answer tersely."), ("user", "Is water wet?")]
    );

    let ms = load(&file(DatasetKind::Messages, "messages.jsonl"), None).expect("messages");
    assert_eq!(ms[0].messages[0].role, "system");
    assert_eq!(ms[0].messages.len(), 2);
    assert_eq!(
        roles(&ms[1]),
        [(
            "user",
            "Which planet is largest? A. Mars B. Venus C. Jupiter D. Earth"
        )]
    );
    for p in lines.iter().chain(&json).chain(&chat).chain(&sg).chain(&ms) {
        assert_eq!(
            (p.max_tokens, p.input_tokens),
            (0, 0),
            "defaults: plan's max_tokens, no count"
        );
    }
}

#[test]
fn prompt_inline_or_from_a_file_relative_to_the_plan() {
    let inline = DatasetSection {
        kind: DatasetKind::Prompt,
        prompt: Some("Say hi".into()),
        ..DatasetSection::default()
    };
    assert_eq!(users(&load(&inline, None).expect("inline")), ["Say hi"]);
    let at = DatasetSection {
        prompt: Some("@prompt.txt".into()),
        ..inline
    };
    let ps = load(&at, Some(&data(""))).expect("@file");
    assert!(users(&ps)[0].starts_with("Summarise the following design document"));
    let e = err(load(&at, Some(Path::new("/nonexistent"))));
    assert!(
        e.starts_with("dataset.prompt /nonexistent/prompt.txt"),
        "{e}"
    );
}

#[test]
fn bad_files_name_the_file_the_line_and_the_problem() {
    let e = err(load(
        &file(DatasetKind::JsonlChat, "bad/malformed.jsonl"),
        None,
    ));
    assert!(e.starts_with("dataset.path "), "{e}");
    assert!(
        e.contains("bad/malformed.jsonl: line 3: malformed JSON"),
        "{e}"
    );

    let e = err(load(&file(DatasetKind::JsonlChat, "bad/shape.jsonl"), None));
    assert!(
        e.contains("bad/shape.jsonl: line 3: expected a JSON array of {prompt, response} turns"),
        "{e}"
    );

    let e = err(load(
        &file(DatasetKind::ShareGpt, "bad/sharegpt_shape.json"),
        None,
    ));
    assert!(
        e.contains("sharegpt_shape.json: element [1]: expected {conversations")
            && e.contains("missing field `conversations`"),
        "{e}"
    );

    let e = err(load(&file(DatasetKind::Messages, "bad/empty.jsonl"), None));
    assert!(e.contains("bad/empty.jsonl: holds no prompt"), "{e}");

    let e = err(load(&file(DatasetKind::OpenQa, "no-such-file.jsonl"), None));
    assert!(
        e.starts_with("dataset.path ") && e.contains("no-such-file.jsonl"),
        "{e}"
    );

    let missing_tok = DatasetSection {
        tokenizer: Some("no-tokenizer.json".into()),
        ..DatasetSection::default()
    };
    let e = err(load(&missing_tok, Some(Path::new("/nonexistent"))));
    assert!(
        e.starts_with("dataset.tokenizer /nonexistent/no-tokenizer.json"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_dataset_runs_and_the_simulator_counts_what_it_predicts() {
    let _serial = LOAD.lock().await;
    let out = scratch("ds-e2e");
    let tok = tokenized::word_level(&out);
    // Every conversation of chat_e2e.jsonl carries 10 words in all, and the
    // word-level tokenizer counts one token per word, as llm-sim does.
    let ps = load(
        &DatasetSection {
            tokenizer: Some(tok.clone()),
            ..file(DatasetKind::JsonlChat, "chat_e2e.jsonl")
        },
        None,
    )
    .expect("dataset");
    assert!(ps.iter().all(|p| p.input_tokens == 10), "{ps:?}");
    let requests = 60u64;
    let text = format!(
        r#"
        name = "datasets-e2e"
        [target]
        include_usage = false
        [request]
        max_tokens = 16
        [dataset]
        kind = "jsonl-chat"
        path = "{}"
        tokenizer = "{}"
        output_tokens = 4
        [load]
        users = 6
        requests = {requests}
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "5ms"
        itl = "1ms"
        "#,
        data("chat_e2e.jsonl").display(),
        tok.display(),
        out.display()
    );
    let outcome = run_text(&text, RunOptions::default()).await;
    let s = &outcome.summary;
    let sim = s.simulator.clone().expect("simulator stats");
    assert_eq!(outcome.verdict, Verdict::Completed);
    assert_eq!(s.requests_ok, requests);
    assert_eq!(
        sim.input_tokens,
        requests * 10,
        "the server saw what the dataset predicted"
    );
    assert_eq!(
        s.input_tokens, sim.input_tokens,
        "the tokenizer's counts reached the agent"
    );
    // No usage from the server: the agents counted with the plan's tokenizer.
    assert_eq!(s.token_source.output.tokenizer, requests);
    assert_eq!(
        s.token_source.input.tokenizer, requests,
        "prompts counted by the controller's tokenizer"
    );
    assert_eq!(s.output_tokens, requests * 4);
    assert_eq!(
        sim.output_tokens,
        requests * 4,
        "per-prompt max_tokens was sent"
    );
}
