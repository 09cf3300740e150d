//! The replayer: plays history back. `replay_store` reads stored ticks in event-time order and
//! publishes them, flagged as replays, with their original spacing scaled by a speed.
//! [`import`] bulk loads history files into storage; [`gaps`] finds the open-market hours
//! storage lacks; [`export`] writes stored ticks and bars to Parquet.

pub mod export;
pub mod gaps;
pub mod import;
pub mod pacing;

use anyhow::Context;
use pacing::{Pacer, Speed};
use std::sync::Arc;
use tick_core::bus::Producer;
use tick_core::health::Health;
use tick_core::shutdown::CancellationToken;
use tick_core::store::HistoryReader;
use tick_kafka::KafkaArgs;
use tokio::time::Instant;

/// Parses an RFC 3339 time (`2026-01-05T10:00:00Z`) into UTC nanoseconds.
pub fn parse_time_ns(s: &str) -> Result<i64, String> {
    tick_core::clock::parse_rfc3339_ns(s)
}

/// Options of `replayer kafka`: disaster recovery from Kafka's retention.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaReplayArgs {
    /// Topic to read back.
    #[arg(long, default_value = tick_core::bus::topics::CLEAN)]
    pub topic: String,
    /// Start: an RFC 3339 time (resolved to an offset per partition) or an offset.
    #[arg(long)]
    pub from: tick_kafka::Bound,
    /// End (exclusive): an RFC 3339 time or an offset.
    #[arg(long)]
    pub to: tick_kafka::Bound,
    /// Destination: `store` (the `--store`; idempotent: rows already stored are skipped) or
    /// `topic:NAME`.
    #[arg(long, default_value = "store")]
    pub into: String,
    /// The store.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Storage batching.
    #[command(flatten)]
    pub batch: persister::BatchArgs,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// What `replayer kafka` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KafkaReplayReport {
    /// Messages read from the range.
    pub read: u64,
    /// Rows newly stored (`--into store`) or messages published (`--into topic:`).
    pub written: u64,
    /// Rows that were already stored.
    pub already_stored: u64,
}

/// Runs `replayer kafka`: reads a range of a topic back into storage or another topic.
pub async fn run_kafka(
    args: KafkaReplayArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<KafkaReplayReport> {
    let mut consumer = args
        .kafka
        .range_consumer(&args.topic, args.from, args.to, shutdown.clone())
        .await?;
    health.set_ready(true);
    let report = if args.into == "store" {
        let store = args.store.open().await?;
        let stats = Arc::new(persister::PersisterStats::default());
        persister::run_persister(
            Box::new(consumer),
            store.writer,
            args.batch.to_config(),
            persister::breaker::BreakerArgs::default(),
            persister::DeadLetters::Store,
            stats.clone(),
            shutdown,
        )
        .await?;
        use std::sync::atomic::Ordering::Relaxed;
        KafkaReplayReport {
            read: stats.received.load(Relaxed),
            written: stats.stored.load(Relaxed),
            already_stored: stats.duplicates.load(Relaxed),
        }
    } else {
        let topic = args
            .into
            .strip_prefix("topic:")
            .with_context(|| format!("--into {:?} must be store or topic:NAME", args.into))?;
        let producer = args.kafka.producer(false)?;
        let mut report = KafkaReplayReport::default();
        let mut receipts = Vec::new();
        while let Some(d) = tick_core::bus::Consumer::recv(&mut consumer).await? {
            report.read += 1;
            receipts.push(producer.send(topic, &d.key, d.payload).await?);
        }
        for r in receipts {
            r.await?;
            report.written += 1;
        }
        producer.flush().await?;
        report
    };
    tracing::info!(?report, "kafka replay finished");
    println!(
        "read {} messages of {}; {} written, {} already stored",
        report.read, args.topic, report.written, report.already_stored
    );
    Ok(report)
}

/// Options of `replayer store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreReplayArgs {
    /// The store to read from.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Symbols to replay, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Start of the event-time range (RFC 3339, inclusive).
    #[arg(long, value_parser = parse_time_ns)]
    pub from: i64,
    /// End of the event-time range (RFC 3339, exclusive).
    #[arg(long, value_parser = parse_time_ns)]
    pub to: i64,
    /// Playback speed: `1x` keeps the original spacing, `10x` is ten times faster, `max` as fast as possible.
    #[arg(long, default_value = "max")]
    pub speed: Speed,
    /// Destination, `topic:NAME` (e.g. `topic:ticks.raw` to run history through the pipeline).
    #[arg(long, default_value = "topic:ticks.raw")]
    pub into: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs `replayer store`: replays stored ticks into a Kafka topic.
pub async fn run_store(
    args: StoreReplayArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let topic = args
        .into
        .strip_prefix("topic:")
        .with_context(|| format!("--into {:?} must be topic:NAME", args.into))?
        .to_string();
    let store = args.store.open().await?.reader()?;
    let producer = args.kafka.producer(false)?;
    health.set_ready(true);
    let job = StoreReplay {
        symbols: args
            .symbols
            .iter()
            .map(|s| s.trim().to_uppercase())
            .collect(),
        from_ns: args.from,
        to_ns: args.to,
        speed: args.speed,
        topic,
    };
    let n = replay_store(store, Arc::new(producer), &job, shutdown).await?;
    tracing::info!(ticks = n, topic = %job.topic, "replay finished");
    println!("replayed {n} ticks into {}", job.topic);
    Ok(())
}

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
    store: Arc<dyn HistoryReader>,
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

/// Options of `replayer audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Topic whose ticks storage must hold.
    #[arg(long, default_value = tick_core::bus::topics::CLEAN)]
    pub topic: String,
    /// Start of the event-time range (RFC 3339, inclusive).
    #[arg(long, value_parser = parse_time_ns)]
    pub from: i64,
    /// End of the event-time range (RFC 3339, exclusive).
    #[arg(long, value_parser = parse_time_ns)]
    pub to: i64,
    /// How far message timestamps may trail or lead event times (the Kafka range read is
    /// widened by this much on both sides).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub margin: std::time::Duration,
    /// The store to audit.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// How many differing keys to print at most.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// What `replayer audit` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Distinct keys in the topic's range.
    pub in_kafka: usize,
    /// Distinct keys in storage's range.
    pub in_storage: usize,
    /// Order-independent checksum of the topic's keys (sum of 64-bit FNV-1a hashes).
    pub kafka_checksum: u64,
    /// The same checksum over storage's keys.
    pub storage_checksum: u64,
    /// Keys in Kafka but not stored.
    pub missing: Vec<String>,
    /// Keys stored but not in Kafka's range (for example written by a replay of another topic).
    pub extra: Vec<String>,
}

fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `replayer audit`: compares the idempotency keys of a range in Kafka and in storage,
/// the proof of exactly-once storage. Returns the report; differences are listed.
pub async fn run_audit(
    args: AuditArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<AuditReport> {
    use std::collections::HashSet;
    let margin_ms = args.margin.as_millis() as i64;
    let mut consumer = args
        .kafka
        .range_consumer(
            &args.topic,
            tick_kafka::Bound::TimeMs(args.from / 1_000_000 - margin_ms),
            tick_kafka::Bound::TimeMs(args.to / 1_000_000 + margin_ms),
            shutdown,
        )
        .await?;
    health.set_ready(true);
    let mut kafka_keys = HashSet::new();
    while let Some(d) = tick_core::bus::Consumer::recv(&mut consumer).await? {
        if let Ok(t) = tick_core::Tick::decode(&d.payload)
            && t.ts_event_ns >= args.from
            && t.ts_event_ns < args.to
        {
            kafka_keys.insert(t.key);
        }
    }
    let store = args.store.open().await?.reader()?;
    let stored: HashSet<String> = store
        .keys_between(args.from, args.to)
        .await?
        .into_iter()
        .collect();
    let sum = |s: &HashSet<String>| s.iter().fold(0u64, |a, k| a.wrapping_add(fnv1a(k)));
    let mut missing: Vec<String> = kafka_keys.difference(&stored).cloned().collect();
    let mut extra: Vec<String> = stored.difference(&kafka_keys).cloned().collect();
    missing.sort();
    extra.sort();
    let report = AuditReport {
        in_kafka: kafka_keys.len(),
        in_storage: stored.len(),
        kafka_checksum: sum(&kafka_keys),
        storage_checksum: sum(&stored),
        missing,
        extra,
    };
    println!(
        "kafka {} keys (checksum {:016x}), storage {} keys (checksum {:016x}): {} missing, {} extra",
        report.in_kafka,
        report.kafka_checksum,
        report.in_storage,
        report.storage_checksum,
        report.missing.len(),
        report.extra.len()
    );
    for k in report.missing.iter().take(args.show) {
        println!("missing {k}");
    }
    for k in report.extra.iter().take(args.show) {
        println!("extra   {k}");
    }
    Ok(report)
}
