//! The distributed scenario of `tickflow bench` (the `kafka` feature): the stage binaries linked
//! by Kafka, next to the bare two-hop Kafka floor measured in the same run.

use super::*;
use prost::Message;
use tick_core::bus::{Consumer, Producer};
use tick_kafka::KafkaArgs;

/// Options of the distributed scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct DistributedArgs {
    /// The load.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The persister's store, `postgres://...` (it runs, as in production, but is not on the
    /// latency path).
    #[arg(long, env = "TICKFLOW_STORE")]
    pub store: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Measure only the two-hop Kafka floor (for sweeps of client and broker settings); the
    /// report is written as `kafka-floor.json`.
    #[arg(long)]
    pub floor_only: bool,
}

async fn distributed_run(d: &DistributedArgs, rate: u64, dir: &Path) -> anyhow::Result<RunResult> {
    let load = &d.load;
    let (names, instruments) = symbols(load.symbols);
    let run = format!("bench-{}", clock::now_ns());
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect::<Result<_, _>>()?;
    let common = |name: &str, port: u16| stage_command(name, port, &d.kafka, dir, &run);
    // Fresh groups positioned at the end of their topics: only this run's ticks are measured,
    // however much earlier runs left in the topics.
    use tick_core::bus::topics;
    for (group, topic) in [
        (format!("{run}-router"), topics::RAW),
        (format!("{run}-indicators"), topics::CLEAN),
        (format!("{run}-persister"), topics::CLEAN),
        (format!("{run}-persister-dlq"), topics::DLQ),
        (format!("{run}-persister-bars"), topics::BARS),
    ] {
        d.kafka.commit_end_offsets(&group, topic).await?;
    }
    let mut children: Vec<(String, Child, u16)> = Vec::new();
    let result: anyhow::Result<RunResult> = async {
        let mut router = common("router", ports[0])?;
        router.args([
            "--group",
            &format!("{run}-router"),
            "--instrument",
            &instruments,
        ]);
        children.push(("router".into(), router.spawn()?, ports[0]));
        let mut ind = common("indicators", ports[1])?;
        ind.args(["--group", &format!("{run}-indicators")])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports[4])]);
        children.push(("indicators".into(), ind.spawn()?, ports[1]));
        let mut pers = common("persister", ports[2])?;
        pers.args(["--group", &format!("{run}-persister")])
            .args(["--store", &d.store]);
        children.push(("persister".into(), pers.spawn()?, ports[2]));
        for (name, child, port) in children.iter_mut() {
            wait_ready(*port, child, name).await?;
        }
        // Consumer groups join before the first tick is sent.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let total = load.warmup + load.duration + Duration::from_secs(1);
        let mut ingest = common("ingest", ports[3])?;
        ingest
            .args(["--rate", &rate.to_string(), "--symbols", &names])
            .args(["--duration", &humantime::format_duration(total).to_string()]);
        children.push(("ingest".into(), ingest.spawn()?, ports[3]));
        let stop = CancellationToken::new();
        let rss = watch_rss(children.iter().map(|c| c.1.id()).collect(), stop.clone());
        // Each stage's CPU over the measurement window.
        let pids: Vec<(String, u32)> = children
            .iter()
            .map(|(name, c, _)| (name.clone(), c.id()))
            .collect();
        let window = (Instant::now() + load.warmup, load.duration);
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(window.0).await;
            let a: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ns(*p)).collect();
            tokio::time::sleep(window.1).await;
            pids.into_iter()
                .zip(a)
                .filter_map(|((name, p), a)| Some((name, cpu_ns(p)?.checked_sub(a?)?)))
                .collect::<Vec<_>>()
        });
        let start = clock::now_ns();
        let w0 = start + load.warmup.as_nanos() as i64;
        let w1 = w0 + load.duration.as_nanos() as i64;
        let until = Instant::now() + load.warmup + load.duration + Duration::from_secs(2);
        let sub = subscribe(format!("http://127.0.0.1:{}", ports[4]), w0, w1, until).await?;
        let ingest = &mut children.last_mut().expect("ingest").1;
        let status = wait_exit(ingest, Duration::from_secs(60)).await?;
        stop.cancel();
        let peaks = rss.await?;
        let per_process: Vec<String> = children
            .iter()
            .zip(&peaks)
            .map(|((name, _, _), kb)| format!("{name} {} MiB", kb / 1024))
            .collect();
        eprintln!("peak RSS: {}", per_process.join(", "));
        let peak = peaks.iter().sum();
        if !status.success() {
            bail!("ingest exited with {status}");
        }
        let mut r = result(&sub, rate, load.duration, peak);
        if let Ok(stages) = cpu.await {
            r.cpu_ns_per_tick = stages
                .into_iter()
                .map(|(name, ns)| (name, ns / r.expected.max(1)))
                .collect();
        }
        if let Some((routed, held)) = super::held_from_metrics(ports[0]).await {
            (r.routed, r.held) = (routed, held);
        }
        Ok(r)
    }
    .await;
    for (_, child, _) in children.iter_mut() {
        terminate(child);
    }
    for (name, child, _) in children.iter_mut() {
        if let Err(e) = wait_exit(child, Duration::from_secs(30)).await {
            eprintln!("{name}: {e}");
        }
    }
    result
}

/// The floor: ticks relayed over two Kafka topics by tickflow's own producer and consumer
/// settings, no pipeline logic, at `rate` on a fixed schedule.
async fn floor_run(d: &DistributedArgs, rate: u64) -> anyhow::Result<RunResult> {
    let load = &d.load;
    let run = format!("bench-floor-{}", clock::now_ns());
    let (a, b) = (format!("{run}.a"), format!("{run}.b"));
    d.kafka.create_topic(&a, d.kafka.topic_partitions).await?;
    d.kafka.create_topic(&b, d.kafka.topic_partitions).await?;
    let stop = CancellationToken::new();
    let mut c1 = d.kafka.consumer(&format!("{run}-1"), &a, stop.clone())?;
    let mut c2 = d.kafka.consumer(&format!("{run}-2"), &b, stop.clone())?;
    let p1 = d.kafka.producer(true)?;
    let p2 = d.kafka.producer(true)?;
    let relay = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = c1.recv().await {
                if let Ok(r) = p2.send(&b, &m.key, m.payload).await {
                    tokio::spawn(r);
                }
            }
        })
    };
    // The same warm-up as the pipeline gets (its groups join before its feed starts).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = clock::now_ns();
    let w0 = start + load.warmup.as_nanos() as i64;
    let w1 = w0 + load.duration.as_nanos() as i64;
    let sub = Subscription::new(w0, w1);
    let sink = {
        let s = sub.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = c2.recv().await {
                let now = clock::now_ns();
                if let Ok(t) = pb::Tick::decode(m.payload.as_slice()) {
                    s.record(t.ts_recv_ns, t.ts_event_ns, now);
                }
            }
        })
    };
    // The simulated feed, paced exactly as `ingest` paces it.
    let (names, _) = symbols(load.symbols);
    let mut source = ingest::sim::SimSource::new(&ingest::sim::SimConfig {
        symbols: names.split(',').map(str::to_string).collect(),
        rate: rate as f64,
        max_ticks: Some((rate as f64 * (load.warmup + load.duration).as_secs_f64()) as u64),
        ..Default::default()
    });
    let mut batch = Vec::new();
    use ingest::source::TickSource;
    while source.next_batch(&mut batch).await? {
        for t in batch.drain(..) {
            let r = p1.send(&a, t.symbol.as_bytes(), t.encode()).await?;
            tokio::spawn(r);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let _ = relay.await;
    let _ = sink.await;
    Ok(result(&sub, rate, load.duration, 0))
}

pub(super) async fn distributed(d: DistributedArgs) -> anyhow::Result<()> {
    d.kafka.ensure_topics().await?;
    let dir = tempfile_dir()?;
    let mut rows = Vec::new();
    for &rate in &d.load.rates {
        let (mut runs, mut floors) = (Vec::new(), Vec::new());
        for rep in 0..d.load.repeat.max(1) {
            if d.floor_only {
                let f = floor_run(&d, rate).await?;
                eprintln!(
                    "kafka floor {rate}/s run {}: received {}/{} p50 {} p99 {} p99.9 {}",
                    rep + 1,
                    f.received,
                    f.expected,
                    fmt_ns(f.from_recv.p50),
                    fmt_ns(f.from_recv.p99),
                    fmt_ns(f.from_recv.p999),
                );
                runs.push(f);
                continue;
            }
            // The pipeline and the floor take turns going first, so neither always meets the
            // broker in the state the other left it in.
            let (r, f) = if rep % 2 == 0 {
                let r = distributed_run(&d, rate, &dir).await?;
                (r, floor_run(&d, rate).await?)
            } else {
                let f = floor_run(&d, rate).await?;
                (distributed_run(&d, rate, &dir).await?, f)
            };
            eprintln!(
                "distributed {rate}/s run {}: received {}/{} p50 {} p99 {} p99.9 {} (floor p50 {} p99 {}) sustained {} rss {} MiB; logs in {}",
                rep + 1,
                r.received,
                r.expected,
                fmt_ns(r.from_recv.p50),
                fmt_ns(r.from_recv.p99),
                fmt_ns(r.from_recv.p999),
                fmt_ns(f.from_recv.p50),
                fmt_ns(f.from_recv.p99),
                r.sustained(),
                r.peak_rss_kb / 1024,
                dir.display()
            );
            runs.push(r);
            floors.push(f);
        }
        rows.push((rate, runs, floors));
    }
    let scenario = if d.floor_only {
        "kafka-floor"
    } else {
        "distributed"
    };
    report(scenario, &d.load, &rows)
}

/// The command of stage binary `name` (next to this one) with its metrics on `port`, on the
/// Kafka of `kafka` (its `--kafka-property` passed on), logging as text to
/// `<dir>/<run>-<name>.log`.
pub(super) fn stage_command(
    name: &str,
    port: u16,
    kafka: &KafkaArgs,
    dir: &Path,
    run: &str,
) -> anyhow::Result<Command> {
    let log = std::fs::File::create(dir.join(format!("{run}-{name}.log")))?;
    let mut c = Command::new(sibling(name)?);
    c.args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--kafka-brokers", &kafka.brokers])
        .args(
            kafka
                .properties
                .iter()
                .flat_map(|p| ["--kafka-property", p]),
        )
        .env("TICKFLOW_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(log);
    Ok(c)
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to {}: build every binary first (cargo build --release --workspace --bins --all-features)",
            name,
            me.display()
        );
    }
    Ok(p)
}

pub(super) fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits until `GET /readyz` on `port` answers 200. Up to 600 s: a router is ready only once it
/// has rebuilt its partitions from the last `--dedup-window` of `ticks.clean`, which earlier
/// runs at high rates can have filled with tens of millions of ticks.
pub(super) async fn wait_ready(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(s) = child.try_wait()? {
            bail!("{what} exited early: {s}");
        }
        if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = c
                .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
