//! Just enough Markdown for the metric definitions page (assets/metrics.md,
//! a copy of METRICS.md): headings, paragraphs, pipe tables, `code`.

use std::fmt::Write as _;

use super::page::esc;

/// `code` spans in escaped text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn cells(line: &str) -> Vec<&str> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(str::trim).collect()
}

fn is_separator(line: &str) -> bool {
    cells(line)
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// Markdown to HTML; headings are shifted down by `shift` levels.
pub fn to_html(md: &str, shift: usize) -> String {
    let mut out = String::new();
    let mut para: Vec<&str> = Vec::new();
    let mut table: Vec<&str> = Vec::new();
    let flush_para = |out: &mut String, para: &mut Vec<&str>| {
        if !para.is_empty() {
            let _ = write!(out, "<p>{}</p>", inline(&para.join(" ")));
            para.clear();
        }
    };
    let flush_table = |out: &mut String, table: &mut Vec<&str>| {
        if table.is_empty() {
            return;
        }
        out.push_str("<div class=\"scroll\"><table>");
        for (i, row) in table.iter().filter(|l| !is_separator(l)).enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            out.push_str("<tr>");
            for c in cells(row) {
                let _ = write!(out, "<{tag}>{}</{tag}>", inline(c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table></div>");
        table.clear();
    };
    for line in md.lines() {
        let t = line.trim();
        if t.starts_with('|') {
            flush_para(&mut out, &mut para);
            table.push(t);
            continue;
        }
        flush_table(&mut out, &mut table);
        if t.is_empty() {
            flush_para(&mut out, &mut para);
        } else if let Some(h) = heading(t) {
            flush_para(&mut out, &mut para);
            let level = (h.0 + shift).min(6);
            let _ = write!(out, "<h{level}>{}</h{level}>", inline(h.1));
        } else {
            para.push(t);
        }
    }
    flush_table(&mut out, &mut table);
    flush_para(&mut out, &mut para);
    out
}

fn heading(t: &str) -> Option<(usize, &str)> {
    let level = t.chars().take_while(|c| *c == '#').count();
    (level > 0 && t[level..].starts_with(' ')).then(|| (level, t[level..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_headings_and_code_become_html() {
        let html = to_html(
            "# Title\n\nSome `ttft` text\nmore.\n\n| a | b |\n|---|---|\n| `x` | <y> |\n",
            1,
        );
        assert!(html.contains("<h2>Title</h2>"), "{html}");
        assert!(
            html.contains("<p>Some <code>ttft</code> text more.</p>"),
            "{html}"
        );
        assert!(html.contains("<tr><th>a</th><th>b</th></tr>"), "{html}");
        assert!(
            html.contains("<td><code>x</code></td><td>&lt;y&gt;</td>"),
            "{html}"
        );
    }
}
