//! The storage boundary, split by role: [`TickWriter`] (what the persister writes ticks, bars and
//! dead letters through), [`HistoryReader`] (what replays and audits read) and
//! [`ImportCheckpoints`] (what `replayer import` resumes from). PostgreSQL implements every role
//! in distributed mode, SQLite in embedded mode.

use crate::tick::Tick;
use async_trait::async_trait;

/// A record the pipeline refused, as stored (mirrors the protobuf `DeadLetter`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// Machine-readable reason code.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// Original payload bytes.
    pub payload: Vec<u8>,
    /// Where the payload was read from.
    pub origin: String,
    /// Component that rejected it.
    pub component: String,
    /// When it was rejected, UTC ns.
    pub ts_rejected_ns: i64,
}

/// The most payload bytes a dead letter keeps. A refused input can be as large as whatever a
/// peer sent (a line of megabytes): kept whole, the record could itself be too large to publish
/// (Kafka's message limit) or to store, and its rejection would stop the stage.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 16 * 1024;

impl DeadLetterRecord {
    /// Returns the record of an input `component` refused for `reason`, stamped now: the one
    /// constructor every stage uses. A payload over [`MAX_DEAD_LETTER_PAYLOAD`] keeps its first
    /// bytes; the detail then says how long it was and gives its XXH3-64 hash, enough to find
    /// and compare the original.
    pub fn new(
        component: &str,
        reason: &str,
        detail: impl Into<String>,
        mut payload: Vec<u8>,
        origin: &str,
    ) -> Self {
        let mut detail = detail.into();
        if payload.len() > MAX_DEAD_LETTER_PAYLOAD {
            let hash = xxhash_rust::xxh3::xxh3_64(&payload);
            detail.push_str(&format!(
                " [payload of {} bytes, xxh3-64 {hash:016x}; the first {MAX_DEAD_LETTER_PAYLOAD} kept]",
                payload.len()
            ));
            payload.truncate(MAX_DEAD_LETTER_PAYLOAD);
        }
        Self {
            reason: reason.to_string(),
            detail,
            payload,
            origin: origin.to_string(),
            component: component.to_string(),
            ts_rejected_ns: crate::clock::now_ns(),
        }
    }

    /// Returns the record as the protobuf `DeadLetter` published on `ticks.dlq`, encoded.
    pub fn encode(self) -> Vec<u8> {
        prost::Message::encode_to_vec(&crate::pb::DeadLetter::from(self))
    }
}

impl From<DeadLetterRecord> for crate::pb::DeadLetter {
    fn from(r: DeadLetterRecord) -> Self {
        Self {
            reason: r.reason,
            detail: r.detail,
            payload: r.payload,
            origin: r.origin,
            component: r.component,
            ts_rejected_ns: r.ts_rejected_ns,
        }
    }
}

impl From<crate::pb::DeadLetter> for DeadLetterRecord {
    fn from(r: crate::pb::DeadLetter) -> Self {
        Self {
            reason: r.reason,
            detail: r.detail,
            payload: r.payload,
            origin: r.origin,
            component: r.component,
            ts_rejected_ns: r.ts_rejected_ns,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: retrying later may succeed.
    #[error("database unavailable")]
    Unavailable(#[source] crate::error::Cause),
    /// The database refused the data itself: retrying the same rows fails again.
    #[error("database rejected the data")]
    Data(#[source] crate::error::Cause),
}

impl StoreError {
    /// Returns whether the failure is about connectivity rather than the data.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The writer role: durable storage of ticks, bars and dead letters, idempotent on each
/// record's key. Every store implements it; a store that only writes implements only it.
#[async_trait]
pub trait TickWriter: Send + Sync {
    /// Creates or upgrades the schema.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Stores a batch atomically, ignoring ticks whose key is already stored; returns how many
    /// rows were new.
    async fn insert_ticks(&self, ticks: &[Tick]) -> Result<u64, StoreError>;

    /// Stores rejected records.
    async fn insert_dead_letters(&self, records: &[DeadLetterRecord]) -> Result<u64, StoreError>;

    /// Stores closed bars; a bar already stored (same symbol, timeframe, price side and open
    /// time) is skipped. Returns how many rows were newly stored.
    async fn insert_bars(&self, bars: &[crate::pb::Bar]) -> Result<u64, StoreError>;
}

/// The history-reader role: what replays, audits, gap reports and summaries read back.
#[async_trait]
pub trait HistoryReader: Send + Sync {
    /// Returns the number of stored ticks.
    async fn count_ticks(&self) -> Result<u64, StoreError>;

    /// Returns the stored bars of `symbol`, `timeframe` and, when given, `side`, whose open
    /// time is in `[from_ns, to_ns)`, ordered by open time then side, at most `limit` of them,
    /// starting after `after` (open time, side) when given: pages for `GetBars` and the Parquet
    /// export.
    #[allow(clippy::too_many_arguments)]
    async fn bars_page(
        &self,
        symbol: &str,
        timeframe: &str,
        side: Option<&str>,
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<crate::pb::Bar>, StoreError>;

    /// Returns the idempotency keys of the ticks with event time in `[from_ns, to_ns)`, in
    /// no particular order (for audits).
    async fn keys_between(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, StoreError>;

    /// Returns stored ticks of `symbols` (all when empty) with event time in `[from_ns, to_ns)`,
    /// ordered by event time then key, at most `limit` of them, starting after `after`
    /// (event time, key) when given: pages for replays.
    async fn ticks_between(
        &self,
        symbols: &[String],
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError>;

    /// Returns, per symbol, the highest `symbol_seq` among the stored ticks a router passed
    /// (`ts_route_ns > 0`), in no particular order: where a restarted embedded router
    /// continues each symbol's sequence, so that sequences never restart under stored history.
    async fn last_symbol_seqs(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Returns the starts (UTC ns, ascending) of the hours holding at least one tick of
    /// `symbol`, among the hours from the one containing `from_ns` up to `to_ns` (exclusive):
    /// what `replayer gaps` compares with the market calendar.
    async fn hours_with_ticks(
        &self,
        symbol: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<i64>, StoreError>;
}

/// A [`HistoryReader`] whose every read runs on `runtime`, whatever thread awaits it: for a
/// caller on a thread that must stay free for other work. Embedded mode serves gRPC from its
/// hot thread; through this, the store's own work for `GetHistory` and `GetBars` (PostgreSQL's
/// connection tasks, which run where a pooled connection is first made, and decoding the rows)
/// stays on the runtime's workers. A read whose caller goes away is aborted.
pub struct ReaderOn {
    inner: std::sync::Arc<dyn HistoryReader>,
    runtime: tokio::runtime::Handle,
}

impl ReaderOn {
    /// Returns `inner` with its reads run on `runtime`.
    pub fn new(inner: std::sync::Arc<dyn HistoryReader>, runtime: tokio::runtime::Handle) -> Self {
        Self { inner, runtime }
    }

    /// Runs `read` on the runtime and returns its result.
    async fn run<T, F>(
        &self,
        read: impl FnOnce(std::sync::Arc<dyn HistoryReader>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let task = self.runtime.spawn(read(self.inner.clone()));
        tokio_util::task::AbortOnDropHandle::new(task)
            .await
            .map_err(|e| {
                StoreError::Unavailable(crate::error::Cause::msg(format!(
                    "history read did not finish: {e}"
                )))
            })?
    }
}

#[async_trait]
impl HistoryReader for ReaderOn {
    async fn count_ticks(&self) -> Result<u64, StoreError> {
        self.run(|r| async move { r.count_ticks().await }).await
    }

    async fn bars_page(
        &self,
        symbol: &str,
        timeframe: &str,
        side: Option<&str>,
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<crate::pb::Bar>, StoreError> {
        let (symbol, timeframe, side) = (
            symbol.to_string(),
            timeframe.to_string(),
            side.map(str::to_string),
        );
        self.run(|r| async move {
            r.bars_page(
                &symbol,
                &timeframe,
                side.as_deref(),
                from_ns,
                to_ns,
                after,
                limit,
            )
            .await
        })
        .await
    }

    async fn keys_between(&self, from_ns: i64, to_ns: i64) -> Result<Vec<String>, StoreError> {
        self.run(|r| async move { r.keys_between(from_ns, to_ns).await })
            .await
    }

    async fn ticks_between(
        &self,
        symbols: &[String],
        from_ns: i64,
        to_ns: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Tick>, StoreError> {
        let symbols = symbols.to_vec();
        self.run(|r| async move {
            r.ticks_between(&symbols, from_ns, to_ns, after, limit)
                .await
        })
        .await
    }

    async fn last_symbol_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|r| async move { r.last_symbol_seqs().await })
            .await
    }

    async fn hours_with_ticks(
        &self,
        symbol: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let symbol = symbol.to_string();
        self.run(|r| async move { r.hours_with_ticks(&symbol, from_ns, to_ns).await })
            .await
    }
}

/// The import-checkpoint role: what a restarted `replayer import` resumes from.
#[async_trait]
pub trait ImportCheckpoints: Send + Sync {
    /// Returns the units of work of a bulk import `source` recorded as finished, with the
    /// number of ticks each held.
    async fn finished_import_units(
        &self,
        source: &str,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError>;

    /// Records that `unit` of the import `source` is finished (all its `rows` ticks stored);
    /// recording it again updates the row count and time.
    async fn finish_import_unit(
        &self,
        source: &str,
        unit: &str,
        rows: u64,
    ) -> Result<(), StoreError>;
}

/// A store that plays every role (PostgreSQL and SQLite do).
pub trait TickStore: TickWriter + HistoryReader + ImportCheckpoints {}

impl<T: TickWriter + HistoryReader + ImportCheckpoints + ?Sized> TickStore for T {}

/// One hour in ns.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// Returns the start of the UTC hour containing `ts_ns`.
pub fn hour_floor(ts_ns: i64) -> i64 {
    ts_ns - ts_ns.rem_euclid(HOUR_NS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A reader that notes the thread each read runs on; `ticks_between` never finishes and
    /// notes when it is dropped.
    #[derive(Default)]
    struct Threads {
        seen: std::sync::Mutex<Vec<Option<String>>>,
        dropped: Arc<AtomicBool>,
    }

    impl Threads {
        fn note(&self) {
            let name = std::thread::current().name().map(str::to_string);
            self.seen.lock().unwrap().push(name);
        }
    }

    /// Sets its flag when dropped.
    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl HistoryReader for Threads {
        async fn count_ticks(&self) -> Result<u64, StoreError> {
            self.note();
            tokio::task::yield_now().await;
            self.note();
            Ok(7)
        }
        async fn bars_page(
            &self,
            symbol: &str,
            _: &str,
            side: Option<&str>,
            _: i64,
            _: i64,
            _: Option<(i64, String)>,
            limit: usize,
        ) -> Result<Vec<crate::pb::Bar>, StoreError> {
            self.note();
            let bar = crate::pb::Bar {
                symbol: symbol.to_string(),
                price_side: side.unwrap_or_default().to_string(),
                ..Default::default()
            };
            Ok(vec![bar; limit])
        }
        async fn keys_between(&self, _: i64, _: i64) -> Result<Vec<String>, StoreError> {
            Ok(vec![])
        }
        async fn ticks_between(
            &self,
            _: &[String],
            _: i64,
            _: i64,
            _: Option<(i64, String)>,
            _: usize,
        ) -> Result<Vec<Tick>, StoreError> {
            let _flag = Flag(self.dropped.clone());
            std::future::pending().await
        }
        async fn last_symbol_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
            Ok(vec![])
        }
        async fn hours_with_ticks(&self, _: &str, _: i64, _: i64) -> Result<Vec<i64>, StoreError> {
            Ok(vec![])
        }
    }

    #[test]
    fn a_reader_on_a_runtime_reads_there_and_a_read_whose_caller_left_is_aborted() {
        let workers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-workers")
            .enable_all()
            .build()
            .unwrap();
        let inner = Arc::new(Threads::default());
        let reader = ReaderOn::new(inner.clone(), workers.handle().clone());
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        caller.block_on(async {
            assert_eq!(reader.count_ticks().await.unwrap(), 7);
            let bars = reader
                .bars_page("EURUSD", "1m", Some("bid"), 0, 1, None, 2)
                .await
                .unwrap();
            assert_eq!(bars.len(), 2);
            assert_eq!((&*bars[0].symbol, &*bars[0].price_side), ("EURUSD", "bid"));
            // A read whose caller gives up is aborted on the workers, not left running.
            let slow = reader.ticks_between(&[], 0, 1, None, 10);
            let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), slow).await;
            assert!(gave_up.is_err());
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !inner.dropped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            inner.dropped.load(Ordering::SeqCst),
            "the abandoned read was aborted"
        );
        // Every step of every read ran on the workers, none on the caller's thread.
        let seen = inner.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|n| n.as_deref() == Some("the-workers")),
            "{seen:?}"
        );
    }

    #[test]
    fn a_dead_letter_keeps_a_bounded_payload_and_says_what_was_cut() {
        for (len, kept) in [
            (0, 0),
            (10, 10),
            (MAX_DEAD_LETTER_PAYLOAD, MAX_DEAD_LETTER_PAYLOAD),
            (MAX_DEAD_LETTER_PAYLOAD + 1, MAX_DEAD_LETTER_PAYLOAD),
            (8 << 20, MAX_DEAD_LETTER_PAYLOAD),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let r = DeadLetterRecord::new("ingest", "line_too_long", "oanda", payload.clone(), "x");
            assert_eq!(r.payload.len(), kept, "{len} bytes");
            assert_eq!(r.payload[..], payload[..kept], "a prefix of the input");
            let cut = len > MAX_DEAD_LETTER_PAYLOAD;
            assert_eq!(r.detail.contains(&format!("payload of {len} bytes")), cut);
            if cut {
                let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&payload));
                assert!(r.detail.contains(&hash), "{}", r.detail);
            }
            assert_eq!(
                (r.component.as_str(), r.reason.as_str()),
                ("ingest", "line_too_long")
            );
        }
    }
}
