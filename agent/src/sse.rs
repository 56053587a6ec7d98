//! Incremental Server-Sent Events parser: correct whatever byte boundaries
//! the network splits events at (CR, LF or CRLF line ends, `:` comments,
//! multi-line `data:`), with no allocation per event once its buffers grew.
//! An event whose data is empty (`data:` alone) is not dispatched: it carries
//! nothing, and some servers send it as a keep-alive.

/// Largest event accepted; a server sending more is treated as broken.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// `data:` values of the current event, joined with '\n'.
    data: Vec<u8>,
    has_data: bool,
    /// The previous input ended in '\r': a leading '\n' belongs to that line end.
    skip_lf: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; calls `on_data` with the data of each completed event.
    pub fn push(
        &mut self,
        mut input: &[u8],
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<(), SseError> {
        // An empty read must not forget a pending CR (its LF may come next).
        if self.skip_lf && !input.is_empty() {
            self.skip_lf = false;
            if let [b'\n', rest @ ..] = input {
                input = rest;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', input) {
            let (head, tail) = input.split_at(end);
            let consumed = match tail {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.skip_lf = true;
                    1
                }
                _ => 1,
            };
            if let Some(rest) = self.whole_event(head, &tail[consumed..], on_data)? {
                input = rest;
                continue;
            }
            if self.line.is_empty() {
                self.line_done(head, on_data)?;
            } else {
                self.extend_line(head)?;
                let line = std::mem::take(&mut self.line);
                let r = self.line_done(&line, on_data);
                self.line = line;
                self.line.clear();
                r?;
            }
            input = &tail[consumed..];
        }
        self.extend_line(input)
    }

    /// End of the body: an event without its final blank line still counts
    /// (servers that close right after `data: [DONE]\n` are common).
    pub fn finish(&mut self, on_data: &mut impl FnMut(&[u8])) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, on_data)?;
        }
        self.dispatch(on_data);
        Ok(())
    }

    /// The common case, a one-line event read whole (`data: {...}` and its
    /// blank line, nothing of it buffered before): hands the value out from
    /// the input without copying it, and returns the input after the blank
    /// line. Anything else (`None`) takes the general path.
    fn whole_event<'a>(
        &mut self,
        line: &[u8],
        rest: &'a [u8],
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<Option<&'a [u8]>, SseError> {
        if !self.line.is_empty() || self.has_data {
            return Ok(None);
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return Ok(None);
        };
        let blank = match rest {
            [b'\n', ..] => 1,
            [b'\r', b'\n', ..] => 2,
            _ => return Ok(None),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if value.len() + 1 > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        if !value.is_empty() {
            on_data(value);
        }
        Ok(Some(&rest[blank..]))
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], on_data: &mut impl FnMut(&[u8])) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(on_data);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                return Err(SseError::TooLarge);
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // `event`, `id`, `retry` and unknown fields do not matter to completions.
        Ok(())
    }

    fn dispatch(&mut self, on_data: &mut impl FnMut(&[u8])) {
        if self.has_data && !self.data.is_empty() {
            on_data(&self.data);
        }
        self.data.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_split(input: &[u8], cut: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut p = SseParser::new();
        let mut f = |d: &[u8]| out.push(String::from_utf8_lossy(d).into_owned());
        p.push(&input[..cut], &mut f).expect("ok");
        p.push(&input[cut..], &mut f).expect("ok");
        p.finish(&mut f).expect("ok");
        out
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: line1\ndata:line2\n\nevent: x\ndata: [DONE]\r\r";
        let want = vec!["{\"a\":1}", "line1\nline2", "[DONE]"];
        for cut in 0..=input.len() {
            assert_eq!(parse_split(input, cut), want, "split at {cut}");
        }
        // Every byte on its own.
        let mut out = Vec::new();
        let mut p = SseParser::new();
        let mut f = |d: &[u8]| out.push(String::from_utf8_lossy(d).into_owned());
        for b in input.chunks(1) {
            p.push(b, &mut f).expect("ok");
        }
        p.finish(&mut f).expect("ok");
        assert_eq!(out, want);
    }

    #[test]
    fn events_read_whole_match_events_read_byte_by_byte() {
        // Every kind of line end after a one-line event, an empty `data:`,
        // a field without a space, and an event split over lines.
        let input = b"data: {\"a\":1}\n\ndata:x\r\n\r\ndata:\n\ndata: y\r\r\ndata: z\n\rdata: p\ndata: q\n\ndata: [DONE]\n\n";
        let want = vec!["{\"a\":1}", "x", "y", "z", "p\nq", "[DONE]"];
        assert_eq!(parse_split(input, input.len()), want);
        let mut out = Vec::new();
        let mut p = SseParser::new();
        let mut f = |d: &[u8]| out.push(String::from_utf8_lossy(d).into_owned());
        for b in input.chunks(1) {
            p.push(b, &mut f).expect("ok");
        }
        p.finish(&mut f).expect("ok");
        assert_eq!(out, want);
    }

    #[test]
    fn unterminated_last_event_is_delivered_at_finish() {
        assert_eq!(parse_split(b"data: [DONE]", 3), vec!["[DONE]"]);
    }

    #[test]
    fn empty_data_lines_are_not_events() {
        let input =
            "data:\n\ndata: \r\n\r\n: ping\r\rdata: {\"t\":\"é\"}\r\n\r\ndata:\r".as_bytes();
        for cut in 0..=input.len() {
            assert_eq!(
                parse_split(input, cut),
                vec!["{\"t\":\"é\"}"],
                "split at {cut}"
            );
        }
    }

    #[test]
    fn an_empty_read_between_cr_and_lf_keeps_one_line_end() {
        let mut out = Vec::new();
        let mut p = SseParser::new();
        let mut f = |d: &[u8]| out.push(String::from_utf8_lossy(d).into_owned());
        for piece in [&b"data: a\r"[..], b"", b"\ndata: b\r\n\r\n"] {
            p.push(piece, &mut f).expect("ok");
        }
        assert_eq!(out, vec!["a\nb"]);
    }

    #[test]
    fn comments_only_give_no_events() {
        assert!(parse_split(b":a\n:b\r\n\r\n", 2).is_empty());
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.push(&big, &mut |_| {}), Err(SseError::TooLarge));
    }
}
