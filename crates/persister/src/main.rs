//! `persister`: stores every tick of `ticks.clean` exactly once in PostgreSQL.

use clap::Parser;
use tick_ops::ProcessArgs;

/// tickflow persister: reads `ticks.clean` (consumer group `persister`) and `ticks.dlq`
/// (group `persister-dlq`) and stores ticks and dead letters in PostgreSQL in batches, applying
/// migrations on start. Writes are idempotent on the tick's key and offsets are committed only
/// after the batch commits, so every tick is stored exactly once, across crashes and replays.
#[derive(Debug, Parser)]
#[command(name = "persister", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    config: persister::PersisterArgs,
}

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = args.process.start("persister", 9104)?;
    let result = persister::run(args.config, p.shutdown.clone(), p.health.clone()).await;
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
