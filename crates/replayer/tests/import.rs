//! `replayer import` against a real PostgreSQL: two days of real Dukascopy EURUSD history land
//! exactly once (row count = records decoded independently from the files), a second run skips
//! every hour, `--restart` redoes them without duplicating a row, an interrupted import resumes
//! to the exact count, and a corrupt file stops the import naming it. CSV imports are checked on
//! SQLite.

use clap::Parser;
use replayer::import::{ImportArgs, ImportReport, run_import};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HistoryReader, ImportCheckpoints};
use tick_formats::dukascopy::{HOUR_NS, decode_bi5, hour_path};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: ImportArgs,
}

/// 2019-02-04T00:00:00Z, a Monday: the first of the fixture's 48 hours.
const FROM: i64 = 1_549_238_400_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/dukascopy")
}

/// Decodes every fixture hour independently of the importer; returns the record count.
fn records_in_fixture() -> u64 {
    let mut total = 0;
    for i in 0..48 {
        let path = hour_path(&fixtures(), "EURUSD", FROM + i * HOUR_NS);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = decode_bi5(&path.display().to_string(), &bytes)
            .unwrap()
            .len() as u64;
        if i == 0 {
            // expected/EURUSD-2019-02-04T00-raw.json holds 3,733 records.
            assert_eq!(n, 3733, "hour 2019-02-04T00");
        }
        total += n;
    }
    total
}

fn dukascopy_args(url: &str, dir: &Path, extra: &[&str]) -> ImportArgs {
    let mut argv = vec![
        "replayer",
        "dukascopy",
        "--symbols",
        "eurusd",
        "--from",
        "2019-02-04T00:00:00Z",
        "--to",
        "2019-02-06T00:00:00Z",
        "--dukascopy-dir",
        dir.to_str().unwrap(),
        "--store",
        url,
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).a
}

async fn count(url: &str, sql: &str) -> i64 {
    let c = persister::postgres::connect(url).await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn database(name: &str) -> Option<(String, String)> {
    let base = tick_core::testenv::service("DATABASE_URL")?;
    let db = format!("tickflow_{name}_{}", std::process::id());
    let url = persister::conformance::fresh_database(&base, &db).await;
    Some((url, db))
}

async fn drop_database(db: &str) {
    let base = tick_core::testenv::service("DATABASE_URL").unwrap();
    let admin = persister::postgres::connect(&base).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_two_days_of_eurusd_exactly_once() {
    let Some((url, db)) = database("import").await else {
        return;
    };
    let want = records_in_fixture();
    let first = run_import(
        dukascopy_args(&url, &fixtures(), &[]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    eprintln!(
        "first import: {} rows in {:.2?} ({:.0} rows/s)",
        first.rows_stored,
        first.elapsed,
        first.rows_per_sec()
    );
    assert_eq!(
        (first.units_total, first.units_done, first.units_skipped),
        (48, 48, 0)
    );
    assert_eq!(first.ticks_read, want);
    assert_eq!(first.rows_stored, want);
    assert_eq!(first.already_stored, 0);
    assert!(!first.interrupted);
    assert_eq!(count(&url, "SELECT count(*) FROM ticks").await as u64, want);
    assert_eq!(
        count(&url, "SELECT count(DISTINCT idempotency_key) FROM ticks").await as u64,
        want,
        "every key once"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM ticks WHERE ts_event_ns >= 1549238400000000000
               AND ts_event_ns < 1549238400000000000 + 3600000000000"
        )
        .await,
        3733
    );
    assert_eq!(
        count(&url, "SELECT count(*) FROM ticks WHERE NOT replay OR symbol <> 'EURUSD' OR source <> 'dukascopy'").await,
        0,
        "history is flagged as replay, canonical symbol, source dukascopy"
    );
    assert_eq!(
        count(&url, "SELECT count(*) FROM import_progress").await,
        48
    );

    let second = run_import(
        dukascopy_args(&url, &fixtures(), &[]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            second.units_done,
            second.units_skipped,
            second.rows_stored,
            second.ticks_read
        ),
        (0, 48, 0, 0),
        "{second:?}"
    );

    let restarted = run_import(
        dukascopy_args(&url, &fixtures(), &["--restart"]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            restarted.units_done,
            restarted.units_skipped,
            restarted.rows_stored
        ),
        (48, 0, 0),
        "{restarted:?}"
    );
    assert_eq!(restarted.already_stored, want);
    assert_eq!(count(&url, "SELECT count(*) FROM ticks").await as u64, want);
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes_to_the_exact_count() {
    let Some((url, db)) = database("import_resume").await else {
        return;
    };
    let want = records_in_fixture();
    let shutdown = CancellationToken::new();
    // Ctrl-C once a few hours are recorded: the import stops after its current batch, inside
    // an hour most likely, whose rows are then stored but the hour not recorded.
    let watcher = tokio::spawn({
        let (url, shutdown) = (url.clone(), shutdown.clone());
        async move {
            let c = persister::postgres::connect(&url).await.unwrap();
            loop {
                let n: Option<i64> = c
                    .query_one("SELECT count(*) FROM import_progress", &[])
                    .await
                    .ok()
                    .map(|r| r.get(0));
                if n.unwrap_or(0) >= 5 {
                    shutdown.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let first: ImportReport = run_import(
        dukascopy_args(&url, &fixtures(), &["--batch-size", "500"]),
        shutdown,
    )
    .await
    .unwrap();
    watcher.await.unwrap();
    assert!(first.interrupted, "{first:?}");
    assert!(first.units_done >= 5 && first.units_done < 48, "{first:?}");
    let stored_after_first = count(&url, "SELECT count(*) FROM ticks").await as u64;
    assert_eq!(stored_after_first, first.rows_stored);
    assert!(stored_after_first < want);

    let second = run_import(
        dukascopy_args(&url, &fixtures(), &[]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(!second.interrupted);
    assert_eq!(second.units_skipped, first.units_done, "{second:?}");
    assert_eq!(second.units_done, 48 - first.units_done);
    assert_eq!(first.rows_stored + second.rows_stored, want);
    assert_eq!(count(&url, "SELECT count(*) FROM ticks").await as u64, want);
    assert_eq!(
        count(&url, "SELECT count(DISTINCT idempotency_key) FROM ticks").await as u64,
        want
    );
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_hour_stops_the_import_naming_the_file_and_keeps_the_finished_hours() {
    let Some((url, db)) = database("import_corrupt").await else {
        return;
    };
    // Hours 00 and 01 intact, 02 cut in half, 03 missing (an empty hour, not an error).
    let dir = tempfile::tempdir().unwrap();
    for h in 0..3 {
        let src = hour_path(&fixtures(), "EURUSD", FROM + h * HOUR_NS);
        let dst = hour_path(dir.path(), "EURUSD", FROM + h * HOUR_NS);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let bytes = std::fs::read(src).unwrap();
        let bytes = if h == 2 {
            &bytes[..bytes.len() / 2]
        } else {
            &bytes[..]
        };
        std::fs::write(&dst, bytes).unwrap();
    }
    let args = |from: &str, to: &str| {
        Cli::parse_from([
            "replayer",
            "dukascopy",
            "--symbols",
            "EURUSD",
            "--from",
            from,
            "--to",
            to,
            "--dukascopy-dir",
            dir.path().to_str().unwrap(),
            "--store",
            &url,
            "--parallel",
            "1",
        ])
        .a
    };
    let err = run_import(
        args("2019-02-04T00:00:00Z", "2019-02-04T04:00:00Z"),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("2019/01/04/02h_ticks.bi5"), "{msg}");
    let store = persister::postgres::PgStore::connect(&url, 1).unwrap();
    let done = store.finished_import_units("dukascopy").await.unwrap();
    let mut names: Vec<_> = done.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["EURUSD 2019-02-04T00", "EURUSD 2019-02-04T01"]);

    // The missing hour alone: empty, finished, no error.
    let r = run_import(
        args("2019-02-04T03:00:00Z", "2019-02-04T04:00:00Z"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((r.units_done, r.ticks_read), (1, 0));
    drop(store);
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_import_into_sqlite_with_rejects_counted_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("eurusd.csv");
    let mut text = String::from("timestamp,bid,ask\n");
    for i in 0..20 {
        text.push_str(&format!(
            "{},1.0850{},1.0851{}\n",
            1_700_000_000_000i64 + i,
            i % 10,
            i % 10
        ));
        if i == 7 {
            text.push_str("garbage line\n");
        }
    }
    std::fs::write(&csv, text).unwrap();
    let db = dir.path().join("t.db");
    let store = format!("sqlite:{}", db.display());
    let args = |extra: &[&str]| {
        let mut argv = vec![
            "replayer",
            "csv",
            "--csv-file",
            csv.to_str().unwrap(),
            "--csv-symbol",
            "eur/usd",
            "--chunk-lines",
            "5",
            "--store",
            &store,
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).a
    };
    let first = run_import(args(&[]), CancellationToken::new())
        .await
        .unwrap();
    // 22 lines: header, 20 ticks, 1 garbage line, in chunks of 5.
    assert_eq!(
        (
            first.units_total,
            first.units_done,
            first.ticks_read,
            first.rows_stored,
            first.rejected_lines
        ),
        (5, 5, 20, 20, 1),
        "{first:?}"
    );
    let store = persister::sqlite::SqliteStore::open(&db).unwrap();
    assert_eq!(store.count_ticks().await.unwrap(), 20);
    let ticks = store
        .ticks_between(&["EURUSD".into()], 0, i64::MAX, None, 100)
        .await
        .unwrap();
    assert_eq!(ticks.len(), 20);
    assert!(ticks.iter().all(|t| t.replay && t.source == "csv"));
    assert_eq!(ticks[3].bid, 108_503);

    let second = run_import(args(&[]), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (second.units_skipped, second.units_done, second.rows_stored),
        (5, 0, 0),
        "{second:?}"
    );
    let third = run_import(args(&["--restart"]), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (third.units_done, third.rows_stored, third.already_stored),
        (5, 0, 20)
    );
    assert_eq!(store.count_ticks().await.unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_lines_up_to_8_mib_and_binary_junk_are_rejected_lines_not_the_end_of_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("junk.csv");
    let mut bytes = b"timestamp,bid,ask\n".to_vec();
    let junk: [&[u8]; 4] = [
        &[b'x'; 8 << 20],
        b"\xff\xfe\x00\xc3",
        &[b'7'; 70_000],
        b"1,2",
    ];
    for (i, j) in junk.iter().enumerate() {
        bytes.extend(format!("{},1.08500,1.08503\n", 1_700_000_000_000i64 + i as i64).bytes());
        bytes.extend_from_slice(j);
        bytes.push(b'\n');
    }
    bytes.extend(b"1700000000009,1.08501,1.08504".iter()); // the last line, unended
    std::fs::write(&csv, bytes).unwrap();
    let db = dir.path().join("t.db");
    let store = format!("sqlite:{}", db.display());
    let args = Cli::parse_from([
        "replayer",
        "csv",
        "--csv-file",
        csv.to_str().unwrap(),
        "--csv-symbol",
        "EURUSD",
        "--store",
        &store,
    ])
    .a;
    let report = run_import(args, CancellationToken::new()).await.unwrap();
    assert_eq!(
        (report.ticks_read, report.rows_stored, report.rejected_lines),
        (5, 5, 4),
        "{report:?}"
    );
}
