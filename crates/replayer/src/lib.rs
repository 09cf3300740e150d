//! The replayer: plays history back. `replay_store` reads stored ticks in event-time order and
//! publishes them, flagged as replays, with their original spacing scaled by a speed.

pub mod pacing;

use pacing::{Pacer, Speed};
use std::sync::Arc;
use tick_core::bus::Producer;
use tick_core::shutdown::CancellationToken;
use tick_core::store::TickStore;
use tokio::time::Instant;

/// What to replay from storage.
#[derive(Debug, Clone)]
pub struct StoreReplay {
    /// Symbols to replay (all when empty).
    pub symbols: Vec<String>,
    /// Start of the event-time range, UTC ns (inclusive).
    pub from_ns: i64,
    /// End of the event-time range, UTC ns (exclusive).
    pub to_ns: i64,
    /// Playback speed.
    pub speed: Speed,
    /// Topic to publish to.
    pub topic: String,
}

/// Replays stored ticks to `producer`; returns how many were published.
pub async fn replay_store(
    store: Arc<dyn TickStore>,
    producer: Arc<dyn Producer>,
    job: &StoreReplay,
    shutdown: CancellationToken,
) -> anyhow::Result<u64> {
    let mut pacer = Pacer::new(job.speed);
    let start = Instant::now();
    let mut cursor = None;
    let mut sent = 0u64;
    loop {
        let page = store
            .ticks_between(&job.symbols, job.from_ns, job.to_ns, cursor.take(), 5_000)
            .await?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.ts_event_ns, last.key.clone()));
        let mut receipts = Vec::with_capacity(page.len());
        for mut tick in page {
            if let Some(delay) = pacer.due(tick.ts_event_ns) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(start + delay) => {}
                }
            }
            tick.replay = true;
            receipts.push(
                producer
                    .send(&job.topic, tick.symbol.as_bytes(), tick.encode())
                    .await?,
            );
            sent += 1;
        }
        for r in receipts {
            r.await?;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    producer.flush().await?;
    Ok(sent)
}
