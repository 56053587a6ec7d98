//! Trace replay: a timestamped request log (JSONL of `{timestamp,
//! input_tokens, output_tokens, prompt?}`, the shape of public production
//! traces such as Mooncake's) turned into arrival offsets and prompts, then
//! striped over the agents so each replays its share at the trace's timing.
//! With the plan's tokenizer, synthetic prompts have exactly the trace's
//! input token counts (built as the random dataset builds them); without
//! one they have that many words, and input counts are estimates.

use std::path::{Path, PathBuf};

use barrage_common::dataset::DatasetSection;
use barrage_common::load::LoadSection;
use barrage_common::split;
use barrage_proto::agent::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("load.trace {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("load.trace {path}: line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Tokenizer(#[from] crate::dataset::DatasetError),
}

#[derive(Deserialize)]
struct Row {
    timestamp: f64,
    #[serde(alias = "input_length")]
    input_tokens: Option<u32>,
    #[serde(alias = "output_length")]
    output_tokens: Option<u32>,
    prompt: Option<String>,
}

/// The whole trace: offsets (seconds, scaled) and one prompt per arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub offsets_s: Vec<f64>,
    pub prompts: Vec<pb::Prompt>,
    /// Prompts were built and counted with the plan's tokenizer.
    pub tokenized: bool,
    /// How the input tokens were counted (with a tokenizer).
    pub counted: Option<crate::dataset::CountInfo>,
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima", "oscar", "papa", "romeo",
    "tango",
];

fn synthetic(id: usize, words: u32, rng: &mut StdRng) -> String {
    // A unique first word: no two prompts share a cacheable prefix.
    let mut text = format!("r{id}");
    for _ in 1..words.max(1) {
        text.push(' ');
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text
}

/// Reads the trace named by `load.trace` (relative to `base`); prompts are
/// built for `dataset.tokenizer` when the plan names one, counted on their
/// raw text.
pub fn load(
    load: &LoadSection,
    dataset: &DatasetSection,
    base: Option<&Path>,
) -> Result<Option<Trace>, TraceError> {
    load_for(load, dataset, base, None)
}

/// As `load`, prompts counted as a server of `api` counts them (a chat API:
/// rendered with the model's chat template), so a row's `input_tokens` is
/// what that server sees.
pub fn load_for(
    load: &LoadSection,
    dataset: &DatasetSection,
    base: Option<&Path>,
    api: Option<barrage_common::plan::ApiKind>,
) -> Result<Option<Trace>, TraceError> {
    let Some(file) = &load.trace else {
        return Ok(None);
    };
    let path = match base {
        Some(b) if file.is_relative() => b.join(file),
        _ => file.clone(),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| TraceError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let unit = if load.trace_time_unit.as_deref() == Some("s") {
        1.0
    } else {
        0.001
    };
    let scale = load.time_scale.unwrap_or(1.0);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TraceError::Line {
            path: path.clone(),
            line: i + 1,
            reason,
        };
        let r: Row = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if !r.timestamp.is_finite() || r.timestamp < 0.0 {
            return Err(bad("timestamp must be a number >= 0".into()));
        }
        if r.prompt.is_none() && r.input_tokens.unwrap_or(0) == 0 {
            return Err(bad("needs input_tokens (or a prompt)".into()));
        }
        rows.push((i + 1, r));
    }
    if rows.is_empty() {
        return Err(TraceError::Read {
            path,
            reason: "holds no request".into(),
        });
    }
    rows.sort_by(|a, b| a.1.timestamp.total_cmp(&b.1.timestamp));
    let t0 = rows[0].1.timestamp;
    check_span(&rows, t0, unit * scale, &path)?;
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    let offsets_s = rows
        .iter()
        .map(|r| (r.timestamp - t0) * unit * scale)
        .collect();
    let (prompts, counted) = match crate::dataset::plan_counter(dataset, base, api)? {
        Some(c) => (
            tokenized_prompts(rows, &c)?,
            Some(crate::dataset::CountInfo::of(&c, api)),
        ),
        None => (word_prompts(rows), None),
    };
    Ok(Some(Trace {
        offsets_s,
        prompts,
        tokenized: counted.is_some(),
        counted,
    }))
}

fn prompt(content: String, r: &Row, input_tokens: u32, templated: bool) -> pb::Prompt {
    pb::Prompt {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content,
        }],
        max_tokens: r.output_tokens.unwrap_or(0),
        input_tokens,
        input_chat_template: templated,
    }
}

/// No tokenizer: N words for N tokens. `input_tokens` stays 0, so the agent
/// labels its word count an estimate.
fn word_prompts(rows: Vec<Row>) -> Vec<pb::Prompt> {
    let mut rng = StdRng::seed_from_u64(0x7ace);
    rows.into_iter()
        .enumerate()
        .map(|(id, r)| {
            let words = r.input_tokens.unwrap_or(0);
            let content = match &r.prompt {
                Some(p) => p.clone(),
                None => synthetic(id, words, &mut rng),
            };
            prompt(content, &r, 0, false)
        })
        .collect()
}

/// With the plan's tokenizer: synthetic prompts of exactly the trace's
/// token counts, given prompts counted.
fn tokenized_prompts(
    rows: Vec<Row>,
    counter: &crate::dataset::InputCounter,
) -> Result<Vec<pb::Prompt>, TraceError> {
    let lens: Vec<usize> = rows
        .iter()
        .filter(|r| r.prompt.is_none())
        .map(|r| r.input_tokens.unwrap_or(0) as usize)
        .collect();
    let mut built = crate::dataset::exact_texts(counter, &lens, 0x7ace)?.into_iter();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (content, n) = match &r.prompt {
            Some(p) => (p.clone(), counter.count_user_text(p)?),
            None => (
                built.next().unwrap_or_default(),
                r.input_tokens.unwrap_or(0) as usize,
            ),
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        out.push(prompt(content, &r, n, counter.templated()));
    }
    Ok(out)
}

/// Refuses a trace whose replay would outlast `limits::MAX_RUN` (a huge
/// timestamp would otherwise overflow the agents' clocks), naming the line.
fn check_span(rows: &[(usize, Row)], t0: f64, to_s: f64, path: &Path) -> Result<(), TraceError> {
    let max = barrage_common::limits::MAX_RUN;
    match rows.last() {
        Some((line, r)) if (r.timestamp - t0) * to_s > max.as_secs_f64() => Err(TraceError::Line {
            path: path.to_owned(),
            line: *line,
            reason: format!(
                "timestamp {} is {:.3e} s after the first request (after load.time_scale); \
                     a replay lasts at most {}",
                barrage_common::limits::show(r.timestamp),
                (r.timestamp - t0) * to_s,
                humantime::format_duration(max)
            ),
        }),
        _ => Ok(()),
    }
}

impl Trace {
    /// Each agent's share: arrivals striped by weight, with their prompts.
    pub fn split(&self, weights: &[f64]) -> Vec<(Vec<f64>, Vec<pb::Prompt>)> {
        split::stripe_users(self.offsets_s.len() as u64, weights)
            .into_iter()
            .map(|idx| {
                let offsets = idx.iter().map(|j| self.offsets_s[*j as usize]).collect();
                let prompts = idx
                    .iter()
                    .map(|j| self.prompts[*j as usize].clone())
                    .collect();
                (offsets, prompts)
            })
            .collect()
    }

    /// What the summary says when input counts can only be estimates.
    pub fn counts_note(&self) -> Option<String> {
        (!self.tokenized).then(|| {
            "trace replay without dataset.tokenizer: a trace's N input tokens were sent as N \
             words, and input counts not reported by the server are estimates"
                .to_owned()
        })
    }

    /// Seconds from the first to the last arrival.
    pub fn span_s(&self) -> f64 {
        self.offsets_s.last().copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(path: &Path, scale: f64) -> LoadSection {
        LoadSection {
            trace: Some(path.to_owned()),
            time_scale: Some(scale),
            ..LoadSection::default()
        }
    }

    #[test]
    fn reads_sorts_scales_and_splits() {
        let dir = std::env::temp_dir().join(format!("barrage-trace-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("t.jsonl");
        std::fs::write(
            &f,
            "{\"timestamp\": 2000, \"input_length\": 4, \"output_length\": 2}\n{\"timestamp\": 1000, \"input_tokens\": 3, \"output_tokens\": 5}\n\n{\"timestamp\": 1500, \"prompt\": \"hi there\", \"output_tokens\": 1}\n",
        )
        .expect("write");
        let t = load(&section(&f, 0.5), &DatasetSection::default(), None)
            .expect("valid")
            .expect("trace");
        assert_eq!(t.offsets_s, vec![0.0, 0.25, 0.5]);
        assert_eq!(t.prompts[0].max_tokens, 5);
        assert_eq!(
            t.prompts[0].messages[0].content.split_whitespace().count(),
            3
        );
        assert_eq!(t.prompts[1].messages[0].content, "hi there");
        let parts = t.split(&[1.0, 1.0]);
        assert_eq!(parts[0].0, vec![0.0, 0.5]);
        assert_eq!(parts[1].0, vec![0.25]);
        std::fs::write(&f, "{\"timestamp\": 1}\n{\"timestamp\": \"x\"}\n").expect("write");
        let e = load(&section(&f, 1.0), &DatasetSection::default(), None).expect_err("bad");
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("t.jsonl"),
            "{e}"
        );
    }
}
