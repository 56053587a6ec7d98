//! A model's chat template: the Jinja text Hugging Face models ship (the
//! `chat_template` of `tokenizer_config.json`, or `chat_template.jinja`),
//! rendered with minijinja the way `transformers`' `apply_chat_template`
//! does: `messages`, `add_generation_prompt = true`, `bos_token` and
//! `eos_token` from the config, `raise_exception`, `strftime_now`, Python
//! string and dict methods, `trim_blocks` and `lstrip_blocks`. Servers count
//! prompt tokens on this rendered text, so barrage counts there too.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde_json::Value as Json;

/// The config file Hugging Face keeps beside `tokenizer.json`.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// The template file newer Hugging Face models keep beside it instead.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

/// A template that cannot be read, parsed or rendered; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ChatTemplateError {
    pub path: PathBuf,
    pub reason: String,
}

/// One message to render.
#[derive(Debug, Clone, Copy)]
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// A compiled chat template and where it came from.
pub struct ChatTemplate {
    /// Boxed: an environment is large, and templates travel in enums.
    env: Box<Environment<'static>>,
    /// The Jinja text, kept so agents can render turn histories with it.
    source: String,
    bos_token: String,
    eos_token: String,
    origin: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What looking for a template beside a tokenizer found.
#[derive(Debug)]
pub enum Found {
    Template(ChatTemplate),
    /// No template there; the reason says which files were looked at.
    None(String),
}

const NAME: &str = "chat_template";

/// `raise_exception(msg)`: templates call it to refuse a conversation.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: today's date as Llama 3.x templates print it.
fn strftime_now(fmt: String) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {fmt:?}"),
        )
    })?;
    Ok(out)
}

/// A special token of the config: a string, or an object with `content`.
fn token(config: &Json, key: &str) -> String {
    match config.get(key) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// The `chat_template` of a config: a string, or a list of `{name,
/// template}` of which the one named "default" (else the first) is used.
fn config_template(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some(n))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_owned)
        }
        _ => None,
    }
}

fn fail(path: &Path, reason: impl Into<String>) -> ChatTemplateError {
    ChatTemplateError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<String, ChatTemplateError> {
    std::fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))
}

/// A `tokenizer_config.json` as JSON; a bad file is an error naming it.
fn read_config(path: &Path) -> Result<Json, ChatTemplateError> {
    serde_json::from_str(&read(path)?).map_err(|e| fail(path, format!("not valid JSON: {e}")))
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names the file in errors and reports.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
        origin: PathBuf,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| fail(&origin, e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| fail(&origin, format!("not a valid Jinja template: {e}")))?;
        Ok(Self {
            env: Box::new(env),
            source,
            bos_token,
            eos_token,
            origin,
        })
    }

    /// The template of a plan's `chat_template` file: a Jinja file, or a
    /// `tokenizer_config.json` (a `.json` file) holding one. `config` gives
    /// the special tokens (the config beside the tokenizer, if any).
    pub fn from_file(path: &Path, config: Option<&Path>) -> Result<Self, ChatTemplateError> {
        if path.extension().is_some_and(|e| e == "json") {
            let json = read_config(path)?;
            let source = config_template(&json)
                .ok_or_else(|| fail(path, "has no \"chat_template\" string"))?;
            return Self::new(
                source,
                token(&json, "bos_token"),
                token(&json, "eos_token"),
                path.to_owned(),
            );
        }
        let source = read(path)?;
        let json = match config {
            Some(c) => read_config(c)?,
            None => Json::Null,
        };
        Self::new(
            source,
            token(&json, "bos_token"),
            token(&json, "eos_token"),
            path.to_owned(),
        )
    }

    /// The template shipped beside `tokenizer_json`, the Hugging Face way:
    /// `chat_template` in `tokenizer_config.json`, else `chat_template.jinja`
    /// (special tokens from the config either way). A config that is there
    /// but broken, or a template that does not compile, is an error.
    pub fn beside(tokenizer_json: &Path) -> Result<Found, ChatTemplateError> {
        let dir = tokenizer_json.parent().unwrap_or(Path::new(""));
        let config_path = dir.join(CONFIG_FILE);
        let jinja = dir.join(TEMPLATE_FILE);
        let config = if config_path.is_file() {
            Some(read_config(&config_path)?)
        } else {
            None
        };
        let (bos, eos) = config.as_ref().map_or_else(Default::default, |c| {
            (token(c, "bos_token"), token(c, "eos_token"))
        });
        if let Some(source) = config.as_ref().and_then(config_template) {
            return Self::new(source, bos, eos, config_path).map(Found::Template);
        }
        if jinja.is_file() {
            return Self::new(read(&jinja)?, bos, eos, jinja).map(Found::Template);
        }
        let why = match config {
            Some(_) => format!(
                "{} has no \"chat_template\" and there is no {}",
                config_path.display(),
                jinja.display()
            ),
            None => format!(
                "neither {} nor {} is there",
                config_path.display(),
                jinja.display()
            ),
        };
        Ok(Found::None(why))
    }

    /// The file the template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The Jinja text and the special tokens it is rendered with.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.source, &self.bos_token, &self.eos_token)
    }

    /// The text a server tokenizes for `messages`, ready for the answer
    /// (`add_generation_prompt = true`).
    pub fn render(&self, messages: &[ChatMessage<'_>]) -> Result<String, ChatTemplateError> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| fail(&self.origin, e.to_string()))?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| fail(&self.origin, format!("rendering failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Meta-Llama-3-8B-Instruct's template, as shipped.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    /// Qwen2.5-Instruct's template without its tools branch (ChatML with a
    /// default system message), block tags on their own lines as shipped.
    const QWEN: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

    fn msgs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<ChatMessage<'a>> {
        pairs
            .iter()
            .map(|&(role, content)| ChatMessage { role, content })
            .collect()
    }

    fn tmpl(source: &str, bos: &str) -> ChatTemplate {
        ChatTemplate::new(source.into(), bos.into(), String::new(), "t".into()).expect("compiles")
    }

    #[test]
    fn llama3_renders_bos_headers_trimmed_content_and_the_generation_prompt() {
        let t = tmpl(LLAMA3, "<|begin_of_text|>");
        let out = t
            .render(&msgs(&[("system", "Be brief."), ("user", "  Hi there \n")]))
            .expect("renders");
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn chatml_adds_the_default_system_message_and_strips_block_lines() {
        let t = tmpl(QWEN, "");
        let out = t.render(&msgs(&[("user", "Hi")])).expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
             assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].content.strip().startswith('x') %}\
                   {{ raise_exception('no x, please') }}{% endif %}{{ messages[0].content.upper() }}";
        let t = tmpl(src, "");
        assert_eq!(t.render(&msgs(&[("user", " ab ")])).expect("ok"), " AB ");
        let e = t.render(&msgs(&[("user", " xy")])).expect_err("raised");
        assert!(e.to_string().contains("no x, please"), "{e}");
        assert!(e.to_string().starts_with("t: rendering failed"), "{e}");
    }

    #[test]
    fn a_broken_template_names_its_file() {
        let e = ChatTemplate::new("{% for %}".into(), "".into(), "".into(), "m/x.jinja".into())
            .expect_err("broken");
        assert!(
            e.to_string()
                .starts_with("m/x.jinja: not a valid Jinja template"),
            "{e}"
        );
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chat-tmpl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn found_beside_the_tokenizer_with_tokens_from_the_config() {
        let dir = scratch("beside");
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "special": true},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
            ]
        });
        std::fs::write(dir.join(CONFIG_FILE), config.to_string()).expect("write");
        let Found::Template(t) = ChatTemplate::beside(&dir.join("tokenizer.json")).expect("ok")
        else {
            panic!("a template is there");
        };
        assert_eq!(t.render(&msgs(&[("user", "a")])).expect("ok"), "<s>a</s>");
        assert_eq!(t.origin(), dir.join(CONFIG_FILE));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_config_without_a_template_is_found_wanting_and_says_why() {
        let dir = scratch("none");
        std::fs::write(dir.join(CONFIG_FILE), r#"{"bos_token": "<s>"}"#).expect("write");
        let Found::None(why) = ChatTemplate::beside(&dir.join("tokenizer.json")).expect("ok")
        else {
            panic!("no template there");
        };
        assert!(why.contains("has no \"chat_template\""), "{why}");
        std::fs::write(dir.join(TEMPLATE_FILE), "{{ bos_token }}!").expect("write");
        let Found::Template(t) = ChatTemplate::beside(&dir.join("tokenizer.json")).expect("ok")
        else {
            panic!("the .jinja file is there");
        };
        assert_eq!(t.render(&[]).expect("ok"), "<s>!");
        std::fs::write(dir.join(CONFIG_FILE), "{not json").expect("write");
        let e = ChatTemplate::beside(&dir.join("tokenizer.json")).expect_err("bad json");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
