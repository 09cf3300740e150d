//! `replayer gaps` against a real PostgreSQL and Kafka: after importing two days of EURUSD and
//! losing one hour, exactly that hour (and the open hours without data) is reported, never the
//! FX weekend; crypto has no weekend.

use clap::Parser;
use replayer::gaps::{GapsArgs, run_gaps};
use replayer::import::{ImportArgs, run_import};
use std::path::Path;
use tick_core::shutdown::CancellationToken;

#[derive(Parser)]
struct ImportCli {
    #[command(flatten)]
    a: ImportArgs,
}

#[derive(Parser)]
struct GapsCli {
    #[command(flatten)]
    a: GapsArgs,
}

const HOUR: i64 = 3_600_000_000_000;
/// 2019-02-04T00:00:00Z, a Monday.
const MONDAY: i64 = 1_549_238_400_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_exactly_the_lost_hour_and_no_weekend_hours() {
    let (Some(brokers), Some(base_url)) = (
        tick_core::testenv::service("KAFKA_BROKERS"),
        tick_core::testenv::service("DATABASE_URL"),
    ) else {
        return;
    };
    let db = format!("tickflow_gaps_{}", std::process::id());
    let url = persister::conformance::fresh_database(&base_url, &db).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/dukascopy");
    run_import(
        ImportCli::parse_from([
            "replayer",
            "dukascopy",
            "--symbols",
            "EURUSD",
            "--from",
            "2019-02-04T00:00:00Z",
            "--to",
            "2019-02-06T00:00:00Z",
            "--dukascopy-dir",
            dir.to_str().unwrap(),
            "--store",
            &url,
        ])
        .a,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let c = persister::postgres::connect(&url).await.unwrap();
    let lost = MONDAY + 5 * HOUR;
    let deleted = c
        .execute(
            "DELETE FROM ticks WHERE symbol = 'EURUSD' AND ts_event_ns >= $1 AND ts_event_ns < $2",
            &[&lost, &(lost + HOUR)],
        )
        .await
        .unwrap();
    assert!(deleted > 0);

    let gaps = |symbols: &str, from: &str, to: &str, extra: &[&str]| {
        let mut argv = vec![
            "replayer",
            "--symbols",
            symbols,
            "--from",
            from,
            "--to",
            to,
            "--store",
            &url,
            "--kafka-brokers",
            &brokers,
        ];
        argv.extend_from_slice(extra);
        GapsCli::parse_from(argv).a
    };
    // The fixture's two days; the lost hour only.
    let r = run_gaps(gaps(
        "EURUSD",
        "2019-02-04T00:00:00Z",
        "2019-02-06T00:00:00Z",
        &[],
    ))
    .await
    .unwrap();
    assert_eq!(r.open_hours, 48);
    let hours: Vec<i64> = r.gaps.iter().map(|g| g.hour_start_ns).collect();
    assert_eq!(hours, [lost], "{r:?}");
    let k = r.gaps[0].kafka.expect("kafka was checked");
    // Nothing of 2019 ever went through this Kafka.
    assert!(!k.replayable(), "{k:?}");

    // From Saturday: the FX weekend (to Sunday 22:00) is closed, Sunday's last two open hours
    // have no data in the fixture, and the lost hour.
    let r = run_gaps(gaps(
        "EURUSD",
        "2019-02-02T00:00:00Z",
        "2019-02-06T00:00:00Z",
        &["--no-kafka"],
    ))
    .await
    .unwrap();
    let hours: Vec<i64> = r.gaps.iter().map(|g| g.hour_start_ns).collect();
    assert_eq!(hours, [MONDAY - 2 * HOUR, MONDAY - HOUR, lost], "{r:?}");
    assert_eq!(r.closed_hours, 46);
    assert!(r.gaps.iter().all(|g| g.kafka.is_none()));

    // Crypto never closes: every hour of a weekend without data is a gap.
    let r = run_gaps(gaps(
        "BTCUSD",
        "2019-02-02T00:00:00Z",
        "2019-02-04T00:00:00Z",
        &["--no-kafka"],
    ))
    .await
    .unwrap();
    assert_eq!((r.gaps.len(), r.closed_hours), (48, 0));

    let admin = persister::postgres::connect(&base_url).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
