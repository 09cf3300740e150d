//! Embedded mode: every stage in one process, linked by in-memory channels, storing to a
//! SQLite file, serving gRPC. The stage code is the same the distributed binaries run, and any
//! source ingest reads works here too (`--source sim|mt5|oanda|dukascopy|csv`). Intake, router,
//! indicators and, by default, the gRPC server share one thread (see `HotThread`).
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
use indicators::service::{GrpcServer, Service};
use persister::BatchArgs;
use persister::stores::{StoreOptions, StorePriority, StoreUrl};
use router::core::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tick_core::bus::{MemoryBus, MemoryConsumer, topics};
use tick_core::latency::{LatencySummary, fmt_ns};
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HistoryReader, ReaderOn, TickWriter};

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
    #[arg(
        long,
        env = "TICKFLOW_STORE",
        default_value = "sqlite:tickflow.db",
        hide_env_values = true
    )]
    pub store: StoreUrl,
    /// Address the gRPC SignalService listens on.
    #[arg(long, env = "TICKFLOW_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Where the gRPC server runs: `hot` on the hot-path thread, next to the stages that
    /// publish events, so an event reaches its subscribers' sockets without waking another
    /// thread; `workers` on the runtime's worker threads, which spreads the sending over the
    /// cores (for many subscribers on a host with cores to spare). Store reads for history run
    /// on the workers either way.
    #[arg(long, env = "TICKFLOW_GRPC_THREAD", value_enum, default_value_t = GrpcThread::Hot)]
    pub grpc_thread: GrpcThread,
    /// Time between status lines.
    #[arg(long, env = "TICKFLOW_STATUS_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub status_interval: Duration,
}

/// Where embedded mode's gRPC server runs (`--grpc-thread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GrpcThread {
    /// On the hot-path thread.
    Hot,
    /// On the runtime's worker threads.
    Workers,
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
    /// Ticks the router's spike filter held (each waited for the next tick of its symbol and
    /// source, or for the hold limit).
    pub held: u64,
    /// Mean time a held tick waited, in nanoseconds.
    pub held_mean_ns: u64,
    /// Longest time a held tick waited, in nanoseconds.
    pub held_max_ns: u64,
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
        writeln!(
            f,
            "  spike filter    held {} ticks ({:.3} % of ticks in), waited mean {} max {}",
            self.held,
            100.0 * self.held as f64 / self.ticks_in.max(1) as f64,
            fmt_ns(self.held_mean_ns),
            fmt_ns(self.held_max_ns)
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

/// Runs the whole pipeline until intake stops (duration, tick count, the end of a history source
/// or `shutdown`), drains every stage in order and returns the summary. `on_listen` receives the
/// bound gRPC address.
pub async fn run(
    args: RunArgs,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(SocketAddr),
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let stats = Stats::default();
    // The source first: a missing option or a port in use fails before anything starts.
    let source = args
        .source
        .build(&shutdown, stats.ingest.durable.clone())
        .await
        .context("failed to start the source")?;
    let engine =
        Engine::new(args.engine.engine_config()).context("invalid indicator configuration")?;
    let stores = args
        .store
        .open(&StoreOptions {
            pool_size: 4,
            // Storage shares the cores with the real-time path: it takes what that leaves.
            priority: StorePriority::Background,
        })
        .await?;
    let reader = stores.reader()?;
    let bus = MemoryBus::new();
    let queues = Queues::subscribe(&bus);
    let hub = args.engine.hub();
    let (snap_tx, snap_rx) = tokio::sync::mpsc::channel(64);
    let hot = HotThread::start().context("failed to start the hot-path thread")?;
    // GetHistory and GetBars read the store the pipeline writes to, on the workers.
    let history: Arc<dyn HistoryReader> = match args.grpc_thread {
        GrpcThread::Hot => Arc::new(ReaderOn::new(
            reader.clone(),
            tokio::runtime::Handle::current(),
        )),
        GrpcThread::Workers => reader.clone(),
    };
    let service = Service::new(hub.clone(), snap_tx)
        .with_history(history)
        .with_engine(
            args.engine.engine_config(),
            args.engine.grpc.history_seam_wait,
        );
    let options = args.engine.grpc.serve_options()?;
    let server = match args.grpc_thread {
        GrpcThread::Hot => {
            // Started from a task on the hot thread, the server and its connections run there.
            let addr = args.grpc_addr;
            let start = hot.handle.spawn(GrpcServer::start(addr, options, service));
            start.await.context("starting the gRPC server panicked")??
        }
        GrpcThread::Workers => GrpcServer::start(args.grpc_addr, options, service).await?,
    };
    on_listen(server.addr);
    tracing::info!(addr = %server.addr, store = %args.store, source = ?args.source.source, "tickflow embedded: running");

    let intake = args.source.intake_token(&shutdown);
    let abort = CancellationToken::new();
    // Should `run` return early (an error, or its future dropped), the guard ends every stage
    // it started: each input topic closes, storage aborts, the server stops.
    let mut teardown = Teardown {
        bus: bus.clone(),
        stop: [intake.clone(), abort.clone(), server.stop_token()],
        armed: true,
    };
    let wiring = Wiring {
        bus: bus.clone(),
        store: stores.writer,
        batch: args.batch.to_config(),
        abort,
    };
    // Each symbol's sequence continues after its last stored tick, as a distributed router's
    // continues after the last one in `ticks.clean`.
    let mut router = Router::new(args.rules.router_config()?);
    router.continue_sequences(reader.last_symbol_seqs().await?);
    let mut stages = Stages::spawn(hot, &wiring, queues, router, engine, &hub, snap_rx, &stats);
    stages.ingest = Some(stages.hot.handle.spawn(ingest::run_source(
        source,
        Arc::new(bus.producer()),
        stats.ingest.clone(),
        intake,
        None,
    )));
    let ingest_result = status_lines(&mut stages, &args, &stats, &hub, started).await;
    let hot = stages.drain(&bus, ingest_result).await?;
    server.stop().await?;
    tokio::task::spawn_blocking(move || drop(hot)).await?;
    teardown.armed = false;
    Ok(stats.summary(started, reader.count_ticks().await?))
}

/// The counters of every stage of one run.
#[derive(Default)]
struct Stats {
    ingest: Arc<ingest::IngestStats>,
    router: Arc<router::RouterStats>,
    indicators: Arc<indicators::IndicatorStats>,
    persister: Arc<persister::PersisterStats>,
}

impl Stats {
    fn summary(&self, started: Instant, rows_in_db: u64) -> Summary {
        let (i, r, n, p) = (
            &self.ingest,
            &self.router,
            &self.indicators,
            &self.persister,
        );
        Summary {
            elapsed: started.elapsed(),
            ticks_in: i.received.load(Ordering::Relaxed),
            clean: r.clean.load(Ordering::Relaxed),
            rejected: r.rejected_total(),
            stored: p.stored.load(Ordering::Relaxed),
            rows_in_db,
            dead_letters: p.dead_letters_stored.load(Ordering::Relaxed),
            updates: n.updates.load(Ordering::Relaxed),
            bars: n.bars.load(Ordering::Relaxed),
            bars_stored: p.bars_stored.load(Ordering::Relaxed),
            signals: n.signals.load(Ordering::Relaxed),
            latency: n.latency.summary(),
            held: r.held.load(Ordering::Relaxed),
            held_mean_ns: r.held_ns_total.load(Ordering::Relaxed)
                / r.released.load(Ordering::Relaxed).max(1),
            held_max_ns: r.held_ns_max.load(Ordering::Relaxed),
        }
    }
}

/// Each stage's queue on the in-memory bus, subscribed before anything is published.
struct Queues {
    raw: MemoryConsumer,
    clean_realtime: MemoryConsumer,
    clean_store: MemoryConsumer,
    dlq: MemoryConsumer,
    bars: MemoryConsumer,
}

impl Queues {
    fn subscribe(bus: &MemoryBus) -> Self {
        let polled = Duration::from_millis(2);
        Self {
            // The router's acknowledgements of `ticks.raw` confirm ingest's publications: it
            // acknowledges a tick once its outputs are confirmed, that is stored (below).
            raw: bus.subscribe_confirming(topics::RAW, 65_536),
            clean_realtime: bus.subscribe(topics::CLEAN, 65_536),
            // The storage branch gets a deep queue so a slow disk never holds back the bots. It
            // and the dead letters run on the runtime's workers and look for work every 2 ms, so
            // the stages on the hot thread never wake them (see `HotThread`); they batch for
            // 50 ms anyway. Their acknowledgements (after the commit) confirm what they store.
            clean_store: bus
                .subscribe_confirming(topics::CLEAN, 1 << 20)
                .polled(polled),
            dlq: bus.subscribe_confirming(topics::DLQ, 65_536).polled(polled),
            bars: bus.subscribe(topics::BARS, 65_536).polled(polled),
        }
    }
}

/// What the storage stages are given: the bus, the store and how to batch.
struct Wiring {
    bus: MemoryBus,
    store: Arc<dyn TickWriter>,
    batch: persister::BatchConfig,
    abort: CancellationToken,
}

type StageTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The running stages. Intake, router and indicators share one thread (see `HotThread`);
/// storage and dead letters run on the multi-threaded runtime.
struct Stages {
    hot: HotThread,
    ingest: Option<StageTask>,
    router: StageTask,
    indicators: StageTask,
    /// Ticks, dead letters and bars, in the order they are drained.
    storage: [(&'static str, StageTask); 3],
}

impl Stages {
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        hot: HotThread,
        w: &Wiring,
        q: Queues,
        router: Router,
        engine: Engine,
        hub: &Arc<indicators::service::Hub>,
        snapshots: tokio::sync::mpsc::Receiver<indicators::service::SnapshotQuery>,
        stats: &Stats,
    ) -> Self {
        let producer = || Arc::new(w.bus.producer());
        let router = hot.handle.spawn(router::run_router(
            Box::new(q.raw),
            producer(),
            router,
            stats.router.clone(),
            None,
            true,
            tick_core::shutdown::CancellationToken::new(),
        ));
        let indicators = hot.handle.spawn(indicators::run_indicators(
            Box::new(q.clean_realtime),
            engine,
            hub.clone(),
            snapshots,
            // Closed bars go to the `bars` topic for storage, as in distributed mode. Signals
            // go to the gRPC hub only: nothing in this process reads a signals topic.
            indicators::Outputs {
                producer: Some(producer()),
                ..Default::default()
            },
            stats.indicators.clone(),
        ));
        let breaker = persister::breaker::BreakerArgs::default;
        let (store, batch, p) = (&w.store, w.batch, &stats.persister);
        let storage = [
            (
                "persister",
                tokio::spawn(persister::run_persister(
                    Box::new(q.clean_store),
                    store.clone(),
                    batch,
                    breaker(),
                    persister::DeadLetters::Topic(producer()),
                    p.clone(),
                    w.abort.clone(),
                )),
            ),
            (
                "dead-letter storage",
                tokio::spawn(persister::run_dead_letters(
                    Box::new(q.dlq),
                    store.clone(),
                    batch,
                    breaker(),
                    p.clone(),
                    w.abort.clone(),
                )),
            ),
            (
                "bar storage",
                tokio::spawn(persister::run_bars(
                    Box::new(q.bars),
                    store.clone(),
                    batch,
                    breaker(),
                    p.clone(),
                    w.abort.clone(),
                )),
            ),
        ];
        Self {
            hot,
            ingest: None,
            router,
            indicators,
            storage,
        }
    }

    /// Drains in pipeline order: intake (already ended), router, indicators, then storage.
    /// The persister publishes the rows the store refuses as dead letters, so `ticks.dlq`
    /// closes only once it is done.
    async fn drain(
        self,
        bus: &MemoryBus,
        ingest: Result<anyhow::Result<()>, tokio::task::JoinError>,
    ) -> anyhow::Result<HotThread> {
        ingest.context("ingest task panicked")??;
        bus.close(topics::RAW);
        self.router.await.context("router task panicked")??;
        bus.close(topics::CLEAN);
        self.indicators
            .await
            .context("indicators task panicked")??;
        bus.close(topics::BARS);
        let [(_, ticks), dead_letters, bars] = self.storage;
        ticks.await.context("persister task panicked")??;
        bus.close(topics::DLQ);
        for (name, task) in [dead_letters, bars] {
            task.await
                .with_context(|| format!("{name} task panicked"))??;
        }
        Ok(self.hot)
    }
}

/// Prints a status line every `--status-interval` until intake stops; returns how it stopped.
async fn status_lines(
    stages: &mut Stages,
    args: &RunArgs,
    stats: &Stats,
    hub: &indicators::service::Hub,
    started: Instant,
) -> Result<anyhow::Result<()>, tokio::task::JoinError> {
    let ingest = stages.ingest.as_mut().expect("ingest was spawned");
    let mut ticker = tokio::time::interval(args.status_interval.max(Duration::from_millis(100)));
    ticker.tick().await;
    let (mut last_in, mut last_at) = (0, Instant::now());
    loop {
        tokio::select! {
            r = &mut *ingest => return r,
            _ = ticker.tick() => {}
        }
        let now_in = stats.ingest.received.load(Ordering::Relaxed);
        let rate = (now_in - last_in) as f64 / last_at.elapsed().as_secs_f64();
        (last_in, last_at) = (now_in, Instant::now());
        let l = stats.indicators.latency.summary();
        println!(
            "[{:>6.1}s] in {:>7.0}/s | total {:>8} | stored {:>8} | rejected {:>5} | subscribers {} | tick->update p50 {} p99 {}",
            started.elapsed().as_secs_f64(),
            rate,
            now_in,
            stats.persister.stored.load(Ordering::Relaxed),
            stats.router.rejected_total(),
            hub.subscribers(),
            fmt_ns(l.p50),
            fmt_ns(l.p99),
        );
    }
}

/// One thread running a current-thread tokio runtime for the hot path. A tick handed from intake
/// to the router to the indicators then never wakes a parked worker thread on another core (a
/// futex wake-up and, in a VM, an inter-processor interrupt, each on the path): the next stage
/// runs on the same thread right after the previous one yields. With `--grpc-thread hot` (the
/// default) the gRPC server's connections run here too, so the indicators' events reach the
/// subscribers' sockets the same way: at 10,000 ticks/s that cut the subscriber's p50 from
/// about 100 to 75 µs and its p99 from about 250 to 160-210 µs (BENCHMARKS.md). The persister
/// stays on the workers (the SQLite store's own thread at `SCHED_IDLE`) and polls its queue
/// (see [`MemoryConsumer::polled`](tick_core::bus::MemoryConsumer::polled)), so it costs the
/// hot path no wake-up either.
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
