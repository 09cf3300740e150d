//! A batch published under one receipt against a real Apache Kafka: the receipt resolves once
//! every message is settled and names exactly the messages that were not accepted, whether the
//! client refused to queue them or the broker refused them; the others arrive, in order.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::time::Duration;
use tick_core::bus::{Consumer, Outgoing, Producer};
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;

mod common;

fn args(brokers: String) -> KafkaArgs {
    common::args(brokers, 1)
}

/// Bytes that lz4 cannot shrink (so the broker sees their size).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads `n` payloads of `topic` from the start.
async fn read(k: &KafkaArgs, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let group = format!("{topic}.reader");
    let mut c = k.consumer(&group, topic, CancellationToken::new()).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(90), c.recv())
            .await
            .expect("a message within 90 s")
            .unwrap()
            .expect("stream open");
        out.push(d.payload);
    }
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_secs(3), c.recv()).await;
    assert!(more.is_err(), "only {n} messages were expected");
    out
}

#[tokio::test]
async fn one_receipt_per_batch_names_the_refused_messages_and_the_rest_arrive_in_order() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = args(brokers.clone());
    let run = tick_core::clock::now_ns();
    let (open, small) = (
        format!("test.batches.{run}.open"),
        format!("test.batches.{run}.small"),
    );
    k.create_topic(&open, 1).await.unwrap();
    // A topic whose broker-side limit refuses messages over 4,000 bytes.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&small, 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", "4000")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");

    let p = k.producer(true).unwrap();

    // All accepted: one receipt, every message in order.
    let mut batch = Outgoing::default();
    for i in 0..1_000u32 {
        batch.push(b"EURUSD", |b| b.extend_from_slice(&i.to_be_bytes()));
    }
    p.send_batch(&open, &batch)
        .await
        .unwrap()
        .await
        .expect("all accepted");
    let got = read(&k, &open, 1_000).await;
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, m)| *m == (i as u32).to_be_bytes())
    );

    // The client refuses to queue a message over its 1 MB limit: it and those after it fail,
    // those before it are delivered.
    batch.clear();
    for i in 0..5u32 {
        let big = i == 3;
        batch.push(b"EURUSD", |b| {
            b.extend_from_slice(&i.to_be_bytes());
            if big {
                b.extend_from_slice(&noise(2_000_000, 7));
            }
        });
    }
    let refused = p
        .send_batch(&small, &batch)
        .await
        .expect("the first message was queued")
        .await
        .expect_err("one was too large to queue");
    assert_eq!(refused.positions, vec![3, 4]);

    // The broker refuses one message of a batch: the receipt names it (and any message the
    // broker refused with it in the same request); every other message arrives.
    batch.clear();
    for i in 5..10u32 {
        let big = i == 7;
        batch.push(b"EURUSD", |b| {
            b.extend_from_slice(&i.to_be_bytes());
            if big {
                b.extend_from_slice(&noise(10_000, 11));
            }
        });
    }
    let refused = p
        .send_batch(&small, &batch)
        .await
        .unwrap()
        .await
        .expect_err("the broker refuses the large message");
    assert!(refused.positions.contains(&2), "{:?}", refused.positions);
    let accepted: Vec<u32> = (0..3)
        .chain((5..10).filter(|i| !refused.positions.contains(&(*i as usize - 5))))
        .collect();
    let got = read(&k, &small, accepted.len()).await;
    let got: Vec<u32> = got
        .iter()
        .map(|m| u32::from_be_bytes(m[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, accepted, "exactly the accepted ones, in order");
}
