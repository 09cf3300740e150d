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
        unsent: Default::default(),
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
        out.retry_dead_letters().await;
        for r in source.take_rejects() {
            out.reject(source.name(), r).await;
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
    /// Dead letters the bus refused to take, with their position, oldest first: sent again on
    /// every turn of the loop. Durability stops before the oldest.
    unsent: std::collections::VecDeque<(u64, Vec<u8>)>,
}

/// Dead letters kept for another try while the bus refuses them; past this, the oldest is
/// dropped (counted and logged) so a stream of rejects cannot exhaust memory.
const MAX_UNSENT_DEAD_LETTERS: usize = 10_000;

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

    /// Publishes a rejected input to `ticks.dlq` with its reason (its payload bounded). A
    /// dead letter the bus refuses is kept and sent again later: never the end of the source.
    async fn reject(&mut self, source: &str, r: source::Rejected) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_rejected_total", "source" => source.to_string(), "reason" => r.reason.clone())
            .increment(1);
        tracing::warn!(reason = %r.reason, detail = %r.detail, "input rejected");
        let record = DeadLetterRecord::new("ingest", &r.reason, r.detail, r.payload, source);
        self.send_dead_letter(self.emitted, record.encode()).await;
    }

    /// Sends one encoded dead letter at position `index`; keeps it for another try if the bus
    /// refuses it.
    async fn send_dead_letter(&mut self, index: u64, payload: Vec<u8>) {
        match self.producer.send(topics::DLQ, b"", payload.clone()).await {
            Ok(receipt) => self.pending.push_back(Pending {
                sent: tokio::time::Instant::now(),
                receipt,
                tick: None,
                index,
            }),
            Err(e) => {
                metrics::counter!("tickflow_ingest_dead_letter_send_failed_total").increment(1);
                tracing::warn!(error = %tick_core::error::chain(&e), "the bus refused a dead letter; it will be sent again");
                if self.unsent.len() >= MAX_UNSENT_DEAD_LETTERS {
                    self.unsent.pop_front();
                    metrics::counter!("tickflow_ingest_dead_letters_dropped_total").increment(1);
                    tracing::error!(
                        kept = MAX_UNSENT_DEAD_LETTERS,
                        "too many dead letters the bus refuses: the oldest is dropped"
                    );
                }
                self.unsent.push_back((index, payload));
            }
        }
    }

    /// Sends again the dead letters the bus refused, oldest first, until one is refused again.
    async fn retry_dead_letters(&mut self) {
        let tries = self.unsent.len();
        for _ in 0..tries {
            let Some((index, payload)) = self.unsent.pop_front() else {
                break;
            };
            let before = self.unsent.len();
            self.send_dead_letter(index, payload).await;
            if self.unsent.len() > before {
                // Refused again (now at the back): restore the order and wait for a later turn.
                if let Some(last) = self.unsent.pop_back() {
                    self.unsent.push_front(last);
                }
                break;
            }
        }
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
        let mut durable = self.pending.front().map_or(self.emitted, |p| p.index);
        for limit in [self.lost_at, self.unsent.front().map(|(i, _)| *i)]
            .into_iter()
            .flatten()
        {
            durable = durable.min(limit);
        }
        self.stats.durable.set(durable);
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
        while !(self.pending.is_empty() && self.unsent.is_empty())
            && tokio::time::Instant::now() < deadline
        {
            self.retry_dead_letters().await;
            self.reap()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !self.unsent.is_empty() {
            metrics::counter!("tickflow_ingest_dead_letters_dropped_total")
                .increment(self.unsent.len() as u64);
            tracing::error!(
                dead_letters = self.unsent.len(),
                "the bus still refuses these dead letters at shutdown; they are lost"
            );
            self.unsent.clear();
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

    /// Refuses the first `refuse` dead letters it is given (at `send`), takes everything else.
    struct RefusesDeadLetters {
        refuse: std::sync::atomic::AtomicUsize,
        dead_letters: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Producer for RefusesDeadLetters {
        async fn send(&self, topic: &str, _: &[u8], _: Vec<u8>) -> Result<Receipt, BusError> {
            if topic == topics::DLQ {
                let left = self.refuse.load(Ordering::Relaxed);
                if left > 0 {
                    self.refuse.store(left - 1, Ordering::Relaxed);
                    return Err(BusError::Broker(tick_core::error::Cause::msg(
                        "message too large",
                    )));
                }
                self.dead_letters.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Box::pin(futures::future::ready(Ok(()))))
        }
        async fn flush(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    /// Yields ticks and rejects, one of each per batch, `n` batches.
    struct TicksAndRejects {
        left: u64,
        rejects: Vec<source::Rejected>,
    }

    #[async_trait]
    impl TickSource for TicksAndRejects {
        fn name(&self) -> &str {
            "test"
        }
        async fn next_batch(
            &mut self,
            out: &mut Vec<tick_core::Tick>,
        ) -> Result<bool, source::SourceError> {
            self.left -= 1;
            out.push(tick_core::testenv::tick(
                "test",
                "EURUSD",
                1_000 + self.left as i64,
                110_000,
            ));
            self.rejects.push(source::Rejected {
                reason: "malformed_line".into(),
                detail: format!("line {}", self.left),
                payload: vec![b'x'; 100],
            });
            Ok(self.left > 0)
        }
        fn take_rejects(&mut self) -> Vec<source::Rejected> {
            std::mem::take(&mut self.rejects)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_the_bus_refuses_is_sent_again_and_never_stops_the_source() {
        // (dead letters refused at first, dead letters delivered in the end)
        for (refuse, delivered) in [(0, 4), (3, 4), (1_000_000, 0)] {
            let producer = Arc::new(RefusesDeadLetters {
                refuse: refuse.into(),
                dead_letters: Default::default(),
            });
            let stats = Arc::new(IngestStats::default());
            let source = TicksAndRejects {
                left: 4,
                rejects: vec![],
            };
            run_source(
                Box::new(source),
                producer.clone(),
                stats.clone(),
                CancellationToken::new(),
                None,
            )
            .await
            .expect("a refused dead letter never ends the source");
            assert_eq!(stats.received.load(Ordering::Relaxed), 4, "refuse {refuse}");
            assert_eq!(stats.rejected.load(Ordering::Relaxed), 4);
            assert_eq!(producer.dead_letters.load(Ordering::Relaxed), delivered);
            assert_eq!(
                stats.published.load(Ordering::Relaxed),
                4 + delivered as u64
            );
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
