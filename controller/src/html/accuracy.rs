//! The accuracy budget: summary.json's `accuracy` object, shown key by key
//! whatever its exact fields (numbers, text, lists, nested objects, lists
//! of records as tables).

use std::fmt::Write as _;

use serde_json::Value;

use super::page::{Page, esc, num};

pub fn section(p: &mut Page, s: &Value) {
    p.push("<section id=\"accuracy\"><h2>Accuracy budget</h2>");
    let a = &s["accuracy"];
    if a.is_null() {
        p.push("<p class=\"na\">This run's summary has no accuracy budget.</p>");
    } else {
        p.push("<p class=\"meta\">How far to trust the figures above: what the load generator, the clocks and the counts contributed.</p>");
        p.push(&value(a, 0));
    }
    p.push("</section>");
}

fn label(k: &str) -> String {
    esc(&k.replace('_', " "))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => num(n.as_f64()),
        Value::String(s) => esc(s),
        _ => String::new(),
    }
}

/// A value as HTML: objects as definition lists, lists of objects as
/// tables, other lists inline.
fn value(v: &Value, depth: usize) -> String {
    match v {
        Value::Object(m) => {
            let mut out = String::from("<dl class=\"kv\">");
            // The conclusion first (JSON keys come sorted), then the evidence.
            let first = |k: &String| !matches!(k.as_str(), "verdict" | "concerns");
            let mut keys: Vec<(&String, &Value)> = m.iter().collect();
            keys.sort_by_key(|(k, _)| first(k));
            for (k, x) in keys {
                let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", label(k), value(x, depth + 1));
            }
            out.push_str("</dl>");
            out
        }
        Value::Array(items)
            if items.iter().all(Value::is_object) && !items.is_empty() && depth < 4 =>
        {
            records(items)
        }
        Value::Array(items) if items.is_empty() => "none".into(),
        Value::Array(items) => items
            .iter()
            .map(|x| value(x, depth + 1))
            .collect::<Vec<_>>()
            .join(", "),
        _ => scalar(v),
    }
}

fn records(items: &[Value]) -> String {
    let mut keys: Vec<&String> = Vec::new();
    for it in items {
        for k in it.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut out = String::from("<div class=\"scroll\"><table><tr>");
    for k in &keys {
        let _ = write!(out, "<th>{}</th>", label(k));
    }
    out.push_str("</tr>");
    for it in items {
        out.push_str("<tr>");
        for k in &keys {
            let _ = write!(out, "<td>{}</td>", value(&it[k.as_str()], 5));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_shape_of_accuracy_is_shown_key_by_key() {
        let s = json!({"accuracy": {
            "start_skew_ms": 1.5,
            "generator_bound_intervals": [{"index": 3, "cpu_percent": 97.0}],
            "histogram": {"significant_digits": 3},
            "note": "<b>"
        }});
        let mut p = Page::new();
        section(&mut p, &s);
        let html = p.finish("t");
        for want in [
            "start skew ms",
            "1.50",
            "generator bound intervals",
            "<th>cpu percent</th>",
            "97",
            "significant digits",
            "&lt;b&gt;",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
    }
}
