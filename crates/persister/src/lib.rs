//! The persister stage: reads `ticks.clean` and stores every tick exactly once, in batches
//! flushed by size or time; a message is acknowledged only after the batch holding it is
//! committed. It also stores `ticks.dlq` records so no reject is lost.

pub mod breaker;
#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
pub mod core;
pub mod stores;

// The stores, one registration line each (it also declares the module `src/<name>.rs`):
// `--store <prefix>...` then opens it in every binary.
crate::register_stores! {
    /// Embedded mode's SQLite file.
    sqlite => ["sqlite:"],
    /// PostgreSQL, distributed mode's store.
    postgres => ["postgres://", "postgresql://"],
}

#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
pub use distributed::{PersisterArgs, run};

use crate::core::Batch;
use anyhow::Context;
use breaker::{Breaker, BreakerArgs, BreakerState};
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{BusError, Consumer, Delivery, Producer, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::store::{DeadLetterRecord, StoreError, TickWriter};
use tick_core::{Tick, pb};
use tokio::time::Instant;

/// When a batch is written.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Flush when this many rows are waiting.
    pub max_rows: usize,
    /// Flush when the oldest waiting row is this old.
    pub max_delay: Duration,
    /// Batches written at once (each on its own database connection).
    pub writers: usize,
}

impl BatchConfig {
    /// Rows a new batch has room for: a batch grows past it only when the traffic fills it, so
    /// a quiet stream (bars, dead letters) never holds room for `max_rows`.
    fn initial_rows(&self) -> usize {
        self.max_rows.min(1024)
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_delay: Duration::from_millis(50),
            writers: 2,
        }
    }
}

/// Batching options.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BatchArgs {
    /// Rows per storage batch, at most. Below `batch-rows / batch-delay` ticks/s (200,000 with
    /// the defaults) a batch is whatever arrived within `--batch-delay`.
    #[arg(long, env = "TICKFLOW_BATCH_ROWS", default_value_t = 10_000)]
    pub batch_rows: usize,
    /// Longest a row waits before its batch is written.
    #[arg(long, env = "TICKFLOW_BATCH_DELAY", value_parser = humantime::parse_duration, default_value = "50ms")]
    pub batch_delay: Duration,
    /// Batches written concurrently, each on its own connection (acknowledged in order).
    #[arg(long, env = "TICKFLOW_BATCH_WRITERS", default_value_t = 2)]
    pub batch_writers: usize,
}

impl BatchArgs {
    /// Returns the batch configuration these options describe.
    pub fn to_config(self) -> BatchConfig {
        BatchConfig {
            max_rows: self.batch_rows.max(1),
            max_delay: self.batch_delay,
            writers: self.batch_writers.max(1),
        }
    }
}

/// Counters of the persister stage.
#[derive(Debug, Default)]
pub struct PersisterStats {
    /// Messages read.
    pub received: AtomicU64,
    /// Rows newly stored (duplicates excluded).
    pub stored: AtomicU64,
    /// Ticks already stored (replays, resends).
    pub duplicates: AtomicU64,
    /// Payloads that were not ticks, stored as dead letters instead.
    pub malformed: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Write attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Rows refused by the database and payloads that were not ticks, sent to the dead letters.
    pub dead_letters: AtomicU64,
    /// Records of `ticks.dlq` stored.
    pub dead_letters_stored: AtomicU64,
    /// Closed bars stored (new rows).
    pub bars_stored: AtomicU64,
}

impl PersisterStats {
    /// Returns the tick messages accounted for by an outcome: stored + duplicates + dead
    /// letters (refused rows and payloads that were not ticks). Equals `received` once every
    /// message read was written.
    pub fn accounted(&self) -> u64 {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        n(&self.stored) + n(&self.duplicates) + n(&self.dead_letters)
    }
}

/// One consumed stream and the breaker guarding its writes: messages received while the
/// breaker held intake paused wait in `held` and come first afterwards.
struct Intake {
    consumer: Box<dyn Consumer>,
    breaker: Breaker,
    held: VecDeque<Delivery>,
    ended: bool,
    stream: &'static str,
}

impl Intake {
    fn new(consumer: Box<dyn Consumer>, breaker: BreakerArgs, stream: &'static str) -> Self {
        metrics::gauge!("tickflow_persister_breaker_state", "stream" => stream).set(0.0);
        Self {
            consumer,
            breaker: Breaker::new(breaker),
            held: VecDeque::new(),
            ended: false,
            stream,
        }
    }

    /// The next message: held ones first, then the consumer; `None` once the stream ended.
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        if let Some(d) = self.held.pop_front() {
            return Ok(Some(d));
        }
        if self.ended {
            return Ok(None);
        }
        self.consumer.recv().await
    }

    /// A message that is already there (held, or fetched by the consumer), without waiting:
    /// after [`Intake::next`], the rest of a batch is taken in the same pass.
    fn try_next(&mut self) -> Result<Option<Delivery>, BusError> {
        if let Some(d) = self.held.pop_front() {
            return Ok(Some(d));
        }
        if self.ended {
            return Ok(None);
        }
        self.consumer.try_recv()
    }

    /// Hands `first`, then the messages already there, to `take` until it reports the batch
    /// full; returns whether it did. One pass of a stage's loop per batch under load, with no
    /// waiting when traffic is light.
    fn drain(
        &mut self,
        first: Delivery,
        mut take: impl FnMut(Delivery) -> bool,
    ) -> Result<bool, BusError> {
        let mut d = first;
        loop {
            if take(d) {
                return Ok(true);
            }
            match self.try_next()? {
                Some(more) => d = more,
                None => return Ok(false),
            }
        }
    }

    fn breaker_changed(&self) {
        metrics::gauge!("tickflow_persister_breaker_state", "stream" => self.stream)
            .set(self.breaker.state().gauge());
    }

    /// Runs a store write through the breaker: connection failures are retried, and after the
    /// threshold the consumer is paused and the database probed with backoff until it answers.
    /// A data error is returned at once; so is the last error when `abort` fires.
    async fn write<T, F, Fut>(
        &mut self,
        what: &str,
        abort: &CancellationToken,
        stats: &PersisterStats,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let stream = self.stream;
        loop {
            let started = Instant::now();
            match op().await {
                Ok(v) => {
                    metrics::histogram!("tickflow_persister_commit_seconds", "stream" => stream)
                        .record(started.elapsed().as_secs_f64());
                    if let Some(was) = self.breaker.on_success() {
                        tracing::info!(
                            stream,
                            from = was.as_str(),
                            "circuit breaker closed: the database answers again; resuming intake"
                        );
                        self.breaker_changed();
                        if let Err(e) = self.consumer.resume() {
                            tracing::warn!(error = %tick_core::error::chain(&e), stream, "failed to resume the consumer");
                        }
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    let probing = self.breaker.state() == BreakerState::HalfOpen;
                    let (wait, opened) = self.breaker.on_failure();
                    if probing {
                        tracing::warn!(error = %tick_core::error::chain(&e), stream, next_probe_in = ?wait, "circuit breaker probe failed; open again");
                        self.breaker_changed();
                    } else if opened {
                        tracing::error!(error = %tick_core::error::chain(&e), stream, next_probe_in = ?wait, "circuit breaker open: {what} keeps failing; pausing intake (the data waits in Kafka)");
                        metrics::counter!("tickflow_persister_breaker_opened_total", "stream" => stream).increment(1);
                        self.breaker_changed();
                        if let Err(e) = self.consumer.pause() {
                            tracing::warn!(error = %tick_core::error::chain(&e), stream, "failed to pause the consumer");
                        }
                    } else {
                        tracing::warn!(error = %tick_core::error::chain(&e), stream, retry_in = ?wait, state = self.breaker.state().as_str(), "{what} failed");
                    }
                    if self.wait(wait, abort).await {
                        return Err(e);
                    }
                    if self.breaker.before_attempt() {
                        tracing::info!(stream, "circuit breaker half-open: probing the database");
                        self.breaker_changed();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits `d` while still polling the consumer (so it stays in its group); returns whether
    /// `abort` fired.
    async fn wait(&mut self, d: Duration, abort: &CancellationToken) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                biased;
                _ = abort.cancelled() => return true,
                _ = tokio::time::sleep_until(until) => return false,
                r = self.consumer.recv(), if !self.ended => match r {
                    Ok(Some(m)) => self.held.push_back(m),
                    Ok(None) => self.ended = true,
                    Err(e) => {
                        tracing::warn!(error = %tick_core::error::chain(&e), stream = self.stream, "consumer error while waiting for the database");
                        tokio::select! {
                            _ = abort.cancelled() => return true,
                            _ = tokio::time::sleep_until(until) => return false,
                        }
                    }
                },
            }
        }
    }
}

/// Where the persister sends rows the database refused and payloads that are not ticks.
#[derive(Clone, Default)]
pub enum DeadLetters {
    /// Publish them to `ticks.dlq` (from where the dead-letter stream stores them).
    Topic(Arc<dyn Producer>),
    /// Store them directly.
    #[default]
    Store,
}

/// Stores every tick of `consumer` until its stream ends. `abort` stops retries of a failing
/// database (the unacknowledged messages stay on the bus).
pub async fn run_persister(
    consumer: Box<dyn Consumer>,
    store: Arc<dyn TickWriter>,
    cfg: BatchConfig,
    breaker: BreakerArgs,
    dead_letters: DeadLetters,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let mut intake = Intake::new(consumer, breaker, "ticks");
    let mut batch: Batch<Tick> = Batch::new(cfg.initial_rows());
    let mut bad: Vec<DeadLetterRecord> = Vec::new();
    let sink = TickSink {
        store: store.as_ref(),
        dead_letters: &dead_letters,
        stats: &stats,
        abort: &abort,
    };
    // Up to `cfg.writers` batches are written at once (each on its own connection) while the
    // next one fills: each write runs as a task, and batches are completed and acknowledged in
    // the order they were read. A write that fails is redone on the guarded path (retries,
    // breaker), which holds intake meanwhile.
    let mut in_flight: VecDeque<(Batch<Tick>, Vec<DeadLetterRecord>, WriteTask)> = VecDeque::new();
    loop {
        let deadline = batch.deadline(&cfg, Instant::now());
        let written = async {
            match in_flight.front_mut() {
                Some((_, _, task)) => task.await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            biased;
            done = written => Step::Written(done),
            _ = tokio::time::sleep_until(deadline), if batch.is_pending() => Step::Flush,
            next = intake.next() => {
                let Some(first) = next? else { break };
                let now = Instant::now();
                let full = intake.drain(first, |d| {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    match Tick::decode(&d.payload) {
                        Ok(t) => batch.rows.push(t),
                        Err(e) => {
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "payload on {} is not a tick; sending it to the dead letters", d.topic);
                            bad.push(rejected("malformed_payload", e.to_string(), d.payload.clone(), &d.topic));
                        }
                    }
                    batch.note(d.id, now);
                    batch.rows.len() + bad.len() >= cfg.max_rows
                })?;
                if full { Step::Flush } else { Step::Read }
            }
        };
        match step {
            Step::Read => {}
            Step::Written(done) => {
                let (mut b, mut bd, _) = in_flight.pop_front().expect("a write was in flight");
                sink.finish(&mut b, &mut bd, &mut intake, done).await?;
            }
            Step::Flush => {
                while in_flight.len() >= cfg.writers.max(1) {
                    let (mut b, mut bd, task) = in_flight.pop_front().expect("not empty");
                    sink.finish(&mut b, &mut bd, &mut intake, task.await)
                        .await?;
                }
                if intake.breaker.state() == BreakerState::Closed && !batch.rows.is_empty() {
                    let mut full = std::mem::replace(&mut batch, Batch::new(cfg.initial_rows()));
                    let rows = std::mem::take(&mut full.rows);
                    let store = store.clone();
                    let task = tokio::spawn(async move {
                        let started = Instant::now();
                        let r = store.insert_ticks(&rows).await;
                        if r.is_ok() {
                            metrics::histogram!("tickflow_persister_commit_seconds", "stream" => "ticks")
                                .record(started.elapsed().as_secs_f64());
                        }
                        (rows, r)
                    });
                    in_flight.push_back((full, std::mem::take(&mut bad), task));
                } else {
                    // The guarded path: earlier batches complete first, to keep acks in order.
                    while let Some((mut b, mut bd, task)) = in_flight.pop_front() {
                        sink.finish(&mut b, &mut bd, &mut intake, task.await)
                            .await?;
                    }
                    sink.flush(&mut batch, &mut bad, &mut intake, None).await?;
                }
            }
        }
    }
    while let Some((mut b, mut bd, task)) = in_flight.pop_front() {
        sink.finish(&mut b, &mut bd, &mut intake, task.await)
            .await?;
    }
    sink.flush(&mut batch, &mut bad, &mut intake, None).await?;
    intake.consumer.commit().await?;
    Ok(())
}

/// A batch write running as a task: it hands the rows back with the outcome.
type WriteTask = tokio::task::JoinHandle<(Vec<Tick>, Result<u64, StoreError>)>;

enum Step {
    Read,
    Flush,
    Written(Result<(Vec<Tick>, Result<u64, StoreError>), tokio::task::JoinError>),
}

struct TickSink<'a> {
    store: &'a dyn TickWriter,
    dead_letters: &'a DeadLetters,
    stats: &'a PersisterStats,
    abort: &'a CancellationToken,
}

impl TickSink<'_> {
    /// Completes a batch whose first write ran as a task.
    async fn finish(
        &self,
        batch: &mut Batch<Tick>,
        bad: &mut Vec<DeadLetterRecord>,
        intake: &mut Intake,
        done: Result<(Vec<Tick>, Result<u64, StoreError>), tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (rows, first) = done.context("batch write task failed")?;
        batch.rows = rows;
        if let Err(e) = &first {
            tracing::debug!(error = %tick_core::error::chain(&e), "batch write failed; redoing it on the guarded path");
        }
        self.flush(batch, bad, intake, Some(first)).await
    }

    /// Writes a batch (unless `first` already did), sends its refused rows and bad payloads to
    /// the dead letters, and acknowledges it. A connection failure is retried through the
    /// breaker; a data error isolates the refused rows.
    async fn flush(
        &self,
        batch: &mut Batch<Tick>,
        bad: &mut Vec<DeadLetterRecord>,
        intake: &mut Intake,
        first: Option<Result<u64, StoreError>>,
    ) -> anyhow::Result<()> {
        if !batch.is_pending() {
            return Ok(());
        }
        let stats = self.stats;
        if !batch.rows.is_empty() {
            let rows = &batch.rows;
            let attempt = match first {
                Some(Ok(n)) => Ok(n),
                Some(Err(StoreError::Data(e))) => Err(StoreError::Data(e)),
                _ => {
                    intake
                        .write("tick batch write", self.abort, stats, || {
                            self.store.insert_ticks(rows)
                        })
                        .await
                }
            };
            let bad_before = bad.len();
            let new = match attempt {
                Ok(n) => n,
                Err(StoreError::Data(e)) => {
                    self.isolate_bad_rows(rows, e.to_string(), bad, intake)
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            // Rows the database refused are dead letters, not duplicates.
            let refused = bad.len() - bad_before;
            let (new, dup) = crate::core::tally(rows.len() - refused, new);
            stats.stored.fetch_add(new, Ordering::Relaxed);
            stats.duplicates.fetch_add(dup, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tickflow_persister_rows_stored_total").increment(new);
            metrics::counter!("tickflow_persister_duplicates_total").increment(dup);
            metrics::histogram!("tickflow_persister_batch_rows").record(rows.len() as f64);
        }
        if !bad.is_empty() {
            let n = bad.len() as u64;
            match self.dead_letters {
                DeadLetters::Topic(producer) => {
                    let records = bad
                        .drain(..)
                        .map(|r| (r.reason.clone().into_bytes(), r.encode()))
                        .collect();
                    // Refused or undelivered dead letters are sent again; the batch is
                    // acknowledged only once all are confirmed.
                    tick_core::bus::publish_dead_letters(
                        producer.as_ref(),
                        records,
                        "persister",
                        self.abort,
                    )
                    .await
                    .context("failed to publish a dead letter")?;
                }
                DeadLetters::Store => {
                    intake
                        .write("dead-letter write", self.abort, stats, || {
                            self.store.insert_dead_letters(bad)
                        })
                        .await?;
                    bad.clear();
                }
            }
            stats.dead_letters.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("tickflow_persister_dead_letters_total").increment(n);
        }
        Ok(batch.acknowledge(intake.consumer.as_mut())?)
    }

    /// Stores a batch the database refused row by row, so only the offending rows become dead
    /// letters (with the database's error) and the rest is stored.
    async fn isolate_bad_rows(
        &self,
        rows: &[Tick],
        error: String,
        bad: &mut Vec<DeadLetterRecord>,
        intake: &mut Intake,
    ) -> Result<u64, StoreError> {
        tracing::warn!(%error, rows = rows.len(), "batch refused by the database; isolating the bad rows");
        let mut new = 0;
        for t in rows {
            match intake
                .write("single-row write", self.abort, self.stats, || {
                    self.store.insert_ticks(std::slice::from_ref(t))
                })
                .await
            {
                Ok(n) => new += n,
                Err(StoreError::Data(e)) => {
                    bad.push(rejected(
                        "store_rejected",
                        e.to_string(),
                        t.encode(),
                        topics::CLEAN,
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(new)
    }
}

/// A dead letter the persister itself writes: `payload` read from `origin` was refused.
fn rejected(reason: &str, detail: String, payload: Vec<u8>, origin: &str) -> DeadLetterRecord {
    DeadLetterRecord::new("persister", reason, detail, payload, origin)
}

/// A record of a secondary stream (dead letters, bars): how it is decoded and stored.
trait Record: Sized + Send + Sync {
    /// The stream's name in logs and metrics.
    const STREAM: &'static str;
    /// Decodes a message; `None` skips it (logged).
    fn decode(d: &Delivery) -> Option<Self>;
    /// Stores rows; returns how many were new.
    fn write<'a>(
        store: &'a dyn TickWriter,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<u64, StoreError>>;
    /// Counts stored rows.
    fn count(stats: &PersisterStats, n: u64);
}

impl Record for DeadLetterRecord {
    const STREAM: &'static str = "dead_letters";

    fn decode(d: &Delivery) -> Option<Self> {
        Some(match pb::DeadLetter::decode(d.payload.as_slice()) {
            Ok(r) => DeadLetterRecord::from(r),
            // Not lost either: stored as what it is.
            Err(e) => rejected(
                "malformed_dead_letter",
                e.to_string(),
                d.payload.clone(),
                &d.topic,
            ),
        })
    }

    fn write<'a>(
        store: &'a dyn TickWriter,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<u64, StoreError>> {
        store.insert_dead_letters(rows)
    }

    fn count(stats: &PersisterStats, n: u64) {
        stats.dead_letters_stored.fetch_add(n, Ordering::Relaxed);
    }
}

impl Record for pb::Bar {
    const STREAM: &'static str = "bars";

    fn decode(d: &Delivery) -> Option<Self> {
        match <pb::Bar as Message>::decode(d.payload.as_slice()) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, topic = %d.topic, "skipping a payload that is not a bar");
                None
            }
        }
    }

    fn write<'a>(
        store: &'a dyn TickWriter,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<u64, StoreError>> {
        store.insert_bars(rows)
    }

    fn count(stats: &PersisterStats, n: u64) {
        stats.bars_stored.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tickflow_persister_bars_stored_total").increment(n);
    }
}

/// Stores every record of a `ticks.dlq` consumer until its stream ends.
pub async fn run_dead_letters(
    consumer: Box<dyn Consumer>,
    store: Arc<dyn TickWriter>,
    cfg: BatchConfig,
    breaker: BreakerArgs,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    run_records::<DeadLetterRecord>(consumer, store, cfg, breaker, stats, abort).await
}

/// Stores every closed bar of a `bars` consumer until its stream ends.
pub async fn run_bars(
    consumer: Box<dyn Consumer>,
    store: Arc<dyn TickWriter>,
    cfg: BatchConfig,
    breaker: BreakerArgs,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    run_records::<pb::Bar>(consumer, store, cfg, breaker, stats, abort).await
}

async fn run_records<R: Record>(
    consumer: Box<dyn Consumer>,
    store: Arc<dyn TickWriter>,
    cfg: BatchConfig,
    breaker: BreakerArgs,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let mut intake = Intake::new(consumer, breaker, R::STREAM);
    let mut batch: Batch<R> = Batch::new(cfg.initial_rows());
    loop {
        let deadline = batch.deadline(&cfg, Instant::now());
        let flush = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline), if batch.is_pending() => true,
            next = intake.next() => {
                let Some(first) = next? else { break };
                let now = Instant::now();
                intake.drain(first, |d| {
                    if let Some(r) = R::decode(&d) {
                        batch.rows.push(r);
                    }
                    batch.note(d.id, now);
                    batch.rows.len() >= cfg.max_rows
                })?
            }
        };
        if flush {
            flush_records(&mut batch, &mut intake, store.as_ref(), &stats, &abort).await?;
        }
    }
    flush_records(&mut batch, &mut intake, store.as_ref(), &stats, &abort).await?;
    intake.consumer.commit().await?;
    Ok(())
}

async fn flush_records<R: Record>(
    batch: &mut Batch<R>,
    intake: &mut Intake,
    store: &dyn TickWriter,
    stats: &PersisterStats,
    abort: &CancellationToken,
) -> anyhow::Result<()> {
    if !batch.is_pending() {
        return Ok(());
    }
    if !batch.rows.is_empty() {
        let rows = &batch.rows;
        let what = format!("{} write", R::STREAM);
        let n = intake
            .write(&what, abort, stats, || R::write(store, rows))
            .await?;
        R::count(stats, n);
    }
    Ok(batch.acknowledge(intake.consumer.as_mut())?)
}
