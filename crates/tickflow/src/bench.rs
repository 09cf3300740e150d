//! `tickflow bench embedded|distributed`: tick-to-bot latency measured where it matters, at a
//! gRPC subscriber on loopback, under a simulated feed paced on a fixed schedule.
//!
//! Each run starts the pipeline as child processes (`tickflow run` for embedded; `router`,
//! `indicators`, `persister` and `ingest` for distributed, from the directory of this binary),
//! subscribes to every indicator update, and records into HDR histograms, for the updates whose
//! tick was received inside the measurement window (after the warm-up):
//! - latency from the tick's `ts_recv_ns` (stamped by ingest when it produced the tick) to the
//!   moment the subscriber decoded the update: the pipeline's latency;
//! - latency from the tick's event time, which the simulator sets to the instant the tick was
//!   due on its fixed schedule: this also counts any lag of the feed itself, so a stalled
//!   pipeline cannot hide its backlog by slowing the load (no coordinated omission).
//!
//! A rate counts as sustained when the subscriber received at least 99 % of the window's ticks,
//! lost none to a gap, and the median latency of the window's last fifth is at most twice that
//! of its first fifth plus 1 ms (no growing backlog). Peak RSS is each child's `VmHWM`.
//!
//! The distributed scenario also measures, in the same run and at the same rate, the floor: a
//! bare produce -> consume -> produce -> consume relay over two Kafka topics with the same
//! client settings (tickflow's Kafka producer and consumer), and reports the pipeline's
//! percentiles as ratios to it. The pipeline and the floor take turns going first, so neither
//! always meets the broker in the state the other left it in (on a broker started minutes
//! before, the pipeline's p50 at 1,000 ticks/s was up to 20x what it was on one up for a
//! quarter of an hour, the floor's mostly not: BENCHMARKS.md).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::latency::{LatencyRecorder, LatencySummary, fmt_ns};
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::shutdown::CancellationToken;
use tick_core::{clock, pb};
use tokio::time::Instant;

#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
mod router_soak;

/// Options of `tickflow bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The benchmark scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// `tickflow run` (one process) -> gRPC subscriber.
    Embedded(EmbeddedArgs),
    /// ingest -> Kafka -> router -> Kafka -> indicators -> gRPC subscriber, next to the bare
    /// two-hop Kafka floor (built with the `kafka` feature).
    #[cfg(feature = "kafka")]
    Distributed(distributed::DistributedArgs),
    /// The router binary alone for a long run (ingest -> Kafka -> router -> Kafka): its RSS
    /// and CPU per tick over time (built with the `kafka` feature).
    #[cfg(feature = "kafka")]
    RouterSoak(router_soak::RouterSoakArgs),
    /// The embedded scenario's floor, run as a child process: a bare tonic server streaming
    /// pre-encoded updates of the pipeline's size on the same schedule.
    #[command(hide = true)]
    FloorServer(FloorServerArgs),
}

/// Options of `tickflow bench floor-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorServerArgs {
    /// Updates per second over all symbols.
    #[arg(long)]
    pub rate: u64,
    /// Symbols the updates rotate over.
    #[arg(long)]
    pub symbols: usize,
    /// How long to stream.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Address to serve on.
    #[arg(long)]
    pub grpc_addr: std::net::SocketAddr,
}

/// Options of `tickflow bench embedded`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedArgs {
    /// The load and how it is measured.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Also run a research client beside the measured subscriber: it downloads the stored
    /// history of 64 of the symbols with `GetHistory`, again and again, for the whole run, and
    /// the output says how many ticks it received. Shows what a history download costs the
    /// live stream (compare `tickflow run --grpc-thread hot` and `workers` through
    /// `TICKFLOW_GRPC_THREAD`).
    #[arg(long)]
    pub history_client: bool,
}

/// The load and how it is measured.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Feed rates to run, ticks per second over all symbols.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub rates: Vec<u64>,
    /// Symbols in the feed (synthetic instruments SYM000, SYM001, ...).
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Measured time per run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Time before the measurement starts (connections, consumer groups, warm caches).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// Runs per rate; the table shows medians over them.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Directory of the JSON results.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// One measured run.
#[derive(Debug, Clone, Default)]
struct RunResult {
    expected: u64,
    received: u64,
    gaps: u64,
    from_recv: LatencySummary,
    from_schedule: LatencySummary,
    p50_first: u64,
    p50_last: u64,
    peak_rss_kb: u64,
    /// The latency by hop (see [`HOPS`]), from the stamps on each update.
    hops: [LatencySummary; 4],
    /// Per stage process (router, indicators, persister, ingest), by name: its CPU time (user +
    /// system, from `/proc/<pid>/stat`) over the measurement window, per tick the feed sent in
    /// it (distributed only; empty: not measured).
    cpu_ns_per_tick: Vec<(String, u64)>,
    /// Ticks the router routed and those its spike filter held, with the longest hold.
    routed: u64,
    held: u64,
    held_max_ns: u64,
}

impl RunResult {
    /// The router's CPU per tick (0: not measured).
    fn router_cpu_ns_per_tick(&self) -> u64 {
        self.cpu_ns_per_tick
            .iter()
            .find(|(name, _)| name == "router")
            .map_or(0, |s| s.1)
    }

    fn sustained(&self) -> bool {
        self.received as f64 >= 0.99 * self.expected as f64
            && self.gaps == 0
            && self.p50_last <= 2 * self.p50_first + 1_000_000
    }

    fn json(&self) -> String {
        let s = |l: &LatencySummary| {
            format!(
                "{{\"count\":{},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{}}}",
                l.count, l.p50, l.p99, l.p999, l.max
            )
        };
        format!(
            "{{\"expected\":{},\"received\":{},\"gaps\":{},\"sustained\":{},\"from_recv\":{},\"from_schedule\":{},\"p50_first_fifth_ns\":{},\"p50_last_fifth_ns\":{},\"peak_rss_kb\":{},\"routed\":{},\"spike_held\":{},\"spike_held_max_ns\":{},\"router_cpu_ns_per_tick\":{},\"cpu_ns_per_tick\":{{{}}},\"hops\":{{{}}}}}",
            self.expected,
            self.received,
            self.gaps,
            self.sustained(),
            s(&self.from_recv),
            s(&self.from_schedule),
            self.p50_first,
            self.p50_last,
            self.peak_rss_kb,
            self.routed,
            self.held,
            self.held_max_ns,
            self.router_cpu_ns_per_tick(),
            self.cpu_ns_per_tick
                .iter()
                .map(|(name, ns)| format!("{name:?}:{ns}"))
                .collect::<Vec<_>>()
                .join(","),
            HOPS.iter()
                .zip(&self.hops)
                .map(|(name, l)| format!("\"{name}\":{}", s(l)))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    /// Reads the spike filter's figures from the summary `tickflow run` prints at exit.
    fn held_from_summary(&mut self, summary: &str) {
        let num = |line: &str, after: &str| -> Option<u64> {
            let rest = &line[line.find(after)? + after.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        for line in summary.lines() {
            if line.trim_start().starts_with("ticks in") {
                self.routed = num(line, "ticks in").unwrap_or(0);
            }
            if line.contains("spike filter") {
                self.held = num(line, "held").unwrap_or(0);
                self.held_max_ns = line
                    .rsplit("max ")
                    .next()
                    .and_then(|v| humantime::parse_duration(&v.replace("µs", "us")).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
            }
        }
    }
}

/// Returns the Prometheus text a process serves on `port` (`GET /metrics`).
#[cfg(feature = "kafka")]
async fn metrics_text(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// Sums the samples of Prometheus `text` whose line starts with `prefix` (a metric name and,
/// to pick some of its series, the start of their labels).
#[cfg(feature = "kafka")]
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Reads the spike filter's counters from a router's Prometheus endpoint on `port`.
#[cfg(feature = "kafka")]
async fn held_from_metrics(port: u16) -> Option<(u64, u64)> {
    let text = metrics_text(port).await?;
    // A held tick is counted again when it is settled (clean or rejected).
    let held = metric_sum(&text, "tickflow_router_ticks_total{outcome=\"held\"}");
    Some((
        metric_sum(&text, "tickflow_router_ticks_total{").saturating_sub(held),
        held,
    ))
}

/// Runs `tickflow bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let result = match args.scenario {
        Scenario::Embedded(args) => embedded(args).await,
        #[cfg(feature = "kafka")]
        Scenario::Distributed(d) => distributed::distributed(d).await,
        #[cfg(feature = "kafka")]
        Scenario::RouterSoak(a) => router_soak::router_soak(a).await,
        Scenario::FloorServer(f) => floor_server(f).await,
    };
    // The scratch directory stays only when it holds something (the stages' logs).
    let _ = std::fs::remove_dir(scratch_dir());
    result
}

/// The floor of the embedded scenario: what tonic alone costs to stream an update from a
/// process to the subscriber. Each update (the size of the pipeline's: a symbol, the default
/// indicator set's four values, a key) is encoded once as it is due on the feed's schedule,
/// stamped `ts_recv_ns` then, and handed through a broadcast channel to the same `Subscribe`
/// route and transport the pipeline serves with: no engine, no hub, no store.
async fn floor_server(args: FloorServerArgs) -> anyhow::Result<()> {
    use indicators::service::{Published, SubscribeFn, WireEvent, WireStream};
    use tokio::sync::broadcast::{self, error::RecvError};
    let listener = tokio::net::TcpListener::bind(args.grpc_addr).await?;
    let (tx, _) = broadcast::channel::<Arc<Published>>(1 << 16);
    let subscribers = tx.clone();
    let subscribe: SubscribeFn = Arc::new(move |_| {
        let stream = futures::stream::unfold(subscribers.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(p) => return Some((Ok(WireEvent::Shared(p, clock::now_ns())), rx)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(stream) as WireStream)
    });
    let stop = CancellationToken::new();
    let server = tokio::spawn(indicators::service::serve_subscriptions(
        listener,
        subscribe,
        stop.clone(),
    ));
    let names = ["sma(20)", "ema(12)", "ema(26)", "rsi(14)"];
    let symbols: Vec<String> = (0..args.symbols.max(1))
        .map(|i| format!("SYM{i:03}"))
        .collect();
    let interval = 1e9 / args.rate.max(1) as f64;
    let start = clock::now_ns();
    let end = start + args.duration.as_nanos() as i64;
    let due = |i: u64| start + (i as f64 * interval) as i64;
    let mut i = 0u64;
    loop {
        let now = clock::now_ns();
        if now >= end {
            break;
        }
        while due(i) <= now {
            let symbol = &symbols[i as usize % symbols.len()];
            let event = pb::Event {
                seq: i + 1,
                resume_token: format!("floor:{}", i + 1),
                kind: Some(Kind::Update(pb::IndicatorUpdate {
                    symbol: symbol.clone(),
                    timeframe: "tick".into(),
                    ts_event_ns: due(i),
                    ts_recv_ns: clock::now_ns(),
                    price: 1.08 + (i % 100) as f64 * 1e-5,
                    values: names
                        .iter()
                        .map(|n| pb::IndicatorValue {
                            name: n.to_string(),
                            value: 1.08 + (i % 7) as f64 * 1e-5,
                            warm: true,
                        })
                        .collect(),
                    idempotency_key: format!("sim|{symbol}|{}|0", due(i)),
                    symbol_seq: i / symbols.len() as u64,
                    ..Default::default()
                })),
                ..Default::default()
            };
            // Pre-encoded: the subscribers send these bytes.
            let published = Published::new(event, None);
            published.bytes();
            // No subscriber yet is not an error: the update has no reader.
            let _ = tx.send(Arc::new(published));
            i += 1;
        }
        tokio::time::sleep(Duration::from_nanos((due(i) - now).max(0) as u64)).await;
    }
    drop(tx);
    stop.cancel();
    server.await??;
    Ok(())
}

fn symbols(n: usize) -> (String, String) {
    let names: Vec<String> = (0..n.max(1)).map(|i| format!("SYM{i:03}")).collect();
    let instruments: Vec<String> = names.iter().map(|s| format!("{s}:5")).collect();
    (names.join(","), instruments.join(","))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Returns the CPU time (user + system) process `pid` has used so far, in ns.
#[cfg(feature = "kafka")]
fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 14th and 15th fields of the whole line, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    static CLK_TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hz = *CLK_TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    });
    Some(ticks * 1_000_000_000 / hz.max(1))
}

/// Reads the peak resident set size of a process, in KiB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Reads a size field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the peak RSS of `pids` until `stop`; returns each process's peak, in KiB.
fn watch_rss(pids: Vec<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut peaks = vec![0u64; pids.len()];
        loop {
            for (p, peak) in pids.iter().zip(peaks.iter_mut()) {
                if let Some(kb) = peak_rss_kb(*p) {
                    *peak = (*peak).max(kb);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return peaks,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
}

async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process {} did not exit", child.id());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hops of the latency a subscriber measures, from the stamps on each per-tick update:
/// `ts_recv_ns` (ingest) -> `ts_route_ns` (router) -> `ts_engine_ns` (indicators took the tick)
/// -> `Event.ts_sent_ns` (put on the subscriber's stream) -> decoded by the subscriber.
pub const HOPS: [&str; 4] = [
    "ingest->router",
    "router->indicators",
    "indicators->stream",
    "stream->bot",
];

/// What the subscriber saw of the ticks received in the window `[w0, w1)` (UTC ns).
struct Subscription {
    w0: i64,
    w1: i64,
    received: AtomicU64,
    gaps: AtomicU64,
    from_recv: LatencyRecorder,
    from_schedule: LatencyRecorder,
    first: LatencyRecorder,
    last: LatencyRecorder,
    hops: [LatencyRecorder; 4],
}

impl Subscription {
    fn new(w0: i64, w1: i64) -> Arc<Self> {
        Arc::new(Self {
            w0,
            w1,
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            from_recv: LatencyRecorder::new(),
            from_schedule: LatencyRecorder::new(),
            first: LatencyRecorder::new(),
            last: LatencyRecorder::new(),
            hops: std::array::from_fn(|_| LatencyRecorder::new()),
        })
    }

    /// Records the hops of an update received inside the window (see [`HOPS`]).
    fn record_hops(&self, u: &pb::IndicatorUpdate, ts_sent_ns: i64, now: i64) {
        if u.ts_recv_ns < self.w0 || u.ts_recv_ns >= self.w1 || u.ts_route_ns == 0 {
            return;
        }
        let stamps = [u.ts_recv_ns, u.ts_route_ns, u.ts_engine_ns, ts_sent_ns, now];
        for (h, w) in self.hops.iter().zip(stamps.windows(2)) {
            h.record(w[1] - w[0]);
        }
    }

    /// Records what arrived at `now` for a tick received at `ts_recv_ns` and due (event time)
    /// at `ts_event_ns`, if it was received inside the window.
    fn record(&self, ts_recv_ns: i64, ts_event_ns: i64, now: i64) {
        if ts_recv_ns < self.w0 || ts_recv_ns >= self.w1 {
            return;
        }
        let lat = now - ts_recv_ns;
        let fifth = (self.w1 - self.w0) / 5;
        self.received.fetch_add(1, Ordering::Relaxed);
        self.from_recv.record(lat);
        self.from_schedule.record(now - ts_event_ns);
        if ts_recv_ns < self.w0 + fifth {
            self.first.record(lat);
        } else if ts_recv_ns >= self.w1 - fifth {
            self.last.record(lat);
        }
    }
}

/// Subscribes to every update at `addr` and measures those received in `[w0, w1)` (UTC ns of
/// `ts_recv_ns`) until `until`.
async fn subscribe(
    addr: String,
    w0: i64,
    w1: i64,
    until: Instant,
) -> anyhow::Result<Arc<Subscription>> {
    let sub = Subscription::new(w0, w1);
    let mut client = loop {
        match SignalServiceClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() + Duration::from_secs(1) > until => {
                return Err(e).context("could not connect the subscriber");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let req = pb::SubscribeRequest {
        kinds: vec![pb::EventKind::Update as i32],
        ..Default::default()
    };
    let mut stream = client.subscribe(req).await?.into_inner();
    let s = sub.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                m = stream.message() => m,
            };
            let Ok(Some(ev)) = msg else { break };
            let now = clock::now_ns();
            match ev.kind {
                Some(Kind::Update(u)) => {
                    s.record(u.ts_recv_ns, u.ts_event_ns, now);
                    s.record_hops(&u, ev.ts_sent_ns, now);
                }
                Some(Kind::Gap(g)) => {
                    s.gaps.fetch_add(g.dropped, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
    .await?;
    Ok(sub)
}

/// Downloads the stored history of `symbols` (from an hour ago to now) with `GetHistory`, again
/// and again until `until`; returns the ticks received and the downloads completed.
async fn download_history(addr: String, symbols: Vec<String>, until: Instant) -> (u64, u64) {
    let (mut ticks, mut downloads) = (0, 0);
    while Instant::now() < until {
        let Ok(mut client) = SignalServiceClient::connect(addr.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while Instant::now() < until {
            let now = clock::now_ns();
            let req = pb::HistoryRequest {
                symbols: symbols.clone(),
                from_ns: now - 3_600_000_000_000,
                to_ns: now,
                max_ticks_per_chunk: 0,
            };
            let Ok(stream) = client.get_history(req).await else {
                break;
            };
            let mut stream = stream.into_inner();
            let mut complete = true;
            loop {
                let chunk = tokio::select! {
                    _ = tokio::time::sleep_until(until) => None,
                    c = stream.message() => Some(c),
                };
                match chunk {
                    Some(Ok(Some(c))) => ticks += c.ticks.len() as u64,
                    Some(Ok(None)) => break,
                    _ => {
                        complete = false;
                        break;
                    }
                }
            }
            downloads += u64::from(complete);
            if !complete {
                break;
            }
        }
    }
    (ticks, downloads)
}

fn result(sub: &Subscription, rate: u64, window: Duration, peak_rss_kb: u64) -> RunResult {
    RunResult {
        expected: (rate as f64 * window.as_secs_f64()) as u64,
        received: sub.received.load(Ordering::Relaxed),
        gaps: sub.gaps.load(Ordering::Relaxed),
        from_recv: sub.from_recv.summary(),
        from_schedule: sub.from_schedule.summary(),
        p50_first: sub.first.summary().p50,
        p50_last: sub.last.summary().p50,
        peak_rss_kb,
        hops: std::array::from_fn(|i| sub.hops[i].summary()),
        ..RunResult::default()
    }
}

async fn embedded_run(args: &EmbeddedArgs, rate: u64, dir: &Path) -> anyhow::Result<RunResult> {
    let load = &args.load;
    let (names, instruments) = symbols(load.symbols);
    let port = free_port()?;
    let total = load.warmup + load.duration + Duration::from_secs(2);
    let db = dir.join(format!("bench-{rate}-{}.db", clock::now_ns()));
    let mut child = Command::new(std::env::current_exe()?)
        .args(["run", "--rate", &rate.to_string(), "--symbols", &names])
        .args(["--instrument", &instruments])
        .args(["--duration", &humantime::format_duration(total).to_string()])
        .args(["--grpc-addr", &format!("127.0.0.1:{port}")])
        .args(["--status-interval", "1h", "--store"])
        .arg(format!("sqlite:{}", db.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start tickflow run")?;
    let stop = CancellationToken::new();
    let rss = watch_rss(vec![child.id()], stop.clone());
    let start = clock::now_ns();
    let w0 = start + load.warmup.as_nanos() as i64;
    let w1 = w0 + load.duration.as_nanos() as i64;
    let until = Instant::now() + load.warmup + load.duration + Duration::from_secs(1);
    let research = args.history_client.then(|| {
        let symbols: Vec<String> = names.split(',').take(64).map(str::to_string).collect();
        tokio::spawn(download_history(
            format!("http://127.0.0.1:{port}"),
            symbols,
            until,
        ))
    });
    let sub = subscribe(format!("http://127.0.0.1:{port}"), w0, w1, until).await;
    if let Some(research) = research {
        let (ticks, downloads) = research.await?;
        eprintln!(
            "embedded {rate}/s history client: {ticks} ticks in {downloads} complete downloads"
        );
    }
    let status = wait_exit(&mut child, Duration::from_secs(120)).await;
    stop.cancel();
    let peak = rss.await?.iter().sum();
    let _ = std::fs::remove_file(&db);
    let sub = sub?;
    let status = status?;
    if !status.success() {
        bail!("tickflow run exited with {status}");
    }
    let mut summary = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut summary);
    }
    let mut r = result(&sub, rate, load.duration, peak);
    r.held_from_summary(&summary);
    Ok(r)
}

/// One run of the floor server at `rate`, measured by the same subscriber as the pipeline.
async fn embedded_floor_run(load: &LoadArgs, rate: u64) -> anyhow::Result<RunResult> {
    let port = free_port()?;
    let total = load.warmup + load.duration + Duration::from_secs(2);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench", "floor-server", "--rate", &rate.to_string()])
        .args(["--symbols", &load.symbols.to_string()])
        .args(["--duration", &humantime::format_duration(total).to_string()])
        .args(["--grpc-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start the floor server")?;
    let stop = CancellationToken::new();
    let rss = watch_rss(vec![child.id()], stop.clone());
    let start = clock::now_ns();
    let w0 = start + load.warmup.as_nanos() as i64;
    let w1 = w0 + load.duration.as_nanos() as i64;
    let until = Instant::now() + load.warmup + load.duration + Duration::from_secs(1);
    let sub = subscribe(format!("http://127.0.0.1:{port}"), w0, w1, until).await;
    let status = wait_exit(&mut child, Duration::from_secs(120)).await;
    stop.cancel();
    let peak = rss.await?.iter().sum();
    let sub = sub?;
    if !status?.success() {
        bail!("the floor server failed");
    }
    Ok(result(&sub, rate, load.duration, peak))
}

async fn embedded(args: EmbeddedArgs) -> anyhow::Result<()> {
    let load = &args.load;
    let dir = tempfile_dir()?;
    let mut rows = Vec::new();
    for &rate in &load.rates {
        let (mut runs, mut floors) = (Vec::new(), Vec::new());
        for rep in 0..load.repeat.max(1) {
            let r = embedded_run(&args, rate, &dir).await?;
            eprintln!(
                "embedded {rate}/s run {}: received {}/{} p50 {} p99 {} p99.9 {} max {} sustained {} rss {} MiB",
                rep + 1,
                r.received,
                r.expected,
                fmt_ns(r.from_recv.p50),
                fmt_ns(r.from_recv.p99),
                fmt_ns(r.from_recv.p999),
                fmt_ns(r.from_recv.max),
                r.sustained(),
                r.peak_rss_kb / 1024
            );
            runs.push(r);
            let f = embedded_floor_run(load, rate).await?;
            eprintln!(
                "embedded {rate}/s floor {}: received {}/{} p50 {} p99 {} p99.9 {}",
                rep + 1,
                f.received,
                f.expected,
                fmt_ns(f.from_recv.p50),
                fmt_ns(f.from_recv.p99),
                fmt_ns(f.from_recv.p999),
            );
            floors.push(f);
        }
        rows.push((rate, runs, floors));
    }
    report("embedded", load, &rows)
}

/// This run's scratch directory (databases, the stages' logs).
fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tickflow-bench-{}", std::process::id()))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = scratch_dir();
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

type Row = (u64, Vec<RunResult>, Vec<RunResult>);

fn report(scenario: &str, load: &LoadArgs, rows: &[Row]) -> anyhow::Result<()> {
    let m = |runs: &[RunResult], f: fn(&RunResult) -> u64| median(runs.iter().map(f).collect());
    println!(
        "\n{scenario}: {} symbols, {} s measured after {} s warm-up, median of {} runs per rate",
        load.symbols,
        load.duration.as_secs(),
        load.warmup.as_secs(),
        load.repeat.max(1)
    );
    let floor = rows.iter().any(|r| !r.2.is_empty());
    if floor {
        println!(
            "| ticks/s | received | p50 | p99 | p99.9 | max | p50 from schedule | floor p50 / p99 | pipeline / floor (p50, p99) | sustained | peak RSS, all processes |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    } else {
        println!(
            "| ticks/s | received | p50 | p99 | p99.9 | max | p50 from schedule | sustained | peak RSS |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    }
    let mut best = None;
    for (rate, runs, floors) in rows {
        let sustained = runs.iter().filter(|r| r.sustained()).count();
        let all = sustained == runs.len();
        if all {
            best = Some(*rate);
        }
        let recv = format!(
            "{:.1} %",
            100.0 * m(runs, |r| r.received) as f64 / m(runs, |r| r.expected).max(1) as f64
        );
        let (p50, p99) = (m(runs, |r| r.from_recv.p50), m(runs, |r| r.from_recv.p99));
        let common = format!(
            "| {rate} | {recv} | {} | {} | {} | {} | {} |",
            fmt_ns(p50),
            fmt_ns(p99),
            fmt_ns(m(runs, |r| r.from_recv.p999)),
            fmt_ns(m(runs, |r| r.from_recv.max)),
            fmt_ns(m(runs, |r| r.from_schedule.p50)),
        );
        let rss = format!("{} MiB", m(runs, |r| r.peak_rss_kb) / 1024);
        if floor {
            let (f50, f99) = (
                m(floors, |r| r.from_recv.p50),
                m(floors, |r| r.from_recv.p99),
            );
            println!(
                "{common} {} / {} | {:.1}x, {:.1}x | {sustained}/{} | {rss} |",
                fmt_ns(f50),
                fmt_ns(f99),
                p50 as f64 / f50.max(1) as f64,
                p99 as f64 / f99.max(1) as f64,
                runs.len()
            );
        } else {
            println!("{common} {sustained}/{} | {rss} |", runs.len());
        }
    }
    println!(
        "\nby hop (median over runs of each percentile; hops do not add up to the total: percentiles do not add)"
    );
    println!(
        "| ticks/s | {} |",
        HOPS.map(|h| format!("{h} p50 / p99")).join(" | ")
    );
    println!("|---:|{}", "---:|".repeat(HOPS.len()));
    for (rate, runs, _) in rows {
        let cells: Vec<String> = (0..HOPS.len())
            .map(|i| {
                let p50 = median(runs.iter().map(|r| r.hops[i].p50).collect());
                let p99 = median(runs.iter().map(|r| r.hops[i].p99).collect());
                format!("{} / {}", fmt_ns(p50), fmt_ns(p99))
            })
            .collect();
        println!("| {rate} | {} |", cells.join(" | "));
    }
    match best {
        Some(r) => println!("highest rate sustained in every run: {r} ticks/s"),
        None => println!("no rate was sustained in every run"),
    }
    for (rate, runs, _) in rows {
        let cpu = m(runs, RunResult::router_cpu_ns_per_tick);
        if cpu > 0 {
            let (lo, hi) = (
                runs.iter()
                    .map(RunResult::router_cpu_ns_per_tick)
                    .min()
                    .unwrap_or(0),
                runs.iter()
                    .map(RunResult::router_cpu_ns_per_tick)
                    .max()
                    .unwrap_or(0),
            );
            println!(
                "router CPU per tick at {rate} ticks/s: {} (min {}, max {}; /proc/<pid>/stat over the window)",
                fmt_ns(cpu),
                fmt_ns(lo),
                fmt_ns(hi)
            );
        }
        // Every stage, medians over the runs, in the order the runs name them.
        let names: Vec<&str> = runs
            .first()
            .map(|r| r.cpu_ns_per_tick.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default();
        let stages: Vec<String> = names
            .iter()
            .map(|name| {
                let per_run = runs
                    .iter()
                    .filter_map(|r| r.cpu_ns_per_tick.iter().find(|(n, _)| n == name))
                    .map(|s| s.1)
                    .collect();
                format!("{name} {}", fmt_ns(median(per_run)))
            })
            .collect();
        if !stages.is_empty() {
            println!(
                "CPU per tick by stage at {rate} ticks/s (medians): {}",
                stages.join(", ")
            );
        }
    }
    for (rate, runs, _) in rows {
        let (held, routed) = (m(runs, |r| r.held), m(runs, |r| r.routed));
        let longest = match m(runs, |r| r.held_max_ns) {
            0 => "n/a".to_string(),
            ns => fmt_ns(ns),
        };
        println!(
            "spike filter at {rate} ticks/s: held {held} of {routed} ticks ({:.3} %), longest hold {longest} (medians)",
            100.0 * held as f64 / routed.max(1) as f64,
        );
    }
    std::fs::create_dir_all(&load.out)?;
    let runs_json: Vec<String> = rows
        .iter()
        .map(|(rate, runs, floors)| {
            let list =
                |v: &[RunResult]| v.iter().map(RunResult::json).collect::<Vec<_>>().join(",");
            format!(
                "{{\"rate\":{rate},\"runs\":[{}],\"floor\":[{}]}}",
                list(runs),
                list(floors)
            )
        })
        .collect();
    let json = format!(
        "{{\"scenario\":\"{scenario}\",\"symbols\":{},\"duration_s\":{},\"warmup_s\":{},\"highest_sustained\":{},\"rates\":[{}]}}\n",
        load.symbols,
        load.duration.as_secs_f64(),
        load.warmup.as_secs_f64(),
        best.map_or("null".to_string(), |b| b.to_string()),
        runs_json.join(",")
    );
    let path = load.out.join(format!("{scenario}.json"));
    std::fs::write(&path, json)?;
    println!("wrote {}", path.display());
    Ok(())
}
