//! The persister takes what the bus already holds into its batch in one pass, up to the batch
//! size: every message lands in exactly one batch, bad payloads included, and each batch is
//! written and acknowledged once. The embedded bus and a SQLite file.

use persister::breaker::BreakerArgs;
use persister::sqlite::SqliteStore;
use persister::{BatchConfig, DeadLetters, PersisterStats};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tick_core::bus::{MemoryBus, publish_all, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::store::{TickStore, TickWriter};

#[tokio::test]
async fn messages_queued_before_a_pass_fill_whole_batches_and_each_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn TickStore> = Arc::new(store);

    let bus = MemoryBus::new();
    let consumer = bus.subscribe(topics::CLEAN, 4096);
    let producer = bus.producer();
    // 2,499 ticks and one payload that is not a tick, all queued before the persister starts.
    let records = (0..2_500i64).map(|i| {
        let payload = if i == 1_234 {
            b"not a tick".to_vec()
        } else {
            let ts = 1_700_000_000_000_000_000 + i;
            tick_core::testenv::tick("batches", "EURUSD", ts, 110_000 + i).encode()
        };
        ("EURUSD", payload)
    });
    publish_all(&producer, topics::CLEAN, records)
        .await
        .unwrap();
    bus.close(topics::CLEAN);

    let stats = Arc::new(PersisterStats::default());
    persister::run_persister(
        Box::new(consumer),
        store.clone(),
        BatchConfig {
            max_rows: 1_000,
            // Only size and the end of the stream flush.
            max_delay: Duration::from_secs(600),
            ..BatchConfig::default()
        },
        BreakerArgs::default(),
        DeadLetters::Store,
        stats.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();

    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(n(&stats.received), 2_500);
    assert_eq!(n(&stats.stored), 2_499);
    assert_eq!(n(&stats.malformed), 1);
    assert_eq!(n(&stats.dead_letters), 1);
    assert_eq!(n(&stats.duplicates), 0);
    // 1,000 + 1,000 messages by size, then the last 500 when the stream ends.
    assert_eq!(n(&stats.batches), 3);
    assert_eq!(stats.accounted(), 2_500, "counters add up");
    assert_eq!(store.count_ticks().await.unwrap(), 2_499);
}
