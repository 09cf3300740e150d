//! Command-line configuration of the indicators engine and of the `indicators` binary.

use crate::bars::{PriceSide, Timeframe};
use crate::engine::EngineConfig;
use crate::indicator::IndicatorSpec;
use crate::rules::Rule;
use std::net::SocketAddr;
use std::time::Duration;
use tick_core::kafka::KafkaArgs;

/// What the engine computes, and how subscribers are served.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Indicators computed per tick, comma-separated (sma(N), ema(N), rsi(N)).
    #[arg(
        long,
        env = "TICKFLOW_INDICATORS",
        value_delimiter = ',',
        default_value = "sma(20),ema(12),ema(26),rsi(14)"
    )]
    pub indicators: Vec<IndicatorSpec>,
    /// Signal rules, semicolon-separated, e.g. `rsi(14) crosses_below 30;ema(12) crosses_above ema(26)`.
    #[arg(
        long,
        env = "TICKFLOW_RULES",
        value_delimiter = ';',
        default_value = "rsi(14) crosses_below 30;rsi(14) crosses_above 70;ema(12) crosses_above ema(26);ema(12) crosses_below ema(26)"
    )]
    pub rules: Vec<Rule>,
    /// Bar timeframes, comma-separated.
    #[arg(
        long,
        env = "TICKFLOW_TIMEFRAMES",
        value_delimiter = ',',
        default_value = "1s,1m"
    )]
    pub timeframes: Vec<Timeframe>,
    /// Price bars are built from: bid, ask or mid.
    #[arg(long, env = "TICKFLOW_BAR_SIDE", default_value = "bid")]
    pub bar_side: PriceSide,
    /// Events a gRPC subscriber may fall behind before it loses the oldest (and gets a gap event).
    #[arg(long, env = "TICKFLOW_SUBSCRIBER_QUEUE", default_value_t = 8192)]
    pub subscriber_queue: usize,
}

impl EngineArgs {
    /// Returns the engine configuration these options describe.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            indicators: self.indicators.clone(),
            rules: self.rules.clone(),
            timeframes: self.timeframes.clone(),
            bar_side: self.bar_side,
            ..EngineConfig::default()
        }
    }
}

/// Configuration of the `indicators` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct IndicatorsArgs {
    /// Address the gRPC SignalService listens on.
    #[arg(long, env = "TICKFLOW_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Redis URL for per-symbol snapshots (none: no snapshots in Redis).
    #[arg(long, env = "TICKFLOW_REDIS_URL")]
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
    /// Consumer group; pods of one group share the partitions (and so the symbols).
    #[arg(long, env = "TICKFLOW_GROUP", default_value = "indicators")]
    pub group: String,
    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}
