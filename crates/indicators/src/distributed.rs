//! Distributed mode of the indicators stage (the `kafka` feature): its binary's options and the
//! `run` that wires the stage to Kafka, Redis and warm start from Kafka's history.

use super::*;
use crate::config::EngineArgs;
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tick_core::health::Health;
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;

/// Configuration of the `indicators` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct IndicatorsArgs {
    /// Address the gRPC SignalService listens on.
    #[arg(long, env = "TICKFLOW_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Redis URL for per-symbol snapshots (none: no snapshots in Redis):
    /// `redis://[[user]:password@]host:port[/db]`, or `rediss://...` for TLS.
    #[arg(long, env = "TICKFLOW_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Lifetime of a snapshot in Redis.
    #[arg(long, env = "TICKFLOW_SNAPSHOT_TTL", value_parser = humantime::parse_duration, default_value = "1h")]
    pub snapshot_ttl: Duration,
    /// Topic of clean ticks to compute from (another topic, e.g. one a `replayer store` writes,
    /// runs a backtest through a separate instance).
    #[arg(long, env = "TICKFLOW_INPUT_TOPIC", default_value = tick_core::bus::topics::CLEAN)]
    pub input_topic: String,
    /// Topic the signals are published to.
    #[arg(long, env = "TICKFLOW_SIGNALS_TOPIC", default_value = tick_core::bus::topics::SIGNALS)]
    pub signals_topic: String,
    /// Warm start: at start, rebuild indicator state from this much recent history of the
    /// input topic (up to the group's committed offsets) before serving; 0s turns it off.
    #[arg(long, env = "TICKFLOW_WARM_START", value_parser = humantime::parse_duration, default_value = "1h")]
    pub warm_start: Duration,
    /// Consumer group; pods of one group share the partitions (and so the symbols).
    #[arg(long, env = "TICKFLOW_GROUP", default_value = "indicators")]
    pub group: String,
    /// The store `GetHistory` and `GetBars` read (the persister's, read only: no migration);
    /// without `--store` those calls answer FAILED_PRECONDITION.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the indicators stage on Kafka: gRPC server, engine, signals topic and Redis snapshots,
/// until `shutdown` fires; then drains and ends every subscriber stream.
pub async fn run(
    cfg: IndicatorsArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let mut engine =
        Engine::new(cfg.engine.engine_config()).context("invalid indicator configuration")?;
    cfg.kafka.provision().await?;
    // Rebuild the indicators from the history this group already consumed, before serving.
    let mut warm_bars = Vec::new();
    if !cfg.warm_start.is_zero() {
        let started = std::time::Instant::now();
        let r = warm::from_kafka(
            &cfg.kafka,
            &cfg.input_topic,
            &cfg.group,
            cfg.warm_start,
            &mut engine,
            shutdown.clone(),
        )
        .await
        .context("warm start failed")?;
        tracing::info!(
            ticks = r.ticks,
            partitions = r.partitions,
            bars = r.bars.len(),
            elapsed = ?started.elapsed(),
            "warm start: indicators rebuilt from recent history"
        );
        warm_bars = r.bars;
    }
    let consumer = cfg
        .kafka
        .consumer(&cfg.group, &cfg.input_topic, shutdown.clone())
        .context("failed to create the consumer")?;
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    // Bars the previous instance may not have published (see `warm`); storage ignores copies.
    tick_core::bus::publish_all(
        &producer,
        topics::BARS,
        warm_bars
            .iter()
            .map(|b| (b.symbol.as_bytes(), b.encode_to_vec())),
    )
    .await
    .context("failed to publish the warm start's bars")?;
    let (snap_tx, snap_task) = match &cfg.redis_url {
        Some(url) => {
            let (tx, task) = snapshots::start_writer(url, cfg.snapshot_ttl)
                .await
                .context("failed to start the redis snapshot writer")?;
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let hub = cfg.engine.hub();
    let (query_tx, query_rx) = mpsc::channel(64);
    let mut service = service::Service::new(hub.clone(), query_tx).with_engine(
        cfg.engine.engine_config(),
        cfg.engine.grpc.history_seam_wait,
    );
    if let Some(url) = &cfg.store.store {
        let stores = url.connect(&cfg.store.options())?;
        tracing::info!(store = %url, "serving GetHistory, GetBars and Subscribe since_ns from the store");
        service = service.with_history(stores.reader()?);
    }
    let server =
        service::GrpcServer::start(cfg.grpc_addr, cfg.engine.grpc.serve_options()?, service)
            .await?;
    health.set_ready(true);
    let outputs = Outputs {
        producer: Some(Arc::new(producer)),
        signals_topic: Some(cfg.signals_topic.clone()),
        snapshots: snap_tx,
    };
    let stats = Arc::new(IndicatorStats::default());
    let result = run_indicators(Box::new(consumer), engine, hub, query_rx, outputs, stats).await;
    server.stop().await?;
    if let Some(t) = snap_task {
        let _ = t.await;
    }
    result
}
