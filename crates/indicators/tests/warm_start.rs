//! Warm start against a real Kafka: an engine rebuilt from the history its group already
//! consumed is in exactly the state of one that saw those ticks live, and a group that never
//! committed reads nothing (the live consumer will read the topic from its start).

use indicators::engine::{Engine, EngineConfig};
use std::time::Duration;
use tick_core::bus::Consumer;
use tick_core::shutdown::CancellationToken;
use tick_core::{Tick, clock};
use tick_kafka::KafkaArgs;

fn tick(i: i64, symbol: &str) -> Tick {
    tick_core::testenv::tick(
        "warm",
        symbol,
        clock::now_ns() + i,
        108_000 + (i * 7919) % 90,
    )
}

/// A one-partition topic of its own holding `ticks`, and a consumer group that processed (and
/// committed) the first `consumed` of them, as a previous instance of the stage would have.
/// Returns the Kafka settings, the topic and the group; `None` without a Kafka to test against.
async fn consumed_history(
    name: &str,
    ticks: &[Tick],
    consumed: usize,
) -> Option<(KafkaArgs, String, String)> {
    let brokers = tick_core::testenv::service("KAFKA_BROKERS")?;
    let kafka = KafkaArgs {
        brokers,
        properties: vec![],
        linger: Default::default(),
        create_topics: false,
        topic_partitions: 1,
        topic_replication: 1,
    };
    let run = clock::now_ns();
    let topic = format!("test.{name}.{run}");
    kafka.create_topic(&topic, 1).await.unwrap();
    let p = kafka.producer(true).unwrap();
    tick_core::bus::publish_all(
        &p,
        &topic,
        ticks.iter().map(|t| (t.symbol.as_bytes(), t.encode())),
    )
    .await
    .unwrap();
    let group = format!("test-{name}-{run}");
    let mut c = kafka
        .consumer(&group, &topic, CancellationToken::new())
        .unwrap();
    for _ in 0..consumed {
        let d = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        c.ack(d.id).unwrap();
    }
    c.commit().await.unwrap();
    Some((kafka, topic, group))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_rebuilds_exactly_the_consumed_history() {
    let ticks: Vec<Tick> = (0..300)
        .map(|i| tick(i, ["EURUSD", "USDJPY"][(i % 2) as usize]))
        .collect();
    // The previous instance of the group processed (and committed) the first 200 ticks.
    let Some((kafka, topic, group)) = consumed_history("warm", &ticks, 200).await else {
        return;
    };

    let mut warmed = Engine::new(EngineConfig::default()).unwrap();
    let r = indicators::warm::from_kafka(
        &kafka,
        &topic,
        &group,
        Duration::from_secs(3600),
        &mut warmed,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((r.partitions, r.ticks, r.skipped), (1, 200, 0));

    let mut live = Engine::new(EngineConfig::default()).unwrap();
    for t in &ticks[..200] {
        let _ = live.on_tick(t.clone());
    }
    for symbol in ["EURUSD", "USDJPY"] {
        let (a, b) = (warmed.snapshot(symbol), live.snapshot(symbol));
        assert!(a.is_some());
        assert_eq!(
            a, b,
            "{symbol}: same state as an engine that saw the ticks live"
        );
        let latest = a.unwrap().latest.unwrap();
        assert!(
            latest.values.iter().all(|v| v.warm),
            "100 ticks warm every default indicator: {latest:?}"
        );
    }

    // A group that never committed: nothing to rebuild.
    let mut fresh = Engine::new(EngineConfig::default()).unwrap();
    let r = indicators::warm::from_kafka(
        &kafka,
        &topic,
        &format!("{group}-new"),
        Duration::from_secs(3600),
        &mut fresh,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((r.partitions, r.ticks), (0, 0));
    assert!(fresh.snapshot("EURUSD").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_returns_the_recent_closed_bars_to_publish_again() {
    let run = clock::now_ns();
    // 200 ticks 5 s apart over two symbols, ending a minute ago: 1,000 s of history, more
    // than the 300 s whose bars are published again.
    let start = run - 1_060_000_000_000;
    let ticks: Vec<Tick> = (0..200)
        .map(|i| {
            tick_core::testenv::tick(
                "warm",
                ["EURUSD", "USDJPY"][(i % 2) as usize],
                start + i * 5_000_000_000,
                108_000 + (i * 7919) % 90,
            )
        })
        .collect();
    let Some((kafka, topic, group)) = consumed_history("warm.bars", &ticks, 200).await else {
        return;
    };

    let mut warmed = Engine::new(EngineConfig::default()).unwrap();
    let r = indicators::warm::from_kafka(
        &kafka,
        &topic,
        &group,
        Duration::from_secs(3600),
        &mut warmed,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.ticks, 200);

    // The bars an engine closed when it saw the same ticks live, less the old ones.
    let mut live = Engine::new(EngineConfig::default()).unwrap();
    let all: Vec<_> = ticks
        .iter()
        .flat_map(|t| live.on_tick(t.clone()).bars)
        .collect();
    let newest = ticks.last().unwrap().ts_event_ns;
    let horizon = indicators::warm::REPUBLISH_BARS.as_nanos() as i64;
    let recent: Vec<_> = all
        .iter()
        .filter(|b| b.close_time_ns >= newest - horizon)
        .filter(|b| b.flags & indicators::bars::FLAG_PARTIAL_FIRST == 0)
        .cloned()
        .collect();
    assert!(
        !recent.is_empty() && recent.len() < all.len(),
        "{} of {}",
        recent.len(),
        all.len()
    );
    assert_eq!(r.bars, recent);
}
