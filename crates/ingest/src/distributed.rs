//! Distributed mode of ingest (the `kafka` feature): its binary's options and the `run` that
//! publishes a source to Kafka's `ticks.raw`, spooling to disk while Kafka does not confirm.

use super::*;
use tick_core::health::Health;
use tick_kafka::KafkaArgs;

/// Configuration of the `ingest` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestConfig {
    /// The source and its options.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Directory of the local spool used while Kafka does not confirm.
    #[arg(long, env = "TICKFLOW_SPOOL_DIR", default_value = "tickflow-spool")]
    pub spool_dir: std::path::PathBuf,
    /// How long a publication may stay unconfirmed before ingest starts spooling to disk.
    #[arg(long, env = "TICKFLOW_SPOOL_AFTER", value_parser = humantime::parse_duration, default_value = "2s")]
    pub spool_after: Duration,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the ingest stage against Kafka until the source ends or `shutdown` fires.
pub async fn run(
    cfg: IngestConfig,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    cfg.kafka.provision().await?;
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    let stats = Arc::new(IngestStats::default());
    let source = cfg.source.build(&shutdown, stats.durable.clone()).await?;
    let spool = spool::Spool::open(&cfg.spool_dir)
        .with_context(|| format!("failed to open the spool in {}", cfg.spool_dir.display()))?;
    if spool.depth() > 0 {
        tracing::warn!(
            ticks = spool.depth(),
            "spool holds ticks from an earlier run; they are sent first"
        );
    }
    health.set_ready(true);
    let dead_letters = spool::Spool::open(&cfg.spool_dir).with_context(|| {
        format!(
            "failed to open the dead-letter spool in {}",
            cfg.spool_dir.display()
        )
    })?;
    if dead_letters.depth() > 0 {
        tracing::warn!(
            dead_letters = dead_letters.depth(),
            "dead-letter spool holds records from an earlier run; they are sent first"
        );
    }
    let spooler = Spooler {
        spool,
        dead_letters,
        after: cfg.spool_after,
    };
    run_source(
        source,
        Arc::new(producer),
        stats,
        cfg.source.intake_token(&shutdown),
        Some(spooler),
    )
    .await
}
