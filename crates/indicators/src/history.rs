//! Stored history over gRPC: the `GetHistory` and `GetBars` streams of `SignalService`, read
//! from whichever store the server runs with (SQLite embedded, PostgreSQL distributed) through
//! its [`HistoryReader`].
//!
//! Both read the store a page at a time, only as fast as the client takes the stream (tonic polls
//! the stream when HTTP/2 flow control lets it send), so the server holds at most a page per
//! symbol whatever the range asked for.

use crate::bars::{PriceSide, Timeframe};
use futures::Stream;
use std::collections::VecDeque;
use std::sync::Arc;
use tick_core::store::{HistoryReader, StoreError};
use tick_core::{Tick, pb};
use tonic::Status;

/// Most symbols one `GetHistory` request may name.
pub const MAX_SYMBOLS: usize = 64;
/// Ticks per chunk when the request does not say.
pub const DEFAULT_TICKS_PER_CHUNK: usize = 1_000;
/// Most ticks per chunk, whatever the request says.
pub const MAX_TICKS_PER_CHUNK: usize = 10_000;
/// Ticks read from the store per page, shared among the symbols of a request (each reads at
/// least [`MIN_PAGE_PER_SYMBOL`]).
const TICKS_PER_PAGE: usize = 8_192;
const MIN_PAGE_PER_SYMBOL: usize = 256;
/// Bars read from the store per page, sent as one chunk (well under gRPC's 4 MiB message limit).
pub const BARS_PER_CHUNK: usize = 2_000;
/// The longest canonical symbol accepted.
const MAX_SYMBOL_LEN: usize = 32;

/// The message of the FAILED_PRECONDITION answered by a server without a store.
pub const NO_STORE: &str = "this server has no store to read history from: start it with --store \
     (TICKFLOW_STORE) sqlite:PATH or postgres://... (`tickflow run` always has one)";

/// Returns the canonical form of a requested symbol (upper case), or INVALID_ARGUMENT.
pub(crate) fn symbol(raw: &str) -> Result<String, Status> {
    let s = raw.trim().to_uppercase();
    if s.is_empty() {
        return Err(Status::invalid_argument("symbol is empty"));
    }
    if s.len() > MAX_SYMBOL_LEN
        || !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(Status::invalid_argument(format!(
            "symbol {raw:?} is not a canonical symbol (1-{MAX_SYMBOL_LEN} letters and digits, \
             e.g. {:?})",
            tick_core::instrument::canonical(raw)
        )));
    }
    Ok(s)
}

/// Returns INVALID_ARGUMENT unless `from_ns < to_ns`.
fn range(from_ns: i64, to_ns: i64) -> Result<(), Status> {
    if from_ns >= to_ns {
        return Err(Status::invalid_argument(format!(
            "empty range: from_ns ({from_ns}) must be before to_ns ({to_ns})"
        )));
    }
    Ok(())
}

/// Returns the status of a failed store read.
pub(crate) fn store_status(e: StoreError) -> Status {
    let why = tick_core::error::chain(&e);
    tracing::warn!(error = %why, "history read failed");
    if e.is_transient() {
        Status::unavailable(format!("the store cannot be read now: {why}"))
    } else {
        Status::internal(format!("the store failed to read history: {why}"))
    }
}

/// The stream `GetHistory` answers with.
pub type TickChunks = std::pin::Pin<Box<dyn Stream<Item = Result<pb::TickChunk, Status>> + Send>>;
/// The stream `GetBars` answers with.
pub type BarChunks = std::pin::Pin<Box<dyn Stream<Item = Result<pb::BarChunk, Status>> + Send>>;

/// One symbol's position in a `GetHistory` stream: the page read and not yet sent, and where
/// the next page starts.
struct SymbolCursor {
    symbol: String,
    page: VecDeque<Tick>,
    after: Option<(i64, String)>,
    exhausted: bool,
}

/// Stored ticks of several symbols merged in event-time order (ties by key), read a page per
/// symbol at a time: a `GetHistory` stream's state, and the history a `Subscribe` with
/// `since_ns` opens with.
pub(crate) struct TickMerge {
    reader: Arc<dyn HistoryReader>,
    cursors: Vec<SymbolCursor>,
    from_ns: i64,
    to_ns: i64,
    page: usize,
    chunk: usize,
    failed: bool,
}

impl TickMerge {
    /// Returns the merge of the stored ticks of `symbols` with event time in
    /// `[from_ns, to_ns)`, sent in chunks of `chunk` ticks by [`Self::next_chunk`].
    pub(crate) fn new(
        reader: Arc<dyn HistoryReader>,
        symbols: Vec<String>,
        from_ns: i64,
        to_ns: i64,
        chunk: usize,
    ) -> Self {
        Self {
            reader,
            page: (TICKS_PER_PAGE / symbols.len().max(1)).max(MIN_PAGE_PER_SYMBOL),
            cursors: symbols
                .into_iter()
                .map(|symbol| SymbolCursor {
                    symbol,
                    page: VecDeque::new(),
                    after: None,
                    exhausted: false,
                })
                .collect(),
            from_ns,
            to_ns,
            chunk,
            failed: false,
        }
    }

    /// Returns the next tick in event-time order (ties by key) among the symbols, `None` at
    /// the end.
    pub(crate) async fn next_tick(&mut self) -> Option<Result<Tick, StoreError>> {
        if let Err(e) = self.refill().await {
            return Some(Err(e));
        }
        let next = self
            .cursors
            .iter_mut()
            .filter(|c| !c.page.is_empty())
            .min_by(|a, b| {
                let (a, b) = (&a.page[0], &b.page[0]);
                (a.ts_event_ns, &a.key).cmp(&(b.ts_event_ns, &b.key))
            })?;
        next.page.pop_front().map(Ok)
    }

    /// Reads the next page of every symbol whose page is used up.
    async fn refill(&mut self) -> Result<(), StoreError> {
        for c in self.cursors.iter_mut() {
            if !c.page.is_empty() || c.exhausted {
                continue;
            }
            let page = self
                .reader
                .ticks_between(
                    std::slice::from_ref(&c.symbol),
                    self.from_ns,
                    self.to_ns,
                    c.after.take(),
                    self.page,
                )
                .await?;
            c.exhausted = page.len() < self.page;
            c.after = page.last().map(|t| (t.ts_event_ns, t.key.clone()));
            c.page.extend(page);
        }
        Ok(())
    }

    /// Returns the next chunk: the earliest ticks (event time, then key) among the symbols'
    /// pages, merged; `None` at the end.
    async fn next_chunk(&mut self) -> Option<Result<pb::TickChunk, Status>> {
        if self.failed {
            return None;
        }
        let mut ticks = Vec::with_capacity(self.chunk.min(1024));
        while ticks.len() < self.chunk {
            match self.next_tick().await {
                Some(Ok(tick)) => ticks.push(pb::Tick::from(&tick)),
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(store_status(e)));
                }
                None => break,
            }
        }
        (!ticks.is_empty()).then_some(Ok(pb::TickChunk { ticks }))
    }
}

/// Checks a `GetHistory` request and returns its stream.
pub fn ticks(
    reader: Option<Arc<dyn HistoryReader>>,
    r: pb::HistoryRequest,
) -> Result<TickChunks, Status> {
    range(r.from_ns, r.to_ns)?;
    if r.symbols.is_empty() {
        return Err(Status::invalid_argument(
            "symbols is empty: name at least one symbol",
        ));
    }
    let mut symbols: Vec<String> = Vec::new();
    for s in &r.symbols {
        let s = symbol(s)?;
        if !symbols.contains(&s) {
            symbols.push(s);
        }
    }
    if symbols.len() > MAX_SYMBOLS {
        return Err(Status::invalid_argument(format!(
            "{} symbols: at most {MAX_SYMBOLS} per request",
            symbols.len()
        )));
    }
    let reader = reader.ok_or_else(|| Status::failed_precondition(NO_STORE))?;
    let chunk = match r.max_ticks_per_chunk as usize {
        0 => DEFAULT_TICKS_PER_CHUNK,
        n => n.min(MAX_TICKS_PER_CHUNK),
    };
    tracing::info!(
        ?symbols,
        from_ns = r.from_ns,
        to_ns = r.to_ns,
        "history requested"
    );
    let merge = TickMerge::new(reader, symbols, r.from_ns, r.to_ns, chunk);
    Ok(Box::pin(futures::stream::unfold(
        merge,
        |mut m| async move {
            let item = m.next_chunk().await?;
            Some((item, m))
        },
    )))
}

/// Checks a `GetBars` request and returns its stream.
pub fn bars(
    reader: Option<Arc<dyn HistoryReader>>,
    r: pb::BarsRequest,
) -> Result<BarChunks, Status> {
    range(r.from_ns, r.to_ns)?;
    let symbol = symbol(&r.symbol)?;
    let timeframe: Timeframe = r
        .timeframe
        .parse()
        .map_err(|e: String| Status::invalid_argument(format!("unknown timeframe: {e}")))?;
    let side = match r.price_side.trim() {
        "" => None,
        s => Some(
            s.to_lowercase()
                .parse::<PriceSide>()
                .map_err(Status::invalid_argument)?
                .as_str(),
        ),
    };
    let reader = reader.ok_or_else(|| Status::failed_precondition(NO_STORE))?;
    tracing::info!(%symbol, %timeframe, ?side, from_ns = r.from_ns, to_ns = r.to_ns, "bars requested");
    struct State {
        reader: Arc<dyn HistoryReader>,
        symbol: String,
        timeframe: String,
        side: Option<&'static str>,
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        done: bool,
    }
    let state = State {
        reader,
        symbol,
        timeframe: timeframe.name,
        side,
        from_ns: r.from_ns,
        to_ns: r.to_ns,
        after: None,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut s| async move {
            if s.done {
                return None;
            }
            let page = s
                .reader
                .bars_page(
                    &s.symbol,
                    &s.timeframe,
                    s.side,
                    s.from_ns,
                    s.to_ns,
                    s.after.take(),
                    BARS_PER_CHUNK,
                )
                .await;
            match page {
                Err(e) => {
                    s.done = true;
                    Some((Err(store_status(e)), s))
                }
                Ok(bars) if bars.is_empty() => None,
                Ok(bars) => {
                    s.done = bars.len() < BARS_PER_CHUNK;
                    s.after = bars.last().map(|b| (b.open_time_ns, b.price_side.clone()));
                    Some((Ok(pb::BarChunk { bars }), s))
                }
            }
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_canonical_or_refused() {
        assert_eq!(symbol(" eurusd ").unwrap(), "EURUSD");
        assert_eq!(symbol("US30").unwrap(), "US30");
        for bad in [
            "",
            "  ",
            "EUR/USD",
            "EUR_USD",
            "EURUSD.m",
            "EUR USD",
            &"A".repeat(33),
        ] {
            let e = symbol(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(
            symbol("EUR/USD")
                .unwrap_err()
                .message()
                .contains("\"EURUSD\"")
        );
    }

    #[test]
    fn a_range_must_not_be_empty() {
        assert!(range(1, 2).is_ok());
        for (from, to) in [(2, 2), (3, 2), (i64::MAX, i64::MIN)] {
            assert_eq!(
                range(from, to).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
