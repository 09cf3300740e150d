//! One behavioural test suite every [`TickStore`] implementation must pass, run through the store
//! factory ([`check_store_at`]) for SQLite here and PostgreSQL in the distributed tests:
//! idempotent inserts, exact prices, ordered range reads.

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
        // EURUSD as a router passed it, USDJPY as imported (no router fields).
        route: if symbol == "EURUSD" {
            tick_core::RouteInfo {
                ts_route_ns: 1_700_000_000_000_000_000 + i * 1_000_000 + 9,
                symbol_seq: 40 + i as u64,
                flags: (i % 4) as u32,
                gap_ns: i * 7,
            }
        } else {
            Default::default()
        },
        replay: i % 3 == 0,
    }
}

/// Creates an empty database named `name` next to the one `base_url` names (dropping an old
/// one of that name) and returns its URL: integration tests run in databases of their own.
pub async fn fresh_database(base_url: &str, name: &str) -> String {
    let admin = crate::postgres::connect(base_url)
        .await
        .expect("connect to DATABASE_URL");
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

/// Opens the store at `url` through the factory (as every binary does) and runs every check
/// against it; the store must be empty.
pub async fn check_store_at(url: &crate::stores::StoreUrl) {
    let stores = url
        .open(&crate::stores::StoreOptions::pool(2))
        .await
        .expect("the factory opens and migrates the store");
    let store = stores
        .full
        .expect("the conformance suite checks stores that play every role");
    check_store(store.as_ref()).await;
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
    assert_eq!(
        store.last_symbol_seqs().await.unwrap(),
        vec![("EURUSD".to_string(), 49)],
        "the last sequence number of each symbol a router passed"
    );

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
    let both = ["USDJPY".to_string(), "EURUSD".to_string()];
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .ticks_between(&both, from, to, cursor, 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        cursor = Some((last.ts_event_ns, last.key.clone()));
        paged.extend(page);
    }
    assert_eq!(
        paged, all,
        "pages of several symbols add up to the range, in order"
    );

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

    check_hours_with_ticks(store).await;
    check_import_progress(store).await;
    check_bars(store).await;
}

/// Bars: stored exactly, once per symbol, timeframe, side and open time; read back in order.
async fn check_bars(store: &dyn TickStore) {
    let bar = |minute: i64, side: &str| tick_core::pb::Bar {
        symbol: "EURUSD".into(),
        timeframe: "1m".into(),
        price_side: side.into(),
        open_time_ns: 1_700_000_040_000_000_000 + minute * 60_000_000_000,
        close_time_ns: 1_700_000_100_000_000_000 + minute * 60_000_000_000,
        price_scale: 5,
        open: 108_001 + minute,
        high: 108_050,
        low: 107_990,
        close: 108_020,
        tick_count: 42,
        volume: 1.5,
        ts_recv_ns: 1_700_000_100_000_123_000 + minute,
        flags: 1,
    };
    let bars = vec![bar(1, "bid"), bar(0, "bid"), bar(0, "ask")];
    assert_eq!(store.insert_bars(&bars).await.unwrap(), 3);
    assert_eq!(
        store.insert_bars(&bars[1..]).await.unwrap(),
        0,
        "a stored bar is not stored twice"
    );
    let got = store
        .bars_page("EURUSD", "1m", None, 0, i64::MAX, None, 1000)
        .await
        .unwrap();
    assert_eq!(got, vec![bar(0, "ask"), bar(0, "bid"), bar(1, "bid")]);
    assert!(
        store
            .bars_page("EURUSD", "1s", None, 0, i64::MAX, None, 1000)
            .await
            .unwrap()
            .is_empty()
    );

    // Pages, by side or every side, resume after their cursor.
    let page = |side: Option<&'static str>, after: Option<(i64, String)>, limit: usize| {
        store.bars_page("EURUSD", "1m", side, 0, i64::MAX, after, limit)
    };
    assert_eq!(
        page(Some("bid"), None, 10).await.unwrap(),
        vec![bar(0, "bid"), bar(1, "bid")]
    );
    assert_eq!(
        page(Some("ask"), None, 10).await.unwrap(),
        vec![bar(0, "ask")]
    );
    assert!(page(Some("mid"), None, 10).await.unwrap().is_empty());
    assert_eq!(
        page(None, None, 2).await.unwrap(),
        vec![bar(0, "ask"), bar(0, "bid")]
    );
    let cursor = Some((bar(0, "ask").open_time_ns, "ask".to_string()));
    assert_eq!(
        page(None, cursor, 10).await.unwrap(),
        vec![bar(0, "bid"), bar(1, "bid")],
        "paging resumes after the cursor"
    );
    let (t0, t1) = (bar(0, "bid").open_time_ns, bar(1, "bid").open_time_ns);
    assert_eq!(
        store
            .bars_page("EURUSD", "1m", Some("bid"), t0 + 1, t1 + 1, None, 10)
            .await
            .unwrap(),
        vec![bar(1, "bid")],
        "the range is on the open time, end excluded"
    );
    assert!(
        store
            .bars_page("EURUSD", "1m", None, t0, t1, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .bars_page("GBPUSD", "1m", None, 0, i64::MAX, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `hours_with_ticks`: hours with at least one tick of the symbol, from the hour holding the
/// start up to the (exclusive) end, other symbols ignored.
async fn check_hours_with_ticks(store: &dyn TickStore) {
    use tick_core::store::HOUR_NS;
    // A whole hour, far from the other checks' ticks.
    let base = 1_600_000_000_000_000_000 - 1_600_000_000_000_000_000 % HOUR_NS;
    let at = |hour: i64, ms: i64, symbol: &str| {
        let mut t = tick(0, symbol);
        t.ts_event_ns = base + hour * HOUR_NS + ms * 1_000_000;
        t.key = tick_core::idempotency_key("hours", symbol, t.ts_event_ns, 0);
        t
    };
    let ticks = vec![
        at(0, 0, "EURUSD"),
        at(0, 3_599_999, "EURUSD"),
        at(2, 10, "EURUSD"),
        at(3, 3_599_999, "EURUSD"),
        at(1, 5, "USDJPY"),
        at(5, 0, "EURUSD"),
    ];
    store.insert_ticks(&ticks).await.unwrap();
    let hours = |from: i64, to: i64| store.hours_with_ticks("EURUSD", from, to);
    let h = |n: i64| base + n * HOUR_NS;
    assert_eq!(
        hours(h(0), h(5)).await.unwrap(),
        vec![h(0), h(2), h(3)],
        "hours with ticks of the symbol only, the end excluded"
    );
    assert_eq!(
        hours(h(0) + 1_000, h(3) + 1).await.unwrap(),
        vec![h(0), h(2), h(3)],
        "the start is rounded down to its hour; an end inside an hour includes it"
    );
    assert_eq!(hours(h(1), h(2)).await.unwrap(), Vec::<i64>::new());
    assert_eq!(hours(h(5), h(5)).await.unwrap(), Vec::<i64>::new());
    assert_eq!(
        store.hours_with_ticks("USDJPY", h(0), h(6)).await.unwrap(),
        vec![h(1)]
    );
    assert!(
        store
            .hours_with_ticks("GBPUSD", h(0), h(6))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Import checkpoints: recorded per source, re-recording updates, sources independent.
async fn check_import_progress(store: &dyn TickStore) {
    assert!(
        store
            .finished_import_units("dukascopy")
            .await
            .unwrap()
            .is_empty()
    );
    store
        .finish_import_unit("dukascopy", "EURUSD 2019-02-04T00", 3733)
        .await
        .unwrap();
    store
        .finish_import_unit("dukascopy", "EURUSD 2019-02-04T01", 0)
        .await
        .unwrap();
    store
        .finish_import_unit("csv:EURUSD:/x.csv", "lines 1-100", 99)
        .await
        .unwrap();
    store
        .finish_import_unit("dukascopy", "EURUSD 2019-02-04T01", 12)
        .await
        .unwrap();
    let done = store.finished_import_units("dukascopy").await.unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done["EURUSD 2019-02-04T00"], 3733);
    assert_eq!(done["EURUSD 2019-02-04T01"], 12, "recording again updates");
    let csv = store
        .finished_import_units("csv:EURUSD:/x.csv")
        .await
        .unwrap();
    assert_eq!(csv.len(), 1);
    assert_eq!(csv["lines 1-100"], 99);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::stores::StoreUrl::sqlite(&dir.path().join("t.db"));
        super::check_store_at(&url).await;
    }
}
