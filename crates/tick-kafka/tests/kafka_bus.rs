//! The Kafka bus against a real Apache Kafka: delivery receipts, keyed ordering, and offsets
//! that advance only with acknowledgements (a restarted consumer resumes after the last ack).

use std::time::Duration;
use tick_core::bus::Consumer;
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;

mod common;

fn args(brokers: String) -> KafkaArgs {
    common::args(brokers, 12)
}

async fn recv(c: &mut dyn Consumer) -> tick_core::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(90), c.recv())
        .await
        .expect("a message within 90 s")
        .unwrap()
        .expect("stream open")
}

/// Publishes 0, 1, ... `n - 1` (big-endian u32) to `topic` under one key, in order, and waits
/// until each is delivered.
async fn publish_numbers(k: &KafkaArgs, topic: &str, n: u32) {
    let p = k.producer(true).unwrap();
    let records = (0..n).map(|i| (b"EURUSD", i.to_be_bytes().to_vec()));
    tick_core::bus::publish_all(&p, topic, records)
        .await
        .expect("delivered");
}

#[tokio::test]
async fn offsets_advance_only_with_acks() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = args(brokers);
    let run = tick_core::clock::now_ns();
    let topic = format!("test.bus.{run}");
    let group = format!("test-group-{run}");
    publish_numbers(&k, &topic, 100).await;

    let mut c = k
        .consumer(&group, &topic, CancellationToken::new())
        .unwrap();
    for i in 0..60u32 {
        let d = recv(&mut c).await;
        assert_eq!(d.payload, i.to_be_bytes(), "one key keeps its order");
        assert_eq!(&*d.topic, topic.as_str());
        // Acknowledge only the first 40: the work of the other 20 "crashed".
        if i < 40 {
            c.ack(d.id).unwrap();
        }
    }
    c.commit().await.unwrap();
    drop(c);

    let stop = CancellationToken::new();
    let mut again = k.consumer(&group, &topic, stop.clone()).unwrap();
    let d = recv(&mut again).await;
    assert_eq!(
        d.payload,
        40u32.to_be_bytes(),
        "resumes after the last acknowledged message"
    );
    stop.cancel();
    assert!(
        again.recv().await.unwrap().is_none(),
        "shutdown ends the stream"
    );
}

/// `try_recv` takes what a fetch already brought without waiting, in order, and a batch
/// (one `recv`, then `try_recv` until it says none is ready) loses nothing.
#[tokio::test]
async fn try_recv_takes_fetched_messages_in_order() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = args(brokers);
    let run = tick_core::clock::now_ns();
    let topic = format!("test.batch.{run}");
    publish_numbers(&k, &topic, 200).await;
    let stop = CancellationToken::new();
    let mut c = k
        .consumer(&format!("test-batch-{run}"), &topic, stop.clone())
        .unwrap();
    let (mut got, mut without_waiting) = (vec![], 0);
    while got.len() < 200 {
        got.push(recv(&mut c).await.payload);
        while let Some(d) = c.try_recv().unwrap() {
            got.push(d.payload);
            without_waiting += 1;
        }
    }
    let want: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(got, want, "every message once, in order");
    assert!(without_waiting > 0, "a fetch brought more than one message");
    assert!(c.try_recv().unwrap().is_none(), "none left");
    stop.cancel();
    assert!(c.try_recv().unwrap().is_none());
}

#[tokio::test]
async fn provisions_topics_idempotently() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = args(brokers);
    k.ensure_topics().await.unwrap();
    k.ensure_topics().await.expect("existing topics are fine");
    k.probe(Duration::from_secs(10)).await.unwrap();
    let bad = KafkaArgs {
        properties: vec!["not-a-pair".into()],
        ..k
    };
    assert!(bad.producer(true).is_err());
}
