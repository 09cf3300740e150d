//! `replayer export parquet`: writes stored ticks and bars, from either store, to Parquet files
//! partitioned Hive-style by symbol and UTC day (`OUT/ticks/symbol=EURUSD/date=2019-02-04/
//! part-0.parquet`, the same under `OUT/bars/`), which pandas, polars, pyarrow and DuckDB read
//! directly. Timestamps are Arrow `Timestamp(Nanosecond, "UTC")`; prices are Parquet DECIMAL
//! with the instrument's scale (`decimal128(18, scale)`, stored as INT64): the stored mantissa,
//! exactly, read as the broker's decimal.
//!
//! Each symbol-day is read in pages through the store's [`HistoryReader`] (ticks by the
//! `(event time, key)` cursor, bars by the `(open time, side)` cursor) and streamed into its file, so memory is
//! bounded by a page and a row group whatever the range. A finished file is written under a
//! temporary name and renamed, and records in its footer the part of the day it holds: a rerun
//! skips the days already exported (`--restart` rewrites them).

use anyhow::Context;
use arrow_array::{
    ArrayRef, BooleanArray, Decimal128Array, Float64Array, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tick_core::Tick;
use tick_core::pb::Bar;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HOUR_NS, HistoryReader};
use tokio::sync::mpsc;

/// One UTC day in ns.
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// The Parquet DECIMAL precision of prices: 18 digits is what an INT64 holds, so every price
/// is stored as its 64-bit mantissa (the physical type Parquet uses up to precision 18).
pub const PRICE_PRECISION: u8 = 18;

/// Footer metadata keys of an exported file.
const META_FROM: &str = "tickflow.from_ns";
const META_TO: &str = "tickflow.to_ns";
const META_SYMBOL: &str = "tickflow.symbol";
const META_SCALE: &str = "tickflow.price_scale";
const META_KIND: &str = "tickflow.kind";

/// Options of `replayer export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The format to export to.
    #[command(subcommand)]
    pub format: ExportFormat,
}

/// The formats `replayer export` writes.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ExportFormat {
    /// Parquet files partitioned by symbol and UTC day, zstd-compressed, nanosecond UTC
    /// timestamps, prices as DECIMAL(18, instrument scale); resumable: days whose file exists
    /// are skipped (--restart rewrites them).
    Parquet(ParquetExportArgs),
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Stored ticks.
    Ticks,
    /// Stored bars.
    Bars,
    /// Ticks and bars.
    Both,
}

/// Options of `replayer export parquet`.
#[derive(Debug, Clone, clap::Args)]
pub struct ParquetExportArgs {
    /// The store to read from.
    #[command(flatten)]
    pub store: persister::stores::StoreArgs,
    /// Symbols, comma-separated (canonical spelling, e.g. EURUSD,BTCUSD).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Start of the event-time range (RFC 3339, inclusive).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub from: i64,
    /// End of the event-time range (RFC 3339, exclusive).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub to: i64,
    /// Output directory; files go to OUT/ticks/symbol=S/date=YYYY-MM-DD/part-0.parquet and
    /// OUT/bars/symbol=S/date=YYYY-MM-DD/part-0.parquet.
    #[arg(long)]
    pub out: PathBuf,
    /// What to export.
    #[arg(long, value_enum, default_value = "both")]
    pub what: What,
    /// Bar timeframes to export (those the indicators engine stores by default).
    #[arg(long, value_delimiter = ',', default_value = "1s,1m")]
    pub timeframes: Vec<String>,
    /// Rewrite days already exported.
    #[arg(long)]
    pub restart: bool,
    /// Rows (ticks or bars) read from the store per query.
    #[arg(long, default_value_t = 20_000)]
    pub page_size: usize,
    /// Rows per Parquet row group (the writer holds one row group in memory).
    #[arg(long, default_value_t = 256 * 1024)]
    pub row_group_rows: usize,
    /// zstd compression level.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// How often to log progress when stderr is not a terminal (no progress bar).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub log_every: Duration,
}

/// Ticks or bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ticks.
    Ticks,
    /// Bars.
    Bars,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Ticks => "ticks",
            Kind::Bars => "bars",
        }
    }
}

/// What was done for one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindReport {
    /// Files written by this run.
    pub files_written: u64,
    /// Rows in them.
    pub rows_written: u64,
    /// Files skipped because an earlier run wrote them.
    pub files_skipped: u64,
    /// Rows in the skipped files (from their footers).
    pub rows_skipped: u64,
    /// Symbol-days holding nothing (no file written).
    pub empty_days: u64,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportReport {
    /// The output directory.
    pub out: PathBuf,
    /// Ticks.
    pub ticks: Option<KindReport>,
    /// Bars.
    pub bars: Option<KindReport>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Whether a shutdown stopped the run before its end.
    pub interrupted: bool,
}

impl ExportReport {
    /// Returns the rows written by this run, ticks and bars.
    pub fn rows_written(&self) -> u64 {
        [self.ticks, self.bars]
            .iter()
            .flatten()
            .map(|k| k.rows_written)
            .sum()
    }

    /// Returns the export rate: rows written per second.
    pub fn rows_per_sec(&self) -> f64 {
        self.rows_written() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "export parquet to {}:", self.out.display())?;
        for (name, k) in [("ticks", self.ticks), ("bars", self.bars)] {
            let Some(k) = k else { continue };
            writeln!(
                f,
                "  {name}: {} files written ({} rows), {} skipped (exported by an earlier run, {} rows), {} symbol-days empty",
                k.files_written, k.rows_written, k.files_skipped, k.rows_skipped, k.empty_days
            )?;
        }
        write!(
            f,
            "  elapsed {:.2?}, {:.0} rows/s",
            self.elapsed,
            self.rows_per_sec()
        )?;
        if self.interrupted {
            write!(
                f,
                "\n  interrupted: the day being written was dropped; run the same command again to resume"
            )?;
        }
        Ok(())
    }
}

/// Runs `replayer export`: prints the report on stdout and returns it.
pub async fn run_export(
    args: ExportArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExportReport> {
    match args.format {
        ExportFormat::Parquet(a) => {
            let job = ParquetExport::from_args(&a)?;
            let reader = a.store.open().await?.reader()?;
            let report = export_parquet(reader, &job, shutdown).await?;
            println!("{report}");
            let empty =
                |k: Option<KindReport>| k.is_none_or(|k| k.files_written + k.files_skipped == 0);
            if !report.interrupted && empty(report.ticks) && empty(report.bars) {
                anyhow::bail!(
                    "nothing to export: the store holds no {} of {} between {} and {}",
                    match a.what {
                        What::Ticks => "ticks",
                        What::Bars => "bars (of timeframes --timeframes names)",
                        What::Both => "ticks or bars",
                    },
                    job.symbols.join(","),
                    rfc3339(job.from_ns),
                    rfc3339(job.to_ns)
                );
            }
            Ok(report)
        }
    }
}

/// A Parquet export, its options checked.
#[derive(Debug, Clone)]
pub struct ParquetExport {
    /// Canonical symbols.
    pub symbols: Vec<String>,
    /// Start of the event-time range, UTC ns (inclusive).
    pub from_ns: i64,
    /// End of the event-time range, UTC ns (exclusive).
    pub to_ns: i64,
    /// Output directory.
    pub out: PathBuf,
    /// Kinds to export, in order.
    pub kinds: Vec<Kind>,
    /// Bar timeframes.
    pub timeframes: Vec<String>,
    /// Rewrite days already exported.
    pub restart: bool,
    /// Rows per store query.
    pub page_size: usize,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Progress log interval without a terminal.
    pub log_every: Duration,
}

impl ParquetExport {
    /// Checks the options: a non-empty range, at least one symbol and timeframe.
    pub fn from_args(a: &ParquetExportArgs) -> anyhow::Result<Self> {
        if a.from < 0 {
            anyhow::bail!("--from is before 1970-01-01T00:00:00Z: no stored time is");
        }
        if a.from >= a.to {
            anyhow::bail!(
                "empty range: --from {} is not before --to {}",
                rfc3339(a.from),
                rfc3339(a.to)
            );
        }
        let symbols: Vec<String> = a
            .symbols
            .iter()
            .map(|s| tick_core::instrument::canonical(s))
            .filter(|s| !s.is_empty())
            .collect();
        if symbols.is_empty() {
            anyhow::bail!("no symbol selected: --symbols names none");
        }
        let timeframes: Vec<String> = a
            .timeframes
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let kinds = match a.what {
            What::Ticks => vec![Kind::Ticks],
            What::Bars => vec![Kind::Bars],
            What::Both => vec![Kind::Ticks, Kind::Bars],
        };
        if kinds.contains(&Kind::Bars) && timeframes.is_empty() {
            anyhow::bail!("no bar timeframe selected: --timeframes names none");
        }
        ZstdLevel::try_new(a.zstd_level)
            .map_err(|e| anyhow::anyhow!("--zstd-level {}: {e}", a.zstd_level))?;
        Ok(Self {
            symbols,
            from_ns: a.from,
            to_ns: a.to,
            out: a.out.clone(),
            kinds,
            timeframes,
            restart: a.restart,
            page_size: a.page_size.max(1),
            row_group_rows: a.row_group_rows.max(1),
            zstd_level: a.zstd_level,
            log_every: a.log_every,
        })
    }

    /// Returns the days of the range (their starts).
    fn days(&self) -> impl Iterator<Item = i64> + Clone + use<> {
        let (first, to) = (day_floor(self.from_ns), self.to_ns);
        (0..)
            .map(move |i| first + i * DAY_NS)
            .take_while(move |d| *d < to)
    }

    /// Returns the symbol-days of the range, per kind: the units of work, made as they are
    /// needed (a range of years over many symbols is not listed in memory first).
    fn units(&self) -> impl Iterator<Item = (Kind, String, i64)> + '_ {
        self.kinds.iter().flat_map(move |&kind| {
            self.symbols
                .iter()
                .flat_map(move |s| self.days().map(move |day| (kind, s.clone(), day)))
        })
    }

    /// Returns how many units [`units`](Self::units) yields.
    fn unit_count(&self) -> u64 {
        (self.kinds.len() * self.symbols.len()) as u64 * self.days().count() as u64
    }
}

/// Returns the start of the UTC day containing `ts_ns`.
pub fn day_floor(ts_ns: i64) -> i64 {
    ts_ns - ts_ns.rem_euclid(DAY_NS)
}

/// Returns `ts_ns` as RFC 3339 (UTC, seconds or finer as needed).
fn rfc3339(ts_ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ts_ns.max(0) as u64);
    humantime::format_rfc3339(t).to_string()
}

/// Returns the file of `kind`, `symbol` and the day starting at `day_ns` under `out`.
pub fn part_path(out: &Path, kind: Kind, symbol: &str, day_ns: i64) -> PathBuf {
    let date = &rfc3339(day_ns)[..10];
    out.join(kind.dir())
        .join(format!("symbol={symbol}"))
        .join(format!("date={date}"))
        .join("part-0.parquet")
}

/// Exports ticks and bars of `job` from `reader`; returns the report.
pub async fn export_parquet(
    reader: Arc<dyn HistoryReader>,
    job: &ParquetExport,
    shutdown: CancellationToken,
) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let mut report = ExportReport {
        out: job.out.clone(),
        ticks: job.kinds.contains(&Kind::Ticks).then(KindReport::default),
        bars: job.kinds.contains(&Kind::Bars).then(KindReport::default),
        ..Default::default()
    };
    // Drawn on stderr, and hidden by indicatif when stderr is not a terminal.
    let bar = ProgressBar::new(job.unit_count());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} symbol-days {msg} ETA {eta}",
        )
        .expect("valid progress template"),
    );
    let mut last_log = Instant::now();
    for (kind, symbol, day) in job.units() {
        if shutdown.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let part = Part {
            kind,
            from_ns: job.from_ns.max(day),
            to_ns: job.to_ns.min(day + DAY_NS),
            path: part_path(&job.out, kind, &symbol, day),
            symbol,
        };
        let k = match kind {
            Kind::Ticks => report.ticks.as_mut(),
            Kind::Bars => report.bars.as_mut(),
        }
        .expect("a report for every kind exported");
        if !job.restart
            && let Some(rows) = exported_rows(&part)
        {
            k.files_skipped += 1;
            k.rows_skipped += rows;
        } else {
            match write_part(&reader, job, &part, &shutdown).await? {
                Written::Rows(n) => {
                    k.files_written += 1;
                    k.rows_written += n;
                }
                Written::Empty => k.empty_days += 1,
                Written::Interrupted => {
                    report.interrupted = true;
                    break;
                }
            }
        }
        bar.inc(1);
        let rate = report.rows_written() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{rate:.0} rows/s"));
        if bar.is_hidden() && last_log.elapsed() >= job.log_every {
            last_log = Instant::now();
            tracing::info!(
                progress = format!("{}/{}", bar.position(), bar.length().unwrap_or(0)),
                rows_written = report.rows_written(),
                rows_per_s = rate as u64,
                "export progress"
            );
        }
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed().max(Duration::from_nanos(1));
    Ok(report)
}

/// One file: a kind, symbol and the part of one day the range covers.
struct Part {
    kind: Kind,
    symbol: String,
    from_ns: i64,
    to_ns: i64,
    path: PathBuf,
}

enum Written {
    Rows(u64),
    Empty,
    Interrupted,
}

/// Returns the rows of the file of `part` when an earlier run wrote it for at least the part of
/// the day asked for now (a file of a day the range cut is rewritten by a wider export); `None`
/// when there is no such file or it cannot be read.
fn exported_rows(part: &Part) -> Option<u64> {
    let file = std::fs::File::open(&part.path).ok()?;
    let meta = ParquetMetaDataReader::new().parse_and_finish(&file).ok()?;
    let kv = meta.file_metadata().key_value_metadata()?;
    let get = |k: &str| -> Option<i64> {
        kv.iter()
            .find(|e| e.key == k)
            .and_then(|e| e.value.as_deref()?.parse().ok())
    };
    let covers = get(META_FROM)? <= part.from_ns && get(META_TO)? >= part.to_ns;
    covers.then(|| meta.file_metadata().num_rows() as u64)
}

/// A page of rows on its way from the store to the writer.
enum Page {
    Ticks(Vec<Tick>),
    Bars(Vec<Bar>),
}

/// Writes the file of `part`: pages read by a task of their own (the next page is read while
/// this one is encoded) into a temporary file, renamed when complete.
async fn write_part(
    reader: &Arc<dyn HistoryReader>,
    job: &ParquetExport,
    part: &Part,
    shutdown: &CancellationToken,
) -> anyhow::Result<Written> {
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Page>>(2);
    let fetch = tokio::spawn(read_pages(
        reader.clone(),
        part.kind,
        part.symbol.clone(),
        part.from_ns,
        part.to_ns,
        job.timeframes.clone(),
        job.page_size,
        tx,
    ));
    let dir = part.path.parent().expect("a part path has a directory");
    let tmp = dir.join(".part-0.parquet.tmp");
    let mut file: Option<PartFile> = None;
    let result = async {
        loop {
            let page = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Written::Interrupted),
                p = rx.recv() => p,
            };
            let Some(page) = page else { break };
            let page = page?;
            let scale = match &page {
                Page::Ticks(t) => t.first().map(|t| t.scale as u32),
                Page::Bars(b) => b.first().map(|b| b.price_scale),
            };
            let Some(scale) = scale else { continue };
            if file.is_none() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("failed to create {}", dir.display()))?;
                file = Some(PartFile::create(&tmp, job, part, scale)?);
            }
            let f = file.as_mut().expect("created above");
            // Encoding and compressing are CPU work: keep them off the runtime's other tasks.
            tokio::task::block_in_place(|| f.write(&page, part))?;
        }
        match file.take() {
            None => Ok(Written::Empty),
            Some(f) => {
                let rows = f.finish()?;
                std::fs::rename(&tmp, &part.path).with_context(|| {
                    format!(
                        "failed to rename {} to {}",
                        tmp.display(),
                        part.path.display()
                    )
                })?;
                // The rename is durable once the directory is.
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(Written::Rows(rows))
            }
        }
    }
    .await;
    fetch.abort();
    if !matches!(result, Ok(Written::Rows(_))) {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the rows of one symbol-day in pages and sends them: ticks by the store's
/// `(event time, key)` cursor, bars one timeframe at a time by the `(open time, side)` cursor.
#[allow(clippy::too_many_arguments)]
async fn read_pages(
    reader: Arc<dyn HistoryReader>,
    kind: Kind,
    symbol: String,
    from_ns: i64,
    to_ns: i64,
    timeframes: Vec<String>,
    page_size: usize,
    tx: mpsc::Sender<anyhow::Result<Page>>,
) {
    let context = |what: &str| format!("failed to read the {what} of {symbol} from the store");
    match kind {
        Kind::Ticks => {
            let symbols = [symbol.clone()];
            let mut cursor = None;
            loop {
                let page = reader
                    .ticks_between(&symbols, from_ns, to_ns, cursor.take(), page_size)
                    .await
                    .with_context(|| context("ticks"));
                let done = match &page {
                    Ok(p) => {
                        cursor = p.last().map(|t| (t.ts_event_ns, t.key.clone()));
                        p.len() < page_size
                    }
                    Err(_) => true,
                };
                if tx.send(page.map(Page::Ticks)).await.is_err() || done {
                    return;
                }
            }
        }
        Kind::Bars => {
            for tf in &timeframes {
                let mut cursor = None;
                loop {
                    let page = reader
                        .bars_page(&symbol, tf, None, from_ns, to_ns, cursor.take(), page_size)
                        .await
                        .with_context(|| context("bars"));
                    let done = match &page {
                        Ok(p) => {
                            cursor = p.last().map(|b| (b.open_time_ns, b.price_side.clone()));
                            p.len() < page_size
                        }
                        Err(_) => true,
                    };
                    let stop = page.is_err();
                    if tx.send(page.map(Page::Bars)).await.is_err() || stop {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            }
        }
    }
}

/// A Parquet file being written.
struct PartFile {
    writer: ArrowWriter<std::fs::File>,
    schema: SchemaRef,
    scale: u32,
    rows: u64,
}

impl PartFile {
    fn create(tmp: &Path, job: &ParquetExport, part: &Part, scale: u32) -> anyhow::Result<Self> {
        if scale > PRICE_PRECISION as u32 {
            anyhow::bail!(
                "{}: price scale {scale} exceeds the {PRICE_PRECISION} digits of a price column",
                part.symbol
            );
        }
        let schema = match part.kind {
            Kind::Ticks => tick_schema(scale as i8),
            Kind::Bars => bar_schema(scale as i8),
        };
        let kv = [
            (META_KIND, part.kind.dir().to_string()),
            (META_SYMBOL, part.symbol.clone()),
            (META_SCALE, scale.to_string()),
            (META_FROM, part.from_ns.to_string()),
            (META_TO, part.to_ns.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v))
        .collect();
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(job.zstd_level)?))
            .set_max_row_group_row_count(Some(job.row_group_rows))
            .set_key_value_metadata(Some(kv));
        // Times rise steadily and keys share long prefixes: delta encodings store them in a
        // fraction of what dictionary or plain pages take (ts_event alone was 43 % of a ticks
        // file plain, and the keys 33 %).
        let (times, keys): (&[&str], &[&str]) = match part.kind {
            Kind::Ticks => (&["ts_event", "ts_recv"], &["idempotency_key"]),
            Kind::Bars => (&["open_time", "close_time", "ts_recv"], &[]),
        };
        for (columns, encoding) in [
            (times, Encoding::DELTA_BINARY_PACKED),
            (keys, Encoding::DELTA_BYTE_ARRAY),
        ] {
            for &c in columns {
                props = props
                    .set_column_dictionary_enabled(c.into(), false)
                    .set_column_encoding(c.into(), encoding);
            }
        }
        let props = props.build();
        let out = std::fs::File::create(tmp)
            .with_context(|| format!("failed to create {}", tmp.display()))?;
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
        Ok(Self {
            writer,
            schema,
            scale,
            rows: 0,
        })
    }

    fn write(&mut self, page: &Page, part: &Part) -> anyhow::Result<()> {
        let batch = match page {
            Page::Ticks(t) => tick_batch(&self.schema, t, self.scale),
            Page::Bars(b) => bar_batch(&self.schema, b, self.scale),
        }
        .with_context(|| format!("{} of {}", part.kind.dir(), part.symbol))?;
        self.writer
            .write(&batch)
            .with_context(|| format!("failed to write {}", part.path.display()))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the file (footer written, data synced); returns its rows.
    fn finish(self) -> anyhow::Result<u64> {
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(self.rows)
    }
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        nullable,
    )
}

fn price_field(name: &str, scale: i8, nullable: bool) -> Field {
    Field::new(name, DataType::Decimal128(PRICE_PRECISION, scale), nullable)
}

/// Returns the columns of a ticks file whose prices have `scale` decimals.
pub fn tick_schema(scale: i8) -> SchemaRef {
    Arc::new(Schema::new(vec![
        ts_field("ts_event", false),
        price_field("bid", scale, false),
        price_field("ask", scale, false),
        price_field("last", scale, true),
        Field::new("bid_size", DataType::Float64, false),
        Field::new("ask_size", DataType::Float64, false),
        Field::new("volume", DataType::Float64, false),
        Field::new("flags", DataType::UInt32, false),
        ts_field("ts_recv", false),
        Field::new("source", DataType::Utf8, false),
        Field::new("replay", DataType::Boolean, false),
        Field::new("idempotency_key", DataType::Utf8, false),
    ]))
}

/// Returns the columns of a bars file whose prices have `scale` decimals.
pub fn bar_schema(scale: i8) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("timeframe", DataType::Utf8, false),
        Field::new("price_side", DataType::Utf8, false),
        ts_field("open_time", false),
        ts_field("close_time", false),
        price_field("open", scale, false),
        price_field("high", scale, false),
        price_field("low", scale, false),
        price_field("close", scale, false),
        Field::new("tick_count", DataType::UInt64, false),
        Field::new("volume", DataType::Float64, false),
        ts_field("ts_recv", false),
        Field::new("flags", DataType::UInt32, false),
    ]))
}

/// Returns `mantissa` (with `from` decimals) with `to` decimals, exactly: a price with fewer
/// decimals than the file's is scaled up; one with more, or out of the column's range, is an
/// error, never rounded.
fn rescale(mantissa: i64, from: u32, to: u32) -> Result<i128, String> {
    const MAX: i128 = 10i128.pow(PRICE_PRECISION as u32) - 1;
    if from > to {
        return Err(format!(
            "a price with {from} decimals in a file of {to}: the day mixes price scales"
        ));
    }
    let v = i128::from(mantissa) * 10i128.pow(to - from);
    if !(-MAX..=MAX).contains(&v) {
        return Err(format!(
            "price mantissa {v} exceeds {PRICE_PRECISION} digits"
        ));
    }
    Ok(v)
}

fn decimals(
    values: impl Iterator<Item = Option<(i64, u32)>>,
    scale: u32,
) -> anyhow::Result<ArrayRef> {
    let v = values
        .map(|p| p.map(|(m, s)| rescale(m, s, scale)).transpose())
        .collect::<Result<Vec<Option<i128>>, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Arc::new(
        Decimal128Array::from(v).with_precision_and_scale(PRICE_PRECISION, scale as i8)?,
    ))
}

fn timestamps(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// Returns the ticks as a record batch of [`tick_schema`].
pub fn tick_batch(schema: &SchemaRef, ticks: &[Tick], scale: u32) -> anyhow::Result<RecordBatch> {
    let s = |t: &Tick| t.scale as u32;
    let columns: Vec<ArrayRef> = vec![
        timestamps(ticks.iter().map(|t| t.ts_event_ns)),
        decimals(ticks.iter().map(|t| Some((t.bid, s(t)))), scale)?,
        decimals(ticks.iter().map(|t| Some((t.ask, s(t)))), scale)?,
        decimals(ticks.iter().map(|t| t.last.map(|l| (l, s(t)))), scale)?,
        Arc::new(Float64Array::from_iter_values(
            ticks.iter().map(|t| t.bid_size),
        )),
        Arc::new(Float64Array::from_iter_values(
            ticks.iter().map(|t| t.ask_size),
        )),
        Arc::new(Float64Array::from_iter_values(
            ticks.iter().map(|t| t.volume),
        )),
        Arc::new(UInt32Array::from_iter_values(ticks.iter().map(|t| t.flags))),
        timestamps(ticks.iter().map(|t| t.ts_recv_ns)),
        Arc::new(StringArray::from_iter_values(
            ticks.iter().map(|t| t.source.as_str()),
        )),
        Arc::new(BooleanArray::from(
            ticks.iter().map(|t| t.replay).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            ticks.iter().map(|t| t.key.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Returns the bars as a record batch of [`bar_schema`].
pub fn bar_batch(schema: &SchemaRef, bars: &[Bar], scale: u32) -> anyhow::Result<RecordBatch> {
    let price =
        |f: fn(&Bar) -> i64| decimals(bars.iter().map(|b| Some((f(b), b.price_scale))), scale);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            bars.iter().map(|b| b.timeframe.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            bars.iter().map(|b| b.price_side.as_str()),
        )),
        timestamps(bars.iter().map(|b| b.open_time_ns)),
        timestamps(bars.iter().map(|b| b.close_time_ns)),
        price(|b| b.open)?,
        price(|b| b.high)?,
        price(|b| b.low)?,
        price(|b| b.close)?,
        Arc::new(UInt64Array::from_iter_values(
            bars.iter().map(|b| b.tick_count),
        )),
        Arc::new(Float64Array::from_iter_values(
            bars.iter().map(|b| b.volume),
        )),
        timestamps(bars.iter().map(|b| b.ts_recv_ns)),
        Arc::new(UInt32Array::from_iter_values(bars.iter().map(|b| b.flags))),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_partitioned_by_symbol_and_utc_day() {
        let day = 1_549_238_400_000_000_000; // 2019-02-04T00:00:00Z
        assert_eq!(day_floor(day), day);
        assert_eq!(day_floor(day + DAY_NS - 1), day);
        assert_eq!(day_floor(day - 1), day - DAY_NS);
        assert_eq!(
            part_path(Path::new("out"), Kind::Ticks, "EURUSD", day),
            Path::new("out/ticks/symbol=EURUSD/date=2019-02-04/part-0.parquet")
        );
        assert_eq!(
            part_path(Path::new("o"), Kind::Bars, "BTCUSD", day + DAY_NS),
            Path::new("o/bars/symbol=BTCUSD/date=2019-02-05/part-0.parquet")
        );
    }

    #[test]
    fn units_are_every_symbol_day_of_the_range_per_kind() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: ParquetExportArgs,
        }
        let day = 1_549_238_400_000_000_000; // 2019-02-04T00:00:00Z
        let argv = [
            "x",
            "--symbols",
            "eurusd,GBPUSD",
            "--from",
            "2019-02-04T12:00:00Z",
            "--to",
            "2019-02-06T00:00:01Z",
            "--out",
            "o",
        ];
        let job = ParquetExport::from_args(&Cli::parse_from(argv).a).unwrap();
        let units: Vec<_> = job.units().collect();
        assert_eq!(units.len() as u64, job.unit_count());
        assert_eq!(
            units.len(),
            2 * 2 * 3,
            "kinds x symbols x days the range touches"
        );
        assert_eq!(units[0], (Kind::Ticks, "EURUSD".to_string(), day));
        assert_eq!(
            units[2],
            (Kind::Ticks, "EURUSD".to_string(), day + 2 * DAY_NS)
        );
        assert_eq!(units[3], (Kind::Ticks, "GBPUSD".to_string(), day));
        assert_eq!(
            units[11],
            (Kind::Bars, "GBPUSD".to_string(), day + 2 * DAY_NS)
        );
        let early = ["x", "--symbols", "A", "--from", "1969-12-31T00:00:00Z"];
        let early = Cli::try_parse_from(early.iter().chain(&[
            "--to",
            "2000-01-01T00:00:00Z",
            "--out",
            "o",
        ]));
        if let Ok(c) = early {
            assert!(ParquetExport::from_args(&c.a).is_err(), "before 1970");
        }
    }

    #[test]
    fn prices_are_rescaled_exactly_or_refused() {
        assert_eq!(rescale(113_456, 5, 5), Ok(113_456));
        assert_eq!(rescale(11_345, 4, 5), Ok(113_450));
        assert_eq!(rescale(-7, 0, 3), Ok(-7_000));
        assert!(rescale(113_456, 5, 4).is_err(), "never rounded");
        assert!(rescale(i64::MAX, 0, 0).is_err(), "beyond 18 digits");
        assert_eq!(
            rescale(999_999_999_999_999_999, 0, 0),
            Ok(999_999_999_999_999_999)
        );
    }
}
