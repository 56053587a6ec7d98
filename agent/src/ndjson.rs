//! Incremental newline-delimited JSON splitter (Ollama streams): yields each
//! non-empty line, whatever the read boundaries, CRLF tolerated.

use crate::sse::{MAX_EVENT_BYTES, SseError};

#[derive(Debug, Default)]
pub struct NdjsonSplitter {
    line: Vec<u8>,
}

impl NdjsonSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(
        &mut self,
        mut input: &[u8],
        on_line: &mut impl FnMut(&[u8]),
    ) -> Result<(), SseError> {
        while let Some(end) = input.iter().position(|b| *b == b'\n') {
            let (head, tail) = input.split_at(end);
            if self.line.is_empty() {
                emit(head, on_line);
            } else {
                self.extend(head)?;
                emit(&self.line, on_line);
                self.line.clear();
            }
            input = &tail[1..];
        }
        self.extend(input)
    }

    pub fn finish(&mut self, on_line: &mut impl FnMut(&[u8])) {
        emit(&self.line, on_line);
        self.line.clear();
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }
}

fn emit(line: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        on_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input = b"{\"a\":1}\r\n\n{\"b\":2}\n{\"done\":true}";
        for cut in 0..=input.len() {
            let mut out = Vec::new();
            let mut s = NdjsonSplitter::new();
            let mut f = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
            s.push(&input[..cut], &mut f).expect("ok");
            s.push(&input[cut..], &mut f).expect("ok");
            s.finish(&mut f);
            assert_eq!(
                out,
                vec!["{\"a\":1}", "{\"b\":2}", "{\"done\":true}"],
                "split at {cut}"
            );
        }
    }
}
