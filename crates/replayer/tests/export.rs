//! `replayer export parquet` on SQLite and PostgreSQL (both through the store factory): ticks and
//! bars read back with the parquet crate's Arrow reader are the stored rows, field for field
//! (prices as DECIMAL(18, scale), a coarser price scaled up exactly, nanosecond UTC times), in
//! files by symbol and UTC day, read in pages smaller than a day; a rerun skips the finished
//! days, a wider range rewrites a day an earlier range cut, `--restart` rewrites all, an
//! interrupted export leaves no file, and a day mixing a finer scale into a coarser one fails.

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, TimestampNanosecondType, UInt64Type};
use clap::Parser;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use persister::stores::{StoreOptions, StoreUrl, Stores};
use replayer::export::{
    DAY_NS, ExportReport, Kind, KindReport, ParquetExport, ParquetExportArgs, export_parquet,
    part_path,
};
use std::path::Path;
use tick_core::Tick;
use tick_core::pb::Bar;
use tick_core::shutdown::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: ParquetExportArgs,
}

/// 2019-02-04T00:00:00Z.
const DAY0: i64 = 1_549_238_400_000_000_000;

fn job(out: &Path, extra: &[&str]) -> ParquetExport {
    job_of("eurusd,USDJPY", out, extra)
}

fn job_of(symbols: &str, out: &Path, extra: &[&str]) -> ParquetExport {
    let out = out.to_str().unwrap();
    let mut argv = vec![
        "export",
        "--symbols",
        symbols,
        "--to",
        "2019-02-06T00:00:00Z",
        "--out",
        out,
        "--page-size",
        "3",
    ];
    argv.extend_from_slice(extra);
    if !extra.contains(&"--from") {
        argv.extend_from_slice(&["--from", "2019-02-04T00:00:00Z"]);
    }
    ParquetExport::from_args(&Cli::parse_from(argv).a).unwrap()
}

fn tick(symbol: &str, ts: i64, i: i64) -> Tick {
    let mut t = tick_core::testenv::tick("export-test", symbol, ts, 110_000 + i);
    t.ts_recv_ns = ts + 123_457;
    t.last = (i % 2 == 0).then_some(110_001 + i);
    t.bid_size = 1.5;
    t.flags = i as u32;
    t
}

fn bar(tf: &str, side: &str, open: i64, i: i64) -> Bar {
    Bar {
        symbol: "EURUSD".into(),
        timeframe: tf.into(),
        price_side: side.into(),
        open_time_ns: open,
        close_time_ns: open + 60_000_000_000,
        price_scale: 5,
        open: 113_000 + i,
        high: 113_050 + i,
        low: 112_990 + i,
        close: 113_020 + i,
        tick_count: 7 + i as u64,
        volume: 2.5,
        ts_recv_ns: open + 60_000_000_001,
        flags: 1,
    }
}

/// Stores: EURUSD ticks on both days (one of them with 4 decimals) and a tick just before and
/// after the range; USDJPY ticks on the second day only; bars of 1m (two sides), 1s and 5m.
async fn fill(stores: &Stores) -> (Vec<Tick>, Vec<Bar>) {
    let mut ticks = Vec::new();
    for (i, ms) in [0i64, 1, 1, 2, 3_600_000, 86_399_999, 86_400_000, 90_000_000]
        .iter()
        .enumerate()
    {
        ticks.push(tick("EURUSD", DAY0 + ms * 1_000_000, i as i64));
    }
    // Same time, keys ordered by their ordinal.
    ticks[2].key = tick_core::idempotency_key("export-test", "EURUSD", ticks[2].ts_event_ns, 1);
    ticks[3].scale = 4;
    ticks[3].bid = 11_000;
    ticks[3].ask = 11_001;
    ticks[3].last = None;
    ticks.push(tick("USDJPY", DAY0 + DAY_NS + 5, 100));
    let outside = [
        tick("EURUSD", DAY0 - 1, 0),
        tick("EURUSD", DAY0 + 2 * DAY_NS, 0),
    ];
    let stored = stores
        .writer
        .insert_ticks(&[&ticks[..], &outside[..]].concat())
        .await
        .unwrap();
    assert_eq!(stored, 11);
    let bars = vec![
        bar("1m", "bid", DAY0, 0),
        bar("1m", "ask", DAY0, 1),
        bar(
            "1m",
            "bid",
            DAY0 + 2 * 3_600_000_000_000 + 60_000_000_000,
            2,
        ),
        bar("1s", "bid", DAY0 + DAY_NS + 1_000_000_000, 3),
    ];
    let other = [
        bar("5m", "bid", DAY0, 4),
        bar("1m", "bid", DAY0 - 60_000_000_000, 5),
    ];
    stores
        .writer
        .insert_bars(&[&bars[..], &other[..]].concat())
        .await
        .unwrap();
    (ticks, bars)
}

fn read(path: &Path) -> Vec<arrow_array::RecordBatch> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn ts(b: &arrow_array::RecordBatch, col: &str) -> Vec<i64> {
    let a = b
        .column_by_name(col)
        .unwrap()
        .as_primitive::<TimestampNanosecondType>();
    assert_eq!(
        b.schema().field_with_name(col).unwrap().data_type(),
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, Some("UTC".into()))
    );
    a.values().to_vec()
}

fn prices(b: &arrow_array::RecordBatch, col: &str) -> Vec<Option<i128>> {
    let a = b
        .column_by_name(col)
        .unwrap()
        .as_primitive::<Decimal128Type>();
    assert_eq!((a.precision(), a.scale()), (18, 5), "{col}");
    a.iter().collect()
}

fn strings(b: &arrow_array::RecordBatch, col: &str) -> Vec<String> {
    let a = b.column_by_name(col).unwrap().as_string::<i32>();
    a.iter().map(|s| s.unwrap().to_string()).collect()
}

fn check_ticks(out: &Path, symbol: &str, day: i64, want: &[&Tick]) {
    let mut batches = read(&part_path(out, Kind::Ticks, symbol, day));
    assert_eq!(batches.len(), 1);
    let b = batches.remove(0);
    assert_eq!(b.num_rows(), want.len(), "{symbol} {day}");
    assert_eq!(
        ts(&b, "ts_event"),
        want.iter().map(|t| t.ts_event_ns).collect::<Vec<_>>()
    );
    assert_eq!(
        ts(&b, "ts_recv"),
        want.iter().map(|t| t.ts_recv_ns).collect::<Vec<_>>()
    );
    let at5 = |m: i64, s: u8| i128::from(m) * 10i128.pow(5 - s as u32);
    assert_eq!(
        prices(&b, "bid"),
        want.iter()
            .map(|t| Some(at5(t.bid, t.scale)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        prices(&b, "ask"),
        want.iter()
            .map(|t| Some(at5(t.ask, t.scale)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        prices(&b, "last"),
        want.iter()
            .map(|t| t.last.map(|l| at5(l, t.scale)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        strings(&b, "idempotency_key"),
        want.iter().map(|t| t.key.clone()).collect::<Vec<_>>()
    );
}

async fn check_on(stores: Stores) {
    let (ticks, bars) = fill(&stores).await;
    let reader = stores.reader().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let report = export_parquet(reader.clone(), &job(&out, &[]), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report.ticks,
        Some(KindReport {
            files_written: 3,
            rows_written: 9,
            empty_days: 1,
            ..Default::default()
        }),
        "EURUSD on both days, USDJPY on the second"
    );
    assert_eq!(
        report.bars,
        Some(KindReport {
            files_written: 2,
            rows_written: 4,
            empty_days: 2,
            ..Default::default()
        }),
        "1s and 1m bars only"
    );
    let mut day0: Vec<&Tick> = ticks[..6].iter().collect();
    day0.sort_by_key(|t| (t.ts_event_ns, t.key.clone()));
    check_ticks(&out, "EURUSD", DAY0, &day0);
    check_ticks(&out, "EURUSD", DAY0 + DAY_NS, &[&ticks[6], &ticks[7]]);
    check_ticks(&out, "USDJPY", DAY0 + DAY_NS, &[&ticks[8]]);

    let b = read(&part_path(&out, Kind::Bars, "EURUSD", DAY0)).remove(0);
    assert_eq!(strings(&b, "timeframe"), ["1m", "1m", "1m"]);
    assert_eq!(strings(&b, "price_side"), ["ask", "bid", "bid"]);
    assert_eq!(
        ts(&b, "open_time"),
        [
            bars[1].open_time_ns,
            bars[0].open_time_ns,
            bars[2].open_time_ns
        ]
    );
    assert_eq!(
        ts(&b, "close_time"),
        [
            bars[1].close_time_ns,
            bars[0].close_time_ns,
            bars[2].close_time_ns
        ]
    );
    assert_eq!(
        prices(&b, "close"),
        [bars[1].close, bars[0].close, bars[2].close].map(|c| Some(i128::from(c)))
    );
    assert_eq!(
        b.column_by_name("tick_count")
            .unwrap()
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec(),
        [8, 7, 9]
    );
    let b = read(&part_path(&out, Kind::Bars, "EURUSD", DAY0 + DAY_NS)).remove(0);
    assert_eq!(strings(&b, "timeframe"), ["1s"]);
    assert_eq!(prices(&b, "high"), [Some(i128::from(bars[3].high))]);

    // A rerun skips every finished day; --restart rewrites them.
    let again = export_parquet(reader.clone(), &job(&out, &[]), CancellationToken::new())
        .await
        .unwrap();
    let skipped = |r: &ExportReport| {
        (
            r.ticks.unwrap().files_written,
            r.ticks.unwrap().files_skipped,
            r.ticks.unwrap().rows_skipped,
            r.bars.unwrap().files_skipped,
        )
    };
    assert_eq!(skipped(&again), (0, 3, 9, 2));
    let redo = export_parquet(
        reader.clone(),
        &job(&out, &["--restart", "--what", "ticks"]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(redo.bars, None);
    assert_eq!(redo.ticks.unwrap().files_written, 3);

    // A day the range cut is not taken for done by a wider export.
    let cut_out = dir.path().join("cut");
    let cut = job(
        &cut_out,
        &["--what", "ticks", "--from", "2019-02-04T00:30:00Z"],
    );
    let r = export_parquet(reader.clone(), &cut, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        r.ticks.unwrap().rows_written,
        2 + 2 + 1,
        "EURUSD from 00:30 and on day two, USDJPY"
    );
    let r = export_parquet(
        reader.clone(),
        &job(&cut_out, &["--what", "ticks"]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            r.ticks.unwrap().files_written,
            r.ticks.unwrap().files_skipped
        ),
        (1, 2),
        "the cut day rewritten, the whole ones skipped"
    );
    check_ticks(&cut_out, "EURUSD", DAY0, &day0);

    // An interrupted export writes nothing, not even a temporary file.
    let stop = CancellationToken::new();
    stop.cancel();
    let empty = dir.path().join("stopped");
    let r = export_parquet(reader.clone(), &job(&empty, &[]), stop)
        .await
        .unwrap();
    assert!(r.interrupted);
    assert!(!empty.exists() || walk(&empty).is_empty());

    // A finer price in a coarser day is refused, never rounded.
    let mut fine = tick("GBPUSD", DAY0 + 10, 1);
    fine.scale = 4;
    fine.bid = 12_000;
    fine.ask = 12_001;
    let finer = tick("GBPUSD", DAY0 + 20, 2);
    stores.writer.insert_ticks(&[fine, finer]).await.unwrap();
    let bad = job_of("GBPUSD", &dir.path().join("bad"), &["--what", "ticks"]);
    let e = export_parquet(reader.clone(), &bad, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("mixes price scales"), "{e:#}");
    assert!(walk(&dir.path().join("bad")).is_empty(), "no file left");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_sqlite_exactly_by_symbol_and_day() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::sqlite(&dir.path().join("t.db"));
    check_on(url.open(&StoreOptions::pool(2)).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_postgres_exactly_by_symbol_and_day() {
    let Some(base) = tick_core::testenv::service("DATABASE_URL") else {
        return;
    };
    let name = format!("tickflow_export_{}", std::process::id());
    let url = persister::conformance::fresh_database(&base, &name).await;
    let url: StoreUrl = url.parse().unwrap();
    check_on(url.open(&StoreOptions::pool(2)).await.unwrap()).await;
    let admin = persister::postgres::connect(&base).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[test]
fn a_bad_range_or_no_symbol_is_refused() {
    let parse = |extra: &[&str]| {
        let mut argv = vec!["export", "--out", "o"];
        argv.extend_from_slice(extra);
        if !extra.contains(&"--symbols") {
            argv.extend_from_slice(&["--symbols", "EURUSD"]);
        }
        ParquetExport::from_args(&Cli::parse_from(argv).a)
    };
    let e = parse(&[
        "--from",
        "2019-02-05T00:00:00Z",
        "--to",
        "2019-02-04T00:00:00Z",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("empty range"), "{e}");
    let e = parse(&[
        "--from",
        "2019-02-04T00:00:00Z",
        "--to",
        "2019-02-04T00:00:00Z",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("empty range"), "{e}");
    let e = parse(&[
        "--from",
        "2019-02-04T00:00:00Z",
        "--to",
        "2019-02-05T00:00:00Z",
        "--symbols",
        " ",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("no symbol"), "{e}");
}
