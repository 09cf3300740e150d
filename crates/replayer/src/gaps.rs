//! `replayer gaps`: lists the hours in which the market of a symbol was open
//! ([`tick_core::instrument::market_open`]) but storage holds no tick of it, and for each says
//! whether Kafka's retention still holds that hour, so it can be restored with `replayer kafka`.

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tick_core::store::{HOUR_NS, HistoryReader, hour_floor};
use tick_kafka::KafkaArgs;

/// Options of `replayer gaps`.
#[derive(Debug, Clone, clap::Args)]
pub struct GapsArgs {
    /// Symbols to check, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Start (RFC 3339, rounded down to the hour).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub from: i64,
    /// End (RFC 3339, exclusive).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub to: i64,
    /// The store to check.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Skip the check of Kafka's retention.
    #[arg(long)]
    pub no_kafka: bool,
    /// Topic whose retention may still hold the missing hours.
    #[arg(long, default_value = tick_core::bus::topics::CLEAN)]
    pub topic: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// What Kafka holds of one hour (by message timestamp, every partition of the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaCoverage {
    /// Nothing of the hour was deleted and it has messages: a replay restores it.
    Retained {
        /// Messages of the hour (all symbols).
        messages: i64,
    },
    /// Retention deleted the start of the hour; the rest is still there.
    Partial {
        /// Messages of the hour still held (all symbols).
        messages: i64,
    },
    /// Retention deleted the hour.
    Expired,
    /// Nothing of the hour was deleted, but the topic never held messages of it.
    Empty,
}

impl KafkaCoverage {
    /// Returns whether a replay of the hour from Kafka would bring ticks back.
    pub fn replayable(&self) -> bool {
        matches!(
            self,
            KafkaCoverage::Retained { .. } | KafkaCoverage::Partial { .. }
        )
    }
}

/// One open-market hour with no stored tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The symbol.
    pub symbol: String,
    /// Start of the hour, UTC ns.
    pub hour_start_ns: i64,
    /// What Kafka holds of it (`None` with `--no-kafka`).
    pub kafka: Option<KafkaCoverage>,
}

/// What `replayer gaps` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapsReport {
    /// Symbol-hours checked (market open).
    pub open_hours: u64,
    /// Symbol-hours skipped because the market was closed.
    pub closed_hours: u64,
    /// The gaps, by symbol then hour.
    pub gaps: Vec<Gap>,
}

/// Returns an RFC 3339 rendering of a UTC time in ns.
fn rfc3339(ns: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64),
    )
    .to_string()
}

/// Returns the open-market hours of `symbols` in `[from_ns, to_ns)` (from rounded down to the
/// hour) without any stored tick, with the counts of open and closed hours.
pub async fn find_gaps(
    store: &dyn HistoryReader,
    symbols: &[String],
    from_ns: i64,
    to_ns: i64,
) -> anyhow::Result<GapsReport> {
    let mut report = GapsReport::default();
    for symbol in symbols {
        let have: BTreeSet<i64> = store
            .hours_with_ticks(symbol, from_ns, to_ns)
            .await
            .with_context(|| format!("failed to read the stored hours of {symbol}"))?
            .into_iter()
            .collect();
        let mut h = hour_floor(from_ns);
        while h < to_ns {
            if tick_core::instrument::market_open(symbol, h) {
                report.open_hours += 1;
                if !have.contains(&h) {
                    report.gaps.push(Gap {
                        symbol: symbol.clone(),
                        hour_start_ns: h,
                        kafka: None,
                    });
                }
            } else {
                report.closed_hours += 1;
            }
            h += HOUR_NS;
        }
    }
    Ok(report)
}

/// Returns what `topic` holds of each hour (start, UTC ns): both ends resolved to offsets per
/// partition with `offsets_for_times`, compared with the partition's low watermark. An hour
/// is intact in a partition when the log was never truncated or its oldest retained message
/// is older than the hour. Read-only: no group is joined, nothing is committed.
pub async fn kafka_coverage(
    kafka: &KafkaArgs,
    topic: &str,
    hours: &[i64],
) -> anyhow::Result<HashMap<i64, KafkaCoverage>> {
    let group = format!("replayer-gaps-{}", std::process::id());
    let consumer: BaseConsumer = kafka
        .config(&[("group.id", &group), ("enable.auto.commit", "false")])?
        .create()
        .context("failed to create a Kafka consumer")?;
    let (topic, hours) = (topic.to_string(), hours.to_vec());
    tokio::task::spawn_blocking(move || {
        let t = Duration::from_secs(30);
        let md = consumer
            .fetch_metadata(Some(&topic), t)
            .with_context(|| format!("failed to read the metadata of {topic}"))?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|m| m.error().is_none())
            .flat_map(|m| m.partitions().iter().map(|p| p.id()))
            .collect();
        let mut marks = HashMap::new();
        for p in &parts {
            let w = consumer
                .fetch_watermarks(&topic, *p, t)
                .with_context(|| format!("failed to read the watermarks of {topic}/{p}"))?;
            marks.insert(*p, w);
        }
        // Offset of the first message at or after `ms` in each partition (the high watermark
        // when there is none).
        let resolve = |ms: i64| -> anyhow::Result<HashMap<i32, i64>> {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(ms))?;
            }
            let mut out = HashMap::new();
            for e in consumer.offsets_for_times(tpl, t)?.elements() {
                let (low, high) = marks[&e.partition()];
                let o = match e.offset() {
                    rdkafka::Offset::Offset(o) => o,
                    _ => high,
                };
                out.insert(e.partition(), o.clamp(low, high));
            }
            Ok(out)
        };
        let mut out = HashMap::new();
        for h in hours {
            let starts = resolve(h / 1_000_000)?;
            let ends = resolve((h + HOUR_NS) / 1_000_000)?;
            let mut messages = 0;
            let mut truncated = false;
            for p in &parts {
                let (low, _) = marks[p];
                let (s, e) = (starts[p], ends[p]);
                messages += (e - s).max(0);
                // The first retained message is at or after the hour's start, and older ones
                // were deleted: some of the hour may have gone with them.
                truncated |= low > 0 && s <= low;
            }
            let c = match (messages > 0, truncated) {
                (true, false) => KafkaCoverage::Retained { messages },
                (true, true) => KafkaCoverage::Partial { messages },
                (false, true) => KafkaCoverage::Expired,
                (false, false) => KafkaCoverage::Empty,
            };
            out.insert(h, c);
        }
        Ok(out)
    })
    .await?
}

/// Runs `replayer gaps`: prints a table of the gaps and returns the report (`gaps` empty when
/// storage holds every open-market hour).
pub async fn run_gaps(args: GapsArgs) -> anyhow::Result<GapsReport> {
    anyhow::ensure!(args.from < args.to, "--from must be before --to");
    let store = args.store.open().await?.reader()?;
    let symbols: Vec<String> = args
        .symbols
        .iter()
        .map(|s| tick_core::instrument::canonical(s))
        .filter(|s| !s.is_empty())
        .collect();
    let mut report = find_gaps(&*store, &symbols, args.from, args.to).await?;
    if !args.no_kafka && !report.gaps.is_empty() {
        let hours: Vec<i64> = report
            .gaps
            .iter()
            .map(|g| g.hour_start_ns)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let coverage = kafka_coverage(&args.kafka, &args.topic, &hours)
            .await
            .context("failed to check Kafka's retention (--no-kafka skips it)")?;
        for g in &mut report.gaps {
            g.kafka = coverage.get(&g.hour_start_ns).copied();
        }
    }
    print!("{}", render(&report, &args.topic));
    Ok(report)
}

/// Returns the table `replayer gaps` prints.
pub fn render(report: &GapsReport, topic: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if !report.gaps.is_empty() {
        let _ = writeln!(s, "{:<12} {:<22} kafka ({topic})", "symbol", "hour (UTC)");
    }
    for g in &report.gaps {
        let from = rfc3339(g.hour_start_ns);
        let to = rfc3339(g.hour_start_ns + HOUR_NS);
        let replay = format!("replay with: replayer kafka --topic {topic} --from {from} --to {to}");
        let kafka = match g.kafka {
            None => "not checked".to_string(),
            Some(KafkaCoverage::Retained { messages }) => {
                format!("retained in Kafka ({messages} messages of all symbols; {replay})")
            }
            Some(KafkaCoverage::Partial { messages }) => format!(
                "partly retained in Kafka (start expired, {messages} messages left; {replay})"
            ),
            Some(KafkaCoverage::Expired) => "not in Kafka (expired)".to_string(),
            Some(KafkaCoverage::Empty) => "not in Kafka (no messages in that hour)".to_string(),
        };
        let _ = writeln!(s, "{:<12} {:<22} {kafka}", g.symbol, from);
    }
    let _ = writeln!(
        s,
        "{} gap(s) in {} open-market symbol-hours ({} closed hours not checked)",
        report.gaps.len(),
        report.open_hours,
        report.closed_hours
    );
    s
}
