//! Counting a prompt's input tokens the way the target's server will: a chat
//! API tokenizes the messages rendered with the model's chat template (role
//! markers, BOS, the generation prompt included); a completions API
//! tokenizes the prompt text it was sent (the messages joined by newlines,
//! as the agent sends them). Special tokens in the rendered text count as
//! one token each and none are added around it, as `transformers`'
//! `apply_chat_template(tokenize=True)` and vLLM count.

use std::path::{Path, PathBuf};

use barrage_common::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, Found};
use barrage_common::plan::{ApiKind, DatasetSection};
use barrage_proto::agent::v1 as pb;

use super::{DatasetError, PromptTokenizer, resolve};

/// The plan value of `chat_template` that turns templates off.
const NONE: &str = "none";

/// What is tokenized for one prompt.
#[derive(Debug)]
pub enum Way {
    /// The messages rendered with this template.
    Chat(ChatTemplate),
    /// Each message's text, summed: a chat API without a known template
    /// (the reason says why), or no API known.
    Raw(String),
    /// The messages' text joined by newlines, as a completions API (and a
    /// body template's `%p`) gets it.
    Joined,
}

/// The plan's tokenizer and the way prompts are counted with it.
#[derive(Debug)]
pub struct InputCounter {
    tok: PromptTokenizer,
    way: Way,
}

fn template_error(key: &'static str, e: ChatTemplateError) -> DatasetError {
    DatasetError::ChatTemplate {
        key,
        path: e.path,
        reason: e.reason,
    }
}

/// Whether a server of this API applies a chat template to the messages.
pub fn applies_template(api: ApiKind) -> bool {
    matches!(api, ApiKind::OpenaiChat | ApiKind::OllamaChat)
}

/// The way prompts of `api` are counted, the template found or named by
/// `[dataset] chat_template` for chat APIs.
fn way(
    d: &DatasetSection,
    plan_dir: Option<&Path>,
    tokenizer: &Path,
    api: Option<ApiKind>,
) -> Result<Way, DatasetError> {
    let named = d.chat_template.as_deref().filter(|p| *p != Path::new(NONE));
    let chat = api.is_some_and(applies_template);
    if let (Some(api), Some(_)) = (api, named)
        && !chat
    {
        return Err(DatasetError::Invalid {
            key: "chat_template",
            reason: format!(
                "applies only to chat APIs (openai-chat, ollama-chat); api = \"{}\" sends the \
                 prompt as it is",
                api.as_str()
            ),
        });
    }
    match api {
        None => return Ok(Way::Raw("no API given".into())),
        Some(_) if !chat => return Ok(Way::Joined),
        Some(_) => {}
    }
    if d.chat_template.as_deref() == Some(Path::new(NONE)) {
        return Ok(Way::Raw("dataset.chat_template = \"none\"".into()));
    }
    if let Some(p) = named {
        let config = tokenizer
            .parent()
            .map(|dir| dir.join(barrage_common::chat_template::CONFIG_FILE))
            .filter(|c| c.is_file());
        return ChatTemplate::from_file(&resolve(plan_dir, p), config.as_deref())
            .map(Way::Chat)
            .map_err(|e| template_error("chat_template", e));
    }
    match ChatTemplate::beside(tokenizer).map_err(|e| template_error("tokenizer", e))? {
        Found::Template(t) => Ok(Way::Chat(t)),
        Found::None(why) => Ok(Way::Raw(format!("no chat template: {why}"))),
    }
}

impl InputCounter {
    /// The plan's tokenizer with the way prompts of `api` are counted (None:
    /// each message's raw text); None without a tokenizer. A named template
    /// that is missing or broken is an error naming the file.
    pub fn for_plan(
        d: &DatasetSection,
        plan_dir: Option<&Path>,
        api: Option<ApiKind>,
    ) -> Result<Option<Self>, DatasetError> {
        let Some(p) = &d.tokenizer else {
            return Ok(None);
        };
        let path = resolve(plan_dir, p);
        let tok = PromptTokenizer::from_file(&path)?;
        let way = way(d, plan_dir, &path, api)?;
        Ok(Some(Self { tok, way }))
    }

    /// Counts raw text (no API known), as `dataset::load` always did.
    pub fn raw(tok: PromptTokenizer) -> Self {
        Self {
            tok,
            way: Way::Raw("no API given".into()),
        }
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tok
    }

    pub fn way(&self) -> &Way {
        &self.way
    }

    /// Whether counts are of the rendered chat template.
    pub fn templated(&self) -> bool {
        matches!(self.way, Way::Chat(_))
    }

    /// The template file, when one is used.
    pub fn template_origin(&self) -> Option<PathBuf> {
        match &self.way {
            Way::Chat(t) => Some(t.origin().to_owned()),
            _ => None,
        }
    }

    fn render(&self, t: &ChatTemplate, msgs: &[pb::ChatMessage]) -> Result<String, DatasetError> {
        let msgs: Vec<ChatMessage<'_>> = msgs
            .iter()
            .map(|m| ChatMessage {
                role: &m.role,
                content: &m.content,
            })
            .collect();
        t.render(&msgs)
            .map_err(|e| template_error("chat_template", e))
    }

    /// The texts the server tokenizes for `msgs`, one per count to sum.
    fn texts(&self, msgs: &[pb::ChatMessage]) -> Result<Vec<String>, DatasetError> {
        Ok(match &self.way {
            Way::Chat(t) => vec![self.render(t, msgs)?],
            Way::Raw(_) => msgs.iter().map(|m| m.content.clone()).collect(),
            Way::Joined => vec![
                msgs.iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ],
        })
    }

    /// Input tokens of each prompt, many at once (tokenized in parallel).
    pub fn count_many(&self, prompts: &[&[pb::ChatMessage]]) -> Result<Vec<usize>, DatasetError> {
        let mut texts = Vec::new();
        let mut parts = Vec::with_capacity(prompts.len());
        for msgs in prompts {
            let t = self.texts(msgs)?;
            parts.push(t.len());
            texts.extend(t);
        }
        let mut counts = self.tok.count_many(texts)?.into_iter();
        Ok(parts
            .into_iter()
            .map(|n| counts.by_ref().take(n).sum())
            .collect())
    }

    /// Input tokens of a prompt that is one user message of `text`.
    pub fn count_user_text(&self, text: &str) -> Result<usize, DatasetError> {
        match &self.way {
            Way::Chat(t) => {
                let rendered = self.render(t, &[super::message("user", text)])?;
                self.tok.count(&rendered)
            }
            Way::Raw(_) | Way::Joined => self.tok.count(text),
        }
    }

    /// What the summary says about counts made this way.
    pub fn describe(&self) -> String {
        match &self.way {
            Way::Chat(t) => format!(
                "input tokens counted with tokenizer {} on the messages rendered with the chat \
                 template of {}",
                self.tok.path().display(),
                t.origin().display()
            ),
            Way::Raw(why) => format!(
                "input tokens counted with tokenizer {} on the messages' raw text ({why}); a \
                 chat server that applies a template counts more",
                self.tok.path().display()
            ),
            Way::Joined => format!(
                "input tokens counted with tokenizer {} on the prompt text as sent",
                self.tok.path().display()
            ),
        }
    }
}
