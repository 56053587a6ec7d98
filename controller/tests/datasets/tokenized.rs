//! Datasets with a tokenizer built here (nothing is downloaded): a
//! word-level one that counts as llm-sim does, and a byte-level BPE trained on
//! a small corpus whose merges glue word pieces. Random prompts of exact
//! token counts (checked by re-encoding), counts filled per prompt, filters,
//! shuffle and limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use barrage_common::plan::{DatasetKind, DatasetSection};
use barrage_controller::dataset::load;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::{err, file, users};
use crate::support::{scratch, word_level_tokenizer};

const SPECIAL: &str = "<|endoftext|>";

/// One token per whitespace-separated word (unknown words are `[UNK]`), as
/// llm-sim counts; a special token that random prompts must never use.
pub(super) fn word_level(dir: &Path) -> PathBuf {
    let mut words: Vec<String> = ["[UNK]", SPECIAL, "don't", "e.g."].map(String::from).into();
    for a in ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu"] {
        for b in ["ba", "de", "fi", "go", "hu", "ja", "ke", "li"] {
            words.push(format!("{a}{b}"));
        }
    }
    let mut t = word_level_tokenizer(words);
    t.add_special_tokens(&[AddedToken::from(SPECIAL, true)]);
    let path = dir.join("word-level.json");
    t.save(&path, false).expect("save");
    path
}

/// A GPT-2 style byte-level BPE trained here on a small corpus, whose merges
/// make token counts of concatenated text differ from the parts'.
pub(crate) fn byte_bpe(dir: &Path) -> PathBuf {
    let words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "server",
        "token",
        "latency",
        "through",
        "put",
        "batch",
        "cache",
        "prefix",
        "stream",
        "model",
        "load",
        "test",
        "inference",
        "request",
        "response",
        "decode",
        "prefill",
        "queue",
        "GPU",
        "memory",
        "kernel",
        "attention",
        "layer",
        "weight",
        "sample",
        "ing",
        "ed",
        "er",
    ];
    let mut rng = StdRng::seed_from_u64(3);
    let corpus: Vec<String> = (0..1500)
        .map(|_| {
            (0..12)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(if rng.random_bool(0.2) { "" } else { " " })
        })
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(400)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(SPECIAL, true)])
        .build()
        .into();
    let mut t = Tokenizer::new(BPE::default());
    // As Llama 3 and Qwen: no space added in front, so word pieces glue.
    t.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    t.with_decoder(Some(ByteLevel::default()));
    t.train(&mut trainer, corpus.iter()).expect("train");
    let path = dir.join("byte-bpe.json");
    t.save(&path, false).expect("save");
    path
}

fn count(tok: &Tokenizer, text: &str) -> usize {
    tok.encode(text, false).expect("encode").get_ids().len()
}

/// Random prompts for `tok_path`: exact counts by re-encoding, within the
/// range, sharing the prefix, distinct, free of special tokens.
fn check_random(tok_path: &Path, n: u32, ratio: f64, prefix: u32, prompts: u32) {
    let d = DatasetSection {
        tokenizer: Some(tok_path.to_owned()),
        input_tokens: n,
        range_ratio: ratio,
        prefix_tokens: prefix,
        prompts,
        seed: 11,
        ..DatasetSection::default()
    };
    let ps = load(&d, None).expect("random prompts");
    assert_eq!(ps.len(), prompts as usize);
    let tok = Tokenizer::from_file(tok_path).expect("tokenizer");
    let (low, high) = barrage_common::dataset::length_bounds(n, ratio);
    let texts = users(&ps);
    let first = tok.encode(texts[0], false).expect("encode");
    let prefix_ids = &first.get_ids()[..prefix as usize];
    for (p, text) in ps.iter().zip(&texts) {
        let ids = tok.encode(*text, false).expect("encode").get_ids().to_vec();
        assert_eq!(
            ids.len(),
            p.input_tokens as usize,
            "exact by re-encoding: {text:?}"
        );
        assert!(
            (low..=high).contains(&p.input_tokens),
            "{} not in {low}..={high}",
            p.input_tokens
        );
        assert_eq!(&ids[..prefix as usize], prefix_ids, "shared prefix");
        assert!(!text.contains(SPECIAL));
    }
    let distinct: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(distinct.len(), texts.len(), "prompts are distinct");
    if prefix > 0 {
        let after: HashSet<u32> = texts
            .iter()
            .map(|t| tok.encode(*t, false).expect("encode").get_ids()[prefix as usize])
            .collect();
        assert!(
            after.len() > 1,
            "the unique part starts right after the prefix"
        );
    }
    if ratio > 0.0 {
        let lens: HashSet<u32> = ps.iter().map(|p| p.input_tokens).collect();
        assert!(lens.len() > 3, "lengths vary: {lens:?}");
    }
    let again = load(&d, None).expect("again");
    assert_eq!(again, ps, "same seed, same prompts");
}

#[test]
fn random_prompts_have_exact_token_counts_word_level() {
    let dir = scratch("ds-word-level");
    let tok = word_level(&dir);
    check_random(&tok, 64, 0.0, 0, 20);
    check_random(&tok, 80, 0.5, 16, 40);
}

#[test]
fn random_prompts_have_exact_token_counts_byte_level_bpe() {
    let dir = scratch("ds-bpe");
    let tok = byte_bpe(&dir);
    check_random(&tok, 1, 0.0, 0, 5);
    check_random(&tok, 100, 0.0, 0, 16);
    check_random(&tok, 120, 0.3, 24, 24);
}

#[test]
fn tokenizer_counts_fill_input_tokens_and_drive_the_filters() {
    let dir = scratch("ds-counts");
    let tok_path = byte_bpe(&dir);
    let tok = Tokenizer::from_file(&tok_path).expect("tokenizer");
    let d = DatasetSection {
        tokenizer: Some(tok_path.clone()),
        ..file(DatasetKind::ShareGpt, "sharegpt.json")
    };
    let ps = load(&d, None).expect("sharegpt");
    for p in &ps {
        let sum: usize = p.messages.iter().map(|m| count(&tok, &m.content)).sum();
        assert_eq!(
            p.input_tokens as usize, sum,
            "sum over the message contents"
        );
    }

    // Filters count tokens; shuffle and limit follow the seed.
    let lines = DatasetSection {
        kind: DatasetKind::Lines,
        path: Some(dir.join("many.txt")),
        tokenizer: Some(tok_path),
        min_prompt_tokens: Some(8),
        max_prompt_tokens: Some(20),
        shuffle: true,
        limit: Some(10),
        seed: 5,
        output_tokens: Some(32),
        ..DatasetSection::default()
    };
    let text: String = (1..=60)
        .map(|i| format!("{}\n", vec!["token"; i % 30 + 1].join(" ")))
        .collect();
    std::fs::write(dir.join("many.txt"), text).expect("write");
    let a = load(&lines, None).expect("filtered");
    assert_eq!(a.len(), 10);
    assert!(
        a.iter()
            .all(|p| (8..=20).contains(&p.input_tokens) && p.max_tokens == 32)
    );
    assert_eq!(
        load(&lines, None).expect("again"),
        a,
        "deterministic by seed"
    );
    let reseeded = DatasetSection {
        seed: 6,
        ..lines.clone()
    };
    assert_ne!(load(&reseeded, None).expect("reseeded"), a);

    let none = DatasetSection {
        min_prompt_tokens: Some(1000),
        max_prompt_tokens: None,
        ..lines
    };
    let e = err(load(&none, None));
    assert!(
        e.starts_with("dataset.min_prompt_tokens") && e.contains("max_prompt_tokens"),
        "{e}"
    );
    assert!(e.contains("none of the 60 loaded"), "{e}");
}

/// A trace of `lens` input tokens (one every 10 ms) and a row with a prompt.
fn trace_file(dir: &Path, lens: &[u32]) -> PathBuf {
    let mut text: String = lens
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": {n}, \"output_length\": 2}}\n",
                i * 10
            )
        })
        .collect();
    text.push_str(&format!(
        "{{\"timestamp\": {}, \"prompt\": \"the quick brown fox\", \"input_length\": 99, \"output_length\": 2}}\n",
        lens.len() * 10
    ));
    let path = dir.join("trace.jsonl");
    std::fs::write(&path, text).expect("trace");
    path
}

fn trace_section(path: &Path) -> barrage_common::load::LoadSection {
    barrage_common::load::LoadSection {
        trace: Some(path.to_owned()),
        time_scale: Some(0.1),
        ..barrage_common::load::LoadSection::default()
    }
}

#[test]
fn a_trace_with_a_tokenizer_gets_prompts_of_its_exact_token_counts() {
    let dir = scratch("trace-bpe");
    let tok_path = byte_bpe(&dir);
    let tok = Tokenizer::from_file(&tok_path).expect("tokenizer");
    let lens = [1u32, 7, 33, 64, 64];
    let path = trace_file(&dir, &lens);
    let with = DatasetSection {
        tokenizer: Some(tok_path),
        ..DatasetSection::default()
    };
    let t = barrage_controller::trace::load(&trace_section(&path), &with, None)
        .expect("trace")
        .expect("some");
    assert_eq!(t.prompts.len(), lens.len() + 1);
    for (p, n) in t.prompts.iter().zip(lens) {
        let text = &p.messages[0].content;
        assert_eq!(count(&tok, text), n as usize, "re-encoded: {text:?}");
        assert_eq!(p.input_tokens, n);
    }
    let given = &t.prompts[lens.len()];
    assert_eq!(given.messages[0].content, "the quick brown fox");
    assert_eq!(
        given.input_tokens as usize,
        count(&tok, "the quick brown fox"),
        "a given prompt is counted, not taken from the trace"
    );
    assert_ne!(
        t.prompts[3].messages[0].content,
        t.prompts[4].messages[0].content
    );
    assert!(t.counts_note().is_none());

    // No tokenizer: N words, and counts left to the agent's estimate.
    let without =
        barrage_controller::trace::load(&trace_section(&path), &DatasetSection::default(), None)
            .expect("trace")
            .expect("some");
    for (p, n) in without.prompts.iter().zip(lens) {
        assert_eq!(p.messages[0].content.split_whitespace().count(), n as usize);
        assert_eq!(p.input_tokens, 0, "not a token count");
    }
    assert!(
        without
            .counts_note()
            .is_some_and(|n| n.contains("estimates"))
    );
}

/// A replayed trace against llm-sim with no usage in the stream: with the
/// plan's tokenizer (one token per word, as llm-sim counts) the input
/// counts are the tokenizer's and equal the server's; without one, they are
/// labelled estimates and the summary says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_trace_labels_its_input_counts() {
    let _serial = crate::support::LOAD.lock().await;
    let dir = scratch("trace-e2e");
    let tok = word_level(&dir);
    let lens = [3u32, 9, 12, 20];
    let path = trace_file(&dir, &lens);
    let rows = lens.len() as u64 + 1;
    for tokenizer in [Some(&tok), None] {
        let line = tokenizer.map_or(String::new(), |t| {
            format!("tokenizer = \"{}\"", t.display())
        });
        let text = format!(
            r#"
            [target]
            include_usage = false
            [dataset]
            {line}
            [load]
            trace = "{}"
            time_scale = 0.1
            [cluster]
            embedded_agents = 1
            [output]
            dir = "{}"
            [simulator]
            ttft = "5ms"
            itl = "1ms"
            "#,
            path.display(),
            dir.display()
        );
        let s = crate::support::run_text(&text, barrage_controller::run::RunOptions::default())
            .await
            .summary;
        let sim = s.simulator.clone().expect("sim");
        assert_eq!(s.requests_ok, rows, "{:?}", s.errors);
        let from = &s.token_source;
        let note = s.notes.iter().any(|n| n.contains("input counts"));
        if tokenizer.is_some() {
            assert_eq!((from.input.tokenizer, from.input.estimated), (rows, 0));
            assert_eq!(
                s.input_tokens, sim.input_tokens,
                "the server counted the same"
            );
            assert!(!note, "{:?}", s.notes);
        } else {
            assert_eq!((from.input.tokenizer, from.input.estimated), (0, rows));
            assert!(note, "{:?}", s.notes);
        }
    }
}
