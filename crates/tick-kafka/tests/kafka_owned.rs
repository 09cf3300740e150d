//! Partition ownership against a real Apache Kafka: a gained partition stays paused until the
//! stage resumes it; an input is acknowledged only once every output it caused is confirmed and
//! the stage is done with it, in input order; giving a partition up commits what is done and
//! reports it, so the next owner resumes right after.

use std::time::Duration;
use tick_core::bus::{Consumer, Producer};
use tick_core::shutdown::CancellationToken;
use tick_kafka::owned::{OwnedConsumer, Ownership};
use tick_kafka::{Bound, KafkaArgs};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;

fn args(brokers: String) -> KafkaArgs {
    common::args(brokers, 1)
}

/// Polls the consumer (rebalance callbacks run there) until it reports an assignment.
async fn assigned(c: &OwnedConsumer, events: &mut UnboundedReceiver<Ownership>) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ownership::Assigned(ps)) = events.try_recv() {
            return ps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no assignment in 60 s"
        );
        // Paused partitions return nothing: this only serves the callbacks.
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), c.recv()).await {
            panic!("a message before the partition was resumed: {}", m.offset());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_acknowledged_only_once_their_outputs_are_confirmed() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = args(brokers);
    let run = tick_core::clock::now_ns();
    let (input, output) = (
        format!("test.owned.{run}.in"),
        format!("test.owned.{run}.out"),
    );
    for t in [&input, &output] {
        k.create_topic(t, 1).await.unwrap();
    }
    let group = format!("test-owned-{run}");
    let p = k.producer(true).unwrap();
    for i in 0..10u32 {
        p.send(&input, b"k", i.to_be_bytes().to_vec())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (c, out, mut events) = k
        .owned(
            &group,
            &input,
            Duration::from_secs(30),
            CancellationToken::new(),
        )
        .unwrap();
    assert_eq!(assigned(&c, &mut events).await, vec![0]);
    let ledgers = out.ledgers().clone();
    ledgers.open(0);
    c.resume(0).unwrap();
    let mut held = None;
    for i in 0..10i64 {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .expect("a message within 60 s")
            .expect("open");
        assert_eq!(m.offset(), i);
        let token = ledgers.begin(0, m.offset()).unwrap();
        // Two outputs each, one to an explicit partition, one by key.
        assert!(
            out.send(&output, Some(0), b"k", m.payload(), token)
                .await
                .unwrap()
        );
        assert!(
            out.send(&output, None, b"k", m.payload(), token)
                .await
                .unwrap()
        );
        // Input 5 stays with the stage (a held tick): it and everything after it wait.
        if i == 5 {
            held = Some(token);
        } else {
            ledgers.done(token);
        }
    }
    out.flush(Duration::from_secs(30)).await.unwrap();
    let mut done = ledgers.take_done();
    assert_eq!(done, vec![(0, 4)], "acknowledged up to the held input");
    for (p, o) in done.drain(..) {
        c.ack(p, o);
    }
    assert_eq!(ledgers.in_flight(), 5);
    c.commit().await.unwrap();

    // Giving the partition up (the member leaves) reports it; the held input is not committed.
    drop(c);
    assert_eq!(events.try_recv(), Ok(Ownership::Revoked(vec![0])));
    ledgers.done(held.unwrap()); // too late: its ledger is closed
    assert!(ledgers.take_done().is_empty());

    let (c2, _out2, mut events2) = k
        .owned(
            &group,
            &input,
            Duration::from_secs(30),
            CancellationToken::new(),
        )
        .unwrap();
    assert_eq!(assigned(&c2, &mut events2).await, vec![0]);
    c2.resume(0).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), c2.recv())
        .await
        .expect("a message within 60 s")
        .expect("open");
    assert_eq!(m.offset(), 5, "the next owner resumes at the held input");
    drop(m);
    drop(c2);

    // Every output was delivered.
    let mut r = k
        .range_consumer(
            &output,
            Bound::Offset(0),
            Bound::Offset(i64::MAX),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut n = 0;
    while r.recv().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 20);
    k.delete_topics(&[&input, &output]).await.unwrap();
}
