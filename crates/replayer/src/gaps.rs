//! `replayer gaps`: lists the hours in which the market of a symbol was open
//! ([`tick_core::instrument::market_open`]) but storage holds no tick of it, and for each says
//! whether Kafka's retention still holds that hour, so it can be restored with `replayer kafka`.

use anyhow::Context;
use std::collections::BTreeSet;
use std::time::Duration;
use tick_core::store::{HOUR_NS, HistoryReader, hour_floor};
use tick_kafka::KafkaArgs;
pub use tick_kafka::coverage::{KafkaCoverage, kafka_coverage};

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
