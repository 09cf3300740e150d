//! Per-symbol snapshots in Redis, so a bot or dashboard that joins late sees the current state
//! at once. Written off the hot path by a task of its own; Redis is a cache, so a full queue or
//! an unreachable Redis loses snapshots, never ticks.

use prost::Message;
use std::time::Duration;
use tick_core::pb;
use tokio::sync::mpsc;

/// Returns the Redis key of a symbol's snapshot.
pub fn key(symbol: &str) -> String {
    format!("tickflow:snapshot:{symbol}")
}

/// Connects to Redis and returns the queue that feeds the writer task.
pub async fn start_writer(
    url: &str,
    ttl: Duration,
) -> anyhow::Result<(mpsc::Sender<Vec<pb::Snapshot>>, tokio::task::JoinHandle<()>)> {
    let client = redis::Client::open(url)?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let (tx, mut rx) = mpsc::channel::<Vec<pb::Snapshot>>(4);
    let ttl_s = ttl.as_secs().max(1);
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut pipe = redis::pipe();
            for s in &batch {
                pipe.set_ex(key(&s.symbol), s.encode_to_vec(), ttl_s)
                    .ignore();
            }
            let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            match r {
                Ok(()) => metrics::counter!("tickflow_indicators_snapshots_written_total")
                    .increment(batch.len() as u64),
                Err(e) => {
                    metrics::counter!("tickflow_indicators_snapshot_errors_total").increment(1);
                    tracing::warn!(error = %e, "failed to write snapshots to redis");
                }
            }
        }
    });
    Ok((tx, task))
}
