//! Embedded mode: every stage in one process, linked by in-memory channels, storing to a
//! SQLite file, serving gRPC. The stage code is the same the distributed binaries run.

use anyhow::Context;
use indicators::bars::{PriceSide, Timeframe};
use indicators::engine::{Engine, EngineConfig};
use indicators::indicator::IndicatorSpec;
use indicators::rules::Rule;
use indicators::service::{Hub, Service};
use ingest::sim::{SimConfig, SimSource, default_symbols};
use persister::BatchConfig;
use persister::sqlite::SqliteStore;
use router::core::{Router, RouterConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tick_core::bus::{MemoryBus, topics};
use tick_core::latency::{LatencySummary, fmt_ns};
use tick_core::shutdown::CancellationToken;
use tick_core::store::TickStore;

/// Options of `tickflow run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Symbols to simulate, comma-separated (default: the first --symbol-count known symbols).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// How many known symbols to simulate when --symbols is not given.
    #[arg(long, env = "TICKFLOW_SYMBOL_COUNT", default_value_t = 10)]
    pub symbol_count: usize,
    /// Simulated ticks per second, over all symbols.
    #[arg(long, env = "TICKFLOW_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// Seed of the simulated feed (same seed, same prices).
    #[arg(long, env = "TICKFLOW_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Fraction of simulated ticks deliberately crossed, to see the reject path work.
    #[arg(long, env = "TICKFLOW_BAD_RATIO", default_value_t = 0.0)]
    pub bad_ratio: f64,
    /// Stop intake after this long (e.g. `10s`, `5m`), drain and exit; default: until Ctrl-C.
    #[arg(long, env = "TICKFLOW_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop intake after this many ticks.
    #[arg(long, env = "TICKFLOW_MAX_TICKS")]
    pub max_ticks: Option<u64>,
    /// SQLite file the ticks are stored in.
    #[arg(long, env = "TICKFLOW_DB", default_value = "tickflow.db")]
    pub db: PathBuf,
    /// Address the gRPC SignalService listens on.
    #[arg(long, env = "TICKFLOW_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Seconds between status lines.
    #[arg(long, env = "TICKFLOW_STATUS_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub status_interval: Duration,
    /// Events a gRPC subscriber may fall behind before it loses the oldest (and gets a gap event).
    #[arg(long, env = "TICKFLOW_SUBSCRIBER_QUEUE", default_value_t = 8192)]
    pub subscriber_queue: usize,
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
    /// Rows per storage batch.
    #[arg(long, env = "TICKFLOW_BATCH_ROWS", default_value_t = 1000)]
    pub batch_rows: usize,
    /// Longest a row waits before its batch is written.
    #[arg(long, env = "TICKFLOW_BATCH_DELAY", value_parser = humantime::parse_duration, default_value = "50ms")]
    pub batch_delay: Duration,
}

impl RunArgs {
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

    fn sim_config(&self) -> SimConfig {
        let symbols = if self.symbols.is_empty() {
            default_symbols(self.symbol_count)
        } else {
            self.symbols
                .iter()
                .map(|s| s.trim().to_uppercase())
                .collect()
        };
        SimConfig {
            symbols,
            rate: self.rate,
            seed: self.seed,
            max_ticks: self.max_ticks,
            bad_ratio: self.bad_ratio,
        }
    }
}

/// What an embedded run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Wall time from start to the end of the drain.
    pub elapsed: Duration,
    /// Ticks the feed produced.
    pub ticks_in: u64,
    /// Ticks the router let through.
    pub clean: u64,
    /// Ticks the router rejected.
    pub rejected: u64,
    /// Rows newly stored by this run.
    pub stored: u64,
    /// Rows in the database file at the end.
    pub rows_in_db: u64,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Indicator updates published.
    pub updates: u64,
    /// Bars published.
    pub bars: u64,
    /// Signals published.
    pub signals: u64,
    /// Tick-to-update latency.
    pub latency: LatencySummary,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        writeln!(f, "tickflow summary ({:.1}s)", self.elapsed.as_secs_f64())?;
        writeln!(f, "  ticks in        {}", self.ticks_in)?;
        writeln!(f, "  routed clean    {}", self.clean)?;
        writeln!(
            f,
            "  rejected        {} (stored as dead letters: {})",
            self.rejected, self.dead_letters
        )?;
        writeln!(
            f,
            "  stored          {} new rows ({} rows in the database)",
            self.stored, self.rows_in_db
        )?;
        writeln!(
            f,
            "  updates         {} indicator updates, {} bars, {} signals",
            self.updates, self.bars, self.signals
        )?;
        write!(
            f,
            "  latency         tick->update p50 {} p99 {} p99.9 {} max {} ({} samples)",
            fmt_ns(l.p50),
            fmt_ns(l.p99),
            fmt_ns(l.p999),
            fmt_ns(l.max),
            l.count
        )
    }
}

/// Runs the whole pipeline until intake stops (duration, tick count or `shutdown`), drains every
/// stage in order and returns the summary. `on_listen` receives the bound gRPC address.
pub async fn run(
    args: RunArgs,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(SocketAddr),
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let engine = Engine::new(args.engine_config()).context("invalid indicator configuration")?;
    let store = SqliteStore::open(&args.db).context("failed to open the database")?;
    store
        .migrate()
        .await
        .context("failed to migrate the database")?;
    let store: Arc<dyn TickStore> = Arc::new(store);

    let bus = MemoryBus::new();
    let raw = bus.subscribe(topics::RAW, 65_536);
    let clean_rt = bus.subscribe(topics::CLEAN, 65_536);
    // The storage branch gets a deep queue so a slow disk never holds back the bots.
    let clean_store = bus.subscribe(topics::CLEAN, 1 << 20);
    let dlq = bus.subscribe(topics::DLQ, 65_536);

    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("failed to listen on {}", args.grpc_addr))?;
    let addr = listener.local_addr()?;
    on_listen(addr);
    let hub = Hub::new(args.subscriber_queue);
    let (snap_tx, snap_rx) = tokio::sync::mpsc::channel(64);
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(indicators::service::serve(
        listener,
        Service::new(hub.clone(), snap_tx),
        server_stop.clone(),
    ));
    tracing::info!(%addr, db = %args.db.display(), "tickflow embedded: gRPC SignalService listening");

    let ingest_stats = Arc::new(ingest::IngestStats::default());
    let router_stats = Arc::new(router::RouterStats::default());
    let ind_stats = Arc::new(indicators::IndicatorStats::default());
    let pers_stats = Arc::new(persister::PersisterStats::default());
    let batch = BatchConfig {
        max_rows: args.batch_rows.max(1),
        max_delay: args.batch_delay,
    };
    let abort = CancellationToken::new();

    let router_task = tokio::spawn(router::run_router(
        Box::new(raw),
        Arc::new(bus.producer()),
        Router::new(RouterConfig::default()),
        router_stats.clone(),
    ));
    let ind_task = tokio::spawn(indicators::run_indicators(
        Box::new(clean_rt),
        engine,
        hub.clone(),
        snap_rx,
        None,
        ind_stats.clone(),
    ));
    let pers_task = tokio::spawn(persister::run_persister(
        Box::new(clean_store),
        store.clone(),
        batch,
        pers_stats.clone(),
        abort.clone(),
    ));
    let dlq_task = tokio::spawn(persister::run_dead_letters(
        Box::new(dlq),
        store.clone(),
        batch,
        pers_stats.clone(),
        abort.clone(),
    ));

    let intake = shutdown.child_token();
    if let Some(d) = args.duration {
        let t = intake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    let mut ingest_task = tokio::spawn(ingest::run_source(
        Box::new(SimSource::new(&args.sim_config())),
        Arc::new(bus.producer()),
        ingest_stats.clone(),
        intake.clone(),
    ));

    // A status line every interval until intake stops.
    let mut ticker = tokio::time::interval(args.status_interval.max(Duration::from_millis(100)));
    ticker.tick().await;
    let (mut last_in, mut last_at) = (0, Instant::now());
    let ingest_result = loop {
        tokio::select! {
            r = &mut ingest_task => break r,
            _ = ticker.tick() => {}
        }
        let now_in = ingest_stats.received.load(Ordering::Relaxed);
        let rate = (now_in - last_in) as f64 / last_at.elapsed().as_secs_f64();
        (last_in, last_at) = (now_in, Instant::now());
        let l = ind_stats.latency.summary();
        println!(
            "[{:>6.1}s] in {:>7.0}/s | total {:>8} | stored {:>8} | rejected {:>5} | subscribers {} | tick->update p50 {} p99 {}",
            started.elapsed().as_secs_f64(),
            rate,
            now_in,
            pers_stats.stored.load(Ordering::Relaxed),
            router_stats.rejected_total(),
            hub.subscribers(),
            fmt_ns(l.p50),
            fmt_ns(l.p99),
        );
    };

    // Drain in pipeline order: intake, router, then the branches, then the server.
    ingest_result.context("ingest task panicked")??;
    bus.close(topics::RAW);
    router_task.await.context("router task panicked")??;
    bus.close(topics::CLEAN);
    bus.close(topics::DLQ);
    ind_task.await.context("indicators task panicked")??;
    pers_task.await.context("persister task panicked")??;
    dlq_task.await.context("dead-letter task panicked")??;
    server_stop.cancel();
    server.await.context("gRPC server panicked")??;

    Ok(Summary {
        elapsed: started.elapsed(),
        ticks_in: ingest_stats.received.load(Ordering::Relaxed),
        clean: router_stats.clean.load(Ordering::Relaxed),
        rejected: router_stats.rejected_total(),
        stored: pers_stats.stored.load(Ordering::Relaxed),
        rows_in_db: store.count_ticks().await?,
        dead_letters: pers_stats.dead_letters.load(Ordering::Relaxed),
        updates: ind_stats.updates.load(Ordering::Relaxed),
        bars: ind_stats.bars.load(Ordering::Relaxed),
        signals: ind_stats.signals.load(Ordering::Relaxed),
        latency: ind_stats.latency.summary(),
    })
}
