//! Embedded mode: every stage in one process, linked by in-memory channels, storing to a
//! SQLite file, serving gRPC. The stage code is the same the distributed binaries run, and any
//! source ingest reads works here too (`--source sim|mt5|oanda|dukascopy|csv`).
//!
//! Without Kafka, "durable" means committed to SQLite: the storage groups of `ticks.clean` and
//! `ticks.dlq` and the router's group of `ticks.raw` confirm the publications they read only
//! once their work is stored (see
//! [`MemoryBus::subscribe_confirming`](tick_core::bus::MemoryBus::subscribe_confirming)), so the
//! ingest loop's durability count, which MT5 acknowledgements follow, never runs ahead of the
//! SQLite commit.

use anyhow::Context;
use indicators::config::EngineArgs;
use indicators::engine::Engine;
use indicators::service::Service;
use persister::BatchArgs;
use persister::stores::{StoreOptions, StoreUrl};
use router::core::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tick_core::bus::{MemoryBus, topics};
use tick_core::latency::{LatencySummary, fmt_ns};
use tick_core::shutdown::CancellationToken;

/// Options of `tickflow run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The source and its options.
    #[command(flatten)]
    pub source: ingest::SourceArgs,
    /// Indicators, rules, bars and subscriber queues.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Routing rules.
    #[command(flatten)]
    pub rules: router::RulesArgs,
    /// Storage batching.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Where ticks, bars and dead letters are stored: `sqlite:PATH` (embedded mode's own
    /// file) or `postgres://...`.
    #[arg(long, env = "TICKFLOW_STORE", default_value = "sqlite:tickflow.db")]
    pub store: StoreUrl,
    /// Address the gRPC SignalService listens on.
    #[arg(long, env = "TICKFLOW_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Time between status lines.
    #[arg(long, env = "TICKFLOW_STATUS_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub status_interval: Duration,
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
    /// Bars newly stored in the `bars` table.
    pub bars_stored: u64,
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
            "  updates         {} indicator updates, {} bars ({} stored), {} signals",
            self.updates, self.bars, self.bars_stored, self.signals
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
    let ingest_stats = Arc::new(ingest::IngestStats::default());
    // The source first: a missing option or a port in use fails before anything starts.
    let source = args
        .source
        .build(&shutdown, ingest_stats.durable.clone())
        .await
        .context("failed to start the source")?;
    let engine =
        Engine::new(args.engine.engine_config()).context("invalid indicator configuration")?;
    let stores = args.store.open(&StoreOptions { pool_size: 4 }).await?;
    let reader = stores.reader()?;
    let store = stores.writer;

    let bus = MemoryBus::new();
    // The router's acknowledgements of `ticks.raw` confirm ingest's publications: it
    // acknowledges a tick once its outputs are confirmed, that is stored (below).
    let raw = bus.subscribe_confirming(topics::RAW, 65_536);
    let clean_rt = bus.subscribe(topics::CLEAN, 65_536);
    // The storage branch gets a deep queue so a slow disk never holds back the bots. It and
    // the dead letters run on the runtime's workers and look for work every 2 ms, so the stages
    // on the hot thread never wake them (see `HotThread`); they batch for 50 ms anyway.
    let clean_store = bus
        .subscribe_confirming(topics::CLEAN, 1 << 20)
        .polled(Duration::from_millis(2));
    let dlq = bus
        .subscribe_confirming(topics::DLQ, 65_536)
        .polled(Duration::from_millis(2));
    let bars = bus
        .subscribe(topics::BARS, 65_536)
        .polled(Duration::from_millis(2));

    let serve_options = args.engine.grpc.serve_options()?;
    let (tls, auth) = (
        serve_options.tls.is_some(),
        serve_options.auth_token.is_some(),
    );
    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("failed to listen on {}", args.grpc_addr))?;
    let addr = listener.local_addr()?;
    on_listen(addr);
    let hub = args.engine.hub();
    let (snap_tx, snap_rx) = tokio::sync::mpsc::channel(64);
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(indicators::service::serve_with(
        listener,
        Service::new(hub.clone(), snap_tx),
        serve_options,
        server_stop.clone(),
    ));
    tracing::info!(%addr, tls, auth, store = %args.store, "tickflow embedded: gRPC SignalService listening");

    let router_stats = Arc::new(router::RouterStats::default());
    let ind_stats = Arc::new(indicators::IndicatorStats::default());
    let pers_stats = Arc::new(persister::PersisterStats::default());
    let batch = args.batch.to_config();
    let abort = CancellationToken::new();

    let intake = args.source.intake_token(&shutdown);
    // Should `run` return early (an error, or its future dropped), the guard ends every stage
    // it started: each input topic closes, storage aborts, the server stops.
    let mut teardown = Teardown {
        bus: bus.clone(),
        stop: [intake.clone(), abort.clone(), server_stop.clone()],
        armed: true,
    };
    // Intake, router and indicators share one thread (see `HotThread`); storage, dead letters
    // and the gRPC server run on the multi-threaded runtime.
    let hot = HotThread::start().context("failed to start the hot-path thread")?;
    let router_task = hot.handle.spawn(router::run_router(
        Box::new(raw),
        Arc::new(bus.producer()),
        Router::new(args.rules.router_config()?),
        router_stats.clone(),
        None,
        true,
    ));
    let ind_task = hot.handle.spawn(indicators::run_indicators(
        Box::new(clean_rt),
        engine,
        hub.clone(),
        snap_rx,
        // Closed bars go to the `bars` topic for storage, as in distributed mode. Signals go
        // to the gRPC hub only: nothing in this process reads a signals topic.
        indicators::Outputs {
            producer: Some(Arc::new(bus.producer())),
            ..Default::default()
        },
        ind_stats.clone(),
    ));
    let pers_task = tokio::spawn(persister::run_persister(
        Box::new(clean_store),
        store.clone(),
        batch,
        persister::breaker::BreakerArgs::default(),
        persister::DeadLetters::Topic(Arc::new(bus.producer())),
        pers_stats.clone(),
        abort.clone(),
    ));
    let dlq_task = tokio::spawn(persister::run_dead_letters(
        Box::new(dlq),
        store.clone(),
        batch,
        persister::breaker::BreakerArgs::default(),
        pers_stats.clone(),
        abort.clone(),
    ));
    let bars_task = tokio::spawn(persister::run_bars(
        Box::new(bars),
        store.clone(),
        batch,
        persister::breaker::BreakerArgs::default(),
        pers_stats.clone(),
        abort.clone(),
    ));

    let mut ingest_task = hot.handle.spawn(ingest::run_source(
        source,
        Arc::new(bus.producer()),
        ingest_stats.clone(),
        intake.clone(),
        None,
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
    ind_task.await.context("indicators task panicked")??;
    bus.close(topics::BARS);
    pers_task.await.context("persister task panicked")??;
    // The persister publishes the rows the store refuses as dead letters: close their topic
    // only once it is done.
    bus.close(topics::DLQ);
    dlq_task.await.context("dead-letter task panicked")??;
    bars_task.await.context("bar-storage task panicked")??;
    server_stop.cancel();
    server.await.context("gRPC server panicked")??;
    tokio::task::spawn_blocking(move || drop(hot)).await?;
    teardown.armed = false;

    Ok(Summary {
        elapsed: started.elapsed(),
        ticks_in: ingest_stats.received.load(Ordering::Relaxed),
        clean: router_stats.clean.load(Ordering::Relaxed),
        rejected: router_stats.rejected_total(),
        stored: pers_stats.stored.load(Ordering::Relaxed),
        rows_in_db: reader.count_ticks().await?,
        dead_letters: pers_stats.dead_letters_stored.load(Ordering::Relaxed),
        updates: ind_stats.updates.load(Ordering::Relaxed),
        bars: ind_stats.bars.load(Ordering::Relaxed),
        bars_stored: pers_stats.bars_stored.load(Ordering::Relaxed),
        signals: ind_stats.signals.load(Ordering::Relaxed),
        latency: ind_stats.latency.summary(),
    })
}

/// One thread running a current-thread tokio runtime for the hot path. A tick handed from intake
/// to the router to the indicators then never wakes a parked worker thread on another core (a
/// futex wake-up and, in a VM, an inter-processor interrupt, each on the path): the next stage
/// runs on the same thread right after the previous one yields. The persister stays on the
/// workers, so storage still has a core of its own at 100,000 ticks/s, and polls its queue (see
/// [`MemoryConsumer::polled`](tick_core::bus::MemoryConsumer::polled)) so it costs the hot
/// path no wake-up either.
struct HotThread {
    handle: tokio::runtime::Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HotThread {
    /// Starts the thread; its runtime is built and dropped on the thread itself (a runtime
    /// must not be dropped from async code).
    fn start() -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tickflow-hot".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(stopped.cancelled());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        // Waits the moment the thread takes to build a runtime.
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the hot-path thread ended at start"))??;
        Ok(Self {
            handle,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HotThread {
    /// Stops the runtime (tasks still running are dropped, as on any early return) and joins the
    /// thread. That takes only as long as the thread needs to drop its runtime; the normal path
    /// still drops it from a blocking task.
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ends what [`run`] started when it returns early; disarmed on the normal path, which drains
/// in order instead.
struct Teardown {
    bus: MemoryBus,
    stop: [CancellationToken; 3],
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for token in &self.stop {
            token.cancel();
        }
        for topic in [topics::RAW, topics::CLEAN, topics::DLQ, topics::BARS] {
            self.bus.close(topic);
        }
    }
}
