//! `replayer kafka` against a real Kafka and PostgreSQL: a time range of `ticks.clean` read
//! back into storage restores exactly the rows that were missing, and a second run adds nothing.

use clap::Parser;
use std::time::Duration;
use tick_core::bus::{Producer, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::{Tick, clock};
use tokio_postgres::NoTls;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: replayer::KafkaReplayArgs,
}

#[derive(Parser)]
struct AuditCli {
    #[command(flatten)]
    a: replayer::AuditArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_range_restores_exactly_the_missing_rows() {
    let (Some(brokers), Some(base_url)) = (
        tick_core::testenv::service("KAFKA_BROKERS"),
        tick_core::testenv::service("DATABASE_URL"),
    ) else {
        return;
    };
    let db = format!("tickflow_replay_{}", std::process::id());
    let url = persister::conformance::fresh_database(&base_url, &db).await;
    let (admin, conn) = tokio_postgres::connect(&base_url, NoTls).await.unwrap();
    tokio::spawn(conn);

    let kafka = tick_core::kafka::KafkaArgs {
        brokers: brokers.clone(),
        properties: vec![],
        create_topics: true,
        topic_partitions: 12,
        topic_replication: 1,
    };
    kafka.ensure_topics().await.unwrap();
    let tag = format!("dr{}", clock::now_ns());
    let from = clock::now_ns() / 1_000_000 - 1_000;
    let p = kafka.producer(true).unwrap();
    let mut receipts = vec![];
    for i in 0..300u32 {
        let now = clock::now_ns();
        let symbol = ["EURUSD", "USDJPY", "GBPUSD"][(i % 3) as usize];
        let t = Tick {
            symbol: symbol.into(),
            source: tag.clone(),
            ts_event_ns: now,
            ts_recv_ns: now,
            scale: 5,
            bid: 110_000,
            ask: 110_002,
            last: None,
            bid_size: 1.0,
            ask_size: 1.0,
            volume: 0.0,
            flags: 0,
            key: tick_core::idempotency_key(&tag, symbol, now, i),
            route: Default::default(),
            replay: false,
        };
        receipts.push(
            p.send(topics::CLEAN, symbol.as_bytes(), t.encode())
                .await
                .unwrap(),
        );
    }
    for r in receipts {
        r.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let to = clock::now_ns() / 1_000_000 + 1_000;
    let rfc = |ms: i64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string()
    };
    let args = || {
        Cli::parse_from([
            "replayer",
            "--topic",
            topics::CLEAN,
            "--from",
            &rfc(from),
            "--to",
            &rfc(to),
            "--into",
            "postgres",
            "--database-url",
            &url,
            "--kafka-brokers",
            &brokers,
        ])
        .a
    };
    let ours = |c: tokio_postgres::Client| {
        let tag = tag.clone();
        async move {
            let n: i64 = c
                .query_one("SELECT count(*) FROM ticks WHERE source = $1", &[&tag])
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    let health = tick_core::ops::Health::new();
    let first = replayer::run_kafka(args(), CancellationToken::new(), health.clone())
        .await
        .unwrap();
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(ours(c).await, 300);
    assert!(first.read >= 300 && first.written >= 300, "{first:?}");

    // Lose 100 rows, replay the range: exactly those come back.
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let deleted = c
        .execute(
            "DELETE FROM ticks WHERE idempotency_key IN
               (SELECT idempotency_key FROM ticks WHERE source = $1 ORDER BY idempotency_key LIMIT 100)",
            &[&tag],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 100);
    let audit = || {
        AuditCli::parse_from([
            "replayer",
            "--from",
            &rfc(from),
            "--to",
            &rfc(to),
            "--margin",
            "10s",
            "--database-url",
            &url,
            "--kafka-brokers",
            &brokers,
        ])
        .a
    };
    let before = replayer::run_audit(audit(), CancellationToken::new(), health.clone())
        .await
        .unwrap();
    assert_eq!(
        (before.missing.len(), before.extra.len()),
        (100, 0),
        "the audit sees the loss"
    );
    assert_ne!(before.kafka_checksum, before.storage_checksum);
    let second = replayer::run_kafka(args(), CancellationToken::new(), health.clone())
        .await
        .unwrap();
    assert_eq!(second.written, 100, "{second:?}");
    assert_eq!(second.already_stored, second.read - 100);
    assert_eq!(ours(c).await, 300);
    let after = replayer::run_audit(audit(), CancellationToken::new(), health)
        .await
        .unwrap();
    assert!(
        after.missing.is_empty() && after.extra.is_empty(),
        "{after:?}"
    );
    assert_eq!(after.kafka_checksum, after.storage_checksum);
    assert!(after.in_kafka >= 300);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
