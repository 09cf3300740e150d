//! The ingest stage: reads ticks from a [`source::TickSource`] and publishes each, keyed by
//! symbol, to `ticks.raw`.

pub mod sim;
pub mod source;

use source::TickSource;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tick_core::bus::{Producer, Receipt, topics};
use tick_core::shutdown::CancellationToken;

/// Counters of the ingest stage.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Ticks read from the source.
    pub received: AtomicU64,
    /// Ticks the bus confirmed.
    pub published: AtomicU64,
    /// Ticks the bus failed to accept.
    pub failed: AtomicU64,
}

/// Reads `source` until it is exhausted or `shutdown` fires, publishing every tick to
/// `ticks.raw`, then waits for every publication to be confirmed.
pub async fn run_source(
    mut source: Box<dyn TickSource>,
    producer: Arc<dyn Producer>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(1024);
    let mut pending: Vec<Receipt> = Vec::with_capacity(1024);
    loop {
        batch.clear();
        let more = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            r = source.next_batch(&mut batch) => r?,
        };
        stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for tick in &batch {
            let receipt = producer
                .send(topics::RAW, tick.symbol.as_bytes(), tick.encode())
                .await?;
            pending.push(receipt);
        }
        settle(&mut pending, &stats).await;
        if !more {
            break;
        }
    }
    producer.flush().await?;
    tracing::info!(
        source = source.name(),
        received = stats.received.load(Ordering::Relaxed),
        "ingest stopped"
    );
    Ok(())
}

async fn settle(pending: &mut Vec<Receipt>, stats: &IngestStats) {
    for r in pending.drain(..) {
        match r.await {
            Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::error!(error = %e, "publish to ticks.raw failed");
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
