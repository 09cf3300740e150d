//! The ingest stage: reads ticks from a [`source::TickSource`] and publishes each, keyed by
//! symbol, to `ticks.raw`.

pub mod sim;
pub mod source;

use anyhow::Context;
use sim::{SimConfig, SimSource, default_symbols};
use source::TickSource;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Producer, Receipt, topics};
use tick_core::kafka::KafkaArgs;
use tick_core::ops::Health;
use tick_core::shutdown::CancellationToken;

/// Options of the simulated feed.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Symbols to simulate, comma-separated (default: the first --symbol-count known symbols).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// How many known symbols to simulate when --symbols is not given.
    #[arg(long, env = "TICKFLOW_SYMBOL_COUNT", default_value_t = 10)]
    pub symbol_count: usize,
    /// Simulated ticks per second, over all symbols.
    #[arg(long, env = "TICKFLOW_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// Seed of the simulated feed (same seed, same prices).
    #[arg(long, env = "TICKFLOW_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Fraction of simulated ticks deliberately crossed, to see the reject path work.
    #[arg(long, env = "TICKFLOW_BAD_RATIO", default_value_t = 0.0)]
    pub bad_ratio: f64,
    /// Stop intake after this long (e.g. `10s`, `5m`); default: until shutdown.
    #[arg(long, env = "TICKFLOW_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop intake after this many ticks.
    #[arg(long, env = "TICKFLOW_MAX_TICKS")]
    pub max_ticks: Option<u64>,
}

impl SimArgs {
    /// Returns the simulator configuration these options describe.
    pub fn to_config(&self) -> SimConfig {
        let symbols = if self.symbols.is_empty() {
            default_symbols(self.symbol_count)
        } else {
            self.symbols
                .iter()
                .map(|s| s.trim().to_uppercase())
                .collect()
        };
        SimConfig {
            symbols,
            rate: self.rate,
            seed: self.seed,
            max_ticks: self.max_ticks,
            bad_ratio: self.bad_ratio,
        }
    }

    /// Returns a token that trips when `parent` does or when `--duration` has passed.
    pub fn intake_token(&self, parent: &CancellationToken) -> CancellationToken {
        let intake = parent.child_token();
        if let Some(d) = self.duration {
            let t = intake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                t.cancel();
            });
        }
        intake
    }
}

/// Which source the ingest binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The seeded simulator.
    Sim,
}

/// Configuration of the `ingest` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestConfig {
    /// The source to read.
    #[arg(long, env = "TICKFLOW_SOURCE", value_enum, default_value = "sim")]
    pub source: SourceKind,
    /// Simulator options.
    #[command(flatten)]
    pub sim: SimArgs,
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
    if cfg.kafka.create_topics {
        cfg.kafka
            .ensure_topics()
            .await
            .context("failed to provision topics")?;
    }
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    let source: Box<dyn TickSource> = match cfg.source {
        SourceKind::Sim => Box::new(SimSource::new(&cfg.sim.to_config())),
    };
    health.set_ready(true);
    let stats = Arc::new(IngestStats::default());
    run_source(
        source,
        Arc::new(producer),
        stats,
        cfg.sim.intake_token(&shutdown),
    )
    .await
}

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
        metrics::counter!("tickflow_ingest_ticks_received_total", "source" => source.name().to_string())
            .increment(batch.len() as u64);
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
                metrics::counter!("tickflow_ingest_publish_failed_total").increment(1);
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
