//! Turning the plan's `[dataset]` into prompts, on the controller: agents
//! need no files. Each format has its reader (`text`, `single`, `chat`,
//! `random`, with `records` for JSON and JSONL); `steps` then counts input
//! tokens with the plan's tokenizer (`tokenizer`), filters, shuffles, limits
//! and sets per-prompt output lengths. Bad files name the file, the line (or
//! the list element) and the problem.

mod chat;
pub mod conversations;
mod counting;
mod random;
mod records;
mod single;
mod steps;
mod text;
mod tokenizer;

use std::path::{Path, PathBuf};

use barrage_common::plan::{ApiKind, DatasetKind, DatasetSection};
use barrage_proto::agent::v1 as pb;

pub use counting::{InputCounter, Way, applies_template};
pub use tokenizer::PromptTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file that cannot be read or holds nothing; `key` is the plan key naming it.
    #[error("dataset.{key} {path}: {reason}")]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("dataset.path {path}: line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// `index` counts from 0, as in `jq '.[3]'`.
    #[error("dataset.path {path}: element [{index}]: {reason}")]
    Element {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("dataset.tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// A chat template that cannot be read, compiled or rendered; `key` is
    /// `chat_template` when the plan named it, else `tokenizer` (found beside it).
    #[error("dataset.{key} {path}: {reason}")]
    ChatTemplate {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("dataset.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Where the `input_tokens` of the prompts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountSource {
    /// Counted by the plan's tokenizer (this file).
    Tokenizer(PathBuf),
    /// Not counted here: the agent estimates words unless the server reports usage.
    Words,
}

impl std::fmt::Display for CountSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountSource::Tokenizer(p) => write!(f, "tokenizer {}", p.display()),
            CountSource::Words => f.write_str("words"),
        }
    }
}

/// The source of the `input_tokens` that `load` fills in for this section.
pub fn count_source(d: &DatasetSection, plan_dir: Option<&Path>) -> CountSource {
    match &d.tokenizer {
        Some(p) => CountSource::Tokenizer(resolve(plan_dir, p)),
        None => CountSource::Words,
    }
}

/// The plan's tokenizer file for the agents (empty without one), checked to
/// load; errors name `dataset.tokenizer` and the file.
pub fn tokenizer_bytes(
    d: &DatasetSection,
    plan_dir: Option<&Path>,
) -> Result<Vec<u8>, DatasetError> {
    match &d.tokenizer {
        Some(p) => PromptTokenizer::checked_bytes(&resolve(plan_dir, p)),
        None => Ok(Vec::new()),
    }
}

/// One prompt before the common steps: its messages and, when known, its
/// length (tokens with a tokenizer, else words).
#[derive(Debug, Clone, PartialEq)]
struct Item {
    messages: Vec<pb::ChatMessage>,
    length: Option<usize>,
}

fn message(role: &str, content: impl Into<String>) -> pb::ChatMessage {
    pb::ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

impl Item {
    fn new(messages: Vec<pb::ChatMessage>) -> Self {
        Self {
            messages,
            length: None,
        }
    }

    fn user(text: impl Into<String>) -> Self {
        Self::new(vec![message("user", text)])
    }
}

/// Plan-relative paths resolve against the plan file's folder.
fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

/// A file's text, without a leading byte-order mark.
fn read(key: &'static str, path: &Path) -> Result<String, DatasetError> {
    let mut text = std::fs::read_to_string(path).map_err(|e| DatasetError::Read {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Loads the prompts, each message's raw text counted with the plan's
/// tokenizer; `plan_dir` is the folder relative paths start from.
pub fn load(d: &DatasetSection, plan_dir: Option<&Path>) -> Result<Vec<pb::Prompt>, DatasetError> {
    Ok(load_for(d, plan_dir, None)?.prompts)
}

/// How a step's input tokens were counted by the controller, for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct CountInfo {
    /// One line: the tokenizer, and the template or why there is none.
    pub how: String,
    /// The chat template's file, when prompts were counted rendered with it.
    pub chat_template: Option<PathBuf>,
    /// A chat API whose prompts were counted without a template.
    pub chat_without_template: bool,
}

impl CountInfo {
    pub fn of(c: &InputCounter, api: Option<ApiKind>) -> Self {
        Self {
            how: c.describe(),
            chat_template: c.template_origin(),
            chat_without_template: api.is_some_and(applies_template) && !c.templated(),
        }
    }
}

/// Prompts and how their input tokens were counted (None: no tokenizer).
#[derive(Debug)]
pub struct Loaded {
    pub prompts: Vec<pb::Prompt>,
    pub counted: Option<CountInfo>,
}

impl Loaded {
    /// Multi-turn: how agents count each turn with the plan's tokenizer.
    pub fn turn_counting(
        d: &DatasetSection,
        plan_dir: Option<&Path>,
        api: ApiKind,
    ) -> Result<Option<pb::TurnCounting>, DatasetError> {
        Ok(InputCounter::for_plan(d, plan_dir, Some(api))?
            .as_ref()
            .map(conversations::turn_counting))
    }
}

/// Loads the prompts for a target of `api`, counted as its server will count
/// them (a chat API: rendered with the model's chat template); no API: each
/// message's raw text.
pub fn load_for(
    d: &DatasetSection,
    plan_dir: Option<&Path>,
    api: Option<ApiKind>,
) -> Result<Loaded, DatasetError> {
    d.validate()
        .map_err(|(key, reason)| DatasetError::Invalid { key, reason })?;
    let counter = InputCounter::for_plan(d, plan_dir, api)?;
    let tok = counter.as_ref();
    let items = match d.kind {
        DatasetKind::Random => match tok {
            Some(t) => random::tokens(d, t)?,
            None => random::word_items(d),
        },
        DatasetKind::Prompt => {
            let text = d.prompt.as_deref().unwrap_or_default();
            vec![text::prompt(text, |f| resolve(plan_dir, Path::new(f)))?]
        }
        kind => {
            let (path, items) = file_items(d, kind, plan_dir)?;
            if items.is_empty() {
                return Err(DatasetError::Read {
                    key: "path",
                    path,
                    reason: "holds no prompt (blank prompts, and conversations with no \
                             user turn, are skipped)"
                        .into(),
                });
            }
            items
        }
    };
    let prompts = steps::finish(d, items, tok)?;
    Ok(Loaded {
        prompts,
        counted: counter.as_ref().map(|c| CountInfo::of(c, api)),
    })
}

/// The items of a file kind's `path` (resolved against `plan_dir`), and
/// the path, for errors.
fn file_items(
    d: &DatasetSection,
    kind: DatasetKind,
    plan_dir: Option<&Path>,
) -> Result<(PathBuf, Vec<Item>), DatasetError> {
    let Some(p) = &d.path else {
        return Err(DatasetError::Invalid {
            key: "path",
            reason: format!("required for kind = \"{}\"", kind.name()),
        });
    };
    let path = resolve(plan_dir, p);
    let text = read("path", &path)?;
    let items = from_file(kind, &path, &text)?;
    Ok((path, items))
}

fn from_file(kind: DatasetKind, path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    match kind {
        DatasetKind::Lines => Ok(text::lines(text)),
        DatasetKind::Json => single::json(path, text),
        DatasetKind::OpenQa => single::openqa(path, text),
        DatasetKind::LongAlpaca => single::longalpaca(path, text),
        DatasetKind::JsonlChat => chat::jsonl_chat(path, text),
        DatasetKind::ShareGpt => chat::sharegpt(path, text),
        DatasetKind::Messages => chat::messages(path, text),
        DatasetKind::Random | DatasetKind::Prompt => Ok(Vec::new()),
    }
}

/// The plan's tokenizer, when `[dataset] tokenizer` names one, with the way
/// prompts for `api` are counted.
pub fn plan_counter(
    d: &DatasetSection,
    plan_dir: Option<&Path>,
    api: Option<ApiKind>,
) -> Result<Option<InputCounter>, DatasetError> {
    InputCounter::for_plan(d, plan_dir, api)
}

/// Random texts, each sent as one user message of exactly `lens[i]` input
/// tokens as `counter` counts (built as the random dataset builds its
/// prompts: re-encoded until exact).
pub fn exact_texts(
    counter: &InputCounter,
    lens: &[usize],
    seed: u64,
) -> Result<Vec<String>, DatasetError> {
    random::exact_texts(counter, lens, seed)
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
            + 16;
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
    fn load_checks_the_section_first() {
        let d = DatasetSection {
            kind: DatasetKind::ShareGpt,
            ..DatasetSection::default()
        };
        let e = load(&d, None).expect_err("no path").to_string();
        assert_eq!(e, "dataset.path: required for kind = \"sharegpt\"");
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let path = std::env::temp_dir().join(format!("bom-{}.json", std::process::id()));
        std::fs::write(&path, "\u{feff}[{\"prompt\": \"hi\"}]").expect("write");
        let d = DatasetSection {
            kind: DatasetKind::Json,
            path: Some(path.clone()),
            ..DatasetSection::default()
        };
        let ps = load(&d, None);
        let _ = std::fs::remove_file(&path);
        assert_eq!(ps.expect("loads")[0].messages[0].content, "hi");
    }

    #[test]
    fn chunks_keep_every_prompt_in_order() {
        let d = DatasetSection {
            input_tokens: 100,
            prompts: 100,
            ..DatasetSection::default()
        };
        let ps = steps::finish(&d, random::word_items(&d), None).expect("random");
        let cs = chunks(&ps, 4096);
        assert!(cs.len() > 1);
        let back: Vec<_> = cs.into_iter().flat_map(|c| c.prompts).collect();
        assert_eq!(back, ps);
    }
}
