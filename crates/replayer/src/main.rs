//! `replayer`: plays stored history back into the pipeline.

use clap::{Parser, Subcommand};
use tick_core::ops::ProcessArgs;

/// tickflow replayer: plays history back. `kafka` reads a time or offset range of a topic back
/// into PostgreSQL (idempotently: disaster recovery) or another topic. `store` replays ticks
/// stored in PostgreSQL (or an embedded SQLite file) into a Kafka topic, flagged as replays, in
/// event-time order with the original spacing scaled by --speed: backtests through the live
/// pipeline.
#[derive(Debug, Parser)]
#[command(name = "replayer", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replays stored ticks into a topic.
    Store(replayer::StoreArgs),
    /// Reads a range of a Kafka topic back into PostgreSQL or another topic (disaster recovery).
    Kafka(replayer::KafkaReplayArgs),
    /// Compares the idempotency keys of an event-time range in Kafka and in PostgreSQL; exits
    /// with status 1 when they differ.
    Audit(replayer::AuditArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = args.process.start("replayer", 9105)?;
    let result = match args.command {
        Command::Store(a) => replayer::run_store(a, p.shutdown.clone(), p.health.clone()).await,
        Command::Kafka(a) => replayer::run_kafka(a, p.shutdown.clone(), p.health.clone())
            .await
            .map(|_| ()),
        Command::Audit(a) => {
            match replayer::run_audit(a, p.shutdown.clone(), p.health.clone()).await {
                Ok(r) if r.missing.is_empty() && r.extra.is_empty() => Ok(()),
                Ok(r) => Err(anyhow::anyhow!(
                    "audit found {} missing and {} extra keys",
                    r.missing.len(),
                    r.extra.len()
                )),
                Err(e) => Err(e),
            }
        }
    };
    p.finish(result).await
}
