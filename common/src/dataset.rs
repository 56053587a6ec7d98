//! The `[dataset]` table of a plan: where prompts come from. Loading the
//! prompts happens on the controller (agents need no files).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Synthetic prompts of `input_words` words.
    #[default]
    Random,
    /// A text file, one prompt per line.
    Lines,
    /// One prompt, inline or `@file`.
    Prompt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    pub kind: DatasetKind,
    /// For `lines`: the file.
    pub path: Option<PathBuf>,
    /// For `prompt`: the text, or `@path` to read it from a file.
    pub prompt: Option<String>,
    /// For `random`: words per prompt (the simulator counts one token per word).
    pub input_words: u32,
    /// For `random`: distinct prompts generated.
    pub prompts: u32,
    pub seed: u64,
}

impl Default for DatasetSection {
    fn default() -> Self {
        Self {
            kind: DatasetKind::Random,
            path: None,
            prompt: None,
            input_words: 128,
            prompts: 256,
            seed: 0,
        }
    }
}

impl DatasetSection {
    /// Checks the section; errors are (key below `dataset.`, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let d = self;
        match d.kind {
            DatasetKind::Random => {
                if d.input_words == 0 {
                    return Err(("input_words", "must be at least 1".to_string()));
                }
                if d.prompts == 0 {
                    return Err(("prompts", "must be at least 1".to_string()));
                }
            }
            DatasetKind::Lines => {
                if d.path.is_none() {
                    return Err(("path", "required for kind = \"lines\"".to_string()));
                }
            }
            DatasetKind::Prompt => {
                if d.prompt.as_deref().is_none_or(str::is_empty) {
                    return Err(("prompt", "required for kind = \"prompt\"".to_string()));
                }
            }
        }
        Ok(())
    }
}
