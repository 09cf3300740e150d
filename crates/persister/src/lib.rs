//! The persister stage: reads `ticks.clean` and stores every tick exactly once, in batches
//! flushed by size or time; a message is acknowledged only after the batch holding it is
//! committed. It also stores `ticks.dlq` records so no reject is lost.

pub mod conformance;
pub mod postgres;
pub mod sqlite;

use anyhow::Context;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Consumer, DeliveryId, topics};
use tick_core::kafka::KafkaArgs;
use tick_core::ops::Health;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{DeadLetterRecord, StoreError, TickStore};
use tick_core::{Tick, pb};
use tokio::time::Instant;

/// When a batch is written.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Flush when this many rows are waiting.
    pub max_rows: usize,
    /// Flush when the oldest waiting row is this old.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// Batching options.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BatchArgs {
    /// Rows per storage batch.
    #[arg(long, env = "TICKFLOW_BATCH_ROWS", default_value_t = 1000)]
    pub batch_rows: usize,
    /// Longest a row waits before its batch is written.
    #[arg(long, env = "TICKFLOW_BATCH_DELAY", value_parser = humantime::parse_duration, default_value = "50ms")]
    pub batch_delay: Duration,
}

impl BatchArgs {
    /// Returns the batch configuration these options describe.
    pub fn to_config(self) -> BatchConfig {
        BatchConfig {
            max_rows: self.batch_rows.max(1),
            max_delay: self.batch_delay,
        }
    }
}

/// Configuration of the `persister` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct PersisterArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/tickflow.
    #[arg(long, env = "TICKFLOW_DATABASE_URL")]
    pub database_url: String,
    /// Database connections in the pool.
    #[arg(long, env = "TICKFLOW_DB_POOL_SIZE", default_value_t = 4)]
    pub pool_size: usize,
    /// Batching.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the persister on Kafka (groups `persister` for `ticks.clean` and `persister-dlq` for
/// `ticks.dlq`) and PostgreSQL until `shutdown` fires, then flushes and commits.
pub async fn run(
    cfg: PersisterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let store = postgres::PgStore::connect(&cfg.database_url, cfg.pool_size)?;
    // Wait for the database at start as the breaker would later: data waits in Kafka.
    with_retry(
        "database migration",
        &shutdown,
        &PersisterStats::default(),
        || store.migrate(),
    )
    .await
    .context("failed to migrate the database")?;
    let store: Arc<dyn TickStore> = Arc::new(store);
    if cfg.kafka.create_topics {
        cfg.kafka
            .ensure_topics()
            .await
            .context("failed to provision topics")?;
    }
    let clean = cfg
        .kafka
        .consumer("persister", topics::CLEAN, shutdown.clone())?;
    let dlq = cfg
        .kafka
        .consumer("persister-dlq", topics::DLQ, shutdown.clone())?;
    health.set_ready(true);
    let stats = Arc::new(PersisterStats::default());
    let batch = cfg.batch.to_config();
    // Shutdown stops intake at once; retries against a dead database get 20 s more, then give
    // up (the unacknowledged data stays in Kafka for the next start).
    let abort = CancellationToken::new();
    let a = abort.clone();
    let s = shutdown.clone();
    tokio::spawn(async move {
        s.cancelled().await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        a.cancel();
    });
    // If one branch fails the process must fail (and be restarted), not limp on half-working.
    tokio::try_join!(
        run_persister(
            Box::new(clean),
            store.clone(),
            batch,
            stats.clone(),
            abort.clone()
        ),
        run_dead_letters(Box::new(dlq), store, batch, stats.clone(), abort),
    )?;
    Ok(())
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
    /// Dead letters stored.
    pub dead_letters: AtomicU64,
}

struct Batch<T> {
    rows: Vec<T>,
    last: HashMap<i32, DeliveryId>,
    started: Option<Instant>,
}

impl<T> Batch<T> {
    fn new(cap: usize) -> Self {
        Self {
            rows: Vec::with_capacity(cap),
            last: HashMap::new(),
            started: None,
        }
    }

    fn note(&mut self, id: DeliveryId) {
        self.started.get_or_insert_with(Instant::now);
        let e = self.last.entry(id.partition).or_insert(id);
        if id.offset > e.offset {
            *e = id;
        }
    }

    fn deadline(&self, cfg: &BatchConfig) -> Instant {
        self.started
            .map_or_else(Instant::now, |s| s + cfg.max_delay)
    }

    fn is_pending(&self) -> bool {
        self.started.is_some()
    }

    /// Acknowledges everything the batch read (its rows are stored) and empties it.
    fn acknowledge(&mut self, consumer: &mut dyn Consumer) -> anyhow::Result<()> {
        for id in self.last.values() {
            consumer.ack(*id)?;
        }
        self.rows.clear();
        self.last.clear();
        self.started = None;
        Ok(())
    }
}

/// Retries a store write with exponential backoff while the database is unavailable; gives up
/// only when `abort` fires (the messages then stay unacknowledged, to be read again).
async fn with_retry<T, F, Fut>(
    what: &str,
    abort: &CancellationToken,
    stats: &PersisterStats,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed, retrying");
                tokio::select! {
                    _ = abort.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Stores every tick of `consumer` until its stream ends. `abort` stops retries of a failing
/// database (the unacknowledged messages stay on the bus).
pub async fn run_persister(
    mut consumer: Box<dyn Consumer>,
    store: Arc<dyn TickStore>,
    cfg: BatchConfig,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let mut batch: Batch<Tick> = Batch::new(cfg.max_rows);
    let mut bad: Vec<DeadLetterRecord> = Vec::new();
    loop {
        let deadline = batch.deadline(&cfg);
        let flush = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline), if batch.is_pending() => true,
            next = consumer.recv() => {
                let Some(d) = next? else { break };
                stats.received.fetch_add(1, Ordering::Relaxed);
                match Tick::decode(&d.payload) {
                    Ok(t) => batch.rows.push(t),
                    Err(e) => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "payload on {} is not a tick; storing it as a dead letter", d.topic);
                        bad.push(DeadLetterRecord {
                            reason: "malformed_payload".into(),
                            detail: e.to_string(),
                            payload: d.payload.clone(),
                            origin: d.topic.to_string(),
                            component: "persister".into(),
                            ts_rejected_ns: tick_core::clock::now_ns(),
                        });
                    }
                }
                batch.note(d.id);
                batch.rows.len() + bad.len() >= cfg.max_rows
            }
        };
        if flush {
            flush_ticks(
                &mut batch,
                &mut bad,
                consumer.as_mut(),
                store.as_ref(),
                &stats,
                &abort,
            )
            .await?;
        }
    }
    flush_ticks(
        &mut batch,
        &mut bad,
        consumer.as_mut(),
        store.as_ref(),
        &stats,
        &abort,
    )
    .await?;
    consumer.commit().await?;
    Ok(())
}

async fn flush_ticks(
    batch: &mut Batch<Tick>,
    bad: &mut Vec<DeadLetterRecord>,
    consumer: &mut dyn Consumer,
    store: &dyn TickStore,
    stats: &PersisterStats,
    abort: &CancellationToken,
) -> anyhow::Result<()> {
    if !batch.is_pending() {
        return Ok(());
    }
    if !batch.rows.is_empty() {
        let rows = &batch.rows;
        let new = match with_retry("tick batch write", abort, stats, || {
            store.insert_ticks(rows)
        })
        .await
        {
            Ok(n) => n,
            Err(StoreError::Data(e)) => isolate_bad_rows(rows, e, bad, store, stats, abort).await?,
            Err(e) => return Err(e.into()),
        };
        stats.stored.fetch_add(new, Ordering::Relaxed);
        metrics::counter!("tickflow_persister_rows_stored_total").increment(new);
        metrics::counter!("tickflow_persister_duplicates_total")
            .increment(rows.len() as u64 - new.min(rows.len() as u64));
        metrics::histogram!("tickflow_persister_batch_rows").record(rows.len() as f64);
        stats.duplicates.fetch_add(
            rows.len() as u64 - new.min(rows.len() as u64),
            Ordering::Relaxed,
        );
        stats.batches.fetch_add(1, Ordering::Relaxed);
    }
    if !bad.is_empty() {
        let n = with_retry("dead-letter write", abort, stats, || {
            store.insert_dead_letters(bad)
        })
        .await?;
        stats.dead_letters.fetch_add(n, Ordering::Relaxed);
        bad.clear();
    }
    batch.acknowledge(consumer)
}

/// Stores a batch the database refused row by row, so only the offending rows become dead
/// letters (with the database's error) and the rest is stored.
async fn isolate_bad_rows(
    rows: &[Tick],
    error: String,
    bad: &mut Vec<DeadLetterRecord>,
    store: &dyn TickStore,
    stats: &PersisterStats,
    abort: &CancellationToken,
) -> Result<u64, StoreError> {
    tracing::warn!(%error, rows = rows.len(), "batch refused by the database; isolating the bad rows");
    let mut new = 0;
    for t in rows {
        match with_retry("single-row write", abort, stats, || {
            store.insert_ticks(std::slice::from_ref(t))
        })
        .await
        {
            Ok(n) => new += n,
            Err(StoreError::Data(e)) => bad.push(DeadLetterRecord {
                reason: "store_rejected".into(),
                detail: e,
                payload: pb::Tick::from(t).encode_to_vec(),
                origin: tick_core::bus::topics::CLEAN.into(),
                component: "persister".into(),
                ts_rejected_ns: tick_core::clock::now_ns(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(new)
}

/// Stores every record of a `ticks.dlq` consumer until its stream ends.
pub async fn run_dead_letters(
    mut consumer: Box<dyn Consumer>,
    store: Arc<dyn TickStore>,
    cfg: BatchConfig,
    stats: Arc<PersisterStats>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let mut batch: Batch<DeadLetterRecord> = Batch::new(cfg.max_rows);
    loop {
        let deadline = batch.deadline(&cfg);
        let flush = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline), if batch.is_pending() => true,
            next = consumer.recv() => {
                let Some(d) = next? else { break };
                let record = match pb::DeadLetter::decode(d.payload.as_slice()) {
                    Ok(r) => DeadLetterRecord {
                        reason: r.reason,
                        detail: r.detail,
                        payload: r.payload,
                        origin: r.origin,
                        component: r.component,
                        ts_rejected_ns: r.ts_rejected_ns,
                    },
                    Err(e) => DeadLetterRecord {
                        reason: "malformed_dead_letter".into(),
                        detail: e.to_string(),
                        payload: d.payload.clone(),
                        origin: d.topic.to_string(),
                        component: "persister".into(),
                        ts_rejected_ns: tick_core::clock::now_ns(),
                    },
                };
                batch.rows.push(record);
                batch.note(d.id);
                batch.rows.len() >= cfg.max_rows
            }
        };
        if flush {
            flush_dead_letters(
                &mut batch,
                consumer.as_mut(),
                store.as_ref(),
                &stats,
                &abort,
            )
            .await?;
        }
    }
    flush_dead_letters(
        &mut batch,
        consumer.as_mut(),
        store.as_ref(),
        &stats,
        &abort,
    )
    .await?;
    consumer.commit().await?;
    Ok(())
}

async fn flush_dead_letters(
    batch: &mut Batch<DeadLetterRecord>,
    consumer: &mut dyn Consumer,
    store: &dyn TickStore,
    stats: &PersisterStats,
    abort: &CancellationToken,
) -> anyhow::Result<()> {
    if !batch.is_pending() {
        return Ok(());
    }
    let rows = &batch.rows;
    let n = with_retry("dead-letter write", abort, stats, || {
        store.insert_dead_letters(rows)
    })
    .await?;
    stats.dead_letters.fetch_add(n, Ordering::Relaxed);
    batch.acknowledge(consumer)
}
