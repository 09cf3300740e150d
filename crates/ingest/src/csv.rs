//! A CSV tick file as a source (`--source csv`): lines parsed by `tick-formats`, a bad line a
//! reject with its line number and reason while the rest of the file still flows. A line is
//! read as bytes up to [`MAX_CSV_LINE`]: a longer one, or one that is not UTF-8, is a reject
//! too, never the end of the file.

pub use tick_formats::csv::*;

use tick_core::error::Cause;
use crate::source::{BuildSource, Rejected, SourceContext, SourceError, TickSource};
use async_trait::async_trait;
use tick_formats::lines::{Line, ReadLines};
use std::path::{Path, PathBuf};
use tick_core::Tick;

#[async_trait]
impl BuildSource for CsvArgs {
    async fn build(&self, cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>> {
        let (file, parser) = self.parser("csv")?;
        let source = CsvSource::open(&file, parser)?;
        Ok(match cx.intake.speed {
            Some(speed) => Box::new(crate::source::Paced::new(source, speed)),
            None => Box::new(source),
        })
    }
}


/// A CSV file as a source, read to its end as fast as the bus takes it.
pub struct CsvSource {
    path: PathBuf,
    lines: ReadLines<std::fs::File>,
    parser: CsvParser,
    line_no: usize,
    rejects: Vec<Rejected>,
}

impl CsvSource {
    /// Opens `path`.
    pub fn open(path: &Path, parser: CsvParser) -> Result<Self, SourceError> {
        let f = std::fs::File::open(path)
            .map_err(|e| SourceError::Input(Cause::new(path.display().to_string(), e)))?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: ReadLines::new(f, MAX_CSV_LINE),
            parser,
            line_no: 0,
            rejects: Vec::new(),
        })
    }
}

#[async_trait]
impl TickSource for CsvSource {
    fn name(&self) -> &str {
        "csv"
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        for _ in 0..4096 {
            let line = self.lines.next().transpose().map_err(|e| {
                SourceError::Input(Cause::new(
                    format!("{}:{}", self.path.display(), self.line_no + 1),
                    e,
                ))
            })?;
            let Some(line) = line else {
                return Ok(false);
            };
            self.line_no += 1;
            let line = match line {
                Line::Text(text) => text,
                Line::Refused(refusal) => {
                    let at = format!("{}:{}", self.path.display(), self.line_no);
                    self.rejects.push(Rejected::line(at, refusal));
                    continue;
                }
            };
            match self.parser.parse_line(&line) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(reason) => self.rejects.push(Rejected {
                    reason: "malformed_line",
                    detail: format!("{}:{}: {reason}", self.path.display(), self.line_no),
                    payload: line.into_bytes(),
                }),
            }
        }
        Ok(true)
    }

    fn take_rejects(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_binary_junk_and_bad_lines_are_rejects_and_the_file_flows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut bytes = b"timestamp,bid,ask\n1700000000000,1.08500,1.08502\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 8 << 20));
        bytes.extend(b"\n\xff\xfe\x00junk\r\nx\n".iter());
        bytes.extend(b"1700000000010,1.08501,1.08503\r\n".iter());
        bytes.extend(std::iter::repeat_n(b'y', MAX_CSV_LINE + 10)); // the last line, unended
        std::fs::write(&path, bytes).unwrap();
        let parser = CsvParser::new(CsvFormat::Plain, "EURUSD", "csv", 0);
        let mut src = CsvSource::open(&path, parser).unwrap();
        let mut ticks = vec![];
        while src.next_batch(&mut ticks).await.unwrap() {}
        assert_eq!(ticks.len(), 2, "both valid lines");
        assert_eq!((ticks[0].bid, ticks[1].ask), (108500, 108503));
        let rejects = src.take_rejects();
        let got: Vec<(&str, bool)> = rejects
            .iter()
            .map(|r| (r.reason, r.payload.len() <= MAX_CSV_LINE + 1))
            .collect();
        assert_eq!(
            got,
            [
                ("line_too_long", true),
                ("malformed_line", true),
                ("malformed_line", true),
                ("line_too_long", true),
            ]
        );
        assert!(rejects[0].detail.contains(":3: line of 8388608 bytes"), "{}", rejects[0].detail);
        assert!(rejects[1].detail.contains(":4: not UTF-8"), "{}", rejects[1].detail);
        assert!(rejects[2].detail.contains(":5:"), "{}", rejects[2].detail);
        assert!(rejects[3].detail.contains(":7:"), "{}", rejects[3].detail);
    }
}
