//! Command-line configuration of the indicators engine and of the `indicators` binary.

use crate::bars::{PriceSide, Timeframe};
use crate::engine::EngineConfig;
use crate::indicator::IndicatorList;
use crate::rules::Rule;
use crate::service::{Hub, HubOptions, ServeOptions, SlowSubscriber};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

/// What the engine computes, and how subscribers are served.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Indicators computed per tick, comma-separated: sma(N), ema(N), wma(N), rsi(N),
    /// macd(F,S,G), bbands(N,K), atr(N), stoch(K,SK,SD), adx(N), cci(N), stddev(N), zscore(N),
    /// vwap or vwap(N), spread(N). With `@TIMEFRAME` (`rsi(14)@1m`, `atr(14)@100t`): per closed bar.
    #[arg(
        long,
        env = "TICKFLOW_INDICATORS",
        default_value = "sma(20),ema(12),ema(26),rsi(14)"
    )]
    pub indicators: IndicatorList,
    /// Signal rules, semicolon-separated, e.g. `rsi(14) crosses_below 30;ema(12) crosses_above ema(26)`.
    /// On bars: `rsi(14)@1m crosses_below 30` (both sides on one timeframe; evaluated at bar close).
    #[arg(
        long,
        env = "TICKFLOW_RULES",
        value_delimiter = ';',
        default_value = "rsi(14) crosses_below 30;rsi(14) crosses_above 70;ema(12) crosses_above ema(26);ema(12) crosses_below ema(26)"
    )]
    pub rules: Vec<Rule>,
    /// Bar timeframes, comma-separated: time bars (1s, 5m, 1h, 1d) or tick bars (100t).
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
    /// Resume window, slow-subscriber policy, auth and TLS of the gRPC server.
    #[command(flatten)]
    pub grpc: GrpcArgs,
}

impl EngineArgs {
    /// Returns the engine configuration these options describe.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            indicators: self.indicators.0.clone(),
            rules: self.rules.clone(),
            timeframes: self.timeframes.clone(),
            bar_side: self.bar_side,
            ..EngineConfig::default()
        }
    }

    /// Returns the subscriber hub these options describe.
    pub fn hub(&self) -> Arc<Hub> {
        Hub::with_options(HubOptions {
            queue: self.subscriber_queue,
            resume_window: self.grpc.resume_window,
            slow_subscriber: self.grpc.slow_subscriber,
        })
    }
}

/// How the gRPC server serves subscribers, and whom.
#[derive(Clone, clap::Args)]
pub struct GrpcArgs {
    /// Events retained so that a subscriber reconnecting with its last resume token receives
    /// what it missed (0: no resume).
    #[arg(long, env = "TICKFLOW_RESUME_WINDOW", default_value_t = 100_000)]
    pub resume_window: usize,
    /// What happens to a subscriber more than `--subscriber-queue` events behind: it loses the
    /// oldest and gets a gap event (drop-oldest), or its stream ends with RESOURCE_EXHAUSTED
    /// (disconnect; it may resume with its last token).
    #[arg(
        long,
        env = "TICKFLOW_SLOW_SUBSCRIBER",
        value_enum,
        default_value = "drop-oldest"
    )]
    pub slow_subscriber: SlowSubscriber,
    /// How long a `Subscribe` with `since_ns` waits at the seam between stored history and the
    /// live stream for the persister to store the ticks in between, before it reports those
    /// still missing with a `Gap` "history_incomplete".
    #[arg(long, env = "TICKFLOW_HISTORY_SEAM_WAIT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub history_seam_wait: std::time::Duration,
    /// Bearer token every SignalService call (`Subscribe`, `GetSnapshot`, `GetHistory`,
    /// `GetBars`) requires (metadata `authorization: Bearer <token>`); none: no authentication.
    #[arg(long, env = "TICKFLOW_GRPC_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// PEM certificate chain to serve gRPC over TLS with (needs `--tls-key`).
    #[arg(long, env = "TICKFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TICKFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for GrpcArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcArgs")
            .field("resume_window", &self.resume_window)
            .field("slow_subscriber", &self.slow_subscriber)
            .field("history_seam_wait", &self.history_seam_wait)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl GrpcArgs {
    /// Returns the server's transport options, reading the TLS files.
    pub fn serve_options(&self) -> anyhow::Result<ServeOptions> {
        let read = |p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("failed to read {}", p.display()))
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        Ok(ServeOptions {
            auth_token: self.auth_token.clone().filter(|t| !t.is_empty()),
            tls,
        })
    }
}
