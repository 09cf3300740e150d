//! One behavioural test suite every [`TickStore`] implementation must pass (SQLite here,
//! PostgreSQL in the distributed tests): idempotent inserts, exact prices, ordered range reads.

use tick_core::Tick;
use tick_core::store::{DeadLetterRecord, TickStore};

fn tick(i: i64, symbol: &str) -> Tick {
    Tick {
        symbol: symbol.into(),
        source: "conformance".into(),
        ts_event_ns: 1_700_000_000_000_000_000 + i * 1_000_000,
        ts_recv_ns: 1_700_000_000_000_000_000 + i * 1_000_000 + 5,
        scale: 5,
        bid: 110_000 + i,
        ask: 110_002 + i,
        last: (i % 2 == 0).then_some(110_001 + i),
        bid_size: 1.25,
        ask_size: 0.5,
        volume: 3.0,
        flags: 6,
        key: tick_core::idempotency_key(
            "conformance",
            symbol,
            1_700_000_000_000_000_000 + i * 1_000_000,
            0,
        ),
        route: Default::default(),
        replay: i % 3 == 0,
    }
}

/// Creates an empty database named `name` next to the one `base_url` names (dropping an old
/// one of that name) and returns its URL: integration tests run in databases of their own.
pub async fn fresh_database(base_url: &str, name: &str) -> String {
    let (admin, conn) = tokio_postgres::connect(base_url, tokio_postgres::NoTls)
        .await
        .expect("connect to DATABASE_URL");
    tokio::spawn(conn);
    // Two statements: CREATE DATABASE may not share an (implicit) transaction.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .expect("create the test database");
    }
    let (base, _) = base_url
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    format!("{base}/{name}")
}

/// Runs every check against an empty, migrated store; panics with a message on failure.
pub async fn check_store(store: &dyn TickStore) {
    store.migrate().await.expect("migrate twice is harmless");
    let a: Vec<Tick> = (0..10).map(|i| tick(i, "EURUSD")).collect();
    let b: Vec<Tick> = (0..5).map(|i| tick(i, "USDJPY")).collect();
    assert_eq!(
        store.insert_ticks(&a).await.unwrap(),
        10,
        "new rows counted"
    );
    assert_eq!(
        store.insert_ticks(&a[5..]).await.unwrap(),
        0,
        "replayed rows ignored"
    );
    let mixed: Vec<Tick> = a[..2].iter().chain(&b).cloned().collect();
    assert_eq!(
        store.insert_ticks(&mixed).await.unwrap(),
        5,
        "only new rows of a mixed batch"
    );
    assert_eq!(store.count_ticks().await.unwrap(), 15);

    let from = a[0].ts_event_ns;
    let to = a[9].ts_event_ns + 1;
    let all = store.ticks_between(&[], from, to, None, 100).await.unwrap();
    let mut keys = store.keys_between(from, to).await.unwrap();
    keys.sort();
    let mut want: Vec<String> = all.iter().map(|t| t.key.clone()).collect();
    want.sort();
    assert_eq!(keys, want, "keys_between agrees with ticks_between");
    assert!(store.keys_between(to, to + 1).await.unwrap().is_empty());
    assert_eq!(all.len(), 15);
    assert!(
        all.windows(2)
            .all(|w| (w[0].ts_event_ns, &w[0].key) <= (w[1].ts_event_ns, &w[1].key))
    );
    let eur = store
        .ticks_between(&["EURUSD".to_string()], from, to, None, 100)
        .await
        .unwrap();
    assert_eq!(eur, a, "round trip is exact, field for field");
    let page1 = store
        .ticks_between(&["EURUSD".to_string()], from, to, None, 4)
        .await
        .unwrap();
    let cursor = page1.last().map(|t| (t.ts_event_ns, t.key.clone()));
    let page2 = store
        .ticks_between(&["EURUSD".to_string()], from, to, cursor, 4)
        .await
        .unwrap();
    assert_eq!(page1.len(), 4);
    assert_eq!(page2[0], a[4], "paging resumes after the cursor");

    let dl = DeadLetterRecord {
        reason: "crossed_quote".into(),
        detail: "ask below bid".into(),
        payload: vec![1, 2, 3],
        origin: "ticks.raw".into(),
        component: "router".into(),
        ts_rejected_ns: 42,
    };
    assert_eq!(
        store.insert_dead_letters(&[dl.clone(), dl]).await.unwrap(),
        2
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
        super::check_store(&store).await;
    }
}
