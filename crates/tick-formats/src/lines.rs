//! Line framing for the line-based inputs (CSV files read by the source and by `replayer
//! import`, the OANDA NDJSON stream, MT5 connections), written once: bytes go in as they arrive, whole lines come out, each bounded.
//! A line over the limit is never held whole: its first bytes are kept for the dead letter, the
//! rest is counted and hashed as it streams past, and the next line starts after its newline.
//! A line that is not UTF-8 is refused too. Neither ends the stream.

/// How many bytes of an over-long line are kept for its dead letter.
pub const KEPT_PREFIX: usize = 1024;

/// One line taken from the stream.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A line within the limit, as text, without its line ending.
    Text(String),
    /// A line that cannot be used, with why and the bytes kept of it.
    Refused(Refusal),
}

/// A line refused by the framing.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// `line_too_long`, or `malformed_line` for a line that is not UTF-8.
    pub reason: &'static str,
    /// What was wrong: the line's length and hash, or where the UTF-8 error is.
    pub why: String,
    /// The line, or its first [`KEPT_PREFIX`] bytes when it was too long.
    pub bytes: Vec<u8>,
    /// The line's length in bytes (without its line ending).
    pub len: usize,
}

/// Splits a byte stream into bounded lines.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    buf: Vec<u8>,
    /// Where the unread bytes start in `buf` (consumed lines are dropped at the next push).
    start: usize,
    /// Where the search for the next newline resumes in `buf`.
    scanned: usize,
    /// The over-long line being skipped: its prefix, length so far and running hash.
    skipping: Option<(Vec<u8>, usize, crc32fast::Hasher)>,
}

impl LineSplitter {
    /// Returns a splitter that refuses lines longer than `max` bytes (line ending excluded).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skipping: None,
        }
    }

    /// The longest line accepted, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete line, or `None` until more bytes arrive. Empty lines are
    /// returned too (as empty text); callers skip them.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let nl = self.buf[self.scanned..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| self.scanned + i);
            if let Some((prefix, len, hasher)) = &mut self.skipping {
                // Count and hash what streams past, up to the newline that ends the line.
                let end = nl.unwrap_or(self.buf.len());
                let part = &self.buf[self.start..end];
                let room = KEPT_PREFIX.saturating_sub(prefix.len());
                prefix.extend_from_slice(&part[..room.min(part.len())]);
                hasher.update(part);
                *len += part.len();
                let (start, line) = match nl {
                    None => (self.buf.len(), None),
                    Some(nl) => {
                        let (prefix, len, hasher) = self.skipping.take().expect("skipping");
                        (
                            nl + 1,
                            Some(Line::Refused(self.too_long(prefix, len, hasher))),
                        )
                    }
                };
                self.start = start;
                self.scanned = start;
                return line;
            }
            match nl {
                Some(nl) if nl - self.start <= self.max + 1 => {
                    let mut line = &self.buf[self.start..nl];
                    self.start = nl + 1;
                    self.scanned = nl + 1;
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    if line.len() > self.max {
                        let mut hasher = crc32fast::Hasher::new();
                        hasher.update(line);
                        let prefix = line[..KEPT_PREFIX.min(line.len())].to_vec();
                        return Some(Line::Refused(self.too_long(prefix, line.len(), hasher)));
                    }
                    return Some(text(line.to_vec()));
                }
                _ if self.buf.len() - self.start > self.max + 1 => {
                    // Longer than the limit and no end in sight: keep a prefix, skip the rest.
                    self.skipping = Some((Vec::new(), 0, crc32fast::Hasher::new()));
                    self.scanned = self.start;
                }
                _ => {
                    self.scanned = self.buf.len();
                    return None;
                }
            }
        }
    }

    /// Returns the last line of a stream that ended without a newline, if any.
    pub fn finish(&mut self) -> Option<Line> {
        let rest = &self.buf[self.start..];
        if let Some((mut prefix, len, mut hasher)) = self.skipping.take() {
            let room = KEPT_PREFIX.saturating_sub(prefix.len());
            prefix.extend_from_slice(&rest[..room.min(rest.len())]);
            hasher.update(rest);
            let len = len + rest.len();
            self.buf.clear();
            (self.start, self.scanned) = (0, 0);
            return Some(Line::Refused(self.too_long(prefix, len, hasher)));
        }
        if rest.is_empty() {
            return None;
        }
        self.buf.push(b'\n');
        self.next_line()
    }

    fn too_long(&self, prefix: Vec<u8>, len: usize, hasher: crc32fast::Hasher) -> Refusal {
        Refusal {
            len,
            reason: "line_too_long",
            why: format!(
                "line of {len} bytes, over the limit of {} (crc32 {:08x}; its first {} bytes kept)",
                self.max,
                hasher.finalize(),
                prefix.len()
            ),
            bytes: prefix,
        }
    }
}

fn text(line: Vec<u8>) -> Line {
    match String::from_utf8(line) {
        Ok(t) => Line::Text(t),
        Err(e) => Line::Refused(Refusal {
            len: e.as_bytes().len(),
            reason: "malformed_line",
            why: format!("not UTF-8: {}", e.utf8_error()),
            bytes: e.into_bytes(),
        }),
    }
}

/// The bounded lines of a reader (a file), read in 64 KiB chunks.
pub struct ReadLines<R> {
    reader: R,
    lines: LineSplitter,
    eof: bool,
}

impl<R: std::io::Read> ReadLines<R> {
    /// Returns the lines of `reader`, refusing those over `max` bytes.
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            lines: LineSplitter::new(max),
            eof: false,
        }
    }
}

impl<R: std::io::Read> Iterator for ReadLines<R> {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(line) = self.lines.next_line() {
                return Some(Ok(line));
            }
            if self.eof {
                return self.lines.finish().map(Ok);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.reader.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.lines.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], max: usize, chunk: usize) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            s.push(c);
            while let Some(l) = s.next_line() {
                out.push(l);
            }
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn bounded_lines_in_any_chunking() {
        let mut input = Vec::new();
        input.extend_from_slice(b"a\r\n\nok line\n");
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\n");
        input.extend_from_slice(&[0xff, 0xfe, b'\n']);
        input.extend_from_slice(b"exactly10!\n");
        input.extend_from_slice(b"eleven char\n");
        input.extend_from_slice(b"tail");
        for chunk in [1, 3, 7, 64, 4096, 1 << 20] {
            let got = lines_of(&input, 10, chunk);
            let kinds: Vec<String> = got
                .iter()
                .map(|l| match l {
                    Line::Text(t) => format!("text:{t}"),
                    Line::Refused(r) => r.reason.to_string(),
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "text:a",
                    "text:",
                    "text:ok line",
                    "line_too_long",
                    "malformed_line",
                    "text:exactly10!",
                    "line_too_long",
                    "text:tail"
                ],
                "chunk {chunk}"
            );
            let Line::Refused(r) = &got[3] else {
                unreachable!()
            };
            assert!(r.why.starts_with("line of 100000 bytes"), "{}", r.why);
            assert_eq!(r.bytes.len(), KEPT_PREFIX.min(100_000));
            let Line::Refused(r) = &got[6] else {
                unreachable!()
            };
            assert!(r.why.starts_with("line of 11 bytes"), "{}", r.why);
        }
    }

    #[test]
    fn the_same_long_line_hashes_the_same_whatever_the_chunking() {
        let mut input = vec![b'y'; 50_000];
        input.push(b'\n');
        let a = lines_of(&input, 100, 1);
        let b = lines_of(&input, 100, 50_001);
        assert_eq!(a, b);
        // An unterminated over-long tail is refused at the end, not lost.
        let c = lines_of(&input[..50_000], 100, 999);
        assert!(matches!(&c[..], [Line::Refused(r)] if r.why.starts_with("line of 50000 bytes")));
    }
}
