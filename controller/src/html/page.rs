//! One self-contained HTML page: the styles and scripts are inlined from
//! controller/assets, the charts' data is embedded as JSON and drawn by
//! assets/charts.js. Nothing on the page loads anything from a network.

use std::fmt::Write as _;

use serde_json::{Value, json};

const CSS: &str = concat!(
    include_str!("../../assets/report.css"),
    include_str!("../../assets/charts.css")
);
const CHARTS_JS: &str = include_str!("../../assets/charts.js");
const ERRORS_JS: &str = include_str!("../../assets/errors.js");
const PAGE_JS: &str = include_str!("../../assets/page.js");

/// The chart-drawing module alone (for other pages, e.g. a live view).
pub fn charts_js() -> &'static str {
    CHARTS_JS
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON that can sit inside a `<script>` element: no `<` can end it early.
pub fn script_json(v: &Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A page being built: HTML in order, and the charts it places.
#[derive(Default)]
pub struct Page {
    body: String,
    charts: Vec<Value>,
}

impl Page {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, html: &str) {
        self.body.push_str(html);
    }

    /// Places a chart: a figure with `title`, drawn from `spec` (see
    /// assets/charts.js for its shape).
    pub fn chart(&mut self, title: &str, spec: Value) {
        let id = format!("chart-{}", self.charts.len() + 1);
        let _ = write!(
            self.body,
            "<figure class=\"chart\"><figcaption>{}</figcaption><div class=\"chart-box\" id=\"{id}\"></div></figure>",
            esc(title)
        );
        self.charts.push(json!({ "id": id, "spec": spec }));
    }

    /// A figure that says why there is no chart (never a chart of zeros).
    pub fn no_chart(&mut self, title: &str, why: &str) {
        let _ = write!(
            self.body,
            "<figure class=\"chart\"><figcaption>{}</figcaption><p class=\"chart-empty\">{}</p></figure>",
            esc(title),
            esc(why)
        );
    }

    pub fn charts(&self) -> usize {
        self.charts.len()
    }

    /// The whole document.
    pub fn finish(self, title: &str) -> String {
        let mut out = String::with_capacity(self.body.len() + CHARTS_JS.len() + 8192);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
             <title>{}</title><style>{CSS}</style></head>\n<body>\
             <pre id=\"script-errors\" hidden></pre><script>{ERRORS_JS}</script>\n<main>",
            esc(title)
        );
        out.push_str(&self.body);
        let _ = write!(
            out,
            "</main>\n<script type=\"application/json\" id=\"chart-data\">{}</script>\n<script>{CHARTS_JS}</script>\n<script>{PAGE_JS}</script>\n</body></html>\n",
            script_json(&Value::Array(self.charts))
        );
        out
    }
}

/// A series for a chart: `name` and its [x, y] points (y None: a gap).
pub fn series(name: &str, points: Vec<(f64, Option<f64>)>) -> Value {
    let pts: Vec<Value> = points.into_iter().map(|(x, y)| json!([x, y])).collect();
    json!({ "name": name, "points": pts })
}

/// A chart spec with axis labels and its series.
pub fn spec(
    x_label: &str,
    x_scale: &str,
    y_label: &str,
    y_unit: &str,
    series: Vec<Value>,
) -> Value {
    json!({
        "x": { "label": x_label, "scale": x_scale },
        "y": { "label": y_label, "unit": y_unit },
        "series": series,
    })
}

/// A number for a table cell: "–" for none, else a few significant digits.
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(x) if !x.is_finite() => "–".to_owned(),
        Some(x) => {
            let a = x.abs();
            if a >= 1000.0 || x == x.trunc() && a < 1e15 {
                format!("{x:.0}")
            } else if a >= 100.0 {
                format!("{x:.1}")
            } else if a >= 1.0 {
                format!("{x:.2}")
            } else {
                format!("{x:.3}")
            }
        }
    }
}

/// A table: a header row and body rows of already-escaped cells; cells
/// that start with a digit, sign or "–" are right-aligned.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for (i, h) in head.iter().enumerate() {
        let class = if i > 0 && rows.iter().all(|r| r.get(i).is_some_and(|c| numeric(c))) {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let class = if numeric(c) { " class=\"num\"" } else { "" };
            let _ = write!(out, "<td{class}>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

fn numeric(cell: &str) -> bool {
    cell.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '–')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_its_script_and_text_is_escaped() {
        let v = json!({"m": "</script><script>alert(1)</script>"});
        let s = script_json(&v);
        assert!(!s.contains("</script"), "{s}");
        let back: Value = serde_json::from_str(&s).expect("still JSON");
        assert_eq!(back, v);
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn numbers_show_a_dash_for_none_and_few_digits() {
        assert_eq!(num(None), "–");
        assert_eq!(num(Some(f64::NAN)), "–");
        assert_eq!(num(Some(12.0)), "12");
        assert_eq!(num(Some(1234.567)), "1235");
        assert_eq!(num(Some(12.345)), "12.35");
        assert_eq!(num(Some(0.01234)), "0.012");
    }
}
