//! `replayer import`: bulk loads history (Dukascopy `.bi5` hours, CSV tick files) straight into
//! storage at full speed, through the same decoders the ingest sources use and the store's
//! idempotent `insert_ticks`. Work is cut into units (one symbol-hour, or a chunk of CSV lines);
//! each finished unit is recorded in the store's `import_progress` table, so an interrupted
//! import started again skips what is done, and a unit cut off halfway is simply redone (the
//! rows it already wrote are ignored as duplicates).

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HOUR_NS, ImportCheckpoints, TickWriter, hour_floor};
use tick_core::{KeyOrdinals, Tick, clock};
use tick_formats::csv::CsvParser;
use tick_formats::csv::MAX_CSV_LINE;
use tick_formats::dukascopy::{self, Location};
use tick_formats::lines::Line;
use tokio::sync::mpsc;

/// Options of `replayer import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// What to import.
    #[command(subcommand)]
    pub input: ImportInput,
}

/// The inputs `replayer import` reads.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImportInput {
    /// Dukascopy `.bi5` hour files from a directory or a URL in Dukascopy's layout; one unit of
    /// work per symbol-hour, a missing hour (no file, HTTP 404) is an empty hour.
    Dukascopy(DukascopyImportArgs),
    /// A CSV tick file (MetaTrader 5 export or `timestamp,bid,ask`); one unit of work per
    /// chunk of lines, malformed lines rejected with their line number.
    Csv(CsvImportArgs),
}

/// Options of `replayer import dukascopy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DukascopyImportArgs {
    /// Symbols, comma-separated (canonical spelling, e.g. EURUSD,BTCUSD).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Start (RFC 3339, rounded down to the hour).
    #[arg(long, env = "TICKFLOW_FROM", value_parser = crate::parse_time_ns)]
    pub from: i64,
    /// End (RFC 3339, exclusive).
    #[arg(long, env = "TICKFLOW_TO", value_parser = crate::parse_time_ns)]
    pub to: i64,
    /// Where the hour files are: the same flags as `--source dukascopy` of ingest and
    /// `tickflow run`.
    #[command(flatten)]
    pub location: tick_formats::dukascopy::DukascopyArgs,
    /// Hours read (or downloaded) ahead of the writer, in parallel.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Storage and run options.
    #[command(flatten)]
    pub common: ImportCommon,
}

/// Options of `replayer import csv`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsvImportArgs {
    /// The file and how to read it: the same flags as `--source csv` of ingest and `tickflow
    /// run`.
    #[command(flatten)]
    pub csv: tick_formats::csv::CsvArgs,
    /// Lines per unit of work (the checkpoint granularity).
    #[arg(long, default_value_t = 100_000)]
    pub chunk_lines: usize,
    /// Storage and run options.
    #[command(flatten)]
    pub common: ImportCommon,
}

/// Options every import shares: where to write, batching, checkpoints, progress.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportCommon {
    /// The store to write to.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Ticks per insert.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
    /// Ignore the checkpoint: redo every unit (rows already stored are still not duplicated).
    #[arg(long)]
    pub restart: bool,
    /// How often to log progress when stderr is not a terminal (no progress bar).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub log_every: Duration,
}

/// Where an import writes: the store's writer and its checkpoints.
#[derive(Clone)]
pub struct ImportTarget {
    /// Where the ticks go.
    pub writer: Arc<dyn TickWriter>,
    /// Where finished units are recorded.
    pub checkpoints: Arc<dyn ImportCheckpoints>,
}

impl ImportCommon {
    /// Opens and migrates the store `--store` names.
    pub async fn open_store(&self) -> anyhow::Result<ImportTarget> {
        let stores = self.store.open().await?;
        Ok(ImportTarget {
            checkpoints: stores.checkpoints()?,
            writer: stores.writer,
        })
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// The checkpoint key of the import (`dukascopy`, or `csv ...` naming the file).
    pub source: String,
    /// Units of work in the whole import (for CSV: those read so far).
    pub units_total: u64,
    /// Units finished by this run.
    pub units_done: u64,
    /// Units skipped because an earlier run finished them.
    pub units_skipped: u64,
    /// Ticks decoded by this run (skipped units not included).
    pub ticks_read: u64,
    /// Rows newly stored.
    pub rows_stored: u64,
    /// Ticks whose row was already stored.
    pub already_stored: u64,
    /// Malformed CSV lines (each logged with file:line).
    pub rejected_lines: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Whether a shutdown stopped the run before its end.
    pub interrupted: bool,
}

impl ImportReport {
    /// Returns the write rate: ticks read (new or already stored) per second.
    pub fn rows_per_sec(&self) -> f64 {
        self.ticks_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let left = self.units_total - self.units_done - self.units_skipped;
        writeln!(f, "import {}:", self.source)?;
        // A CSV file's units are counted as it is read: an interrupted run does not know them all.
        let left = if self.interrupted && self.source.starts_with("csv") {
            "the rest of the file".to_string()
        } else {
            left.to_string()
        };
        writeln!(
            f,
            "  units: {} seen, {} done, {} skipped (finished by an earlier run), {} left",
            self.units_total, self.units_done, self.units_skipped, left
        )?;
        writeln!(
            f,
            "  ticks read {}, rows newly stored {}, already stored {}, rejected lines {}",
            self.ticks_read, self.rows_stored, self.already_stored, self.rejected_lines
        )?;
        write!(
            f,
            "  elapsed {:.2?}, {:.0} rows/s",
            self.elapsed,
            self.rows_per_sec()
        )?;
        if self.interrupted {
            write!(
                f,
                "\n  interrupted: stopped after the current batch; run the same command again to resume"
            )?;
        }
        Ok(())
    }
}

/// One unit of work, decoded and ready to write.
struct Unit {
    /// Its checkpoint name.
    name: String,
    ticks: Vec<Tick>,
    rejected: u64,
    /// How far it moves the progress bar.
    weight: u64,
}

/// Runs `replayer import`: prints the report on stdout and returns it. On an input error
/// (a corrupt file) the report so far is printed and the error returned; the units finished
/// before it stay recorded.
pub async fn run_import(
    args: ImportArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ImportReport> {
    let (mut report, result) = match args.input {
        ImportInput::Dukascopy(a) => {
            let store = a.common.open_store().await?;
            import_dukascopy(&a, store, shutdown).await
        }
        ImportInput::Csv(a) => {
            let store = a.common.open_store().await?;
            import_csv(&a, store, shutdown).await
        }
    };
    if report.interrupted {
        tracing::warn!("import interrupted by shutdown after the current batch");
    }
    report.elapsed = report.elapsed.max(Duration::from_nanos(1));
    println!("{report}");
    result.map(|()| report)
}

/// Imports Dukascopy hours into `store`; returns the report and how the run ended.
pub async fn import_dukascopy(
    args: &DukascopyImportArgs,
    store: ImportTarget,
    shutdown: CancellationToken,
) -> (ImportReport, anyhow::Result<()>) {
    let mut report = ImportReport {
        source: "dukascopy".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let result = async {
        let location = args.location.location()?;
        let symbols: Vec<String> = args
            .symbols
            .iter()
            .map(|s| tick_core::instrument::canonical(s))
            .filter(|s| !s.is_empty())
            .collect();
        dukascopy::check_symbols(&symbols)?;
        let done = checkpoint(&*store.checkpoints, &report.source, args.common.restart).await?;
        let mut pending = Vec::new();
        for s in &symbols {
            let mut h = hour_floor(args.from);
            while h < args.to {
                report.units_total += 1;
                if done.contains_key(&unit_name(s, h, args.from, args.to)) {
                    report.units_skipped += 1;
                } else {
                    pending.push((s.clone(), h));
                }
                h += HOUR_NS;
            }
        }
        if report.units_skipped > 0 {
            tracing::info!(
                skipped = report.units_skipped,
                "skipping hours finished by an earlier run (--restart redoes them)"
            );
        }
        let total = pending.len() as u64;
        let (tx, rx) = mpsc::channel::<anyhow::Result<Unit>>(args.parallel.max(1));
        let client = reqwest::Client::new();
        let (from, to) = (args.from, args.to);
        let parallel = args.parallel.max(1);
        let reader = tokio::spawn(async move {
            let mut loads = futures::stream::iter(pending)
                .map(|(symbol, hour)| {
                    let (location, client) = (location.clone(), client.clone());
                    async move { load_hour(&location, &client, &symbol, hour, from, to).await }
                })
                .buffered(parallel);
            while let Some(unit) = loads.next().await {
                let stop = unit.is_err();
                if tx.send(unit).await.is_err() || stop {
                    break;
                }
            }
        });
        let bar = progress_bar(total, "hours");
        let r = write_units(
            &store,
            &mut report,
            rx,
            &done,
            &args.common,
            bar,
            &shutdown,
            started,
        )
        .await;
        reader.abort();
        r
    }
    .await;
    report.elapsed = started.elapsed();
    (report, result)
}

/// Returns the checkpoint name of one symbol-hour, `EURUSD 2019-02-04T00`; an hour the range
/// `[from_ns, to_ns)` cuts is named with the part imported (`EURUSD 2019-02-04T00 ms
/// 1800000-3600000`), so a later import of the whole hour does not take it as done.
pub fn unit_name(symbol: &str, hour_start_ns: i64, from_ns: i64, to_ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(hour_start_ns.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    let name = format!("{symbol} {}", &s[..13]);
    if from_ns <= hour_start_ns && to_ns >= hour_start_ns + HOUR_NS {
        return name;
    }
    let ms =
        |ns: i64| (ns.clamp(hour_start_ns, hour_start_ns + HOUR_NS) - hour_start_ns) / 1_000_000;
    format!("{name} ms {}-{}", ms(from_ns), ms(to_ns))
}

async fn load_hour(
    location: &Location,
    client: &reqwest::Client,
    symbol: &str,
    hour: i64,
    from: i64,
    to: i64,
) -> anyhow::Result<Unit> {
    let records = match location {
        // Reading and LZMA decoding are blocking CPU work: keep them off the runtime threads.
        Location::Dir(root) => {
            let (root, s) = (root.clone(), symbol.to_string());
            tokio::task::spawn_blocking(move || dukascopy::read_hour(&root, &s, hour)).await?
        }
        Location::Url(_) => location.hour(client, symbol, hour).await,
    }?;
    let mut ticks = dukascopy::to_ticks(
        symbol,
        hour,
        &records,
        clock::now_ns(),
        &mut KeyOrdinals::default(),
    )?;
    // The range may cut the first or last hour.
    ticks.retain(|t| t.ts_event_ns >= from && t.ts_event_ns < to);
    Ok(Unit {
        name: unit_name(symbol, hour, from, to),
        ticks,
        rejected: 0,
        weight: 1,
    })
}

/// Imports a CSV file into `store`; returns the report and how the run ended.
pub async fn import_csv(
    args: &CsvImportArgs,
    store: ImportTarget,
    shutdown: CancellationToken,
) -> (ImportReport, anyhow::Result<()>) {
    let started = Instant::now();
    let mut report = ImportReport::default();
    let result = async {
        let (file, parser) = args.csv.parser("csv")?;
        let symbol = parser.symbol().to_string();
        let path = std::fs::canonicalize(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        let len = std::fs::metadata(&path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .len();
        let offset_ns = parser.utc_offset_ns();
        // The checkpoint belongs to this file, at this size, parsed this way: a file that grew
        // or a different offset starts afresh (harmlessly: inserts are idempotent).
        report.source = format!(
            "csv {symbol} {} ({len} bytes, {:?}, utc offset {}s)",
            path.display(),
            args.csv.csv_format,
            offset_ns / 1_000_000_000
        );
        let done = checkpoint(&*store.checkpoints, &report.source, args.common.restart).await?;
        let (tx, rx) = mpsc::channel::<anyhow::Result<Unit>>(2);
        let chunk = args.chunk_lines.max(1);
        let reader = tokio::task::spawn_blocking({
            let path = path.clone();
            move || read_csv_chunks(&path, parser, chunk, tx)
        });
        let bar = progress_bar(len, "bytes");
        let r = write_units(
            &store,
            &mut report,
            rx,
            &done,
            &args.common,
            bar,
            &shutdown,
            started,
        )
        .await;
        // The reader stops by itself once the receiver is gone.
        let _ = reader.await;
        r
    }
    .await;
    report.elapsed = started.elapsed();
    (report, result)
}

/// Parses the file in chunks of `chunk` lines and sends them. Every chunk is parsed, even one
/// an earlier run finished: the parser carries state (MT5's unchanged bid/ask, key ordinals)
/// from line to line, so the keys must come out the same as in a run from the start.
fn read_csv_chunks(
    path: &std::path::Path,
    mut parser: CsvParser,
    chunk: usize,
    tx: mpsc::Sender<anyhow::Result<Unit>>,
) {
    const LOGGED_REJECTS: u64 = 100;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(anyhow::anyhow!("{}: {e}", path.display())));
            return;
        }
    };
    // Lines are bounded like the CSV source's: a longer one, or one that is not UTF-8, is a
    // rejected line, never held whole and never the end of the import.
    let mut lines = tick_formats::lines::ReadLines::new(file, MAX_CSV_LINE);
    let mut line_no = 0usize;
    let mut rejected_total = 0u64;
    loop {
        let first = line_no + 1;
        let mut unit = Unit {
            name: String::new(),
            ticks: Vec::with_capacity(chunk),
            rejected: 0,
            weight: 0,
        };
        for _ in 0..chunk {
            let Some(line) = lines.next() else { break };
            line_no += 1;
            let line = match line {
                Ok(Line::Text(l)) => Ok(l),
                Ok(Line::Refused(r)) => Err((r.len, r.why)),
                Err(e) => {
                    let _ =
                        tx.blocking_send(Err(anyhow::anyhow!("{}:{line_no}: {e}", path.display())));
                    return;
                }
            };
            unit.weight += line.as_ref().map_or_else(|(n, _)| *n, String::len) as u64 + 1;
            match line
                .map_err(|(_, why)| why)
                .and_then(|l| parser.parse_line(&l))
            {
                Ok(Some(t)) => unit.ticks.push(t),
                Ok(None) => {}
                Err(reason) => {
                    unit.rejected += 1;
                    rejected_total += 1;
                    if rejected_total <= LOGGED_REJECTS {
                        tracing::warn!("rejected line {}:{line_no}: {reason}", path.display());
                    } else if rejected_total == LOGGED_REJECTS + 1 {
                        tracing::warn!(
                            "more than {LOGGED_REJECTS} rejected lines: counting the rest without logging them"
                        );
                    }
                }
            }
        }
        if line_no < first {
            return;
        }
        unit.name = format!("lines {first}-{line_no}");
        if tx.blocking_send(Ok(unit)).is_err() {
            return;
        }
    }
}

/// Returns the finished units of `source`, or none when restarting.
async fn checkpoint(
    store: &dyn ImportCheckpoints,
    source: &str,
    restart: bool,
) -> anyhow::Result<HashMap<String, u64>> {
    if restart {
        tracing::info!(source, "--restart: ignoring the checkpoint");
        return Ok(HashMap::new());
    }
    store
        .finished_import_units(source)
        .await
        .context("failed to read the import checkpoint")
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    // Drawn on stderr, and hidden by indicatif when stderr is not a terminal.
    let bar = ProgressBar::new(len);
    let units = if what == "bytes" {
        "{bytes}/{total_bytes}"
    } else {
        "{pos}/{len} hours"
    };
    let style = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{wide_bar}}] {units} {{msg}} ETA {{eta}}"
    ))
    .expect("valid progress template");
    bar.set_style(style);
    bar
}

/// Writes units as they arrive, in batches, recording each finished one; skips those in
/// `done`. Stops after the current batch when `shutdown` trips.
#[allow(clippy::too_many_arguments)]
async fn write_units(
    store: &ImportTarget,
    report: &mut ImportReport,
    mut rx: mpsc::Receiver<anyhow::Result<Unit>>,
    done: &HashMap<String, u64>,
    common: &ImportCommon,
    bar: ProgressBar,
    shutdown: &CancellationToken,
    started: Instant,
) -> anyhow::Result<()> {
    let batch = common.batch_size.max(1);
    let mut last_log = Instant::now();
    let csv = report.source.starts_with("csv");
    let result = async {
        'units: loop {
            let unit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => { report.interrupted = true; break 'units; }
                u = rx.recv() => u,
            };
            let Some(unit) = unit else { break };
            let unit = unit?;
            if csv {
                report.units_total += 1;
                report.rejected_lines += unit.rejected;
                if done.contains_key(&unit.name) {
                    report.units_skipped += 1;
                    bar.inc(unit.weight);
                    continue;
                }
            }
            for chunk in unit.ticks.chunks(batch) {
                let new = store
                    .writer
                    .insert_ticks(chunk)
                    .await
                    .with_context(|| format!("failed to store ticks of {}", unit.name))?;
                report.ticks_read += chunk.len() as u64;
                report.rows_stored += new;
                report.already_stored += chunk.len() as u64 - new;
                if shutdown.is_cancelled() {
                    report.interrupted = true;
                    break 'units;
                }
            }
            store
                .checkpoints
                .finish_import_unit(&report.source, &unit.name, unit.ticks.len() as u64)
                .await
                .context("failed to record the import checkpoint")?;
            report.units_done += 1;
            bar.inc(unit.weight);
            let rate = report.ticks_read as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{rate:.0} rows/s, {} new", report.rows_stored));
            if bar.is_hidden() && last_log.elapsed() >= common.log_every {
                last_log = Instant::now();
                let eta = bar.eta();
                tracing::info!(
                    units_done = report.units_done,
                    progress = format!("{}/{}", bar.position(), bar.length().unwrap_or(0)),
                    rows_per_s = rate as u64,
                    rows_stored = report.rows_stored,
                    already_stored = report.already_stored,
                    eta = %humantime::format_duration(Duration::from_secs(eta.as_secs())),
                    "import progress"
                );
            }
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_named_by_symbol_hour_and_the_part_a_range_cuts() {
        let h = 1_549_238_400_000_000_000; // 2019-02-04T00:00:00Z
        assert_eq!(
            unit_name("EURUSD", h, h, h + HOUR_NS),
            "EURUSD 2019-02-04T00"
        );
        assert_eq!(unit_name("EURUSD", h, 0, i64::MAX), "EURUSD 2019-02-04T00");
        assert_eq!(
            unit_name("EURUSD", h, h + HOUR_NS / 2, i64::MAX),
            "EURUSD 2019-02-04T00 ms 1800000-3600000"
        );
        assert_eq!(
            unit_name("BTCUSD", h, 0, h + 1_000_000),
            "BTCUSD 2019-02-04T00 ms 0-1"
        );
    }
}
