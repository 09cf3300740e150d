//! `router`: validates `ticks.raw`, publishes clean ticks to `ticks.clean` and rejects with
//! their reason to `ticks.dlq`.

use clap::Parser;
use tick_ops::ProcessArgs;

/// tickflow router: the gate every tick passes. Reads `ticks.raw` (consumer group `router`),
/// publishes valid ticks to `ticks.clean` keyed by symbol and every reject, with its reason and
/// original payload, to `ticks.dlq`. Offsets are committed only after the output is confirmed.
#[derive(Debug, Parser)]
#[command(name = "router", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    config: router::RouterArgs,
}

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = args.process.start("router", 9102)?;
    let result = router::run(args.config, p.shutdown.clone(), p.health.clone()).await;
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
