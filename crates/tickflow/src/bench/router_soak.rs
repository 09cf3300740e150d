//! `tickflow bench router-soak` (the `kafka` feature): the `router` binary alone for a long run,
//! fed by `ingest` (the simulated feed) through Kafka, with no indicators or persister. Its RSS
//! and CPU time are sampled from `/proc` and its routed count from `/metrics` at a fixed
//! interval; the report gives RSS at the end and at peak, and CPU per routed tick in the steady
//! state (from the first sample past one minute to the last one taken while the feed ran).
//!
//! The router's group is new and starts at the end of the raw topic, so only this run's ticks
//! are routed; it is the group's only member, so it owns every partition, and before the feed
//! starts it rebuilds them from the last `--dedup-window` of the clean topic (which earlier runs
//! filled): the time until it is ready is reported as the rebuild.

use super::distributed::{stage_command, terminate, wait_ready};
use super::*;
use tick_kafka::KafkaArgs;

/// Options of `tickflow bench router-soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterSoakArgs {
    /// Feed rate, ticks per second over all symbols.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// How long the feed runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    pub duration: Duration,
    /// Symbols in the feed (synthetic instruments SYM000, SYM001, ...).
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Time between two samples.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub sample_every: Duration,
    /// Directory of the JSON report (`router-soak.json`) and of the children's logs.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Kafka connection; `--kafka-property` is passed on to the router and the feed.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// One sample of the router.
struct Sample {
    t_s: f64,
    rss_mib: u64,
    peak_rss_mib: u64,
    cpu_s: f64,
    routed: u64,
}

/// Runs the soak and prints its table and summary (on stderr, as it goes).
pub async fn router_soak(a: RouterSoakArgs) -> anyhow::Result<()> {
    let (names, instruments) = symbols(a.symbols);
    let run = format!("soak-{}", clock::now_ns());
    let logs = a.out.join("router-soak-logs");
    std::fs::create_dir_all(&logs)?;
    let (rport, iport) = (free_port()?, free_port()?);
    let common = |name: &str, port: u16| -> anyhow::Result<Command> {
        let mut c = stage_command(name, port, &a.kafka, &logs, &run)?;
        c.env("RUST_LOG", "info");
        Ok(c)
    };
    let group = format!("{run}-router");
    a.kafka.ensure_topics().await?;
    a.kafka
        .commit_end_offsets(&group, tick_core::bus::topics::RAW)
        .await?;
    let mut router = common("router", rport)?
        .args(["--group", &group, "--instrument", &instruments])
        .spawn()?;
    let mut ingest: Option<Child> = None;
    let result = async {
        let started = Instant::now();
        wait_ready(rport, &mut router, "router").await?;
        let rebuild_s = started.elapsed().as_secs_f64();
        eprintln!("router ready (its partitions rebuilt from ticks.clean) after {rebuild_s:.1} s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let feed = ingest.insert(
            common("ingest", iport)?
                .args(["--rate", &a.rate.to_string(), "--symbols", &names])
                .args(["--duration", &humantime::format_duration(a.duration).to_string()])
                .spawn()?,
        );
        eprintln!(
            "router soak: {} ticks/s over {} symbols for {} s; router pid {}",
            a.rate,
            a.symbols,
            a.duration.as_secs(),
            router.id()
        );
        eprintln!("| t (s) | RSS MiB | peak RSS MiB | CPU s | routed | behind the feed |");
        eprintln!("|---:|---:|---:|---:|---:|---:|");
        let t0 = Instant::now();
        let mut samples = Vec::new();
        loop {
            let done = feed.try_wait()?.is_some();
            let s = sample(router.id(), rport, t0.elapsed().as_secs_f64()).await;
            let sent = (s.t_s.min(a.duration.as_secs_f64()) * a.rate as f64) as u64;
            eprintln!(
                "| {:.0} | {} | {} | {:.1} | {} | {} |",
                s.t_s,
                s.rss_mib,
                s.peak_rss_mib,
                s.cpu_s,
                s.routed,
                sent.saturating_sub(s.routed)
            );
            samples.push(s);
            if done {
                break;
            }
            // On the sampling grid, or as soon as the feed ends.
            let next = a.sample_every.as_secs_f64() * (samples.len() as f64);
            let wait = Duration::from_secs_f64((next - t0.elapsed().as_secs_f64()).max(0.0));
            let until = Instant::now() + wait;
            while Instant::now() < until && feed.try_wait()?.is_none() {
                tokio::time::sleep(Duration::from_millis(200).min(until - Instant::now())).await;
            }
        }
        // Let the router drain what the feed sent last.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let end = sample(router.id(), rport, t0.elapsed().as_secs_f64()).await;
        let steady: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= 60.0).collect();
        let (x, y) = if steady.len() >= 3 {
            (steady[0], steady[steady.len() - 2])
        } else {
            (&samples[0], &samples[samples.len() - 1])
        };
        let cpu_per_tick_us = (y.cpu_s - x.cpu_s) / (y.routed.saturating_sub(x.routed)).max(1) as f64 * 1e6;
        let expected = a.rate * a.duration.as_secs();
        let machine = machine();
        let json = format!(
            "{{\"scenario\":\"router-soak\",\"rate\":{},\"duration_s\":{},\"symbols\":{},\"machine\":{:?},\"rss_end_mib\":{},\"peak_rss_mib\":{},\"routed\":{},\"expected\":{expected},\"cpu_per_tick_us\":{:.2},\"rebuild_s\":{:.1},\"samples\":[{}]}}\n",
            a.rate,
            a.duration.as_secs(),
            a.symbols,
            machine,
            end.rss_mib,
            end.peak_rss_mib,
            end.routed,
            cpu_per_tick_us,
            rebuild_s,
            samples
                .iter()
                .map(|s| format!(
                    "{{\"t\":{:.1},\"rss_mib\":{},\"peak_rss_mib\":{},\"cpu_s\":{:.2},\"routed\":{}}}",
                    s.t_s, s.rss_mib, s.peak_rss_mib, s.cpu_s, s.routed
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        std::fs::write(a.out.join("router-soak.json"), json)?;
        eprintln!(
            "router after {} s at {} ticks/s: RSS {} MiB (peak {} MiB), routed {} of {expected} sent, CPU {cpu_per_tick_us:.1} us per tick (from {:.0} s to {:.0} s); machine: {machine}",
            a.duration.as_secs(),
            a.rate,
            end.rss_mib,
            end.peak_rss_mib,
            end.routed,
            x.t_s,
            y.t_s
        );
        eprintln!("wrote {}", a.out.join("router-soak.json").display());
        anyhow::Ok(())
    }
    .await;
    for c in ingest.iter_mut().chain([&mut router]) {
        terminate(c);
        if wait_exit(c, Duration::from_secs(30)).await.is_err() {
            let _ = c.kill();
        }
    }
    result
}

/// Samples the router `pid`, whose metrics are on `port`, `t_s` seconds into the feed.
async fn sample(pid: u32, port: u16, t_s: f64) -> Sample {
    let routed = match metrics_text(port).await {
        Some(text) => metric_sum(&text, "tickflow_router_ticks_total{outcome=\"clean\"}"),
        None => 0,
    };
    Sample {
        t_s,
        rss_mib: status_kb(pid, "VmRSS").unwrap_or(0) / 1024,
        peak_rss_mib: status_kb(pid, "VmHWM").unwrap_or(0) / 1024,
        cpu_s: cpu_ns(pid).unwrap_or(0) as f64 / 1e9,
        routed,
    }
}

/// The `lscpu` model line (`Model name`), or "unknown".
fn machine() -> String {
    Command::new("lscpu")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}
