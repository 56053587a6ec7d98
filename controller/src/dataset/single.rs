//! Kinds with one prompt per record, sent as a single user message:
//! `json` (`{prompt, response}`, the response ignored), `openqa`
//! (`{question}`) and `longalpaca` (`{instruction}`). Each reads a JSON list
//! or JSONL; other fields of a record are ignored, and records whose text is
//! blank are skipped.

use std::path::Path;

use serde::Deserialize;

use super::records::{items, list_or_jsonl};
use super::{DatasetError, Item};

#[derive(Deserialize)]
struct PromptResponse {
    prompt: String,
}

#[derive(Deserialize)]
struct Question {
    question: String,
}

#[derive(Deserialize)]
struct Instruction {
    instruction: String,
}

fn nonblank(text: String) -> Result<Option<Item>, String> {
    Ok((!text.trim().is_empty()).then(|| Item::user(text)))
}

/// `[{"prompt": "..", "response": ".."}, ...]`.
pub(super) fn json(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records = list_or_jsonl::<PromptResponse>(path, text, "{prompt, response}")?;
    items(path, records, |r| nonblank(r.prompt))
}

/// `{"question": ".."}` per line.
pub(super) fn openqa(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records = list_or_jsonl::<Question>(path, text, "{question}")?;
    items(path, records, |r| nonblank(r.question))
}

/// `[{"instruction": "..", "output": ".."}, ...]`.
pub(super) fn longalpaca(path: &Path, text: &str) -> Result<Vec<Item>, DatasetError> {
    let records = list_or_jsonl::<Instruction>(path, text, "{instruction}")?;
    items(path, records, |r| nonblank(r.instruction))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(items: &[Item]) -> Vec<&str> {
        items
            .iter()
            .map(|i| {
                assert_eq!(i.messages.len(), 1);
                assert_eq!(i.messages[0].role, "user");
                i.messages[0].content.as_str()
            })
            .collect()
    }

    #[test]
    fn each_kind_reads_its_field() {
        let p = Path::new("d.json");
        let j = json(
            p,
            r#"[{"prompt": "a b", "response": "x"}, {"prompt": " "}]"#,
        );
        assert_eq!(contents(&j.expect("json")), ["a b"]);
        let q = openqa(p, "{\"question\": \"why?\", \"human_answers\": []}\n");
        assert_eq!(contents(&q.expect("openqa")), ["why?"]);
        let l = longalpaca(
            p,
            r#"[{"instruction": "read this", "output": "ok", "file": "f"}]"#,
        );
        assert_eq!(contents(&l.expect("longalpaca")), ["read this"]);
    }

    #[test]
    fn wrong_fields_name_the_expected_shape() {
        let e = longalpaca(
            Path::new("l.json"),
            r#"[{"instruction": "a"}, {"input": "b"}]"#,
        )
        .expect_err("shape")
        .to_string();
        assert!(
            e.contains("l.json: element [1]: expected {instruction}"),
            "{e}"
        );
    }
}
