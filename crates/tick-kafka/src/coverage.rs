//! What a topic's retention still holds of given hours, read-only: both ends of each hour
//! resolved to offsets per partition with `offsets_for_times` and compared with the partitions'
//! low watermarks (what `replayer gaps` reports next to the hours storage lacks).

use crate::KafkaArgs;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::time::Duration;
use tick_core::store::HOUR_NS;

/// What Kafka holds of one hour (by message timestamp, every partition of the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaCoverage {
    /// Nothing of the hour was deleted and it has messages: a replay restores it.
    Retained {
        /// Messages of the hour (all symbols).
        messages: i64,
    },
    /// Retention deleted the start of the hour; the rest is still there.
    Partial {
        /// Messages of the hour still held (all symbols).
        messages: i64,
    },
    /// Retention deleted the hour.
    Expired,
    /// Nothing of the hour was deleted, but the topic never held messages of it.
    Empty,
}

impl KafkaCoverage {
    /// Returns whether a replay of the hour from Kafka would bring ticks back.
    pub fn replayable(&self) -> bool {
        matches!(
            self,
            KafkaCoverage::Retained { .. } | KafkaCoverage::Partial { .. }
        )
    }
}

/// Returns what `topic` holds of each hour (start, UTC ns): both ends resolved to offsets per
/// partition with `offsets_for_times`, compared with the partition's low watermark. An hour
/// is intact in a partition when the log was never truncated or its oldest retained message
/// is older than the hour. Read-only: no group is joined, nothing is committed.
pub async fn kafka_coverage(
    kafka: &KafkaArgs,
    topic: &str,
    hours: &[i64],
) -> anyhow::Result<HashMap<i64, KafkaCoverage>> {
    let group = format!("replayer-gaps-{}", std::process::id());
    let consumer: BaseConsumer = kafka
        .config(&[("group.id", &group), ("enable.auto.commit", "false")])?
        .create()
        .context("failed to create a Kafka consumer")?;
    let (topic, hours) = (topic.to_string(), hours.to_vec());
    tokio::task::spawn_blocking(move || {
        let t = Duration::from_secs(30);
        let md = consumer
            .fetch_metadata(Some(&topic), t)
            .with_context(|| format!("failed to read the metadata of {topic}"))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|m| m.error().is_none())
            .flat_map(|m| m.partitions().iter().map(|p| p.id()))
            .collect();
        let mut marks = HashMap::new();
        for p in &parts {
            let w = consumer
                .fetch_watermarks(&topic, *p, t)
                .with_context(|| format!("failed to read the watermarks of {topic}/{p}"))?;
            marks.insert(*p, w);
        }
        // Offset of the first message at or after `ms` in each partition (the high watermark
        // when there is none).
        let resolve = |ms: i64| -> anyhow::Result<HashMap<i32, i64>> {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(ms))?;
            }
            let mut out = HashMap::new();
            for e in consumer.offsets_for_times(tpl, t)?.elements() {
                let (low, high) = marks[&e.partition()];
                let o = match e.offset() {
                    rdkafka::Offset::Offset(o) => o,
                    _ => high,
                };
                out.insert(e.partition(), o.clamp(low, high));
            }
            Ok(out)
        };
        let mut out = HashMap::new();
        for h in hours {
            let starts = resolve(h / 1_000_000)?;
            let ends = resolve((h + HOUR_NS) / 1_000_000)?;
            let mut messages = 0;
            let mut truncated = false;
            for p in &parts {
                let (low, _) = marks[p];
                let (s, e) = (starts[p], ends[p]);
                messages += (e - s).max(0);
                // The first retained message is at or after the hour's start, and older ones
                // were deleted: some of the hour may have gone with them.
                truncated |= low > 0 && s <= low;
            }
            let c = match (messages > 0, truncated) {
                (true, false) => KafkaCoverage::Retained { messages },
                (true, true) => KafkaCoverage::Partial { messages },
                (false, true) => KafkaCoverage::Expired,
                (false, false) => KafkaCoverage::Empty,
            };
            out.insert(h, c);
        }
        Ok(out)
    })
    .await?
}
