//! The replayer: plays history back. `replay_store` reads stored ticks in event-time order and
//! publishes them, flagged as replays, with their original spacing scaled by a speed.

pub mod pacing;

use anyhow::Context;
use pacing::{Pacer, Speed};
use std::path::PathBuf;
use std::sync::Arc;
use tick_core::bus::Producer;
use tick_core::kafka::KafkaArgs;
use tick_core::ops::Health;
use tick_core::shutdown::CancellationToken;
use tick_core::store::TickStore;
use tokio::time::Instant;

/// Parses an RFC 3339 time (`2026-01-05T10:00:00Z`) into UTC nanoseconds.
pub fn parse_time_ns(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(d.as_nanos() as i64)
}

/// Options of `replayer kafka`: disaster recovery from Kafka's retention.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaReplayArgs {
    /// Topic to read back.
    #[arg(long, default_value = tick_core::bus::topics::CLEAN)]
    pub topic: String,
    /// Start: an RFC 3339 time (resolved to an offset per partition) or an offset.
    #[arg(long)]
    pub from: tick_core::kafka::Bound,
    /// End (exclusive): an RFC 3339 time or an offset.
    #[arg(long)]
    pub to: tick_core::kafka::Bound,
    /// Destination: `postgres` (idempotent: rows already stored are skipped) or `topic:NAME`.
    #[arg(long, default_value = "postgres")]
    pub into: String,
    /// PostgreSQL URL, for `--into postgres`.
    #[arg(long, env = "TICKFLOW_DATABASE_URL")]
    pub database_url: Option<String>,
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
    /// Rows newly stored (`--into postgres`) or messages published (`--into topic:`).
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
    let report = if args.into == "postgres" {
        let url = args
            .database_url
            .as_deref()
            .context("--into postgres needs --database-url")?;
        let store = persister::postgres::PgStore::connect(url, 2)?;
        store
            .migrate()
            .await
            .context("failed to migrate the database")?;
        let stats = Arc::new(persister::PersisterStats::default());
        persister::run_persister(
            Box::new(consumer),
            Arc::new(store),
            args.batch.to_config(),
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
            .with_context(|| format!("--into {:?} must be postgres or topic:NAME", args.into))?;
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
pub struct StoreArgs {
    /// PostgreSQL URL to read from.
    #[arg(long, env = "TICKFLOW_DATABASE_URL", conflicts_with = "db")]
    pub database_url: Option<String>,
    /// SQLite file (embedded mode's `tickflow.db`) to read from instead.
    #[arg(long, env = "TICKFLOW_DB")]
    pub db: Option<PathBuf>,
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
    args: StoreArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let topic = args
        .into
        .strip_prefix("topic:")
        .with_context(|| format!("--into {:?} must be topic:NAME", args.into))?
        .to_string();
    let store: Arc<dyn TickStore> = match (&args.database_url, &args.db) {
        (Some(url), _) => Arc::new(persister::postgres::PgStore::connect(url, 2)?),
        (None, Some(path)) => Arc::new(persister::sqlite::SqliteStore::open(path)?),
        (None, None) => anyhow::bail!("give --database-url or --db"),
    };
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
