//! Turning the plan's `[dataset]` into prompts, on the controller: agents
//! need no files. Bad files name the file, the line and the problem.

use std::path::{Path, PathBuf};

use barrage_common::plan::{DatasetKind, DatasetSection};
use barrage_proto::agent::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset.path {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("dataset.path {path}: line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("dataset.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn user(text: String) -> pb::Prompt {
    pb::Prompt {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text,
        }],
        max_tokens: 0,
        input_tokens: 0,
    }
}

/// Plan-relative paths resolve against the plan file's folder.
fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

fn read(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|e| DatasetError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads the prompts; `plan_dir` is the folder relative paths start from.
pub fn load(d: &DatasetSection, plan_dir: Option<&Path>) -> Result<Vec<pb::Prompt>, DatasetError> {
    match d.kind {
        DatasetKind::Random => Ok(random(d.input_words, d.prompts, d.seed)),
        DatasetKind::Lines => {
            let Some(p) = &d.path else {
                return Err(DatasetError::Invalid {
                    key: "path",
                    reason: "required for kind = \"lines\"".into(),
                });
            };
            let path = resolve(plan_dir, p);
            let text = read(&path)?;
            let prompts: Vec<_> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| user(l.to_owned()))
                .collect();
            if prompts.is_empty() {
                return Err(DatasetError::Line {
                    path,
                    line: 1,
                    reason: "the file holds no non-empty line".into(),
                });
            }
            Ok(prompts)
        }
        DatasetKind::Prompt => {
            let text = d.prompt.as_deref().unwrap_or_default();
            let text = match text.strip_prefix('@') {
                Some(file) => read(&resolve(plan_dir, Path::new(file)))?,
                None => text.to_owned(),
            };
            if text.trim().is_empty() {
                return Err(DatasetError::Invalid {
                    key: "prompt",
                    reason: "is empty".into(),
                });
            }
            Ok(vec![user(text)])
        }
    }
}

/// Synthetic prompts of exactly `words` words each, distinct from their first
/// word so a prefix cache cannot serve them all from one entry.
pub fn random(words: u32, count: u32, seed: u64) -> Vec<pb::Prompt> {
    const VOCAB: &[&str] = &[
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
        "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let mut text = format!("q{i}");
            for _ in 1..words {
                text.push(' ');
                text.push_str(VOCAB[rng.random_range(0..VOCAB.len())]);
            }
            user(text)
        })
        .collect()
}

/// Prompts in chunks of at most `max_bytes` (approximate encoded size).
pub fn chunks(prompts: &[pb::Prompt], max_bytes: usize) -> Vec<pb::DatasetChunk> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0usize;
    for p in prompts {
        let s: usize = p
            .messages
            .iter()
            .map(|m| m.content.len() + m.role.len() + 8)
            .sum::<usize>()
            + 8;
        if !cur.is_empty() && size + s > max_bytes {
            out.push(pb::DatasetChunk {
                prompts: std::mem::take(&mut cur),
            });
            size = 0;
        }
        size += s;
        cur.push(p.clone());
    }
    if !cur.is_empty() {
        out.push(pb::DatasetChunk { prompts: cur });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_prompts_have_exact_word_counts_and_differ() {
        let ps = random(50, 10, 1);
        assert_eq!(ps.len(), 10);
        for p in &ps {
            assert_eq!(p.messages[0].content.split_whitespace().count(), 50);
        }
        assert_ne!(ps[0].messages[0].content, ps[1].messages[0].content);
    }

    #[test]
    fn lines_file_errors_name_the_file() {
        let d = DatasetSection {
            kind: DatasetKind::Lines,
            path: Some(PathBuf::from("/nonexistent/prompts.txt")),
            ..DatasetSection::default()
        };
        let e = load(&d, None).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/prompts.txt"), "{e}");
    }

    #[test]
    fn chunks_keep_every_prompt_in_order() {
        let ps = random(100, 100, 2);
        let cs = chunks(&ps, 4096);
        assert!(cs.len() > 1);
        let back: Vec<_> = cs.into_iter().flat_map(|c| c.prompts).collect();
        assert_eq!(back, ps);
    }
}
