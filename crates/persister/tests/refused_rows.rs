//! A batch that PostgreSQL refuses for a data reason is split: the offending row goes to
//! `ticks.dlq` with the database's error, every other row is stored, and the batch is
//! acknowledged. Real Kafka, real PostgreSQL.

use persister::breaker::BreakerArgs;
use persister::{BatchConfig, DeadLetters, PersisterStats, postgres::PgStore};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tick_core::bus::{Consumer, Producer, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::store::{TickStore, TickWriter};
use tick_core::{Tick, pb};
use tick_kafka::{Bound, KafkaArgs};

fn tick(source: &str, symbol: &str, i: i64) -> Tick {
    tick_core::testenv::tick(
        source,
        symbol,
        1_700_000_000_000_000_000 + i * 1_000_000,
        110_000 + i,
    )
}

#[tokio::test]
async fn refused_rows_go_to_the_dead_letter_topic_and_the_rest_is_stored() {
    let (Some(brokers), Some(url)) = (
        tick_core::testenv::service("KAFKA_BROKERS"),
        tick_core::testenv::service("DATABASE_URL"),
    ) else {
        return;
    };
    let run = tick_core::clock::now_ns();
    let kafka = KafkaArgs {
        brokers,
        properties: vec![],
        linger: Default::default(),
        create_topics: true,
        topic_partitions: 1,
        topic_replication: 1,
    };
    kafka.ensure_topics().await.unwrap();
    let db = format!("tickflow_refused_{}", std::process::id());
    let db_url = persister::conformance::fresh_database(&url, &db).await;
    let store = PgStore::connect(&db_url, 2).unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn TickStore> = Arc::new(store);

    // Ten ticks in one batch; PostgreSQL refuses text holding a NUL byte (SQLSTATE 22021).
    let source = format!("refused{run}");
    let topic = format!("test.refused.{run}");
    let producer = kafka.producer(true).unwrap();
    let mut receipts = vec![];
    for i in 0..10 {
        let symbol = if i == 4 { "EUR\0USD" } else { "EURUSD" };
        let t = tick(&source, symbol, i);
        receipts.push(producer.send(&topic, b"EURUSD", t.encode()).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }

    let stop = CancellationToken::new();
    let consumer = kafka
        .consumer(&format!("test-refused-{run}"), &topic, stop.clone())
        .unwrap();
    let stats = Arc::new(PersisterStats::default());
    let task = tokio::spawn(persister::run_persister(
        Box::new(consumer),
        store.clone(),
        BatchConfig {
            max_rows: 100,
            max_delay: Duration::from_millis(200),
            ..BatchConfig::default()
        },
        BreakerArgs::default(),
        DeadLetters::Topic(Arc::new(kafka.producer(false).unwrap())),
        stats.clone(),
        CancellationToken::new(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.dead_letters.load(Ordering::Relaxed) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        store.count_ticks().await.unwrap(),
        9,
        "every other row stored"
    );
    assert_eq!(stats.stored.load(Ordering::Relaxed), 9);
    assert_eq!(
        stats.accounted(),
        stats.received.load(Ordering::Relaxed),
        "every message counted once: {stats:?}"
    );

    // The refused row is on ticks.dlq, read back from the broker, with PostgreSQL's error.
    let now_ms = tick_core::clock::now_ns() / 1_000_000;
    let mut dlq = kafka
        .range_consumer(
            topics::DLQ,
            Bound::TimeMs(run / 1_000_000 - 1000),
            Bound::TimeMs(now_ms + 1000),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut ours = vec![];
    while let Some(d) = dlq.recv().await.unwrap() {
        let Ok(r) = pb::DeadLetter::decode(d.payload.as_slice()) else {
            continue;
        };
        if let Ok(t) = Tick::decode(&r.payload) {
            if t.source == source {
                ours.push((r, t));
            }
        }
    }
    assert_eq!(ours.len(), 1, "exactly the refused row");
    let (r, t) = &ours[0];
    assert_eq!(r.reason, "store_rejected");
    assert_eq!(r.component, "persister");
    assert_eq!(t.symbol, "EUR\0USD");
    assert!(
        r.detail.contains("UTF8") || r.detail.contains("0x00"),
        "the database's error: {}",
        r.detail
    );

    let admin = persister::postgres::connect(&url).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
