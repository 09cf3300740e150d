//! `replayer kafka` against a real Kafka and PostgreSQL: three hours of ticks are stored, one
//! hour of them is deleted, and reading that hour back from the topic restores exactly the
//! missing rows; `replayer audit` sees the loss before and no difference after.

use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use tick_core::clock;
use tick_core::shutdown::CancellationToken;

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
    let admin = persister::postgres::connect(&base_url).await.unwrap();

    let kafka = tick_kafka::KafkaArgs {
        brokers: brokers.clone(),
        properties: vec![],
        linger: Default::default(),
        create_topics: true,
        topic_partitions: 12,
        topic_replication: 1,
    };
    kafka.ensure_topics().await.unwrap();
    // Three whole hours that ended before this one, 100 ticks each, on a topic of their own
    // whose message timestamps are the ticks' event times (as for live ticks, where they agree
    // to within milliseconds).
    const HOUR: i64 = 3_600_000_000_000;
    let tag = format!("dr{}", clock::now_ns());
    let topic = format!("test.dr.{tag}");
    let h0 = (clock::now_ns() / HOUR - 3) * HOUR;
    let (from, to) = (h0 / 1_000_000, (h0 + 3 * HOUR) / 1_000_000);
    let (h1, h2) = ((h0 + HOUR) / 1_000_000, (h0 + 2 * HOUR) / 1_000_000);
    let p: FutureProducer = kafka
        .config(&[("enable.idempotence", "true")])
        .unwrap()
        .create()
        .unwrap();
    for i in 0..300i64 {
        let ts = h0 + i * 36_000_000_000;
        let symbol = ["EURUSD", "USDJPY", "GBPUSD"][(i % 3) as usize];
        let t = tick_core::testenv::tick(&tag, symbol, ts, 110_000 + i);
        let payload = t.encode();
        let record = FutureRecord::to(&topic)
            .key(symbol)
            .payload(&payload)
            .timestamp(ts / 1_000_000);
        p.send(record, Duration::from_secs(30)).await.unwrap();
    }
    let rfc = |ms: i64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string()
    };
    let args = |from: i64, to: i64| {
        Cli::parse_from([
            "replayer",
            "--topic",
            &topic,
            "--from",
            &rfc(from),
            "--to",
            &rfc(to),
            "--store",
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
    let health = tick_core::health::Health::new();
    let first = replayer::run_kafka(args(from, to), CancellationToken::new(), health.clone())
        .await
        .unwrap();
    let c = persister::postgres::connect(&url).await.unwrap();
    assert_eq!(ours(c).await, 300);
    assert_eq!((first.read, first.written), (300, 300), "{first:?}");

    // Lose the middle hour, replay that hour: exactly its rows come back.
    let c = persister::postgres::connect(&url).await.unwrap();
    let deleted = c
        .execute(
            "DELETE FROM ticks WHERE source = $1 AND ts_event_ns >= $2 AND ts_event_ns < $3",
            &[&tag, &(h1 * 1_000_000), &(h2 * 1_000_000)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 100);
    let audit = || {
        AuditCli::parse_from([
            "replayer",
            "--topic",
            &topic,
            "--from",
            &rfc(from),
            "--to",
            &rfc(to),
            "--margin",
            "10s",
            "--store",
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
    let second = replayer::run_kafka(args(h1, h2), CancellationToken::new(), health.clone())
        .await
        .unwrap();
    assert_eq!(
        (second.read, second.written, second.already_stored),
        (100, 100, 0),
        "exactly the lost hour: {second:?}"
    );
    assert_eq!(ours(c).await, 300);
    let after = replayer::run_audit(audit(), CancellationToken::new(), health)
        .await
        .unwrap();
    assert!(
        after.missing.is_empty() && after.extra.is_empty(),
        "{after:?}"
    );
    assert_eq!(after.kafka_checksum, after.storage_checksum);
    assert_eq!(after.in_kafka, 300);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
