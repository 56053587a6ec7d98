//! Plain-text kinds: `lines` (one prompt per line, blank lines skipped) and
//! `prompt` (one prompt, inline or `@file`).

use std::path::PathBuf;

use super::{DatasetError, Item, read};

/// One prompt per non-blank line, trimmed.
pub(super) fn lines(text: &str) -> Vec<Item> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Item::user)
        .collect()
}

/// The inline prompt, or the file named after `@` (resolved by `resolve`).
pub(super) fn prompt(
    text: &str,
    resolve: impl FnOnce(&str) -> PathBuf,
) -> Result<Item, DatasetError> {
    let text = match text.strip_prefix('@') {
        Some(file) => {
            let path = resolve(file);
            let body = read("prompt", &path)?;
            if body.trim().is_empty() {
                return Err(DatasetError::Read {
                    key: "prompt",
                    path,
                    reason: "the prompt file is empty".into(),
                });
            }
            body
        }
        None => text.to_owned(),
    };
    if text.trim().is_empty() {
        return Err(DatasetError::Invalid {
            key: "prompt",
            reason: "is empty".into(),
        });
    }
    Ok(Item::user(text))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn blank_lines_are_skipped_and_lines_trimmed() {
        let items = lines("  one \n\n\t\ntwo words\n");
        let texts: Vec<_> = items
            .iter()
            .map(|i| i.messages[0].content.as_str())
            .collect();
        assert_eq!(texts, ["one", "two words"]);
    }

    #[test]
    fn inline_prompt_and_missing_file() {
        let it = prompt("Hello there", |_| PathBuf::new()).expect("inline");
        assert_eq!(it.messages[0].role, "user");
        assert_eq!(it.messages[0].content, "Hello there");
        let e = prompt("@nope.txt", |f| Path::new("/nonexistent").join(f)).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/nope.txt"), "{e}");
        assert!(prompt("   ", |_| PathBuf::new()).is_err());
    }
}
