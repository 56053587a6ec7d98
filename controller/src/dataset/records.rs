//! Reading records from JSON files with errors that point at the problem:
//! JSONL (one value per line, blank lines skipped) reports `line N`, a JSON
//! list reports `element [i]` for a record of the wrong shape and `line N`
//! for malformed JSON.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{DatasetError, Item};

/// Where a record sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loc {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based index in a JSON list.
    Element(usize),
}

impl Loc {
    /// The error for a problem with the record here.
    pub(super) fn error(self, path: &Path, reason: impl Into<String>) -> DatasetError {
        let path = path.to_owned();
        let reason = reason.into();
        match self {
            Loc::Line(line) => DatasetError::Line { path, line, reason },
            Loc::Element(index) => DatasetError::Element {
                path,
                index,
                reason,
            },
        }
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn bare(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rsplit_once(" at line ") {
        Some((msg, _)) => msg.to_owned(),
        None => s,
    }
}

/// The reason for a record that failed to parse as `expected`.
fn reason(e: &serde_json::Error, expected: &str) -> String {
    if e.is_syntax() || e.is_eof() {
        format!("malformed JSON at column {}: {}", e.column(), bare(e))
    } else {
        format!("expected {expected}: {}", bare(e))
    }
}

/// One `T` per non-blank line.
pub(super) fn jsonl<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    expected: &str,
) -> Result<Vec<(Loc, T)>, DatasetError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let loc = Loc::Line(i + 1);
        let v = serde_json::from_str(line).map_err(|e| loc.error(path, reason(&e, expected)))?;
        out.push((loc, v));
    }
    Ok(out)
}

/// A JSON list of `T`.
pub(super) fn list<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    expected: &str,
) -> Result<Vec<(Loc, T)>, DatasetError> {
    let shape_error = match serde_json::from_str::<Vec<T>>(text) {
        Ok(v) => {
            return Ok(v
                .into_iter()
                .enumerate()
                .map(|(i, t)| (Loc::Element(i), t))
                .collect());
        }
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(Loc::Line(e.line()).error(path, reason(&e, "a JSON list")));
        }
        Err(e) => e,
    };
    // Well-formed JSON of the wrong shape: find the element at fault.
    let values: Vec<Value> = serde_json::from_str(text).map_err(|_| {
        Loc::Line(shape_error.line()).error(
            path,
            format!("expected a JSON list of {expected}: {}", bare(&shape_error)),
        )
    })?;
    for (i, v) in values.into_iter().enumerate() {
        if let Err(e) = T::deserialize(v) {
            return Err(Loc::Element(i).error(path, reason(&e, expected)));
        }
    }
    Err(Loc::Line(shape_error.line()).error(path, reason(&shape_error, expected)))
}

/// A JSON list when the file starts with `[`, else JSONL.
pub(super) fn list_or_jsonl<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    expected: &str,
) -> Result<Vec<(Loc, T)>, DatasetError> {
    if text.trim_start().starts_with('[') {
        list(path, text, expected)
    } else {
        jsonl(path, text, expected)
    }
}

/// Turns records into items: `convert` gives the item, `None` to skip the
/// record (nothing to send), or the problem with it.
pub(super) fn items<T>(
    path: &Path,
    records: Vec<(Loc, T)>,
    convert: impl Fn(T) -> Result<Option<Item>, String>,
) -> Result<Vec<Item>, DatasetError> {
    let mut out = Vec::with_capacity(records.len());
    for (loc, r) in records {
        if let Some(item) = convert(r).map_err(|reason| loc.error(path, reason))? {
            out.push(item);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Q {
        question: String,
    }

    const P: &str = "/data/q.jsonl";

    fn err<T: std::fmt::Debug>(r: Result<T, DatasetError>) -> String {
        r.expect_err("an error").to_string()
    }

    #[test]
    fn jsonl_reports_the_line() {
        let ok = jsonl::<Q>(
            Path::new(P),
            "{\"question\":\"a\"}\n\n{\"question\":\"b\"}\n",
            "{question}",
        )
        .expect("ok");
        assert_eq!(ok[1].0, Loc::Line(3));
        assert_eq!(ok[1].1.question, "b");
        let e = err(jsonl::<Q>(
            Path::new(P),
            "{\"question\":\"a\"}\n{\"question\":",
            "{question}",
        ));
        assert!(e.contains("/data/q.jsonl: line 2: malformed JSON"), "{e}");
        let e = err(jsonl::<Q>(Path::new(P), "{\"q\":1}", "{question}"));
        assert!(
            e.contains("line 1: expected {question}: missing field `question`"),
            "{e}"
        );
    }

    #[test]
    fn lists_report_the_element_or_the_line() {
        let text = "[\n {\"question\": \"a\"},\n {\"question\": 3}\n]";
        let e = err(list::<Q>(Path::new(P), text, "{question}"));
        assert!(
            e.contains("element [1]: expected {question}: invalid type"),
            "{e}"
        );
        let e = err(list::<Q>(
            Path::new(P),
            "[\n{\"question\": \"a\"},\n{",
            "{question}",
        ));
        assert!(e.contains("line 3: malformed JSON"), "{e}");
        let e = err(list::<Q>(
            Path::new(P),
            "{\"question\": \"a\"}",
            "{question}",
        ));
        assert!(e.contains("expected a JSON list of {question}"), "{e}");
        let both = list_or_jsonl::<Q>(Path::new(P), " [{\"question\": \"a\"}]", "{question}");
        assert_eq!(both.expect("list")[0].0, Loc::Element(0));
    }
}
