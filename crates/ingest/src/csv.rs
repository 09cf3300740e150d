//! A CSV tick file as a source (`--source csv`): lines parsed by `tick-formats`, a bad line a
//! reject with its line number and reason while the rest of the file still flows.

pub use tick_formats::csv::*;

use tick_core::error::Cause;
use crate::source::{BuildSource, Rejected, SourceContext, SourceError, TickSource};
use async_trait::async_trait;
use std::io::BufRead;
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
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
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
            lines: std::io::BufReader::new(f).lines(),
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
            let Some(line) = self.lines.next() else {
                return Ok(false);
            };
            self.line_no += 1;
            let line = line.map_err(|e| {
                SourceError::Input(Cause::new(format!("{}:{}", self.path.display(), self.line_no), e))
            })?;
            match self.parser.parse_line(&line) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(reason) => self.rejects.push(Rejected {
                    reason: "malformed_line".into(),
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
