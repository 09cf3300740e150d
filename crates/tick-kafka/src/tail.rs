//! Reads `ticks.clean` back. [`read_partition`] is what the router uses: when it is assigned a
//! partition of `ticks.raw` it rebuilds that partition's de-duplication and numbering from the
//! same partition of `ticks.clean`, up to its end, before it reads the first raw tick of it.
//! [`follow_clean`] reads every partition and keeps following them (tests and tools that watch
//! the router's output; the router itself no longer reads its whole output back).

use crate::{KafkaArgs, partitions};
use anyhow::Context;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tick_core::Tick;
use tick_core::bus::topics;
use tick_core::shutdown::CancellationToken;
use tokio::sync::mpsc;

/// Reads the last `window` of `ticks.clean` to its current end and returns those ticks, plus
/// a channel that carries every later clean tick until `shutdown`.
pub async fn follow_clean(
    kafka: &KafkaArgs,
    window: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<(Vec<Tick>, mpsc::Receiver<Tick>)> {
    let mut initial = Vec::new();
    let (_, rx) = follow_clean_with(kafka, window, shutdown, |t| initial.push(t)).await?;
    Ok((initial, rx))
}

/// Like [`follow_clean`], but hands each tick of the window to `seen` as it is read instead of
/// collecting them (a busy window holds millions of ticks); returns how many it read.
pub async fn follow_clean_with(
    kafka: &KafkaArgs,
    window: Duration,
    shutdown: CancellationToken,
    mut seen: impl FnMut(Tick),
) -> anyhow::Result<(u64, mpsc::Receiver<Tick>)> {
    let group = format!(
        "router-tail-{}-{}",
        std::process::id(),
        tick_core::clock::now_ns()
    );
    let consumer: StreamConsumer = kafka
        .config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("fetch.wait.max.ms", "10"),
        ])?
        .create()
        .context("failed to create the clean-tail consumer")?;
    let consumer = Arc::new(consumer);
    let since_ms = (tick_core::clock::now_ns() / 1_000_000) - window.as_millis() as i64;
    // Right after the topic was created (a fresh cluster) its partitions may have no leader
    // yet: retry the positioning for a while instead of failing the router.
    let mut attempt = 0;
    let ends: HashMap<i32, i64> = loop {
        let c = consumer.clone();
        let positioned =
            tokio::task::spawn_blocking(move || -> anyhow::Result<HashMap<i32, i64>> {
                let partitions = partitions(&*c, topics::CLEAN, Duration::from_secs(30))?;
                let mut tpl = TopicPartitionList::new();
                for p in &partitions {
                    tpl.add_partition_offset(topics::CLEAN, *p, Offset::Offset(since_ms))?;
                }
                let starts = c.offsets_for_times(tpl, Duration::from_secs(30))?;
                let mut ends = HashMap::new();
                for e in starts.elements() {
                    let (_, high) =
                        c.fetch_watermarks(topics::CLEAN, e.partition(), Duration::from_secs(30))?;
                    if let Offset::Offset(o) = e.offset()
                        && o < high
                    {
                        ends.insert(e.partition(), high);
                    }
                }
                c.assign(&starts)?;
                Ok(ends)
            })
            .await?;
        match positioned {
            Ok(ends) => break ends,
            Err(e) if attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "cannot position on ticks.clean yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("failed to position on ticks.clean")),
        }
    };

    let mut initial = 0u64;
    let mut pending = ends;
    while !pending.is_empty() {
        let m = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "clean-tail read failed, retrying");
                continue;
            }
        };
        if let Some(t) = m.payload().and_then(|p| Tick::decode(p).ok()) {
            seen(t);
            initial += 1;
        }
        if pending
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            pending.remove(&m.partition());
        }
    }
    tracing::info!(
        ticks = initial,
        "rebuilt de-duplication state from ticks.clean"
    );

    let (tx, rx) = mpsc::channel(65_536);
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            if let Ok(m) = m
                && let Some(t) = m.payload().and_then(|p| Tick::decode(p).ok())
                && tx.send(t).await.is_err()
            {
                return;
            }
        }
    });
    Ok((initial, rx))
}

/// Reads partition `partition` of `topic` from its first message at or after `since_ms` (Kafka
/// timestamps, ms since the epoch) up to its end as of the call, handing each tick to `seen`;
/// returns how many it read. It joins no group and commits nothing.
pub async fn read_partition(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    since_ms: i64,
    shutdown: CancellationToken,
    mut seen: impl FnMut(Tick),
) -> anyhow::Result<u64> {
    let group = format!(
        "router-rebuild-{}-{}",
        std::process::id(),
        tick_core::clock::now_ns()
    );
    let consumer: StreamConsumer = kafka
        .config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("fetch.wait.max.ms", "10"),
            // A router rebuilds several partitions at once, each with a consumer of its own:
            // librdkafka's default prefetch (64 MiB per consumer) made a restart over a full
            // ticks.clean cost hundreds of MiB of RSS that the allocator keeps (593 MiB after a
            // benchmark). A small queue is enough when the fetcher does not back off for
            // librdkafka's default second whenever the queue is full: 5 ms here read 12.6
            // million ticks in 14.9 s (846,000/s), against 158,000/s with the default backoff.
            ("queued.max.messages.kbytes", "1024"),
            ("queued.min.messages", "10000"),
            ("fetch.queue.backoff.ms", "5"),
        ])?
        .create()
        .context("failed to create the rebuild consumer")?;
    let consumer = Arc::new(consumer);
    let mut attempt = 0;
    let end = loop {
        let c = consumer.clone();
        let t = topic.to_string();
        let positioned = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i64>> {
            let timeout = Duration::from_secs(30);
            let (_, high) = c.fetch_watermarks(&t, partition, timeout)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&t, partition, Offset::Offset(since_ms))?;
            let starts = c.offsets_for_times(tpl, timeout)?;
            let start = starts.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            match start {
                Some(o) if o < high => {
                    c.assign(&starts)?;
                    Ok(Some(high))
                }
                _ => Ok(None),
            }
        })
        .await?;
        match positioned {
            Ok(end) => break end,
            Err(e) if attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, topic, partition, "cannot position for the rebuild yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "failed to position on {topic} partition {partition}"
                )));
            }
        }
    };
    let Some(end) = end else { return Ok(0) };
    let mut n = 0u64;
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped during the rebuild"),
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, topic, partition, "rebuild read failed, retrying");
                continue;
            }
        };
        if m.partition() != partition {
            continue;
        }
        if let Some(t) = m.payload().and_then(|p| Tick::decode(p).ok()) {
            seen(t);
            n += 1;
        }
        if m.offset() + 1 >= end {
            return Ok(n);
        }
        // A queue that is never empty makes `recv` ready at once, every time: without this,
        // a rebuild would keep its runtime thread for seconds, and the partitions already
        // routing (and anything else on the runtime) would wait behind it.
        tokio::task::coop::consume_budget().await;
    }
}
