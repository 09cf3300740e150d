//! The ingest stage: reads ticks from a [`source::TickSource`] and publishes each, keyed by
//! symbol, to `ticks.raw`.

pub mod csv;
pub mod dukascopy;
pub mod mt5;
pub mod oanda;
pub mod sim;
pub mod source;
pub mod spool;

use anyhow::Context;
use sim::{SimConfig, SimSource, default_symbols};
use source::TickSource;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Producer, Receipt, topics};
use tick_core::kafka::KafkaArgs;
use tick_core::ops::Health;
use tick_core::shutdown::CancellationToken;

/// Options of the simulated feed.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
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
    /// Stop intake after this long (e.g. `10s`, `5m`); default: until shutdown. The simulator
    /// then sends exactly rate x duration ticks on its schedule.
    #[arg(long, env = "TICKFLOW_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop intake after this many ticks.
    #[arg(long, env = "TICKFLOW_MAX_TICKS")]
    pub max_ticks: Option<u64>,
}

impl SimArgs {
    /// Returns the simulator configuration these options describe.
    pub fn to_config(&self) -> SimConfig {
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
            max_ticks: self.tick_budget(),
            bad_ratio: self.bad_ratio,
        }
    }

    /// How many ticks the feed sends: `--max-ticks`, or `--duration` worth at `--rate` (the
    /// fewer of the two), or unbounded. A duration is a tick count rather than a timer so that
    /// `--duration 10s --rate 1000` always means the same 10,000 ticks: a timer started beside
    /// the feed's own clock cut it one tick early or late.
    pub fn tick_budget(&self) -> Option<u64> {
        // The epsilon keeps 1000/s x 10 s at 10,000 despite floating-point rounding; flooring
        // never schedules a tick after the duration has ended.
        let by_time = self
            .duration
            .map(|d| (self.rate.max(0.0) * d.as_secs_f64() + 1e-6).floor() as u64);
        match (self.max_ticks, by_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Returns a token that trips when `parent` does or when `--duration` has passed. The
    /// simulator ends by itself after [`SimArgs::tick_budget`] ticks, on its schedule; for it the
    /// timer is only a backstop, at twice the duration plus 10 s, should the pipeline hold the
    /// feed back that long.
    pub fn intake_token(
        &self,
        source: SourceKind,
        parent: &CancellationToken,
    ) -> CancellationToken {
        let intake = parent.child_token();
        let deadline = self.duration.map(|d| match source {
            SourceKind::Sim => d * 2 + Duration::from_secs(10),
            _ => d,
        });
        if let Some(d) = deadline {
            let t = intake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                t.cancel();
            });
        }
        intake
    }
}

/// Which source the ingest binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The seeded simulator.
    Sim,
    /// Dukascopy `.bi5` history from a directory in Dukascopy's layout.
    Dukascopy,
    /// A CSV tick file (MT5 export or plain).
    Csv,
    /// MetaTrader 5 terminals running the TickflowStreamer expert advisor.
    Mt5,
    /// The OANDA v20 pricing stream.
    Oanda,
}

/// Options of the OANDA v20 pricing stream.
#[derive(Debug, Clone, clap::Args)]
pub struct OandaArgs {
    /// Streaming API base URL.
    #[arg(
        long,
        env = "TICKFLOW_OANDA_URL",
        default_value = "https://stream-fxpractice.oanda.com"
    )]
    pub oanda_url: String,
    /// Account id.
    #[arg(long, env = "TICKFLOW_OANDA_ACCOUNT", default_value = "")]
    pub oanda_account: String,
    /// API token.
    #[arg(
        long,
        env = "TICKFLOW_OANDA_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub oanda_token: String,
    /// Instruments in OANDA's spelling, comma-separated (EUR_USD,USD_JPY).
    #[arg(
        long,
        env = "TICKFLOW_OANDA_INSTRUMENTS",
        value_delimiter = ',',
        default_value = "EUR_USD"
    )]
    pub oanda_instruments: Vec<String>,
    /// Reconnect when heartbeats continue but no price came for this long.
    #[arg(long, env = "TICKFLOW_OANDA_PRICE_STALL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub oanda_price_stall: Duration,
}

/// Options of the MetaTrader 5 listener.
#[derive(Debug, Clone, clap::Args)]
pub struct Mt5Args {
    /// Address the EAs connect to.
    #[arg(long, env = "TICKFLOW_MT5_LISTEN", default_value = "0.0.0.0:5555")]
    pub mt5_listen: std::net::SocketAddr,
    /// Token every EA must present (required with --source mt5).
    #[arg(
        long,
        env = "TICKFLOW_MT5_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub mt5_token: String,
    /// Most simultaneous terminal connections.
    #[arg(long, env = "TICKFLOW_MT5_MAX_CONNECTIONS", default_value_t = 64)]
    pub mt5_max_connections: usize,
    /// Longest accepted line, in bytes.
    #[arg(long, env = "TICKFLOW_MT5_MAX_LINE", default_value_t = 4096)]
    pub mt5_max_line: usize,
}

/// Options of the file sources (Dukascopy history, CSV).
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Dukascopy: root directory holding SYMBOL/YYYY/MM/DD/HHh_ticks.bi5 (zero-based months).
    #[arg(long, env = "TICKFLOW_DUKASCOPY_DIR")]
    pub dukascopy_dir: Option<std::path::PathBuf>,
    /// Dukascopy: base URL of the same layout to download from instead of a directory.
    #[arg(long, env = "TICKFLOW_DUKASCOPY_URL", conflicts_with = "dukascopy_dir")]
    pub dukascopy_url: Option<String>,
    /// Dukascopy: start of the range (RFC 3339).
    #[arg(long, env = "TICKFLOW_FROM")]
    pub from: Option<String>,
    /// Dukascopy: end of the range (RFC 3339, exclusive).
    #[arg(long, env = "TICKFLOW_TO")]
    pub to: Option<String>,
    /// Dukascopy: playback speed as a multiple of real time (default: as fast as possible).
    #[arg(long, env = "TICKFLOW_SPEED")]
    pub speed: Option<f64>,
    /// CSV: the file.
    #[arg(long, env = "TICKFLOW_CSV_FILE")]
    pub csv_file: Option<std::path::PathBuf>,
    /// CSV: its dialect.
    #[arg(long, env = "TICKFLOW_CSV_FORMAT", value_enum, default_value = "plain")]
    pub csv_format: csv::CsvFormat,
    /// CSV: the symbol of its ticks.
    #[arg(long, env = "TICKFLOW_CSV_SYMBOL")]
    pub csv_symbol: Option<String>,
    /// CSV: hours to subtract from the file's times to get UTC (MT5 exports server time).
    #[arg(
        long,
        env = "TICKFLOW_CSV_UTC_OFFSET_HOURS",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub csv_utc_offset_hours: f64,
}

fn rfc3339_ns(what: &str, s: &Option<String>) -> anyhow::Result<i64> {
    let s = s
        .as_deref()
        .with_context(|| format!("--{what} is required"))?;
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("--{what} {s:?} is not RFC 3339"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64)
}

impl FileArgs {
    /// Returns the source these options describe, for the given kind.
    pub fn source(
        &self,
        kind: SourceKind,
        symbols: &[String],
    ) -> anyhow::Result<Box<dyn TickSource>> {
        Ok(match kind {
            SourceKind::Sim | SourceKind::Mt5 | SourceKind::Oanda => {
                anyhow::bail!("{kind:?} is not a file source")
            }
            SourceKind::Dukascopy => {
                let location = match (&self.dukascopy_dir, &self.dukascopy_url) {
                    (Some(d), _) => dukascopy::Location::Dir(d.clone()),
                    (None, Some(u)) => dukascopy::Location::Url(u.clone()),
                    (None, None) => anyhow::bail!("--dukascopy-dir or --dukascopy-url is required"),
                };
                anyhow::ensure!(!symbols.is_empty(), "--symbols is required for dukascopy");
                for s in symbols {
                    dukascopy::point_scale(s)
                        .with_context(|| format!("no Dukascopy point factor for {s}"))?;
                }
                Box::new(dukascopy::DukascopySource::new(
                    location,
                    symbols.to_vec(),
                    rfc3339_ns("from", &self.from)?,
                    rfc3339_ns("to", &self.to)?,
                    self.speed,
                ))
            }
            SourceKind::Csv => {
                let file = self.csv_file.clone().context("--csv-file is required")?;
                let symbol = self
                    .csv_symbol
                    .clone()
                    .context("--csv-symbol is required")?;
                let parser = csv::CsvParser::new(
                    self.csv_format,
                    &symbol.to_uppercase(),
                    "csv",
                    (self.csv_utc_offset_hours * 3.6e12) as i64,
                );
                Box::new(csv::CsvSource::open(&file, parser)?)
            }
        })
    }
}

/// Configuration of the `ingest` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestConfig {
    /// The source to read.
    #[arg(long, env = "TICKFLOW_SOURCE", value_enum, default_value = "sim")]
    pub source: SourceKind,
    /// Simulator options.
    #[command(flatten)]
    pub sim: SimArgs,
    /// File source options.
    #[command(flatten)]
    pub files: FileArgs,
    /// MetaTrader 5 options.
    #[command(flatten)]
    pub mt5: Mt5Args,
    /// OANDA options.
    #[command(flatten)]
    pub oanda: OandaArgs,
    /// Directory of the local spool used while Kafka does not confirm.
    #[arg(long, env = "TICKFLOW_SPOOL_DIR", default_value = "tickflow-spool")]
    pub spool_dir: std::path::PathBuf,
    /// How long a publication may stay unconfirmed before ingest starts spooling to disk.
    #[arg(long, env = "TICKFLOW_SPOOL_AFTER", value_parser = humantime::parse_duration, default_value = "2s")]
    pub spool_after: Duration,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the ingest stage against Kafka until the source ends or `shutdown` fires.
pub async fn run(
    cfg: IngestConfig,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    if cfg.kafka.create_topics {
        cfg.kafka
            .ensure_topics()
            .await
            .context("failed to provision topics")?;
    }
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    let stats = Arc::new(IngestStats::default());
    let source: Box<dyn TickSource> = match cfg.source {
        SourceKind::Sim => Box::new(SimSource::new(&cfg.sim.to_config())),
        SourceKind::Mt5 => {
            let listener = tokio::net::TcpListener::bind(cfg.mt5.mt5_listen)
                .await
                .with_context(|| format!("failed to listen on {} for MT5", cfg.mt5.mt5_listen))?;
            anyhow::ensure!(!cfg.mt5.mt5_token.is_empty(), "--mt5-token is required");
            let src = mt5::Mt5Source::start(
                listener,
                mt5::Mt5Config {
                    token: cfg.mt5.mt5_token.clone(),
                    max_line: cfg.mt5.mt5_max_line,
                    max_connections: cfg.mt5.mt5_max_connections,
                    ..mt5::Mt5Config::default()
                },
                stats.durable.clone(),
                shutdown.clone(),
            )?;
            tracing::info!(addr = %src.local_addr, "listening for MetaTrader 5 terminals");
            Box::new(src)
        }
        SourceKind::Oanda => {
            anyhow::ensure!(
                !cfg.oanda.oanda_token.is_empty() && !cfg.oanda.oanda_account.is_empty(),
                "--oanda-token and --oanda-account are required"
            );
            Box::new(oanda::OandaSource::start(oanda::OandaConfig {
                base_url: cfg.oanda.oanda_url.clone(),
                account: cfg.oanda.oanda_account.clone(),
                token: cfg.oanda.oanda_token.clone(),
                instruments: cfg.oanda.oanda_instruments.clone(),
                silence: Duration::from_secs(10),
                price_stall: cfg.oanda.oanda_price_stall,
                max_backoff: Duration::from_secs(30),
            })?)
        }
        other => cfg.files.source(other, &cfg.sim.to_config().symbols)?,
    };
    let spool = spool::Spool::open(&cfg.spool_dir)
        .with_context(|| format!("failed to open the spool in {}", cfg.spool_dir.display()))?;
    if spool.depth() > 0 {
        tracing::warn!(
            ticks = spool.depth(),
            "spool holds ticks from an earlier run; they are sent first"
        );
    }
    health.set_ready(true);
    let spooler = Spooler {
        spool,
        after: cfg.spool_after,
    };
    run_source(
        source,
        Arc::new(producer),
        stats,
        cfg.sim.intake_token(cfg.source, &shutdown),
        Some(spooler),
    )
    .await
}

/// The spool and when to use it.
pub struct Spooler {
    /// The spool file.
    pub spool: spool::Spool,
    /// Unconfirmed for this long means the bus is down.
    pub after: Duration,
}

struct Pending {
    sent: tokio::time::Instant,
    receipt: Receipt,
    tick: Option<tick_core::Tick>,
    /// Position of the tick in the source's output (for DLQ records: the next position).
    index: u64,
}

/// Counters of the ingest stage.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Ticks read from the source.
    pub received: AtomicU64,
    /// Ticks the bus confirmed.
    pub published: AtomicU64,
    /// Ticks the bus failed to accept.
    pub failed: AtomicU64,
    /// Inputs the source could not parse (sent to `ticks.dlq`).
    pub rejected: AtomicU64,
    /// How many of the source's ticks, counted in the order the source produced them, are
    /// durable (confirmed by the bus or spooled) without a gap: what MT5 acknowledgements follow.
    pub durable: Arc<AtomicU64>,
}

/// Reads `source` until it is exhausted or `shutdown` fires, publishing every tick to
/// `ticks.raw`. With a spooler, ticks go to the local spool while the bus stops confirming and
/// are drained in order when it answers again; nothing received is dropped.
pub async fn run_source(
    mut source: Box<dyn TickSource>,
    producer: Arc<dyn Producer>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    mut spooler: Option<Spooler>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(1024);
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    let mut spooling = spooler.as_ref().is_some_and(|s| s.spool.depth() > 0);
    let mut emitted = 0u64;
    let mut feed = FeedWatch::new(source.name());
    let mut next_probe = tokio::time::Instant::now();
    loop {
        batch.clear();
        let more = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            r = source.next_batch(&mut batch) => r?,
            // Wake up to take confirmations even when the source is quiet, so durability
            // (and MT5 acknowledgements) advance without waiting for the next tick.
            _ = tokio::time::sleep(if pending.is_empty() && !spooling {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(20)
            }) => true,
        };
        stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        feed.saw(&batch);
        feed.report(
            spooler
                .as_ref()
                .filter(|_| spooling)
                .map(|s| s.spool.depth()),
        );
        metrics::counter!("tickflow_ingest_ticks_received_total", "source" => source.name().to_string())
            .increment(batch.len() as u64);
        match (&mut spooler, spooling) {
            (Some(sp), true) => {
                sp.spool
                    .append(&batch)
                    .context("failed to write the spool")?;
                emitted += batch.len() as u64;
                metrics::counter!("tickflow_ingest_spooled_total").increment(batch.len() as u64);
            }
            _ => {
                for tick in batch.drain(..) {
                    let receipt = producer
                        .send(topics::RAW, raw_key(&tick.symbol).as_bytes(), tick.encode())
                        .await?;
                    let keep = spooler.is_some().then_some(tick);
                    pending.push_back(Pending {
                        sent: tokio::time::Instant::now(),
                        receipt,
                        tick: keep,
                        index: emitted,
                    });
                    emitted += 1;
                }
            }
        }
        for r in source.take_rejects() {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tickflow_ingest_rejected_total", "source" => source.name().to_string(), "reason" => r.reason.clone())
                .increment(1);
            tracing::warn!(reason = %r.reason, detail = %r.detail, "input rejected");
            let record = tick_core::pb::DeadLetter {
                reason: r.reason,
                detail: r.detail,
                payload: r.payload,
                origin: source.name().to_string(),
                ts_rejected_ns: tick_core::clock::now_ns(),
                component: "ingest".into(),
            };
            let receipt = producer
                .send(topics::DLQ, b"", prost::Message::encode_to_vec(&record))
                .await?;
            pending.push_back(Pending {
                sent: tokio::time::Instant::now(),
                receipt,
                tick: None,
                index: emitted,
            });
        }
        reap(&mut pending, &mut spooler, &mut spooling, &stats)?;
        stats.durable.store(
            pending.front().map_or(emitted, |p| p.index),
            Ordering::Release,
        );
        if spooling && tokio::time::Instant::now() >= next_probe && pending.is_empty() {
            next_probe = tokio::time::Instant::now() + Duration::from_secs(1);
            if let Some(sp) = &mut spooler {
                spooling = !drain(sp, producer.as_ref(), &stats).await?;
            }
        }
        if let Some(sp) = &spooler {
            metrics::gauge!("tickflow_ingest_spool_depth").set(sp.spool.depth() as f64);
        }
        if !more {
            break;
        }
    }
    // The source is done: keep trying to empty the spool for a while (a restart would drain
    // it anyway), unless shutdown was asked for.
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while spooling && !shutdown.is_cancelled() && tokio::time::Instant::now() < drain_deadline {
        reap(&mut pending, &mut spooler, &mut spooling, &stats)?;
        if pending.is_empty()
            && let Some(sp) = &mut spooler
        {
            spooling = !drain(sp, producer.as_ref(), &stats).await?;
        }
        if spooling {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Wait a bounded time for confirmations; what stays unconfirmed goes to the spool, so a
    // restart sends it again (the idempotency key removes any double).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        reap(&mut pending, &mut spooler, &mut spooling, &stats)?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(sp) = &mut spooler {
        let left: Vec<_> = pending.drain(..).filter_map(|p| p.tick).collect();
        if !left.is_empty() {
            tracing::warn!(
                ticks = left.len(),
                "unconfirmed at shutdown; kept in the spool"
            );
            sp.spool.append(&left)?;
        }
    } else {
        for p in pending.drain(..) {
            settle_one(p.receipt.await, &stats);
        }
        producer.flush().await?;
    }
    tracing::info!(
        source = source.name(),
        received = stats.received.load(Ordering::Relaxed),
        spooled = spooler.as_ref().map_or(0, |s| s.spool.depth()),
        "ingest stopped"
    );
    Ok(())
}

/// Returns the `ticks.raw` key of a symbol: its canonical spelling, so every source's spelling
/// of one instrument lands in one partition (one router instance sees the whole symbol).
fn raw_key(symbol: &str) -> std::borrow::Cow<'_, str> {
    if symbol
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        std::borrow::Cow::Borrowed(symbol)
    } else {
        std::borrow::Cow::Owned(tick_core::instrument::canonical(symbol))
    }
}

/// Watches the feed per symbol: the age of its last tick (a metric) and a log line when a
/// symbol goes stale or comes back, plus a reminder while ticks are being spooled.
struct FeedWatch {
    source: String,
    last: HashMap<String, i64>,
    stale: std::collections::HashSet<String>,
    next_report: tokio::time::Instant,
    next_spool_log: tokio::time::Instant,
}

/// A symbol without a tick for this long is reported stale.
const STALE_AFTER_NS: i64 = 60_000_000_000;

impl FeedWatch {
    fn new(source: &str) -> Self {
        Self {
            source: source.to_string(),
            last: HashMap::new(),
            stale: Default::default(),
            next_report: tokio::time::Instant::now(),
            next_spool_log: tokio::time::Instant::now(),
        }
    }

    fn saw(&mut self, batch: &[tick_core::Tick]) {
        for t in batch {
            match self.last.get_mut(&t.symbol) {
                Some(v) => *v = t.ts_recv_ns,
                None => {
                    self.last.insert(t.symbol.clone(), t.ts_recv_ns);
                }
            }
        }
    }

    fn report(&mut self, spool_depth: Option<u64>) {
        let now = tokio::time::Instant::now();
        if let Some(depth) = spool_depth
            && now >= self.next_spool_log
        {
            tracing::error!(
                depth,
                "kafka still not confirming: ticks are being spooled to disk"
            );
            self.next_spool_log = now + Duration::from_secs(10);
        }
        if now < self.next_report {
            return;
        }
        self.next_report = now + Duration::from_secs(1);
        let wall = tick_core::clock::now_ns();
        for (symbol, at) in &self.last {
            let age = wall.saturating_sub(*at);
            metrics::gauge!("tickflow_ingest_last_tick_age_seconds", "source" => self.source.clone(), "symbol" => symbol.clone())
                .set(age as f64 / 1e9);
            let stale = age > STALE_AFTER_NS;
            if stale && self.stale.insert(symbol.clone()) {
                tracing::warn!(source = %self.source, %symbol, age_s = age / 1_000_000_000, "feed is stale: no tick for a minute");
            } else if !stale && self.stale.remove(symbol) {
                tracing::info!(source = %self.source, %symbol, "feed is live again");
            }
        }
    }
}

/// Takes confirmed publications off the front; a failed one goes to the spool; one unconfirmed
/// for too long switches to spooling.
fn reap(
    pending: &mut std::collections::VecDeque<Pending>,
    spooler: &mut Option<Spooler>,
    spooling: &mut bool,
    stats: &IngestStats,
) -> anyhow::Result<()> {
    use futures::FutureExt;
    while let Some(front) = pending.front_mut() {
        match (&mut front.receipt).now_or_never() {
            Some(result) => {
                let p = pending.pop_front().expect("front exists");
                if result.is_err()
                    && let (Some(sp), Some(t)) = (spooler.as_mut(), p.tick)
                {
                    sp.spool.append(std::slice::from_ref(&t))?;
                    *spooling = true;
                    continue;
                }
                settle_one(result, stats);
            }
            None => {
                if let Some(sp) = spooler
                    && !*spooling
                    && front.sent.elapsed() > sp.after
                {
                    *spooling = true;
                    tracing::error!(after = ?sp.after, "kafka is not confirming: spooling ticks to disk until it answers");
                }
                break;
            }
        }
    }
    Ok(())
}

/// Sends the spool's ticks in order; returns whether all were confirmed (then the spool is
/// emptied).
async fn drain(
    sp: &mut Spooler,
    producer: &dyn Producer,
    stats: &IngestStats,
) -> anyhow::Result<bool> {
    let ticks = sp.spool.read_all()?;
    let mut receipts = Vec::with_capacity(ticks.len());
    for t in &ticks {
        receipts.push(
            producer
                .send(topics::RAW, raw_key(&t.symbol).as_bytes(), t.encode())
                .await?,
        );
    }
    let confirm = async {
        for r in receipts {
            r.await?;
        }
        Ok::<(), tick_core::bus::BusError>(())
    };
    // Every receipt resolves (delivered, or failed after librdkafka's message timeout): waiting
    // for all of them, rather than re-sending on a timer, never sends the spool twice while
    // copies are still queued.
    match confirm.await {
        Ok(()) => {
            sp.spool.clear()?;
            stats
                .published
                .fetch_add(ticks.len() as u64, Ordering::Relaxed);
            tracing::warn!(ticks = ticks.len(), "kafka answers again: spool drained");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(ticks = ticks.len(), error = %e, "spool drain failed; keeping the spool");
            Ok(false)
        }
    }
}

fn settle_one(result: Result<(), tick_core::bus::BusError>, stats: &IngestStats) {
    match result {
        Ok(()) => {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, "publish failed");
            metrics::counter!("tickflow_ingest_publish_failed_total").increment(1);
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn a_simulated_duration_is_rate_times_duration_ticks() {
        let budget = |args: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap().sim.tick_budget()
        };
        assert_eq!(budget(&["--duration", "10s"]), Some(10_000));
        assert_eq!(
            budget(&["--duration", "1500ms", "--rate", "250"]),
            Some(375)
        );
        assert_eq!(
            budget(&["--duration", "500ms", "--rate", "3"]),
            Some(1),
            "none after 500 ms"
        );
        assert_eq!(budget(&["--duration", "10s", "--max-ticks", "7"]), Some(7));
        assert_eq!(budget(&["--max-ticks", "7"]), Some(7));
        assert_eq!(budget(&[]), None);
    }
}
