//! The ingest stage: reads ticks from a [`source::TickSource`] and publishes each, keyed by
//! symbol, to `ticks.raw`.

pub mod source;
pub mod spool;

use anyhow::Context;
use source::{Durability, TickSource};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Producer, Receipt, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::store::DeadLetterRecord;

#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
pub use distributed::{IngestConfig, run};

// The sources, one registration line each (it also declares the module `src/<name>.rs`):
// `--source NAME` and the options of each come from here in every binary that flattens
// `SourceArgs` (ingest, tickflow run).
crate::register_sources! {
    /// The seeded simulator.
    sim: Sim => SimArgs,
    /// Dukascopy `.bi5` history from a directory or URL in Dukascopy's layout.
    dukascopy: Dukascopy => DukascopyArgs,
    /// A CSV tick file (MT5 export or plain).
    csv: Csv => CsvArgs,
    /// MetaTrader 5 terminals running the TickflowStreamer expert advisor.
    mt5: Mt5 => Mt5Args,
    /// The OANDA v20 pricing stream.
    oanda: Oanda => OandaArgs,
}

/// The spool and when to use it.
pub struct Spooler {
    /// The spool file.
    pub spool: spool::Spool,
    /// Unconfirmed for this long means the bus is down.
    pub after: Duration,
}

struct Pending {
    sent: tokio::time::Instant,
    receipt: Receipt,
    tick: Option<tick_core::Tick>,
    /// Position of the tick in the source's output (for DLQ records: the next position).
    index: u64,
}

/// Counters of the ingest stage.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Ticks read from the source.
    pub received: AtomicU64,
    /// Ticks the bus confirmed.
    pub published: AtomicU64,
    /// Ticks the bus failed to accept.
    pub failed: AtomicU64,
    /// Inputs the source could not parse (sent to `ticks.dlq`).
    pub rejected: AtomicU64,
    /// How many of the source's ticks, counted in the order the source produced them, are
    /// durable (confirmed by the bus or spooled) without a gap: what MT5 acknowledgements follow.
    pub durable: Durability,
}

/// Reads `source` until it is exhausted or `shutdown` fires, publishing every tick to
/// `ticks.raw`. With a spooler, ticks go to the local spool while the bus stops confirming and
/// are drained in order when it answers again; nothing received is dropped.
pub async fn run_source(
    mut source: Box<dyn TickSource>,
    producer: Arc<dyn Producer>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    spooler: Option<Spooler>,
) -> anyhow::Result<()> {
    let mut out = Outbox {
        spooling: spooler.as_ref().is_some_and(|s| s.spool.depth() > 0),
        spooler,
        producer,
        stats,
        pending: Default::default(),
        emitted: 0,
        lost_at: None,
    };
    let mut batch = Vec::with_capacity(1024);
    let mut feed = FeedWatch::new(source.name());
    let mut next_probe = tokio::time::Instant::now();
    loop {
        batch.clear();
        let more = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            r = source.next_batch(&mut batch) => r?,
            // Wake up to take confirmations even when the source is quiet, so durability
            // (and MT5 acknowledgements) advance without waiting for the next tick.
            _ = tokio::time::sleep(if out.pending.is_empty() && !out.spooling {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(20)
            }) => true,
        };
        out.stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        feed.saw(&batch);
        feed.report(out.spool_depth());
        metrics::counter!("tickflow_ingest_ticks_received_total", "source" => source.name().to_string())
            .increment(batch.len() as u64);
        out.publish(&mut batch).await?;
        for r in source.take_rejects() {
            out.reject(source.name(), r).await?;
        }
        out.reap()?;
        if out.spooling && tokio::time::Instant::now() >= next_probe && out.pending.is_empty() {
            next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
            out.try_drain().await?;
        }
        if let Some(sp) = &out.spooler {
            metrics::gauge!("tickflow_ingest_spool_depth").set(sp.spool.depth() as f64);
        }
        if !more {
            break;
        }
    }
    out.finish(&shutdown).await?;
    tracing::info!(
        source = source.name(),
        received = out.stats.received.load(Ordering::Relaxed),
        spooled = out.spooler.as_ref().map_or(0, |s| s.spool.depth()),
        "ingest stopped"
    );
    Ok(())
}

/// What ingest has sent and not yet seen confirmed, and where it goes while the bus does not
/// confirm: the spool.
struct Outbox {
    spooler: Option<Spooler>,
    spooling: bool,
    producer: Arc<dyn Producer>,
    stats: Arc<IngestStats>,
    pending: std::collections::VecDeque<Pending>,
    /// Ticks taken from the source so far (the next tick's position).
    emitted: u64,
    /// Position of the first publication that failed unspooled: durability stops there (a
    /// source then acknowledges nothing after it, so its peer resends).
    lost_at: Option<u64>,
}

impl Outbox {
    fn spool_depth(&self) -> Option<u64> {
        self.spooler
            .as_ref()
            .filter(|_| self.spooling)
            .map(|s| s.spool.depth())
    }

    /// Publishes a batch of ticks, or spools it while the bus does not confirm.
    async fn publish(&mut self, batch: &mut Vec<tick_core::Tick>) -> anyhow::Result<()> {
        if let (Some(sp), true) = (&mut self.spooler, self.spooling) {
            sp.spool
                .append(batch)
                .context("failed to write the spool")?;
            self.emitted += batch.len() as u64;
            metrics::counter!("tickflow_ingest_spooled_total").increment(batch.len() as u64);
            return Ok(());
        }
        for tick in batch.drain(..) {
            let receipt = self
                .producer
                .send(topics::RAW, raw_key(&tick.symbol).as_bytes(), tick.encode())
                .await?;
            let keep = self.spooler.is_some().then_some(tick);
            self.pending.push_back(Pending {
                sent: tokio::time::Instant::now(),
                receipt,
                tick: keep,
                index: self.emitted,
            });
            self.emitted += 1;
        }
        Ok(())
    }

    /// Publishes a rejected input to `ticks.dlq` with its reason (its payload bounded).
    async fn reject(&mut self, source: &str, r: source::Rejected) -> anyhow::Result<()> {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_rejected_total", "source" => source.to_string(), "reason" => r.reason.clone())
            .increment(1);
        tracing::warn!(reason = %r.reason, detail = %r.detail, "input rejected");
        let record = DeadLetterRecord::new("ingest", &r.reason, r.detail, r.payload, source);
        let receipt = self
            .producer
            .send(topics::DLQ, b"", record.encode())
            .await?;
        self.pending.push_back(Pending {
            sent: tokio::time::Instant::now(),
            receipt,
            tick: None,
            index: self.emitted,
        });
        Ok(())
    }

    /// Takes confirmations and advances the durability count the source's acknowledgements
    /// follow.
    fn reap(&mut self) -> anyhow::Result<()> {
        let lost = reap(
            &mut self.pending,
            &mut self.spooler,
            &mut self.spooling,
            &self.stats,
        )?;
        if let Some(at) = lost
            && self.lost_at.is_none()
        {
            tracing::error!(
                position = at,
                "a publication failed and there is no spool: acknowledgements stop before it"
            );
            self.lost_at = Some(at);
        }
        let confirmed = self.pending.front().map_or(self.emitted, |p| p.index);
        self.stats
            .durable
            .set(self.lost_at.map_or(confirmed, |at| at.min(confirmed)));
        Ok(())
    }

    /// Tries to send the spool; spooling stops once Kafka confirmed all of it.
    async fn try_drain(&mut self) -> anyhow::Result<()> {
        if let Some(sp) = &mut self.spooler {
            self.spooling = !drain(sp, self.producer.as_ref(), &self.stats).await?;
        }
        Ok(())
    }

    /// After the source ended: keeps trying to empty the spool for a while (a restart would
    /// drain it anyway) unless shutdown was asked for, then waits a bounded time for the last
    /// confirmations; what stays unconfirmed goes to the spool, so a restart sends it again (the
    /// idempotency key removes any double).
    async fn finish(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.spooling
            && !shutdown.is_cancelled()
            && tokio::time::Instant::now() < drain_deadline
        {
            self.reap()?;
            if self.pending.is_empty() {
                self.try_drain().await?;
            }
            if self.spooling {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.pending.is_empty() && tokio::time::Instant::now() < deadline {
            self.reap()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(sp) = &mut self.spooler {
            let left: Vec<_> = self.pending.drain(..).filter_map(|p| p.tick).collect();
            if !left.is_empty() {
                tracing::warn!(
                    ticks = left.len(),
                    "unconfirmed at shutdown; kept in the spool"
                );
                sp.spool.append(&left)?;
            }
        } else {
            for p in self.pending.drain(..) {
                settle_one(p.receipt.await, &self.stats);
            }
            self.producer.flush().await?;
        }
        Ok(())
    }
}

/// Returns the `ticks.raw` key of a symbol: its canonical spelling, so every source's spelling
/// of one instrument lands in one partition (one router instance sees the whole symbol).
fn raw_key(symbol: &str) -> std::borrow::Cow<'_, str> {
    if symbol
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        std::borrow::Cow::Borrowed(symbol)
    } else {
        std::borrow::Cow::Owned(tick_core::instrument::canonical(symbol))
    }
}

/// Watches the feed per symbol: the age of its last tick (a metric) and a log line when a
/// symbol goes stale or comes back, plus a reminder while ticks are being spooled.
struct FeedWatch {
    source: String,
    last: HashMap<String, i64>,
    stale: std::collections::HashSet<String>,
    next_report: tokio::time::Instant,
    next_spool_log: tokio::time::Instant,
}

/// A symbol without a tick for this long is reported stale.
const STALE_AFTER_NS: i64 = 60_000_000_000;

impl FeedWatch {
    fn new(source: &str) -> Self {
        Self {
            source: source.to_string(),
            last: HashMap::new(),
            stale: Default::default(),
            next_report: tokio::time::Instant::now(),
            next_spool_log: tokio::time::Instant::now(),
        }
    }

    fn saw(&mut self, batch: &[tick_core::Tick]) {
        for t in batch {
            match self.last.get_mut(&t.symbol) {
                Some(v) => *v = t.ts_recv_ns,
                None => {
                    self.last.insert(t.symbol.clone(), t.ts_recv_ns);
                }
            }
        }
    }

    fn report(&mut self, spool_depth: Option<u64>) {
        let now = tokio::time::Instant::now();
        if let Some(depth) = spool_depth
            && now >= self.next_spool_log
        {
            tracing::error!(
                depth,
                "kafka still not confirming: ticks are being spooled to disk"
            );
            self.next_spool_log = now + Duration::from_secs(10);
        }
        if now < self.next_report {
            return;
        }
        self.next_report = now + Duration::from_secs(1);
        let wall = tick_core::clock::now_ns();
        for (symbol, at) in &self.last {
            let age = wall.saturating_sub(*at);
            metrics::gauge!("tickflow_ingest_last_tick_age_seconds", "source" => self.source.clone(), "symbol" => symbol.clone())
                .set(age as f64 / 1e9);
            let stale = age > STALE_AFTER_NS;
            if stale && self.stale.insert(symbol.clone()) {
                tracing::warn!(source = %self.source, %symbol, age_s = age / 1_000_000_000, "feed is stale: no tick for a minute");
            } else if !stale && self.stale.remove(symbol) {
                tracing::info!(source = %self.source, %symbol, "feed is live again");
            }
        }
    }
}

/// Takes confirmed publications off the front; a failed one goes to the spool; one unconfirmed
/// for too long switches to spooling.
///
/// Returns the position of the first publication that failed and could not be spooled (none
/// when every failure was spooled): nothing from there on may count as durable.
fn reap(
    pending: &mut std::collections::VecDeque<Pending>,
    spooler: &mut Option<Spooler>,
    spooling: &mut bool,
    stats: &IngestStats,
) -> anyhow::Result<Option<u64>> {
    let mut lost = None;
    use futures::FutureExt;
    while let Some(front) = pending.front_mut() {
        match (&mut front.receipt).now_or_never() {
            Some(result) => {
                let p = pending.pop_front().expect("front exists");
                if result.is_err()
                    && let (Some(sp), Some(t)) = (spooler.as_mut(), p.tick)
                {
                    sp.spool.append(std::slice::from_ref(&t))?;
                    *spooling = true;
                    continue;
                }
                if result.is_err() {
                    lost.get_or_insert(p.index);
                }
                settle_one(result, stats);
            }
            None => {
                if let Some(sp) = spooler
                    && !*spooling
                    && front.sent.elapsed() > sp.after
                {
                    *spooling = true;
                    tracing::error!(after = ?sp.after, "kafka is not confirming: spooling ticks to disk until it answers");
                }
                break;
            }
        }
    }
    Ok(lost)
}

/// Sends the spool's ticks in order; returns whether all were confirmed (then the spool is
/// emptied).
async fn drain(
    sp: &mut Spooler,
    producer: &dyn Producer,
    stats: &IngestStats,
) -> anyhow::Result<bool> {
    let ticks = sp.spool.read_all()?;
    let mut receipts = Vec::with_capacity(ticks.len());
    for t in &ticks {
        receipts.push(
            producer
                .send(topics::RAW, raw_key(&t.symbol).as_bytes(), t.encode())
                .await?,
        );
    }
    let confirm = async {
        for r in receipts {
            r.await?;
        }
        Ok::<(), tick_core::bus::BusError>(())
    };
    // Every receipt resolves (delivered, or failed after librdkafka's message timeout): waiting
    // for all of them, rather than re-sending on a timer, never sends the spool twice while
    // copies are still queued.
    match confirm.await {
        Ok(()) => {
            sp.spool.clear()?;
            stats
                .published
                .fetch_add(ticks.len() as u64, Ordering::Relaxed);
            tracing::warn!(ticks = ticks.len(), "kafka answers again: spool drained");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(ticks = ticks.len(), error = %tick_core::error::chain(&e), "spool drain failed; keeping the spool");
            Ok(false)
        }
    }
}

fn settle_one(result: Result<(), tick_core::bus::BusError>, stats: &IngestStats) {
    match result {
        Ok(()) => {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %tick_core::error::chain(&e), "publish failed");
            metrics::counter!("tickflow_ingest_publish_failed_total").increment(1);
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use tick_core::bus::BusError;

    /// Yields its ticks in one batch, then ends.
    struct Ticks(Vec<tick_core::Tick>);

    #[async_trait]
    impl TickSource for Ticks {
        fn name(&self) -> &str {
            "test"
        }
        async fn next_batch(
            &mut self,
            out: &mut Vec<tick_core::Tick>,
        ) -> Result<bool, source::SourceError> {
            out.append(&mut self.0);
            Ok(false)
        }
    }

    /// Confirms every publication but the `fail`-th.
    struct FailsOne {
        fail: usize,
        sent: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Producer for FailsOne {
        async fn send(&self, _: &str, _: &[u8], _: Vec<u8>) -> Result<Receipt, BusError> {
            let n = self.sent.fetch_add(1, Ordering::Relaxed);
            let r = if n == self.fail {
                Err(BusError::Closed)
            } else {
                Ok(())
            };
            Ok(Box::pin(futures::future::ready(r)))
        }
        async fn flush(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn durability_stops_before_a_publication_that_failed_unspooled() {
        for (fail, durable) in [(0, 0), (2, 2), (4, 4), (9, 5)] {
            let ticks = (0..5)
                .map(|i| tick_core::testenv::tick("test", "EURUSD", 1_000 + i, 110_000))
                .collect();
            let stats = Arc::new(IngestStats::default());
            let producer = Arc::new(FailsOne {
                fail,
                sent: Default::default(),
            });
            run_source(
                Box::new(Ticks(ticks)),
                producer,
                stats.clone(),
                CancellationToken::new(),
                None,
            )
            .await
            .unwrap();
            assert_eq!(stats.durable.durable(), durable, "publication {fail} fails");
            let failed = u64::from(fail < 5);
            assert_eq!(stats.failed.load(Ordering::Relaxed), failed);
            assert_eq!(stats.published.load(Ordering::Relaxed), 5 - failed);
        }
    }
}
