//! Counting input tokens with a real tokenizer, as a model server does:
//! chat requests are rendered with the model's chat template first
//! (`add_generation_prompt`, special tokens in the text count as one token
//! each, none added around it), completions count their prompt text. Without
//! `tokenizer` in the config the simulator counts words instead
//! (`plan::input_tokens`).

use std::path::Path;

use barrage_common::chat_template::{ChatMessage, ChatTemplate, Found};
use barrage_common::simulator::SimConfig;
use tokenizers::Tokenizer;

use crate::SimError;

/// The plan value of `chat_template` that turns templates off.
const NONE: &str = "none";

/// The tokenizer and, for chat requests, the template.
pub(crate) struct Counter {
    tok: Tokenizer,
    template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

fn template(cfg: &SimConfig, tokenizer: &Path) -> Result<Option<ChatTemplate>, SimError> {
    let bad = |key, e: barrage_common::chat_template::ChatTemplateError| SimError::File {
        key,
        path: e.path,
        reason: e.reason,
    };
    match cfg.chat_template.as_deref() {
        Some(p) if p == Path::new(NONE) => Ok(None),
        Some(p) => {
            let config = tokenizer
                .parent()
                .map(|d| d.join(barrage_common::chat_template::CONFIG_FILE))
                .filter(|c| c.is_file());
            ChatTemplate::from_file(p, config.as_deref())
                .map(Some)
                .map_err(|e| bad("chat_template", e))
        }
        None => match ChatTemplate::beside(tokenizer).map_err(|e| bad("tokenizer", e))? {
            Found::Template(t) => Ok(Some(t)),
            Found::None(why) => {
                tracing::info!("no chat template ({why}): chat requests count raw text");
                Ok(None)
            }
        },
    }
}

impl Counter {
    /// The config's tokenizer and template; None without `tokenizer`.
    pub(crate) fn load(cfg: &SimConfig) -> Result<Option<Self>, SimError> {
        let Some(path) = &cfg.tokenizer else {
            return Ok(None);
        };
        let tok = Tokenizer::from_file(path).map_err(|e| SimError::File {
            key: "tokenizer",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let template = template(cfg, path)?;
        Ok(Some(Self { tok, template }))
    }

    /// Token ids of `text`, no special tokens added.
    pub(crate) fn ids(&self, text: &str) -> Result<Vec<u32>, String> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.tok
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizing failed: {e}"))
    }

    /// Token ids of a chat request: the rendered template, else each
    /// message's text in turn. A template that refuses the messages
    /// (`raise_exception`) is the client's error, as on a real server.
    pub(crate) fn chat_ids(&self, messages: &[ChatMessage<'_>]) -> Result<Vec<u32>, String> {
        match &self.template {
            Some(t) => self.ids(&t.render(messages).map_err(|e| e.to_string())?),
            None => {
                let mut ids = Vec::new();
                for m in messages {
                    ids.extend(self.ids(m.content)?);
                }
                Ok(ids)
            }
        }
    }
}
