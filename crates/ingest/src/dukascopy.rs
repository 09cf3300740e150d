//! Dukascopy history as a source (`--source dukascopy`): the hours of a range of symbols, read
//! from a directory or downloaded, decoded by `tick-formats` and played in event-time order, as
//! fast as the pipeline takes them or paced at `--speed`. A damaged hour file (not LZMA, not a
//! whole number of records, a record outside its hour) is a reject (`corrupt_file`, a dead letter
//! naming the file) and the range goes on; a file that cannot be read at all ends the source.

pub use tick_formats::dukascopy::*;

use tick_core::error::Cause;
use crate::source::{BuildSource, Rejected, SourceContext, SourceError, TickSource};
use anyhow::Context;
use async_trait::async_trait;
use tick_core::{KeyOrdinals, Tick, clock};

#[async_trait]
impl BuildSource for DukascopyArgs {
    async fn build(&self, cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>> {
        let symbols = cx.intake.symbols();
        check_symbols(&symbols)?;
        let from = cx.intake.from.context("--from is required for dukascopy")?;
        let to = cx.intake.to.context("--to is required for dukascopy")?;
        anyhow::ensure!(from < to, "--from must be before --to");
        let source = DukascopySource::new(self.location()?, symbols, from, to);
        Ok(match cx.intake.speed {
            Some(speed) => Box::new(crate::source::Paced::new(source, speed)),
            None => Box::new(source),
        })
    }
}

/// Plays a range of hours of history from a directory or a URL, as fast as the caller takes it
/// (wrap it in [`Paced`](crate::source::Paced) to play it at a multiple of real time).
pub struct DukascopySource {
    location: Location,
    client: reqwest::Client,
    symbols: Vec<String>,
    next_hour_ns: i64,
    end_ns: i64,
    ordinals: KeyOrdinals,
    pending: std::collections::VecDeque<Tick>,
    rejects: Vec<Rejected>,
}

impl DukascopySource {
    /// Returns a source over `[from_ns, to_ns)` (rounded out to whole hours) of `symbols`
    /// at `location`.
    pub fn new(location: Location, symbols: Vec<String>, from_ns: i64, to_ns: i64) -> Self {
        Self {
            location,
            client: reqwest::Client::new(),
            symbols,
            next_hour_ns: from_ns - from_ns.rem_euclid(HOUR_NS),
            end_ns: to_ns,
            ordinals: KeyOrdinals::default(),
            pending: Default::default(),
            rejects: Vec::new(),
        }
    }
}

#[async_trait]
impl TickSource for DukascopySource {
    fn name(&self) -> &str {
        "dukascopy"
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        while self.pending.is_empty() {
            if self.next_hour_ns >= self.end_ns {
                return Ok(false);
            }
            let hour = self.next_hour_ns;
            // Every file of the hour first: the caller may cancel this future at an await (the
            // ingest loop wakes on a timer), and a cancelled hour must be fetched again whole,
            // its key ordinals untouched, so nothing below the last await changes state before
            // the hour is complete.
            let mut fetched = Vec::with_capacity(self.symbols.len());
            let mut damaged = Vec::new();
            for s in &self.symbols {
                match self.location.hour(&self.client, s, hour).await {
                    Ok(recs) => fetched.push(recs),
                    Err(e) if e.is_damaged_file() => {
                        fetched.push(Vec::new());
                        damaged.push(Rejected {
                            reason: "corrupt_file",
                            detail: format!("{s}: {e}"),
                            payload: Vec::new(),
                        });
                    }
                    Err(e) => return Err(SourceError::Input(Cause::wrap(e))),
                }
            }
            self.rejects.append(&mut damaged);
            self.next_hour_ns += HOUR_NS;
            let mut ticks = Vec::new();
            for (s, recs) in self.symbols.iter().zip(&fetched) {
                ticks.extend(
                    to_ticks(s, hour, recs, clock::now_ns(), &mut self.ordinals)
                        .map_err(|e| SourceError::Input(Cause::wrap(e)))?,
                );
            }
            // Several symbols of one hour: play them in event-time order.
            ticks.sort_by_key(|t| t.ts_event_ns);
            self.pending
                .extend(ticks.into_iter().filter(|t| t.ts_event_ns < self.end_ns));
        }
        let n = self.pending.len().min(4096);
        let now = clock::now_ns();
        out.extend(self.pending.drain(..n).map(|mut t| {
            t.ts_recv_ns = now;
            t
        }));
        Ok(true)
    }

    fn take_rejects(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FIXTURES: &str = "../../../shared/fixtures/dukascopy";

    #[tokio::test]
    async fn plays_two_days_of_eurusd_in_order() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
        let from = 1_549_238_400_000_000_000;
        let mut src = DukascopySource::new(
            Location::Dir(root),
            vec!["EURUSD".into()],
            from,
            from + 48 * HOUR_NS,
        );
        let mut all = vec![];
        while src.next_batch(&mut all).await.unwrap() {}
        assert!(all.len() > 100_000, "{}", all.len());
        assert!(all.windows(2).all(|w| w[0].ts_event_ns <= w[1].ts_event_ns));
        assert!(all.iter().all(|t| t.ask >= t.bid && t.scale == 5));
    }
}
