//! The automatic linger against a real Apache Kafka: a producer given more messages per second
//! than its threshold moves to its batching client, moves back after a calm second, and across
//! both switches every message arrives once, each key's messages in the order they were sent.

use std::collections::HashMap;
use std::time::Duration;
use tick_core::bus::{BatchReceipt, Consumer, Outgoing, Producer};
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaProducer;
use tick_kafka::linger::{Linger, LingerArgs};

mod common;

const KEYS: [&[u8]; 4] = [b"EURUSD", b"GBPUSD", b"USDJPY", b"XAUUSD"];

/// Appends message `seq` (its key is `KEYS[seq % 4]`) to `batch`.
fn push(batch: &mut Outgoing, seq: u32) {
    batch.push(KEYS[seq as usize % KEYS.len()], |b| {
        b.extend_from_slice(&seq.to_be_bytes())
    });
}

/// Sends 20 messages one at a time, 20 ms apart (50 messages/s).
async fn light(p: &KafkaProducer, topic: &str, seq: &mut u32, receipts: &mut Vec<BatchReceipt>) {
    let mut batch = Outgoing::default();
    for _ in 0..20 {
        batch.clear();
        push(&mut batch, *seq);
        *seq += 1;
        receipts.push(p.send_batch(topic, &batch).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_automatic_linger_follows_the_rate_and_keeps_each_keys_order() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let mut k = common::args(brokers, 4);
    k.linger = LingerArgs {
        linger: Linger::Auto,
        auto_rate: 2_000,
        auto_ms: 5.0,
    };
    let topic = format!("test.linger.{}", tick_core::clock::now_ns());
    k.create_topic(&topic, 4).await.unwrap();
    let p = k.producer(true).unwrap();
    let mut receipts = Vec::new();
    let mut seq = 0u32;
    let mut batch = Outgoing::default();

    // Light: 50 messages/s, one at a time.
    light(&p, &topic, &mut seq, &mut receipts).await;
    assert!(!p.is_batching(), "50 messages/s is under the threshold");

    // Heavy: about 20,000 messages/s in batches of 100 for about a second.
    for _ in 0..200 {
        batch.clear();
        for _ in 0..100 {
            push(&mut batch, seq);
            seq += 1;
        }
        receipts.push(p.send_batch(&topic, &batch).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        p.is_batching(),
        "about 20,000 messages/s is over the threshold"
    );

    // Calm again: the first message after a quiet spell goes out at once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    light(&p, &topic, &mut seq, &mut receipts).await;
    assert!(!p.is_batching(), "back under half the threshold");

    for r in receipts {
        r.await.expect("every message accepted");
    }

    // Read back: each message once, and each key's in the order sent.
    let mut c = k
        .consumer(&format!("{topic}.reader"), &topic, CancellationToken::new())
        .unwrap();
    let mut last: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut seen = vec![false; seq as usize];
    for _ in 0..seq {
        let d = tokio::time::timeout(Duration::from_secs(90), c.recv())
            .await
            .expect("a message within 90 s")
            .unwrap()
            .expect("stream open");
        let s = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
        assert_eq!(d.key, KEYS[s as usize % KEYS.len()]);
        assert!(!std::mem::replace(&mut seen[s as usize], true), "{s} twice");
        if let Some(prev) = last.insert(d.key.clone(), s) {
            assert!(prev < s, "{s} after {prev} for the same key");
        }
    }
    let more = tokio::time::timeout(Duration::from_secs(3), c.recv()).await;
    assert!(more.is_err(), "only {seq} messages were sent");
    k.delete_topics(&[&topic]).await.unwrap();
}
