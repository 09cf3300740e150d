//! `tickflow`: the whole pipeline in one process (`tickflow run`, the default), and the client
//! commands a user needs next to it.

use clap::{Parser, Subcommand};
use tick_core::telemetry::{self, LogFormat};
use tickflow::{bench, embedded, subscribe};

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

/// Real-time market-data pipeline for trading bots: ticks in, indicators and signals out over
/// gRPC, every tick stored exactly once.
#[derive(Debug, Parser)]
#[command(name = "tickflow", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "TICKFLOW_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every stage in this process on any source (the simulator by default), with gRPC and a
    /// SQLite file (the default command).
    Run(Box<embedded::RunArgs>),
    /// Subscribes to a running SignalService and prints each event with its latency.
    Subscribe(subscribe::SubscribeArgs),
    /// Measures tick-to-bot latency at a gRPC subscriber under a fixed-schedule feed
    /// (`embedded`, or `distributed` next to the bare Kafka floor); prints a table, writes JSON.
    Bench(bench::BenchArgs),
    /// Creates the tickflow Kafka topics that do not exist yet (built with the `kafka` feature).
    #[cfg(feature = "kafka")]
    Topics(tick_kafka::KafkaArgs),
    /// Prints the current state of one symbol from a running SignalService.
    Snapshot {
        /// The symbol, e.g. EURUSD.
        symbol: String,
        /// Server address.
        #[arg(long, env = "TICKFLOW_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Token and TLS.
        #[command(flatten)]
        connect: subscribe::ConnectArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    match cli.command {
        None => run(Cli::parse_from(["tickflow", "run"]).command).await,
        Some(c) => run(Some(c)).await,
    }
}

async fn run(command: Option<Command>) -> anyhow::Result<()> {
    match command {
        Some(Command::Run(args)) => {
            let shutdown = tick_core::shutdown::on_signals();
            let summary = embedded::run(*args, shutdown, |_| {}).await?;
            println!("{summary}");
            Ok(())
        }
        Some(Command::Subscribe(args)) => subscribe::subscribe(args).await,
        Some(Command::Snapshot {
            symbol,
            addr,
            connect,
        }) => subscribe::snapshot(addr, symbol, connect).await,
        Some(Command::Bench(args)) => bench::run(args).await,
        #[cfg(feature = "kafka")]
        Some(Command::Topics(kafka)) => {
            kafka.ensure_topics().await?;
            println!("topics ready on {}", kafka.brokers);
            Ok(())
        }
        None => unreachable!("main supplies the default command"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
