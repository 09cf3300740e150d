//! Distributed mode of the router (the `kafka` feature): its binary's options and the `run`
//! that wires the stage to Kafka.

use super::*;
use anyhow::Context;
use tick_core::health::Health;
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;

/// Configuration of the `router` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Routing rules.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// Consumer group; router pods of one group share the partitions of `ticks.raw`.
    #[arg(long, env = "TICKFLOW_GROUP", default_value = "router")]
    pub group: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the router stage on Kafka (group `--group`, default `router`) until `shutdown` fires.
pub async fn run(
    cfg: RouterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let mut router = Router::new(cfg.rules.router_config()?);
    cfg.kafka.provision().await?;
    let (_, tail) =
        tail::follow_clean_with(&cfg.kafka, cfg.rules.dedup_window, shutdown.clone(), |t| {
            router.remember(&t)
        })
        .await?;
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    let consumer = cfg
        .kafka
        .consumer(&cfg.group, topics::RAW, shutdown.clone())
        .context("failed to create the consumer")?;
    health.set_ready(true);
    let stats = Arc::new(RouterStats::default());
    run_router(
        Box::new(consumer),
        Arc::new(producer),
        router,
        stats,
        Some(tail),
        false,
        shutdown.clone(),
    )
    .await
}
