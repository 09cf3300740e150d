//! `indicators`: computes bars, indicators and signals from `ticks.clean` and streams them to
//! bots over gRPC.

use clap::Parser;
use tick_ops::ProcessArgs;

/// tickflow indicators: reads `ticks.clean` (consumer group `indicators`), computes bars,
/// indicators and signal rules per symbol, streams them to bots over the gRPC SignalService
/// (with health and reflection), publishes signals to the `signals` topic and writes
/// per-symbol snapshots to Redis.
#[derive(Debug, Parser)]
#[command(name = "indicators", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    config: indicators::IndicatorsArgs,
}

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = args.process.start("indicators", 9103)?;
    let result = indicators::run(args.config, p.shutdown.clone(), p.health.clone()).await;
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
