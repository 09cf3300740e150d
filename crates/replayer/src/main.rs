//! `replayer`: plays stored history back into the pipeline.

use clap::{Parser, Subcommand};
use tick_ops::ProcessArgs;

/// tickflow replayer: plays history back. `kafka` reads a time or offset range of a topic back
/// into PostgreSQL (idempotently: disaster recovery) or another topic. `store` replays ticks
/// stored in PostgreSQL (or an embedded SQLite file) into a Kafka topic, flagged as replays, in
/// event-time order with the original spacing scaled by --speed: backtests through the live
/// pipeline. `import` bulk loads Dukascopy or CSV history straight into storage, resumably.
/// `gaps` lists the open-market hours storage lacks and whether Kafka still holds them.
/// `export parquet` writes stored ticks and bars to Parquet files by symbol and day.
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
    Store(replayer::StoreReplayArgs),
    /// Reads a range of a Kafka topic back into PostgreSQL or another topic (disaster recovery).
    Kafka(replayer::KafkaReplayArgs),
    /// Compares the idempotency keys of an event-time range in Kafka and in PostgreSQL; exits
    /// with status 1 when they differ.
    Audit(replayer::AuditArgs),
    /// Bulk loads history (Dukascopy hours, CSV files) into storage at full speed; resumable:
    /// finished units are recorded and skipped by a restarted run (--restart redoes them).
    /// Exits non-zero on a corrupt input file or when interrupted.
    Import(replayer::import::ImportArgs),
    /// Lists the hours in which the market was open but storage holds no tick, and whether
    /// Kafka still holds them. Exit status: 0 no gaps, 1 gaps found, 2 the check failed.
    Gaps(replayer::gaps::GapsArgs),
    /// Exports stored ticks and bars to files (Parquet, by symbol and UTC day) that pandas,
    /// polars and DuckDB read; resumable: days already exported are skipped (--restart
    /// rewrites them).
    Export(replayer::export::ExportArgs),
}

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let args = Args::parse();
    let p = args.process.start("replayer", 9105)?;
    if let Command::Gaps(a) = args.command {
        let result = replayer::gaps::run_gaps(a).await;
        let code = match &result {
            Ok(r) if r.gaps.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(_) => ExitCode::from(2),
        };
        // The error is logged by finish; the exit status tells it apart from "gaps found".
        let _ = p.finish(result.map(|_| ())).await;
        return Ok(code);
    }
    let result = match args.command {
        Command::Gaps(_) => unreachable!("handled above"),
        Command::Import(a) => match replayer::import::run_import(a, p.shutdown.clone()).await {
            Ok(r) if r.interrupted => Err(anyhow::anyhow!(
                "import interrupted after {} units; run the same command again to resume",
                r.units_done
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Export(a) => match replayer::export::run_export(a, p.shutdown.clone()).await {
            Ok(r) if r.interrupted => Err(anyhow::anyhow!(
                "export interrupted; run the same command again to resume"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
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
    p.finish(result).await.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
