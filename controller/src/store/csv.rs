//! `requests.csv`: the per-request records of a step, one row each, written
//! as they arrive and flushed at every interval (a sweep: one file in each
//! step's folder). Columns are those of the store's `requests` table
//! (times in µs, offsets from the agreed start), less the raw chunk gaps,
//! which are written as `;`-separated µs. Text is quoted as RFC 4180 says.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::events::{Consumer, OutputError, RunEvent};
use crate::store::rows::RequestRow;

pub const FILE: &str = "requests.csv";

/// The header line (documented in docs/results.md).
pub const HEADER: &str = "step,agent,seq,user,prompt_index,intended_offset_us,start_offset_us,ttft_us,ttfo_us,e2e_us,tpot_us,chunk_gap_mean_us,chunk_gap_p50_us,chunk_gap_max_us,chunks,chunk_gaps_us,input_tokens,output_tokens,input_source,output_source,outcome,error_class,http_status,error,warmup,prompt,response,conversation,turn";

#[derive(Default)]
pub struct RequestsCsv {
    /// The open file of the current step.
    file: Option<(PathBuf, BufWriter<File>)>,
    written: Vec<PathBuf>,
    /// Lines of one batch, reused from batch to batch.
    buf: String,
}

impl RequestsCsv {
    pub fn new() -> Self {
        Self::default()
    }

    fn close(&mut self) -> Result<(), OutputError> {
        if let Some((path, mut w)) = self.file.take() {
            w.flush().map_err(|e| OutputError::io(&path, e))?;
            self.written.push(path);
        }
        Ok(())
    }
}

impl Consumer for RequestsCsv {
    fn name(&self) -> &'static str {
        "requests.csv"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::StepStarted(s) => {
                self.close()?;
                std::fs::create_dir_all(&s.dir).map_err(|e| OutputError::io(&s.dir, e))?;
                let path = s.dir.join(FILE);
                let f = File::create(&path).map_err(|e| OutputError::io(&path, e))?;
                let mut w = BufWriter::new(f);
                writeln!(w, "{HEADER}").map_err(|e| OutputError::io(&path, e))?;
                self.file = Some((path, w));
            }
            RunEvent::Requests(r) => {
                if let Some((path, w)) = self.file.as_mut() {
                    // The batch's lines, formatted into one reused buffer.
                    self.buf.clear();
                    for rec in &r.records {
                        row(&mut self.buf, &RequestRow::new(r.step, r.agent, rec));
                    }
                    w.write_all(self.buf.as_bytes())
                        .map_err(|e| OutputError::io(&*path, e))?;
                }
            }
            RunEvent::Interval(_) => {
                if let Some((path, w)) = self.file.as_mut() {
                    w.flush().map_err(|e| OutputError::io(&*path, e))?;
                }
            }
            RunEvent::StepFinished(_) => self.close()?,
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        self.close()?;
        Ok(std::mem::take(&mut self.written))
    }
}

/// One CSV line (with its newline), appended to `out` field by field: no
/// allocation per field (numbers and text are written in place).
pub fn row(out: &mut String, row: &RequestRow<'_>) {
    let r = row.r;
    let o = |out: &mut String, v: Option<u64>| {
        if let Some(x) = v {
            num(out, x);
        }
        out.push(',');
    };
    let f = |out: &mut String, v: Option<f64>| {
        if let Some(x) = v {
            use std::fmt::Write as _;
            // Writing into a String cannot fail.
            let _ = write!(out, "{x:.1}");
        }
        out.push(',');
    };
    let n = |out: &mut String, v: u64| {
        num(out, v);
        out.push(',');
    };
    n(out, u64::from(row.step));
    n(out, row.agent as u64);
    n(out, r.seq);
    n(out, u64::from(r.user));
    n(out, r.prompt_index);
    o(out, r.intended_offset_us);
    n(out, r.start_offset_us);
    o(out, r.ttft_us);
    o(out, r.ttfo_us);
    o(out, r.e2e_us);
    f(out, row.tpot_us);
    f(out, row.gap_mean_us);
    o(out, row.gap_p50_us);
    o(out, row.gap_max_us);
    n(out, row.chunks);
    for (i, g) in r.chunk_gaps_us.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        num(out, *g);
    }
    out.push(',');
    n(out, r.input_tokens);
    n(out, r.output_tokens);
    for name in [row.input_source(), row.output_source(), row.outcome()] {
        out.push_str(name);
        out.push(',');
    }
    push_quoted(out, &r.error_class);
    out.push(',');
    n(out, u64::from(r.http_status));
    push_quoted(out, &r.error);
    out.push(',');
    n(out, u64::from(r.warmup));
    for text in [&r.prompt, &r.response] {
        if let Some(t) = text {
            push_quoted(out, t);
        }
        out.push(',');
    }
    n(out, r.conversation);
    num(out, u64::from(r.turn));
    out.push('\n');
}

/// `v` in decimal, written in place (no allocation).
fn num(out: &mut String, v: u64) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(out, "{v}");
}

/// `s` as `quote` gives it, appended to `out`.
fn push_quoted(out: &mut String, s: &str) {
    if !s.contains([',', '"', '\n', '\r']) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for (i, part) in s.split('"').enumerate() {
        if i > 0 {
            out.push_str("\"\"");
        }
        out.push_str(part);
    }
    out.push('"');
}

/// A field quoted when it holds a comma, quote or line break.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_quoted(&mut out, s);
    out
}

/// Splits one CSV text into records of fields (quotes undone); for tests
/// and tools reading the file back.
pub fn parse(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_proto::agent::v1 as pb;

    #[test]
    fn text_with_commas_quotes_and_newlines_reads_back() {
        let rec = pb::RequestRecord {
            error: "bad, \"very\"\nbad".into(),
            prompt: Some("a,b".into()),
            chunk_gaps_us: vec![1, 2],
            ..pb::RequestRecord::default()
        };
        let mut line = String::new();
        row(&mut line, &RequestRow::new(2, 1, &rec));
        let text = format!("{HEADER}\n{line}");
        let rows = parse(&text);
        assert_eq!(rows.len(), 2);
        let header = &rows[0];
        assert_eq!(rows[1].len(), header.len());
        let col = |name: &str| &rows[1][header.iter().position(|h| h == name).expect("column")];
        assert_eq!(col("error"), "bad, \"very\"\nbad");
        assert_eq!(col("prompt"), "a,b");
        assert_eq!(col("chunk_gaps_us"), "1;2");
        assert_eq!(col("step"), "2");
    }

    /// The line as it was written before the field-by-field writer: the
    /// reference the new writer must equal byte for byte.
    fn reference_row(out: &mut String, row: &RequestRow<'_>) {
        use std::fmt::Write as _;
        let r = row.r;
        let o = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.1}"));
        let gaps: Vec<String> = r.chunk_gaps_us.iter().map(u64::to_string).collect();
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},",
            row.step,
            row.agent,
            r.seq,
            r.user,
            r.prompt_index,
            o(r.intended_offset_us),
            r.start_offset_us,
            o(r.ttft_us),
            o(r.ttfo_us),
            o(r.e2e_us),
            f(row.tpot_us),
            f(row.gap_mean_us),
            o(row.gap_p50_us),
            o(row.gap_max_us),
            row.chunks,
            gaps.join(";"),
            r.input_tokens,
            r.output_tokens,
            row.input_source(),
            row.output_source(),
            row.outcome(),
            reference_quote(&r.error_class),
            r.http_status,
        );
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            reference_quote(&r.error),
            u8::from(r.warmup),
            r.prompt.as_deref().map(reference_quote).unwrap_or_default(),
            r.response
                .as_deref()
                .map(reference_quote)
                .unwrap_or_default(),
            r.conversation,
            r.turn,
        );
    }

    fn reference_quote(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }

    #[test]
    fn lines_equal_the_reference_writer_byte_for_byte() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(11);
        let texts = [
            "",
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "cr\r",
            "\"\"",
            "ünï,",
        ];
        let pick = |rng: &mut StdRng| texts[rng.random_range(0..texts.len())].to_owned();
        for i in 0..2000u64 {
            let big = |rng: &mut StdRng| match rng.random_range(0..4) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.random_range(0..10),
                _ => rng.random(),
            };
            let opt = |rng: &mut StdRng| {
                rng.random_bool(0.7)
                    .then(|| big(rng) >> rng.random_range(0..64))
            };
            let rec = pb::RequestRecord {
                seq: big(&mut rng),
                user: rng.random(),
                prompt_index: big(&mut rng),
                intended_offset_us: opt(&mut rng),
                start_offset_us: big(&mut rng),
                ttft_us: opt(&mut rng),
                ttfo_us: opt(&mut rng),
                e2e_us: opt(&mut rng),
                chunk_gaps_us: (0..rng.random_range(0..5))
                    .map(|_| rng.random_range(0..1u64 << 40))
                    .collect(),
                input_tokens: big(&mut rng),
                output_tokens: rng.random_range(0..5),
                input_source: rng.random_range(0..6),
                output_source: rng.random_range(0..6),
                outcome: rng.random_range(0..5),
                error_class: pick(&mut rng),
                http_status: rng.random(),
                error: pick(&mut rng),
                warmup: rng.random(),
                prompt: rng.random_bool(0.5).then(|| pick(&mut rng)),
                response: rng.random_bool(0.5).then(|| pick(&mut rng)),
                conversation: big(&mut rng),
                turn: rng.random(),
            };
            let row_of = RequestRow::new(rng.random(), i as usize * 7919, &rec);
            let (mut got, mut want) = (String::from("x"), String::from("x"));
            row(&mut got, &row_of);
            reference_row(&mut want, &row_of);
            assert_eq!(got, want, "{rec:?}");
        }
    }
}
