//! Warm start: before the indicators stage serves, it rebuilds its state from the recent
//! history still in Kafka, so a restarted pod answers with warm indicators at once instead of
//! after `period` new inputs.
//!
//! The history read is `[now - window, committed offset)` of each partition of the input topic
//! for the stage's consumer group: exactly the ticks the live consumer will not read again, so
//! no tick is fed twice. A partition the group never committed is skipped (a new group reads
//! the topic from its start anyway). Outputs computed during the warm-up (updates, bars,
//! signals) were published by the previous instance and are dropped.

use crate::engine::Engine;
use std::time::Duration;
use tick_core::Tick;
use tick_core::bus::Consumer;
use tick_core::kafka::{Bound, KafkaArgs};
use tick_core::shutdown::CancellationToken;

/// What a warm start read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WarmReport {
    /// Partitions with history to read.
    pub partitions: usize,
    /// Ticks fed to the engine.
    pub ticks: u64,
    /// Payloads that were not ticks (skipped).
    pub skipped: u64,
}

/// Feeds `engine` the ticks of `topic` from `window` ago up to `group`'s committed offsets.
pub async fn from_kafka(
    kafka: &KafkaArgs,
    topic: &str,
    group: &str,
    window: Duration,
    engine: &mut Engine,
    shutdown: CancellationToken,
) -> anyhow::Result<WarmReport> {
    let ends = kafka.committed_offsets(group, topic).await?;
    let mut report = WarmReport {
        partitions: ends.len(),
        ..WarmReport::default()
    };
    if ends.is_empty() {
        return Ok(report);
    }
    let from_ms = tick_core::clock::now_ns() / 1_000_000 - window.as_millis() as i64;
    let mut history = kafka
        .range_consumer_to_offsets(topic, Bound::TimeMs(from_ms), ends, shutdown)
        .await?;
    while let Some(d) = history.recv().await? {
        match Tick::decode(&d.payload) {
            Ok(t) => {
                let _ = engine.on_tick(t);
                report.ticks += 1;
            }
            Err(_) => report.skipped += 1,
        }
    }
    Ok(report)
}
