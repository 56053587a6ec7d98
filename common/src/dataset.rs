//! The `[dataset]` table of a plan: where prompts come from, how long they
//! are and which of them are sent. Loading the prompts happens on the
//! controller (agents need no files); `validate` checks what can be checked
//! without opening any file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The format of the prompts (`kind`). File kinds read `path`, relative to
/// the plan's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DatasetKind {
    /// Synthetic prompts of `input_tokens` tokens (words without a tokenizer).
    #[default]
    #[serde(rename = "random")]
    Random,
    /// A text file, one prompt per line (blank lines skipped).
    #[serde(rename = "lines")]
    Lines,
    /// One prompt, inline or `@file`.
    #[serde(rename = "prompt")]
    Prompt,
    /// A JSON list (or JSONL) of `{"prompt": .., "response": ..}`; the response is ignored.
    #[serde(rename = "json")]
    Json,
    /// JSONL, each line a conversation `[{"prompt", "response"}, ...]`: earlier
    /// turns become history, the last turn's response is dropped (Qianfan's format).
    #[serde(rename = "jsonl-chat")]
    JsonlChat,
    /// JSONL (or a JSON list) of `{"question": ..}` (EvalScope's openqa).
    #[serde(rename = "openqa")]
    OpenQa,
    /// A JSON list (or JSONL) of `{"instruction": ..}` (LongAlpaca).
    #[serde(rename = "longalpaca")]
    LongAlpaca,
    /// A JSON list (or JSONL) of `{"conversations": [{"from", "value"}, ...]}`.
    #[serde(rename = "sharegpt")]
    ShareGpt,
    /// JSONL, each line an OpenAI-style messages array `[{"role", "content"}, ...]`.
    #[serde(rename = "messages")]
    Messages,
}

impl DatasetKind {
    /// The name written in a plan.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Random => "random",
            DatasetKind::Lines => "lines",
            DatasetKind::Prompt => "prompt",
            DatasetKind::Json => "json",
            DatasetKind::JsonlChat => "jsonl-chat",
            DatasetKind::OpenQa => "openqa",
            DatasetKind::LongAlpaca => "longalpaca",
            DatasetKind::ShareGpt => "sharegpt",
            DatasetKind::Messages => "messages",
        }
    }

    /// Whether prompts come from the file at `path`.
    pub fn reads_path(self) -> bool {
        !matches!(self, DatasetKind::Random | DatasetKind::Prompt)
    }
}

/// The `[dataset]` table. Every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    /// The format (default `random`).
    pub kind: DatasetKind,
    /// The file, for every kind but `random` and `prompt` (default none;
    /// relative to the plan's folder).
    pub path: Option<PathBuf>,
    /// For `prompt`: the text, or `@path` to read it from a file (default none).
    pub prompt: Option<String>,
    /// A Hugging Face `tokenizer.json` (default none; relative to the plan's
    /// folder). With it, every prompt's input tokens are counted, random
    /// prompts have exact token counts and the filters count tokens; without
    /// it, lengths are whitespace-separated words.
    pub tokenizer: Option<PathBuf>,
    /// The model's chat template, for chat APIs (default none: the
    /// `chat_template` of the `tokenizer_config.json` beside `tokenizer`, else
    /// its `chat_template.jinja`): a Jinja file, or a `tokenizer_config.json`
    /// holding one. `"none"` counts the messages' raw text even for chat APIs.
    /// Needs `tokenizer`.
    pub chat_template: Option<PathBuf>,
    /// For `random`: tokens per prompt, the shared prefix included (default
    /// 128; words without a tokenizer). `input_words` is the older name.
    #[serde(alias = "input_words")]
    pub input_tokens: u32,
    /// For `random`: lengths are uniform in [⌊n(1−r)⌋, ⌈n(1+r)⌉] for
    /// n = `input_tokens` (default 0: every prompt has exactly n).
    pub range_ratio: f64,
    /// For `random`: tokens of a prefix identical in every prompt, followed by
    /// a part unique to each prompt (default 0).
    pub prefix_tokens: u32,
    /// For `random`: distinct prompts generated (default 256).
    pub prompts: u32,
    /// Seeds random prompts, `shuffle` and output lengths (default 0).
    pub seed: u64,
    /// Output tokens asked per prompt as its `max_tokens` (default none: the
    /// plan's `[request] max_tokens`).
    pub output_tokens: Option<u32>,
    /// Output lengths uniform in [⌊o(1−r)⌋, ⌈o(1+r)⌉] for o = `output_tokens`
    /// (default 0: exactly o).
    pub output_range_ratio: f64,
    /// Keep prompts of at least this many input tokens (words without a
    /// tokenizer; default none).
    pub min_prompt_tokens: Option<u32>,
    /// Keep prompts of at most this many input tokens (words without a
    /// tokenizer; default none).
    pub max_prompt_tokens: Option<u32>,
    /// Shuffle the prompts with `seed` (default false: file order).
    pub shuffle: bool,
    /// Keep only the first N prompts after filtering and shuffling (default none: all).
    pub limit: Option<usize>,
}

impl Default for DatasetSection {
    fn default() -> Self {
        Self {
            kind: DatasetKind::Random,
            path: None,
            prompt: None,
            tokenizer: None,
            chat_template: None,
            input_tokens: 128,
            range_ratio: 0.0,
            prefix_tokens: 0,
            prompts: 256,
            seed: 0,
            output_tokens: None,
            output_range_ratio: 0.0,
            min_prompt_tokens: None,
            max_prompt_tokens: None,
            shuffle: false,
            limit: None,
        }
    }
}

/// ⌊n(1−r)⌋ and ⌈n(1+r)⌉: the bounds of a length drawn with a range ratio.
pub fn length_bounds(n: u32, ratio: f64) -> (u32, u32) {
    let n = f64::from(n);
    let low = (n * (1.0 - ratio)).floor().max(0.0) as u32;
    let high = (n * (1.0 + ratio)).ceil().min(f64::from(u32::MAX)) as u32;
    (low, high)
}

type Invalid = (&'static str, String);

fn ratio(key: &'static str, r: f64) -> Result<(), Invalid> {
    if r.is_finite() && (0.0..1.0).contains(&r) {
        Ok(())
    } else {
        Err((key, format!("must be in [0, 1), got {r}")))
    }
}

impl DatasetSection {
    /// Checks the section; errors are (key below `dataset.`, problem).
    pub fn validate(&self) -> Result<(), Invalid> {
        let d = self;
        let kind = d.kind.name();
        ratio("range_ratio", d.range_ratio)?;
        ratio("output_range_ratio", d.output_range_ratio)?;
        if d.kind.reads_path() && d.path.is_none() {
            return Err(("path", format!("required for kind = \"{kind}\"")));
        }
        if d.kind == DatasetKind::Prompt && d.prompt.as_deref().is_none_or(str::is_empty) {
            return Err(("prompt", "required for kind = \"prompt\"".to_string()));
        }
        if d.kind == DatasetKind::Random {
            d.validate_random()?;
        } else {
            if d.range_ratio != 0.0 {
                return Err(("range_ratio", "applies only to kind = \"random\"".into()));
            }
            if d.prefix_tokens != 0 {
                return Err(("prefix_tokens", "applies only to kind = \"random\"".into()));
            }
        }
        if d.tokenizer
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(("tokenizer", "must name a tokenizer.json file".into()));
        }
        if let Some(t) = &d.chat_template {
            if t.as_os_str().is_empty() {
                return Err((
                    "chat_template",
                    "must name a template file (or be \"none\")".into(),
                ));
            }
            if d.tokenizer.is_none() {
                return Err((
                    "chat_template",
                    "needs tokenizer: the rendered template is counted with it".into(),
                ));
            }
        }
        match d.output_tokens {
            Some(0) => return Err(("output_tokens", "must be at least 1".into())),
            None if d.output_range_ratio != 0.0 => {
                return Err(("output_range_ratio", "needs output_tokens".into()));
            }
            _ => {}
        }
        if let (Some(min), Some(max)) = (d.min_prompt_tokens, d.max_prompt_tokens)
            && min > max
        {
            return Err((
                "min_prompt_tokens",
                format!("{min} is above max_prompt_tokens = {max}"),
            ));
        }
        if d.limit == Some(0) {
            return Err(("limit", "must be at least 1".into()));
        }
        Ok(())
    }

    fn validate_random(&self) -> Result<(), Invalid> {
        let d = self;
        if d.input_tokens == 0 {
            return Err(("input_tokens", "must be at least 1".to_string()));
        }
        if d.prompts == 0 {
            return Err(("prompts", "must be at least 1".to_string()));
        }
        let (low, _) = length_bounds(d.input_tokens, d.range_ratio);
        if low <= d.prefix_tokens {
            return Err((
                "prefix_tokens",
                format!(
                    "must be below the shortest prompt ({low} tokens from input_tokens = {} \
                     and range_ratio = {}), leaving room for a unique part",
                    d.input_tokens, d.range_ratio
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DatasetSection, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn kinds_parse_by_their_plan_names() {
        for kind in [
            "random",
            "lines",
            "prompt",
            "json",
            "jsonl-chat",
            "openqa",
            "longalpaca",
            "sharegpt",
            "messages",
        ] {
            let d = parse(&format!("kind = \"{kind}\"")).expect(kind);
            assert_eq!(d.kind.name(), kind);
        }
        assert!(parse("kind = \"share-gpt\"").is_err());
    }

    #[test]
    fn input_words_is_an_alias_of_input_tokens() {
        let d = parse("input_words = 32").expect("alias");
        assert_eq!(d.input_tokens, 32);
        assert!(parse("input_words = 32\ninput_tokens = 32").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let key = |text: &str| parse(text).expect("parses").validate().err().map(|e| e.0);
        assert_eq!(key(""), None);
        assert_eq!(key("kind = \"sharegpt\""), Some("path"));
        assert_eq!(key("kind = \"prompt\""), Some("prompt"));
        assert_eq!(key("range_ratio = 1.0"), Some("range_ratio"));
        assert_eq!(key("output_range_ratio = -0.1"), Some("output_range_ratio"));
        assert_eq!(key("output_range_ratio = 0.1"), Some("output_range_ratio"));
        assert_eq!(key("output_tokens = 0"), Some("output_tokens"));
        assert_eq!(
            key("min_prompt_tokens = 9\nmax_prompt_tokens = 8"),
            Some("min_prompt_tokens")
        );
        assert_eq!(key("limit = 0"), Some("limit"));
        assert_eq!(key("input_tokens = 0"), Some("input_tokens"));
        assert_eq!(key("prompts = 0"), Some("prompts"));
        assert_eq!(
            key("input_tokens = 100\nrange_ratio = 0.5\nprefix_tokens = 50"),
            Some("prefix_tokens")
        );
        assert_eq!(key("input_tokens = 100\nprefix_tokens = 99"), None);
        assert_eq!(
            key("kind = \"lines\"\npath = \"p.txt\"\nrange_ratio = 0.2"),
            Some("range_ratio")
        );
    }

    #[test]
    fn every_key_round_trips_through_toml() {
        let d = DatasetSection {
            kind: DatasetKind::JsonlChat,
            path: Some("chat.jsonl".into()),
            tokenizer: Some("tokenizer.json".into()),
            output_tokens: Some(64),
            output_range_ratio: 0.25,
            min_prompt_tokens: Some(4),
            max_prompt_tokens: Some(4096),
            shuffle: true,
            limit: Some(100),
            seed: 9,
            ..DatasetSection::default()
        };
        let text = toml::to_string(&d).expect("serialises");
        assert!(text.contains("kind = \"jsonl-chat\""), "{text}");
        assert_eq!(parse(&text).expect("parses back"), d);
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn length_bounds_floor_and_ceil() {
        assert_eq!(length_bounds(100, 0.0), (100, 100));
        assert_eq!(length_bounds(10, 0.25), (7, 13));
    }
}
