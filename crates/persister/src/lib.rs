//! The persister stage: reads `ticks.clean` and stores every tick exactly once, in batches
//! flushed by size or time; a message is acknowledged only after the batch holding it is
//! committed. It also stores `ticks.dlq` records so no reject is lost.

pub mod conformance;
pub mod sqlite;

use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Consumer, DeliveryId};
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
    for id in batch.last.values() {
        consumer.ack(*id)?;
    }
    batch.rows.clear();
    batch.last.clear();
    batch.started = None;
    Ok(())
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
    for id in batch.last.values() {
        consumer.ack(*id)?;
    }
    batch.rows.clear();
    batch.last.clear();
    batch.started = None;
    Ok(())
}
