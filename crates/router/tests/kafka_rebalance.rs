//! Against a real Apache Kafka: two router instances in one consumer group while a source keeps
//! resending its recent ticks. Partitions move from the first instance to the second when it
//! joins and back when it leaves, with resends of ticks the other instance let through arriving
//! across each move; every tick must reach `ticks.clean` exactly once and each symbol's
//! numbering must continue across the moves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tick_core::bus::Producer;
use tick_core::health::Health;
use tick_core::instrument::INSTRUMENTS;
use tick_core::shutdown::CancellationToken;
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

/// Round `round` of the feed: one tick of every known instrument, from `source`.
fn round_of(source: &str, round: u32) -> Vec<Tick> {
    INSTRUMENTS
        .iter()
        .map(|ins| {
            let now = clock::now_ns();
            let bid = (ins.typical_price * 10f64.powi(i32::from(ins.scale))).round() as i64;
            Tick {
                symbol: ins.symbol.into(),
                source: source.into(),
                ts_event_ns: now,
                ts_recv_ns: now,
                scale: ins.scale,
                bid,
                ask: bid + ins.typical_spread,
                last: None,
                bid_size: 1.0,
                ask_size: 1.0,
                volume: 0.0,
                flags: 0,
                key: tick_core::idempotency_key(source, ins.symbol, now, round),
                route: Default::default(),
                replay: false,
            }
        })
        .collect()
}

/// Publishes `ticks` to `topic` keyed by symbol, as ingest does to `ticks.raw`, and waits for
/// Kafka.
async fn publish(p: &dyn Producer, topic: &str, ticks: impl IntoIterator<Item = &Tick>) {
    let mut receipts = vec![];
    for t in ticks {
        receipts.push(
            p.send(topic, t.symbol.as_bytes(), t.encode())
                .await
                .unwrap(),
        );
    }
    for r in receipts {
        r.await.unwrap();
    }
}

struct Instance {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: CancellationToken,
    stats: Arc<router::RouterStats>,
}

impl Instance {
    fn owned(&self) -> u64 {
        self.stats.partitions.load(Ordering::Relaxed)
    }
}

/// Starts a router in `group` (the spike filter off: the prices are constant anyway) and waits
/// until it is ready.
async fn start(k: &KafkaArgs, group: &str, raw: &str, clean: &str) -> Instance {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        r: router::RulesArgs,
    }
    let mut rules = P::parse_from(["t", "--dedup-window", "2m"]).r;
    rules.spike_multiple = 0.0;
    let args = router::RouterArgs {
        rules,
        group: group.to_string(),
        input_topic: raw.into(),
        output_topic: clean.into(),
        kafka: k.clone(),
    };
    let stop = CancellationToken::new();
    let health = Health::new();
    let stats = Arc::new(router::RouterStats::default());
    let task = tokio::spawn(router::run_with_stats(
        args,
        stop.clone(),
        health.clone(),
        stats.clone(),
    ));
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !health.is_ready() {
        assert!(!task.is_finished(), "router stopped: {:?}", task.await);
        assert!(Instant::now() < ready_by, "router not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Instance { task, stop, stats }
}

/// The source: every 20 ms one new tick per instrument, plus a resend of the previous three
/// rounds (a source that reconnects resends what it may have lost), so each tick is on
/// ticks.raw four times within about 80 ms.
struct Feed {
    tag: String,
    raw: String,
    producer: Arc<dyn Producer>,
    recent: VecDeque<Vec<Tick>>,
    sent: HashSet<String>,
    round: u32,
}

impl Feed {
    async fn step(&mut self) {
        let fresh = round_of(&self.tag, self.round);
        self.sent.extend(fresh.iter().map(|t| t.key.clone()));
        publish(
            self.producer.as_ref(),
            &self.raw,
            fresh.iter().chain(self.recent.iter().flatten()),
        )
        .await;
        self.recent.push_back(fresh);
        if self.recent.len() > 3 {
            self.recent.pop_front();
        }
        self.round += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Keeps the feed going for `d`.
    async fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step().await;
        }
    }

    /// Keeps the feed going until `done` holds (at most 60 s).
    async fn run_until(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 60 s");
            self.step().await;
        }
    }
}

/// Returns every tick `topic` holds now, partition by partition in order.
async fn read_all(k: &KafkaArgs, topic: &str) -> Vec<Tick> {
    use tick_core::bus::Consumer;
    use tick_kafka::Bound;
    let mut c = k
        .range_consumer(
            topic,
            Bound::Offset(0),
            Bound::Offset(i64::MAX),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut out = vec![];
    while let Some(d) = c.recv().await.unwrap() {
        out.push(Tick::decode(&d.payload).unwrap());
    }
    out
}

fn distinct(got: &[Tick]) -> usize {
    got.iter().map(|t| &t.key).collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_across_a_rebalance_reaches_ticks_clean_once() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    // RUST_LOG=router=info shows the partitions moving.
    tick_core::telemetry::init(tick_core::telemetry::LogFormat::Text, "warn");
    let k = kafka(brokers);
    k.ensure_topics().await.unwrap();
    let run = clock::now_ns();
    let tag = format!("rb{run}");
    // Topics of its own, so that no other router (another test's, a benchmark's) routes the
    // same raw ticks; 12 partitions each, as tickflow provisions them.
    let (raw, clean) = (format!("{tag}.raw"), format!("{tag}.clean"));
    for t in [&raw, &clean] {
        k.create_topic(t, 12).await.unwrap();
    }
    let group = format!("router-rebalance-test-{run}");
    let first = start(&k, &group, &raw, &clean).await;
    let mut feed = Feed {
        tag: tag.clone(),
        raw: raw.clone(),
        producer: Arc::new(k.producer(true).unwrap()),
        recent: VecDeque::new(),
        sent: HashSet::new(),
        round: 0,
    };
    feed.run_until("the first instance owns every partition", || {
        first.owned() == 12
    })
    .await;
    feed.run_for(Duration::from_secs(1)).await;

    // A second instance joins: partitions move to it while ticks and resends flow.
    let second = start(&k, &group, &raw, &clean).await;
    feed.run_until("the partitions are shared", || {
        second.owned() > 0 && first.owned() + second.owned() == 12
    })
    .await;
    feed.run_for(Duration::from_secs(2)).await;

    // It leaves: its partitions move back.
    second.stop.cancel();
    feed.run_until("the first instance owns every partition again", || {
        first.owned() == 12
    })
    .await;
    second.task.await.unwrap().unwrap();
    feed.run_for(Duration::from_secs(1)).await;
    // The source reconnects once more and resends its last three rounds.
    publish(feed.producer.as_ref(), &raw, feed.recent.iter().flatten()).await;
    let sent = feed.sent;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert!(
        n(&second.stats.clean) > 0 && n(&second.stats.duplicates) > 0,
        "the second instance routed ticks and caught resends: {:?}",
        second.stats
    );

    // Read the clean topic until every tick is there, then once more a little later for any
    // excess.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = read_all(&k, &clean).await;
    while distinct(&got) < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        got = read_all(&k, &clean).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = read_all(&k, &clean).await;
    first.stop.cancel();
    first.task.await.unwrap().unwrap();
    k.delete_topics(&[&raw, &clean]).await.unwrap();

    let mut times: HashMap<&str, usize> = HashMap::new();
    for t in &got {
        *times.entry(t.key.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {} ticks reached ticks.clean more than once: {:?}",
        twice.len(),
        sent.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    let missing = sent
        .iter()
        .filter(|k| !times.contains_key(k.as_str()))
        .count();
    assert_eq!(missing, 0, "every tick reached ticks.clean");
    assert_eq!(got.len(), sent.len());
    // Per symbol, the numbering continues across both moves: no number twice, none skipped.
    let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
    for t in &got {
        seqs.entry(t.symbol.as_str())
            .or_default()
            .push(t.route.symbol_seq);
    }
    assert_eq!(seqs.len(), INSTRUMENTS.len());
    for (symbol, s) in seqs {
        assert!(
            s.windows(2).all(|w| w[1] == w[0] + 1),
            "{symbol}: symbol_seq not contiguous across the rebalances: {s:?}"
        );
    }
}

/// Clean ticks go to the partition number their raw tick came from, so an output topic with
/// fewer partitions than the input is refused at start, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_topic_with_fewer_partitions_is_refused() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = kafka(brokers);
    k.ensure_topics().await.unwrap();
    let tag = format!("rbp{}", clock::now_ns());
    let (raw, clean) = (format!("{tag}.raw"), format!("{tag}.clean"));
    k.create_topic(&raw, 4).await.unwrap();
    k.create_topic(&clean, 2).await.unwrap();
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        r: router::RouterArgs,
    }
    let mut args = P::parse_from(["t", "--input-topic", &raw, "--output-topic", &clean]).r;
    args.kafka = k.clone();
    let err = router::run(args, CancellationToken::new(), Health::new())
        .await
        .unwrap_err();
    k.delete_topics(&[&raw, &clean]).await.unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("2 partitions, fewer than the 4"),
        "refused for the reason: {msg}"
    );
}

/// Readiness means routing: a router turns ready only once its group has assigned it its
/// partitions and it has rebuilt every one of them from the output topic (here filled with
/// earlier ticks first), and a member the group gives no partition turns ready once it has
/// joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_is_ready_once_its_partitions_are_rebuilt() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let k = kafka(brokers);
    k.ensure_topics().await.unwrap();
    let tag = format!("rdy{}", clock::now_ns());
    let (raw, clean) = (format!("{tag}.raw"), format!("{tag}.clean"));
    for t in [&raw, &clean] {
        k.create_topic(t, 12).await.unwrap();
    }
    let earlier: Vec<Tick> = (0..50).flat_map(|r| round_of(&tag, r)).collect();
    let producer = k.producer(true).unwrap();
    publish(&producer, &clean, &earlier).await;

    let group = format!("router-ready-test-{}", clock::now_ns());
    let first = start(&k, &group, &raw, &clean).await;
    assert_eq!(
        first.owned(),
        12,
        "ready before every partition was rebuilt: {:?}",
        first.stats
    );

    // A second group on single-partition topics: its second member owns nothing.
    let (raw1, clean1) = (format!("{tag}.raw1"), format!("{tag}.clean1"));
    for t in [&raw1, &clean1] {
        k.create_topic(t, 1).await.unwrap();
    }
    let group1 = format!("{group}-1");
    let a = start(&k, &group1, &raw1, &clean1).await;
    assert_eq!(a.owned(), 1);
    let b = start(&k, &group1, &raw1, &clean1).await;
    assert_eq!(a.owned() + b.owned(), 1, "one partition, one owner");

    for i in [first, a, b] {
        i.stop.cancel();
        i.task.await.unwrap().unwrap();
    }
    k.delete_topics(&[&raw, &clean, &raw1, &clean1])
        .await
        .unwrap();
}
