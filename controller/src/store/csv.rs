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
                    let mut line = String::new();
                    for rec in &r.records {
                        line.clear();
                        row(&mut line, &RequestRow::new(r.step, r.agent, rec));
                        w.write_all(line.as_bytes())
                            .map_err(|e| OutputError::io(&*path, e))?;
                    }
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

/// One CSV line (with its newline).
pub fn row(out: &mut String, row: &RequestRow<'_>) {
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
        quote(&r.error_class),
        r.http_status,
    );
    let _ = writeln!(
        out,
        "{},{},{},{},{},{}",
        quote(&r.error),
        u8::from(r.warmup),
        r.prompt.as_deref().map(quote).unwrap_or_default(),
        r.response.as_deref().map(quote).unwrap_or_default(),
        r.conversation,
        r.turn,
    );
}

/// A field quoted when it holds a comma, quote or line break.
pub fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
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
}
