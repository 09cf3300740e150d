//! Warm start: before the indicators stage serves, it rebuilds its state from the recent
//! history still in Kafka, so a restarted pod answers with warm indicators at once instead of
//! after `period` new inputs.
//!
//! The history read is `[now - window, committed offset)` of each partition of the input topic
//! for the stage's consumer group: exactly the ticks the live consumer will not read again, so
//! no tick is fed twice. A partition the group never committed is skipped (a new group reads
//! the topic from its start anyway). Updates and signals computed during the warm-up were
//! published by the previous instance and are dropped. Bars are the exception: a bar the clock
//! closed is not tied to any input offset, so one closed just before a crash may never have
//! reached the `bars` topic. The bars closed in the last [`REPUBLISH_BARS`] of the history are
//! therefore returned, to be published again; storage keeps the first copy of each.

use crate::engine::Engine;
use std::collections::VecDeque;
use std::time::Duration;
use tick_core::Tick;
use tick_core::bus::Consumer;
use tick_core::pb;
use tick_core::shutdown::CancellationToken;
use tick_kafka::{Bound, KafkaArgs};

/// How far back, before the newest tick of the history, closed bars are published again.
pub const REPUBLISH_BARS: Duration = Duration::from_secs(300);

/// What a warm start read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WarmReport {
    /// Partitions with history to read.
    pub partitions: usize,
    /// Ticks fed to the engine.
    pub ticks: u64,
    /// Payloads that were not ticks (skipped).
    pub skipped: u64,
    /// Bars the history closed that end within [`REPUBLISH_BARS`] of its newest tick, in the
    /// order they closed: to publish again (the previous instance may have died first).
    pub bars: Vec<pb::Bar>,
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
    let horizon = REPUBLISH_BARS.as_nanos() as i64;
    let mut newest = i64::MIN;
    let mut bars = VecDeque::new();
    while let Some(d) = history.recv().await? {
        match Tick::decode(&d.payload) {
            Ok(t) => {
                newest = newest.max(t.ts_event_ns);
                // A partial first bar (the history began inside it) is not the bar the previous
                // instance published: never publish it again.
                bars.extend(
                    engine
                        .on_tick(t)
                        .bars
                        .into_iter()
                        .filter(|b| b.flags & crate::bars::FLAG_PARTIAL_FIRST == 0),
                );
                // Bars close in about event-time order: forget the old ones as we go.
                while bars
                    .front()
                    .is_some_and(|b: &pb::Bar| b.close_time_ns < newest - horizon)
                {
                    bars.pop_front();
                }
                report.ticks += 1;
            }
            Err(_) => report.skipped += 1,
        }
    }
    report.bars = bars
        .into_iter()
        .filter(|b| b.close_time_ns >= newest - horizon)
        .collect();
    Ok(report)
}
