//! `ingest`: reads ticks from a source and publishes them to the Kafka topic `ticks.raw`.

use clap::Parser;
use tick_ops::ProcessArgs;

/// tickflow ingest: reads ticks from a source (the seeded simulator), stamps their receipt time
/// and idempotency key, and publishes them to `ticks.raw` keyed by symbol.
#[derive(Debug, Parser)]
#[command(name = "ingest", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    config: ingest::IngestConfig,
}

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = args.process.start("ingest", 9101)?;
    let result = ingest::run(args.config, p.shutdown.clone(), p.health.clone()).await;
    p.finish(result).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
