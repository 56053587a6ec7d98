//! Kinds that carry a conversation, sent as history plus a final user
//! message: `jsonl-chat` (Qianfan: each line `[{prompt, response}, ...]`,
//! the last response dropped), `sharegpt` (`{conversations: [{from, value}]}`,
//! cut after the last human turn) and `messages` (each line an OpenAI-style
//! messages array, cut after the last user message).

use std::path::Path;

use serde::Deserialize;

use super::records::{items, jsonl, list_or_jsonl};
use super::{DatasetError, Item, message};

#[derive(Deserialize)]
struct Turn {
    prompt: String,
    #[serde(default)]
    response: Option<String>,
}

/// Earlier turns become user/assistant history; the last prompt is the
/// final user message and its response is dropped.
pub(super) fn jsonl_chat(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records = jsonl::<Vec<Turn>>(path, text, "a JSON array of {prompt, response} turns")?;
    items(path, records, |turns| {
        let Some((last, earlier)) = turns.split_last() else {
            return Err("empty conversation: expected at least one {prompt, response} turn".into());
        };
        if last.prompt.trim().is_empty() {
            return Ok(None);
        }
        let mut msgs = Vec::with_capacity(turns.len() * 2);
        for (k, t) in earlier.iter().enumerate() {
            let Some(response) = &t.response else {
                return Err(format!(
                    "turn {}: a turn before the last needs a response",
                    k + 1
                ));
            };
            msgs.push(message("user", t.prompt.as_str()));
            msgs.push(message("assistant", response.as_str()));
        }
        msgs.push(message("user", last.prompt.as_str()));
        Ok(Some(Item::new(msgs)))
    })
}

#[derive(Deserialize)]
struct Conversation {
    conversations: Vec<Said>,
}

#[derive(Deserialize)]
struct Said {
    from: String,
    value: String,
}

fn speaker(from: &str) -> Option<&'static str> {
    match from {
        "human" | "user" => Some("user"),
        "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => Some("assistant"),
        "system" => Some("system"),
        _ => None,
    }
}

/// The turns up to the last human one; human → user, gpt → assistant.
/// Conversations with no human turn, or a blank last one, are skipped.
pub(super) fn sharegpt(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records =
        list_or_jsonl::<Conversation>(path, text, "{conversations: [{from, value}, ...]}")?;
    items(path, records, |c| {
        let mut msgs = Vec::with_capacity(c.conversations.len());
        for (k, s) in c.conversations.into_iter().enumerate() {
            let Some(role) = speaker(&s.from) else {
                return Err(format!(
                    "turn {}: unknown speaker {:?} (expected human, gpt or system)",
                    k + 1,
                    s.from
                ));
            };
            msgs.push(message(role, s.value));
        }
        let Some(last_user) = msgs.iter().rposition(|m| m.role == "user") else {
            return Ok(None);
        };
        msgs.truncate(last_user + 1);
        if msgs[last_user].content.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(Item::new(msgs)))
    })
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// Each line a messages array, sent as written up to its last user message.
pub(super) fn messages(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records = jsonl::<Vec<Message>>(
        path,
        text,
        "a JSON array of {role, content} messages (content a string)",
    )?;
    items(path, records, |ms| {
        let mut msgs = Vec::with_capacity(ms.len());
        for (k, m) in ms.into_iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(format!(
                    "message {}: unknown role {:?} (expected system, user or assistant)",
                    k + 1,
                    m.role
                ));
            }
            msgs.push(message(&m.role, m.content));
        }
        let Some(last_user) = msgs.iter().rposition(|m| m.role == "user") else {
            return Err("no user message".into());
        };
        msgs.truncate(last_user + 1);
        Ok(Some(Item::new(msgs)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(item: &Item) -> Vec<(&str, &str)> {
        item.messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn jsonl_chat_history_and_dropped_last_response() {
        let text =
            r#"[{"prompt": "hi", "response": "hello"}, {"prompt": "and?", "response": "x"}]"#;
        let items = jsonl_chat(Path::new("c.jsonl"), text).expect("ok");
        assert_eq!(
            roles(&items[0]),
            [("user", "hi"), ("assistant", "hello"), ("user", "and?")]
        );
        let e = jsonl_chat(Path::new("c.jsonl"), "[]")
            .expect_err("empty")
            .to_string();
        assert!(e.contains("c.jsonl: line 1: empty conversation"), "{e}");
        let e = jsonl_chat(
            Path::new("c.jsonl"),
            "\n[{\"prompt\": \"a\"}, {\"prompt\": \"b\"}]",
        )
        .expect_err("no response")
        .to_string();
        assert!(
            e.contains("line 2: turn 1: a turn before the last needs a response"),
            "{e}"
        );
    }

    #[test]
    fn sharegpt_cuts_after_the_last_human_turn() {
        let text = r#"[
          {"id": "a", "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
          {"id": "b", "conversations": [{"from": "gpt", "value": "lonely"}]}
        ]"#;
        let items = sharegpt(Path::new("s.json"), text).expect("ok");
        assert_eq!(items.len(), 1, "no human turn: skipped");
        assert_eq!(
            roles(&items[0]),
            [
                ("system", "be brief"),
                ("user", "q1"),
                ("assistant", "a1"),
                ("user", "q2")
            ]
        );
        let bad = r#"[{"conversations": [{"from": "robot", "value": "x"}]}]"#;
        let e = sharegpt(Path::new("s.json"), bad)
            .expect_err("speaker")
            .to_string();
        assert!(
            e.contains("element [0]: turn 1: unknown speaker \"robot\""),
            "{e}"
        );
    }

    #[test]
    fn messages_keep_roles_and_need_a_user() {
        let text = r#"[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]"#;
        let items = messages(Path::new("m.jsonl"), text).expect("ok");
        assert_eq!(roles(&items[0]), [("system", "s"), ("user", "u")]);
        let e = messages(
            Path::new("m.jsonl"),
            r#"[{"role": "system", "content": "s"}]"#,
        )
        .expect_err("no user")
        .to_string();
        assert!(e.contains("line 1: no user message"), "{e}");
    }
}
