//! The router against a real Apache Kafka: failover between two sources of one symbol and back,
//! and a router killed mid-stream that must not duplicate resent ticks. Results are read back
//! from `ticks.clean` with a consumer of its own.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tick_core::bus::{Producer, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::tick::ROUTE_SOURCE_SWITCH;
use tick_core::{Tick, clock};
use tick_kafka::KafkaArgs;

fn kafka(brokers: String) -> KafkaArgs {
    KafkaArgs {
        brokers,
        properties: vec![],
        linger: Default::default(),
        create_topics: true,
        topic_partitions: 12,
        topic_replication: 1,
    }
}

/// The two tests share the `router` consumer group, so they must not run at the same time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tick(source: &str, i: u32) -> Tick {
    tick_of("EURUSD", source, i)
}

fn tick_of(symbol: &str, source: &str, i: u32) -> Tick {
    let now = clock::now_ns();
    Tick {
        symbol: symbol.into(),
        source: source.into(),
        ts_event_ns: now,
        ts_recv_ns: now,
        scale: 5,
        bid: 110_000 + i64::from(i % 7),
        ask: 110_003 + i64::from(i % 7),
        last: None,
        bid_size: 1.0,
        ask_size: 1.0,
        volume: 0.0,
        flags: 0,
        key: tick_core::idempotency_key(source, symbol, now, i),
        route: Default::default(),
        replay: false,
    }
}

async fn publish(p: &dyn Producer, ticks: &[Tick]) {
    let mut receipts = vec![];
    for t in ticks {
        receipts.push(
            p.send(topics::RAW, t.symbol.as_bytes(), t.encode())
                .await
                .unwrap(),
        );
    }
    for r in receipts {
        r.await.unwrap();
    }
}

/// Reads `ticks.clean` from `since` until `done` holds for the ticks of sources starting with
/// `tag`, then a little longer to catch any excess.
async fn read_clean(
    k: &KafkaArgs,
    since: Instant,
    tag: &str,
    done: impl Fn(&[Tick]) -> bool,
) -> Vec<Tick> {
    let stop = CancellationToken::new();
    let window = since.elapsed() + Duration::from_secs(2);
    let (initial, mut rx) = router::tail::follow_clean(k, window, stop.clone())
        .await
        .unwrap();
    let mut got: Vec<Tick> = initial
        .into_iter()
        .filter(|t| t.source.starts_with(tag))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&got) && Instant::now() < deadline {
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            && t.source.starts_with(tag)
        {
            got.push(t);
        }
    }
    // Anything more would be a duplicate: give it time to show up.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            && t.source.starts_with(tag)
        {
            got.push(t);
        }
    }
    stop.cancel();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_backup_source_and_back() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let k = kafka(brokers);
    k.ensure_topics().await.unwrap();
    let run = clock::now_ns();
    let (primary, backup) = (format!("fo{run}-mt5"), format!("fo{run}-oanda"));
    let since = Instant::now();
    let shutdown = CancellationToken::new();
    // A group of its own, positioned at the end of ticks.raw (no earlier backlog to read).
    let group = format!("router-failover-test-{run}");
    k.commit_end_offsets(&group, topics::RAW).await.unwrap();
    let args = router::RouterArgs {
        rules: {
            use clap::Parser;
            #[derive(Parser)]
            struct P {
                #[command(flatten)]
                r: router::RulesArgs,
            }
            let mut r = P::parse_from(["t"]).r;
            r.arbitration = router::ArbitrationMode::PrimaryFailover;
            r.source_priority = vec![primary.clone(), backup.clone()];
            r.failover_after = Duration::from_millis(500);
            r.spike_multiple = 0.0;
            r
        },
        group: group.clone(),
        input_topic: topics::RAW.into(),
        output_topic: topics::CLEAN.into(),
        kafka: k.clone(),
    };
    let health = tick_core::health::Health::new();
    let stats = Arc::new(router::RouterStats::default());
    let task = tokio::spawn(router::run_with_stats(
        args,
        shutdown.clone(),
        health.clone(),
        stats.clone(),
    ));
    // Ready is not enough: the story's clock starts when the router routes every partition of
    // ticks.raw (assigned, its de-duplication state rebuilt from ticks.clean, which earlier
    // tests filled). Before that, ticks wait in ticks.raw and reach the router in a burst, and
    // the router judges silence by when ticks reach it.
    let partitions = k.partition_count(topics::RAW).await.unwrap() as u64;
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !health.is_ready()
        || stats.partitions.load(std::sync::atomic::Ordering::Relaxed) < partitions
    {
        assert!(!task.is_finished(), "router stopped: {:?}", task.await);
        assert!(
            Instant::now() < ready_by,
            "router not routing all {partitions} partitions within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let p = k.producer(true).unwrap();
    let mut i = 0;
    let mut last_primary_key = String::new();
    // Phase 1: both sources; phase 2: the primary silent; phase 3: both again.
    for (phase, ms) in [(1, 1000), (2, 1500), (3, 1000)] {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            // Until the router has seen the primary, the first source it sees is active: send
            // the primary first so the story starts with it.
            let mut batch = vec![];
            if phase != 2 {
                batch.push(tick(&primary, i));
                last_primary_key = batch[0].key.clone();
            }
            batch.push(tick(&backup, i));
            publish(&p, &batch).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let got = read_clean(&k, since, &format!("fo{run}"), |got| {
        got.iter().any(|t| t.key == last_primary_key)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let keys: std::collections::HashSet<_> = got.iter().map(|t| &t.key).collect();
    assert_eq!(keys.len(), got.len(), "no duplicates in ticks.clean");
    // Ticks of one symbol arrive in order: the runs of sources tell the story.
    let runs: Vec<(&str, bool)> = got
        .iter()
        .enumerate()
        .filter(|(n, t)| *n == 0 || t.source != got[n - 1].source)
        .map(|(_, t)| (t.source.as_str(), t.route.flags & ROUTE_SOURCE_SWITCH != 0))
        .collect();
    assert_eq!(
        runs,
        vec![
            (primary.as_str(), false),
            (backup.as_str(), true),
            (primary.as_str(), true)
        ],
        "primary, failover to backup, switch back"
    );
    // The failover happened within the configured silence plus the timer period and slack.
    let last_primary = got
        .iter()
        .take_while(|t| t.source == primary)
        .last()
        .unwrap();
    let first_backup = got.iter().find(|t| t.source == backup).unwrap();
    let took = Duration::from_nanos((first_backup.ts_event_ns - last_primary.ts_event_ns) as u64);
    assert!(
        took < Duration::from_millis(500 + 400),
        "failover took {took:?}"
    );
    let seqs: Vec<u64> = got.iter().map(|t| t.route.symbol_seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous sequence numbers"
    );
}

/// A router process, stopped with SIGTERM when dropped so it leaves the consumer group at once.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the router binary in consumer group `group`. The two-minute de-duplication window
/// covers the test's resent ticks, and keeps the restart's read of `ticks.clean` short on a
/// broker that earlier benchmark runs filled.
fn start_router(brokers: &str, group: &str) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_router"))
            .args(["--metrics-addr", "127.0.0.1:0", "--kafka-brokers", brokers])
            .args(["--group", group, "--dedup-window", "2m"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_does_not_duplicate_resent_ticks() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let k = kafka(brokers.clone());
    k.ensure_topics().await.unwrap();
    let tag = format!("rs{}", clock::now_ns());
    let since = Instant::now();
    let p: Arc<dyn Producer> = Arc::new(k.producer(true).unwrap());
    let a: Vec<Tick> = (0..300).map(|i| tick_of("GBPUSD", &tag, i)).collect();
    let b: Vec<Tick> = (300..500).map(|i| tick_of("GBPUSD", &tag, i)).collect();

    // A group of its own, positioned at the end of ticks.raw (no earlier backlog to read).
    let group = format!("router-restart-test-{tag}");
    k.commit_end_offsets(&group, topics::RAW).await.unwrap();
    let mut first = start_router(&brokers, &group);
    publish(p.as_ref(), &a).await;
    // Let it route some, then kill it without a chance to commit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    // The source reconnects and resends half of what it sent, then continues.
    publish(p.as_ref(), &a[150..]).await;
    publish(p.as_ref(), &b).await;
    let _second = start_router(&brokers, &group);
    let got = read_clean(&k, since, &tag, |got| got.len() >= 500).await;
    let keys: std::collections::HashSet<_> = got.iter().map(|t| t.key.clone()).collect();
    assert_eq!(
        got.len(),
        500,
        "every tick once: got {} ({} distinct)",
        got.len(),
        keys.len()
    );
    assert_eq!(keys.len(), 500);
    let seqs: Vec<u64> = got.iter().map(|t| t.route.symbol_seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbering continues across the restart"
    );
}
