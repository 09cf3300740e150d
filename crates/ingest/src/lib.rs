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
use tick_core::bus::{BatchReceipt, Outgoing, Producer, Receipt, Refused, topics};
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

/// The spools and when to use them.
pub struct Spooler {
    /// The spool file of ticks.
    pub spool: spool::Spool,
    /// The spool file of dead letters produced while the bus does not confirm.
    pub dead_letters: spool::Spool<spool::EncodedDeadLetter>,
    /// Unconfirmed for this long means the bus is down.
    pub after: Duration,
}

/// What a pending publication was, kept (with a spooler) to be spooled if it fails.
enum Sent {
    /// A batch of this many ticks, in source order (kept with a spooler).
    Ticks(usize, Option<Vec<tick_core::Tick>>),
    DeadLetter(Option<Vec<u8>>),
}

struct Pending {
    sent: tokio::time::Instant,
    /// One receipt for the whole publication (a dead letter is a batch of one).
    receipt: BatchReceipt,
    what: Sent,
    /// Position of the first tick in the source's output (for DLQ records: the next position).
    index: u64,
}

/// Turns the receipt of one message into the receipt of a batch of one.
fn batch_of_one(r: Receipt) -> BatchReceipt {
    use futures::FutureExt;
    Box::pin(r.map(|r| {
        r.map_err(|error| Refused {
            positions: vec![0],
            error,
        })
    }))
}

/// Counters of the ingest stage. Every input the source read is counted once, by its outcome:
/// `inputs = received + rejected + skipped`, and, once the bus confirmed or refused them,
/// `received = published + failed + spooled` (ticks still in the spool).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Inputs the source read: ticks, rejected inputs and skipped inputs.
    pub inputs: AtomicU64,
    /// Ticks read from the source.
    pub received: AtomicU64,
    /// Ticks the bus confirmed.
    pub published: AtomicU64,
    /// Ticks the bus failed to accept (with no spool to keep them).
    pub failed: AtomicU64,
    /// Inputs the source could not parse (sent to `ticks.dlq`).
    pub rejected: AtomicU64,
    /// Inputs the source read and deliberately left out (e.g. prices a reconnect repeats).
    pub skipped: AtomicU64,
    /// Dead letters the bus confirmed.
    pub dead_letters: AtomicU64,
    /// Dead letters written to the dead-letter spool (sent from there when the bus answers).
    pub dead_letters_spooled: AtomicU64,
    /// Dead letters given up on (the bus refused them past the in-memory bound, without a
    /// spool, or still at shutdown).
    pub dead_letters_lost: AtomicU64,
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
    let name = source.name().to_string();
    let mut out = Outbox {
        spooling: spooler.as_ref().is_some_and(|s| s.spool.depth() > 0),
        spooler,
        producer,
        stats,
        pending: Default::default(),
        emitted: 0,
        lost_at: None,
        unsent: Default::default(),
        outgoing: Outgoing::default(),
        source: name.clone(),
    };
    let mut batch = Vec::with_capacity(1024);
    let mut feed = FeedWatch::new(&name);
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
        out.count_in(batch.len() as u64, "received");
        out.stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        feed.saw(&batch);
        feed.report(out.spool_depth());
        metrics::counter!("tickflow_ingest_ticks_received_total", "source" => name.clone())
            .increment(batch.len() as u64);
        let published = !batch.is_empty();
        out.publish(&mut batch).await?;
        if published {
            // Let the stages that share this thread in embedded mode (router, indicators)
            // take the batch before the next is made: a tick then waits for its own batch,
            // not for every batch a backlog holds.
            tokio::task::yield_now().await;
        }
        out.retry_dead_letters().await;
        for r in source.take_rejects() {
            out.reject(r).await?;
        }
        for s in source.take_skipped() {
            out.skip(s);
        }
        out.reap()?;
        if tokio::time::Instant::now() >= next_probe && out.pending.is_empty() {
            next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
            if out.spooling {
                out.try_drain().await?;
            }
            if !out.spooling {
                out.drain_dead_letters().await?;
            }
        }
        if let Some(sp) = &out.spooler {
            metrics::gauge!("tickflow_ingest_spool_depth").set(sp.spool.depth() as f64);
            metrics::gauge!("tickflow_ingest_dead_letter_spool_depth")
                .set(sp.dead_letters.depth() as f64);
        }
        if !more {
            break;
        }
    }
    out.finish(&shutdown).await?;
    let st = &out.stats;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        source = %name,
        inputs = n(&st.inputs),
        received = n(&st.received),
        published = n(&st.published),
        failed = n(&st.failed),
        spooled = out.spooler.as_ref().map_or(0, |s| s.spool.depth()),
        rejected = n(&st.rejected),
        skipped = n(&st.skipped),
        dead_letters = n(&st.dead_letters),
        dead_letters_spooled = out.spooler.as_ref().map_or(0, |s| s.dead_letters.depth()),
        dead_letters_lost = n(&st.dead_letters_lost),
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
    /// Without a spool: dead letters the bus refused to take, with their position, oldest
    /// first, sent again on every turn of the loop. Durability stops before the oldest.
    unsent: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// The source's name (a metric label).
    source: String,
    /// The batch being published, its buffers reused.
    outgoing: Outgoing,
}

/// Dead letters kept in memory for another try while the bus refuses them (without a spool);
/// past this, the oldest is dropped (counted and logged) so a stream of rejects cannot exhaust
/// memory.
const MAX_UNSENT_DEAD_LETTERS: usize = 10_000;

impl Outbox {
    fn spool_depth(&self) -> Option<u64> {
        self.spooler
            .as_ref()
            .filter(|_| self.spooling)
            .map(|s| s.spool.depth())
    }

    /// Counts `n` inputs read from the source with their outcome.
    fn count_in(&self, n: u64, outcome: &'static str) {
        if n == 0 {
            return;
        }
        self.stats.inputs.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_inputs_total", "source" => self.source.clone(), "outcome" => outcome)
            .increment(n);
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
        if batch.is_empty() {
            return Ok(());
        }
        // One receipt for the batch: no future, channel or payload allocated per tick.
        let n = batch.len();
        encode_raw(&mut self.outgoing, batch);
        let receipt = self
            .producer
            .send_batch(topics::RAW, &self.outgoing)
            .await?;
        let keep = self
            .spooler
            .is_some()
            .then(|| std::mem::replace(batch, Vec::with_capacity(n)));
        batch.clear();
        self.pending.push_back(Pending {
            sent: tokio::time::Instant::now(),
            receipt,
            what: Sent::Ticks(n, keep),
            index: self.emitted,
        });
        self.emitted += n as u64;
        Ok(())
    }

    /// Records an input the source skipped: counted by reason and logged.
    fn skip(&mut self, s: source::Skipped) {
        self.count_in(1, "skipped");
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_skipped_total", "source" => self.source.clone(), "reason" => s.reason)
            .increment(1);
        tracing::info!(reason = s.reason, detail = %s.detail, "input skipped");
    }

    /// Publishes a rejected input to `ticks.dlq` with its reason (its payload bounded). A
    /// dead letter the bus refuses is spooled, or kept and sent again later: never the end of
    /// the source.
    async fn reject(&mut self, r: source::Rejected) -> anyhow::Result<()> {
        self.count_in(1, "rejected");
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_rejected_total", "source" => self.source.clone(), "reason" => r.reason)
            .increment(1);
        tracing::warn!(reason = %r.reason, detail = %r.detail, "input rejected");
        let record = DeadLetterRecord::new("ingest", r.reason, r.detail, r.payload, &self.source);
        self.send_dead_letter(self.emitted, record.encode()).await
    }

    /// Writes encoded dead letters to the dead-letter spool.
    fn spool_dead_letters(&mut self, letters: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let Some(sp) = &mut self.spooler else {
            return Ok(());
        };
        let n = letters.len() as u64;
        let letters: Vec<_> = letters.into_iter().map(spool::EncodedDeadLetter).collect();
        sp.dead_letters
            .append(&letters)
            .context("failed to write the dead-letter spool")?;
        self.stats
            .dead_letters_spooled
            .fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_dead_letters_spooled_total").increment(n);
        Ok(())
    }

    /// Sends one encoded dead letter at position `index`. While ticks are spooled, and when
    /// the bus refuses it, it goes to the dead-letter spool (without a spool: kept in memory for
    /// another try).
    async fn send_dead_letter(&mut self, index: u64, payload: Vec<u8>) -> anyhow::Result<()> {
        if self.spooling && self.spooler.is_some() {
            return self.spool_dead_letters(vec![payload]);
        }
        // Dead letters are rare and bounded (16 KiB): a copy is kept until the bus confirms.
        match self.producer.send(topics::DLQ, b"", payload.clone()).await {
            Ok(receipt) => {
                let keep = self.spooler.is_some().then_some(payload);
                self.pending.push_back(Pending {
                    sent: tokio::time::Instant::now(),
                    receipt: batch_of_one(receipt),
                    what: Sent::DeadLetter(keep),
                    index,
                });
                Ok(())
            }
            Err(e) => {
                metrics::counter!("tickflow_ingest_dead_letter_send_failed_total").increment(1);
                tracing::warn!(error = %tick_core::error::chain(&e), "the bus refused a dead letter; it will be sent again");
                if self.spooler.is_some() {
                    return self.spool_dead_letters(vec![payload]);
                }
                if self.unsent.len() >= MAX_UNSENT_DEAD_LETTERS {
                    self.unsent.pop_front();
                    self.lose_dead_letters(1);
                    tracing::error!(
                        kept = MAX_UNSENT_DEAD_LETTERS,
                        "too many dead letters the bus refuses: the oldest is dropped"
                    );
                }
                self.unsent.push_back((index, payload));
                Ok(())
            }
        }
    }

    /// Sends again the dead letters the bus refused (no spool), oldest first, until one is
    /// refused again.
    async fn retry_dead_letters(&mut self) {
        while let Some((index, payload)) = self.unsent.pop_front() {
            match self.producer.send(topics::DLQ, b"", payload.clone()).await {
                Ok(receipt) => self.pending.push_back(Pending {
                    sent: tokio::time::Instant::now(),
                    receipt: batch_of_one(receipt),
                    what: Sent::DeadLetter(None),
                    index,
                }),
                Err(_) => {
                    self.unsent.push_front((index, payload));
                    break;
                }
            }
        }
    }

    /// Takes confirmations and advances the durability count the source's acknowledgements
    /// follow.
    fn reap(&mut self) -> anyhow::Result<()> {
        let mut lost = None;
        let mut respool = Vec::new();
        use futures::FutureExt;
        while let Some(front) = self.pending.front_mut() {
            let Some(result) = (&mut front.receipt).now_or_never() else {
                if let Some(sp) = &self.spooler
                    && !self.spooling
                    && front.sent.elapsed() > sp.after
                {
                    self.spooling = true;
                    tracing::error!(after = ?sp.after, "kafka is not confirming: spooling ticks to disk until it answers");
                }
                break;
            };
            let p = self.pending.pop_front().expect("front exists");
            self.settle(p, result, &mut lost, &mut respool)?;
        }
        if !respool.is_empty() {
            self.spool_dead_letters(respool)?;
        }
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

    /// Counts one resolved publication; a failed one is spooled when it was kept for that.
    fn settle(
        &mut self,
        p: Pending,
        result: Result<(), Refused>,
        lost: &mut Option<u64>,
        respool: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<()> {
        match (result, p.what) {
            (result, Sent::Ticks(n, kept)) => {
                let refused = result.err();
                let failed = refused.as_ref().map_or(0, |r| r.positions.len());
                let published = n.saturating_sub(failed) as u64;
                self.stats.published.fetch_add(published, Ordering::Relaxed);
                metrics::counter!("tickflow_ingest_ticks_published_total", "source" => self.source.clone())
                    .increment(published);
                let Some(refused) = refused else {
                    return Ok(());
                };
                let positions = &refused.positions;
                if let Some(ticks) = kept {
                    // Only the failed ones: the others are confirmed.
                    let again: Vec<_> = positions
                        .iter()
                        .filter_map(|&i| ticks.get(i).cloned())
                        .collect();
                    let sp = self.spooler.as_mut().expect("kept only with a spooler");
                    sp.spool.append(&again)?;
                    self.spooling = true;
                } else {
                    lost.get_or_insert(p.index + positions.first().map_or(0, |&i| i as u64));
                    let k = positions.len() as u64;
                    tracing::error!(ticks = k, error = %tick_core::error::chain(&refused.error), "publish failed");
                    metrics::counter!("tickflow_ingest_publish_failed_total").increment(k);
                    self.stats.failed.fetch_add(k, Ordering::Relaxed);
                }
            }
            (Ok(()), Sent::DeadLetter(_)) => {
                self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tickflow_ingest_dead_letters_published_total").increment(1);
            }
            (Err(_), Sent::DeadLetter(Some(d))) => respool.push(d),
            (Err(r), Sent::DeadLetter(None)) => {
                tracing::error!(error = %tick_core::error::chain(&r.error), "a dead letter was not delivered; it is lost");
                self.lose_dead_letters(1);
            }
        }
        Ok(())
    }

    fn lose_dead_letters(&self, n: u64) {
        self.stats.dead_letters_lost.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_dead_letters_dropped_total").increment(n);
    }

    /// Tries to send the spool; spooling stops once Kafka confirmed all of it.
    async fn try_drain(&mut self) -> anyhow::Result<()> {
        if let Some(sp) = &mut self.spooler {
            self.spooling = !drain(sp, self.producer.as_ref(), &self.stats, &self.source).await?;
        }
        Ok(())
    }

    /// Sends the dead-letter spool once the bus confirms again; it is emptied when every dead
    /// letter in it was confirmed (a failure part-way sends it again later: a dead letter may
    /// then appear twice on `ticks.dlq`, never zero times).
    async fn drain_dead_letters(&mut self) -> anyhow::Result<()> {
        let Some(sp) = &mut self.spooler else {
            return Ok(());
        };
        if sp.dead_letters.depth() == 0 {
            return Ok(());
        }
        let letters = sp.dead_letters.read_all()?;
        let mut receipts = Vec::with_capacity(letters.len());
        for d in &letters {
            match self.producer.send(topics::DLQ, b"", d.0.clone()).await {
                Ok(r) => receipts.push(r),
                Err(_) => return Ok(()),
            }
        }
        for r in receipts {
            if r.await.is_err() {
                return Ok(());
            }
        }
        sp.dead_letters.clear()?;
        let n = letters.len() as u64;
        self.stats.dead_letters.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tickflow_ingest_dead_letters_published_total").increment(n);
        tracing::warn!(dead_letters = n, "dead-letter spool drained");
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
        if !self.spooling && self.pending.is_empty() {
            self.drain_dead_letters().await?;
        }
        if !self.unsent.is_empty() {
            self.lose_dead_letters(self.unsent.len() as u64);
            tracing::error!(
                dead_letters = self.unsent.len(),
                "the bus still refuses these dead letters at shutdown; they are lost"
            );
            self.unsent.clear();
        }
        if self.spooler.is_some() {
            let (mut ticks, mut letters) = (Vec::new(), Vec::new());
            for p in self.pending.drain(..) {
                match p.what {
                    Sent::Ticks(_, Some(t)) => ticks.extend(t),
                    Sent::DeadLetter(Some(d)) => letters.push(d),
                    _ => {}
                }
            }
            if !ticks.is_empty() {
                tracing::warn!(
                    ticks = ticks.len(),
                    "unconfirmed at shutdown; kept in the spool"
                );
                let sp = self.spooler.as_mut().expect("spooler");
                sp.spool.append(&ticks)?;
            }
            if !letters.is_empty() {
                tracing::warn!(
                    dead_letters = letters.len(),
                    "dead letters unconfirmed at shutdown; kept in the dead-letter spool"
                );
                self.spool_dead_letters(letters)?;
            }
        } else {
            let (mut lost, mut respool) = (None, Vec::new());
            while let Some(mut p) = self.pending.pop_front() {
                let result = (&mut p.receipt).await;
                self.settle(p, result, &mut lost, &mut respool)?;
            }
            if let Some(at) = lost {
                self.lost_at.get_or_insert(at);
            }
            self.reap()?;
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
/// symbol goes stale or comes back, plus a reminder while ticks are being spooled. Symbols are
/// tracked by their bounded metric label ([`SymbolLabels`](tick_core::labels::SymbolLabels)):
/// garbage symbols share `other`, so neither the series nor this map grow with the input.
struct FeedWatch {
    source: String,
    labels: tick_core::labels::SymbolLabels,
    last: HashMap<String, i64>,
    stale: std::collections::HashSet<String>,
    next_report: tokio::time::Instant,
    next_spool_log: tokio::time::Instant,
}

/// A symbol without a tick for this long is reported stale.
const STALE_AFTER_NS: i64 = 60_000_000_000;

/// Most symbols a source's feed metrics name one by one (the rest are `other`).
const MAX_SYMBOL_LABELS: usize = 1_000;

impl FeedWatch {
    fn new(source: &str) -> Self {
        Self {
            source: source.to_string(),
            labels: tick_core::labels::SymbolLabels::new(MAX_SYMBOL_LABELS),
            last: HashMap::new(),
            stale: Default::default(),
            next_report: tokio::time::Instant::now(),
            next_spool_log: tokio::time::Instant::now(),
        }
    }

    fn saw(&mut self, batch: &[tick_core::Tick]) {
        for t in batch {
            let label = self.labels.label(&t.symbol);
            match self.last.get_mut(label) {
                Some(v) => *v = (*v).max(t.ts_recv_ns),
                None => {
                    self.last.insert(label.to_string(), t.ts_recv_ns);
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

/// Ticks of the spool sent under one receipt when it is drained.
const DRAIN_BATCH: usize = 4_096;

/// Fills `out` with `ticks` as `ticks.raw` messages, keyed by their canonical symbol.
fn encode_raw(out: &mut Outgoing, ticks: &[tick_core::Tick]) {
    out.clear();
    for t in ticks {
        out.push(raw_key(&t.symbol).as_bytes(), |buf| t.encode_into(buf));
    }
}

/// Sends the spool's ticks in order; returns whether all were confirmed (then the spool is
/// emptied).
async fn drain(
    sp: &mut Spooler,
    producer: &dyn Producer,
    stats: &IngestStats,
    source: &str,
) -> anyhow::Result<bool> {
    let ticks = sp.spool.read_all()?;
    let mut receipts = Vec::new();
    let mut outgoing = Outgoing::default();
    for chunk in ticks.chunks(DRAIN_BATCH) {
        encode_raw(&mut outgoing, chunk);
        receipts.push(producer.send_batch(topics::RAW, &outgoing).await?);
    }
    let confirm = async {
        for r in receipts {
            r.await.map_err(|r| r.error)?;
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
            metrics::counter!("tickflow_ingest_ticks_published_total", "source" => source.to_string())
                .increment(ticks.len() as u64);
            tracing::warn!(ticks = ticks.len(), "kafka answers again: spool drained");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(ticks = ticks.len(), error = %tick_core::error::chain(&e), "spool drain failed; keeping the spool");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use tick_core::bus::BusError;
    use tick_core::bus::scripted::ScriptedProducer;

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
                reason: "malformed_line",
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
            // Ticks and dead letters are counted apart: every input once, by its outcome.
            assert_eq!(stats.published.load(Ordering::Relaxed), 4);
            assert_eq!(stats.dead_letters.load(Ordering::Relaxed), delivered as u64);
            assert_eq!(
                stats.dead_letters_lost.load(Ordering::Relaxed),
                4 - delivered as u64
            );
            assert_eq!(stats.inputs.load(Ordering::Relaxed), 8);
        }
    }

    #[tokio::test]
    async fn with_a_spool_a_refused_dead_letter_is_spooled_and_sent_when_the_bus_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let producer = Arc::new(RefusesDeadLetters {
            refuse: 3.into(),
            dead_letters: Default::default(),
        });
        let stats = Arc::new(IngestStats::default());
        let spooler = Spooler {
            spool: spool::Spool::open(dir.path()).unwrap(),
            dead_letters: spool::Spool::open(dir.path()).unwrap(),
            after: Duration::from_secs(60),
        };
        let source = TicksAndRejects {
            left: 4,
            rejects: vec![],
        };
        run_source(
            Box::new(source),
            producer.clone(),
            stats.clone(),
            CancellationToken::new(),
            Some(spooler),
        )
        .await
        .unwrap();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            producer.dead_letters.load(Ordering::Relaxed),
            4,
            "all delivered"
        );
        assert!(
            n(&stats.dead_letters_spooled) > 0,
            "refused ones went to the spool"
        );
        assert_eq!(n(&stats.dead_letters), 4);
        assert_eq!(n(&stats.dead_letters_lost), 0);
        assert_eq!(
            spool::Spool::<spool::EncodedDeadLetter>::open(dir.path())
                .unwrap()
                .depth(),
            0,
            "the dead-letter spool was drained"
        );
        assert_eq!(n(&stats.inputs), n(&stats.received) + n(&stats.rejected));
    }

    #[tokio::test]
    async fn ten_thousand_garbage_symbols_make_a_bounded_number_of_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let mut ticks = vec![tick_core::testenv::tick("test", "EURUSD", 1_000, 110_000)];
        for i in 0..10_000 {
            let symbol = match i % 4 {
                0 => format!("EUR\0{i}"),
                1 => format!("\u{0415}URUSD{i}"), // a Cyrillic look-alike of E
                2 => format!("{i:x}\u{200b}USD"), // a zero-width space
                _ => format!("ZZ{i}"),            // well-formed, unknown
            };
            ticks.push(tick_core::testenv::tick(
                "test",
                &symbol,
                1_001 + i,
                110_000,
            ));
        }
        let stats = Arc::new(IngestStats::default());
        let producer = Arc::new(ScriptedProducer::new(usize::MAX, &[]));
        run_source(
            Box::new(Ticks(ticks)),
            producer,
            stats.clone(),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(stats.published.load(Ordering::Relaxed), 10_001);
        let text = handle.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tickflow_ingest_last_tick_age_seconds{"))
            .collect();
        // EURUSD, the first 999 well-formed unknown symbols, and `other` for everything else.
        assert_eq!(series.len(), MAX_SYMBOL_LABELS + 1, "{:?}", &series[..5]);
        assert!(series.iter().any(|l| l.contains("symbol=\"EURUSD\"")));
        assert!(series.iter().any(|l| l.contains("symbol=\"other\"")));
        assert!(!text.contains('\0') && !text.contains('\u{0415}'));
        let all_series = text.lines().filter(|l| l.starts_with("tickflow_")).count();
        assert!(
            all_series < MAX_SYMBOL_LABELS + 20,
            "{all_series} series in all"
        );
    }

    #[tokio::test]
    async fn with_a_spool_only_the_ticks_of_a_batch_that_failed_are_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let ticks = (0..5)
            .map(|i| tick_core::testenv::tick("test", "EURUSD", 1_000 + i, 110_000))
            .collect();
        let stats = Arc::new(IngestStats::default());
        let producer = Arc::new(ScriptedProducer::new(usize::MAX, &[2]));
        let spooler = Spooler {
            spool: spool::Spool::open(dir.path()).unwrap(),
            dead_letters: spool::Spool::open(dir.path()).unwrap(),
            after: Duration::from_secs(60),
        };
        run_source(
            Box::new(Ticks(ticks)),
            producer.clone(),
            stats.clone(),
            CancellationToken::new(),
            Some(spooler),
        )
        .await
        .unwrap();
        // One batch of 5, its third tick failed and spooled, then sent again from the spool.
        assert_eq!(producer.sent_count(), 6);
        assert_eq!(stats.published.load(Ordering::Relaxed), 5);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
        assert_eq!(stats.durable.durable(), 5);
        assert_eq!(
            spool::Spool::<tick_core::Tick>::open(dir.path())
                .unwrap()
                .depth(),
            0
        );
    }

    #[tokio::test]
    async fn durability_stops_before_a_publication_that_failed_unspooled() {
        for (fail, durable) in [(0, 0), (2, 2), (4, 4), (9, 5)] {
            let ticks = (0..5)
                .map(|i| tick_core::testenv::tick("test", "EURUSD", 1_000 + i, 110_000))
                .collect();
            let stats = Arc::new(IngestStats::default());
            let producer = Arc::new(ScriptedProducer::new(usize::MAX, &[fail]));
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
