//! `GetHistory` and `GetBars` served for real on loopback (tonic server and client) from a real
//! store, SQLite and (with `DATABASE_URL`) PostgreSQL, compared with what a direct SQL read of
//! the store's `ticks` and `bars` tables gives; bearer-token auth, invalid arguments, and a
//! server without a store.

use indicators::history::{BARS_PER_CHUNK, MAX_TICKS_PER_CHUNK};
use indicators::service::{self, Hub, ServeOptions, Service};
use persister::stores::{StoreOptions, StoreUrl};
use std::sync::Arc;
use std::time::Duration;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HistoryReader, TickStore};
use tick_core::{Tick, pb};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);
/// 2024-01-02T00:00:00Z.
const T0: i64 = 1_704_153_600_000_000_000;
const SEC: i64 = 1_000_000_000;

struct Server {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(history: Option<Arc<dyn HistoryReader>>, auth_token: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let mut svc = Service::new(Hub::new(64), tx);
        if let Some(h) = history {
            svc = svc.with_history(h);
        }
        let stop = CancellationToken::new();
        let options = ServeOptions {
            auth_token: auth_token.map(str::to_string),
            tls: None,
        };
        let task = tokio::spawn(service::serve_with(listener, svc, options, stop.clone()));
        Self { addr, stop, task }
    }

    async fn client(&self) -> SignalServiceClient<Channel> {
        SignalServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// Where the store's tables are read directly.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

const TICK_COLUMNS: &str = "idempotency_key, symbol, source, ts_event_ns, ts_recv_ns, \
     price_scale, bid, ask, last, bid_size, ask_size, volume, flags, replay";
const BAR_COLUMNS: &str = "symbol, timeframe, price_side, open_time_ns, close_time_ns, \
     price_scale, open, high, low, close, tick_count, volume, ts_recv_ns, flags";

impl Db {
    /// The stored ticks of `symbols` in `[from, to)`, by event time then key, straight from SQL.
    async fn ticks(&self, symbols: &[&str], from: i64, to: i64) -> Vec<pb::Tick> {
        let list = symbols
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT {TICK_COLUMNS} FROM ticks WHERE symbol IN ({list}) AND ts_event_ns >= {from} \
             AND ts_event_ns < {to} ORDER BY ts_event_ns, idempotency_key"
        );
        match self {
            Db::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                let mut stmt = c.prepare(&sql).unwrap();
                stmt.query_map([], |r| {
                    Ok(pb::Tick {
                        idempotency_key: r.get(0)?,
                        symbol: r.get(1)?,
                        source: r.get(2)?,
                        ts_event_ns: r.get(3)?,
                        ts_recv_ns: r.get(4)?,
                        price_scale: r.get(5)?,
                        bid: r.get(6)?,
                        ask: r.get(7)?,
                        last: r.get(8)?,
                        bid_size: r.get(9)?,
                        ask_size: r.get(10)?,
                        volume: r.get(11)?,
                        flags: r.get(12)?,
                        replay: r.get(13)?,
                        ..Default::default()
                    })
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Db::Postgres(url) => {
                let c = persister::postgres::connect(url).await.unwrap();
                c.query(&sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| pb::Tick {
                        idempotency_key: r.get(0),
                        symbol: r.get(1),
                        source: r.get(2),
                        ts_event_ns: r.get(3),
                        ts_recv_ns: r.get(4),
                        price_scale: r.get::<_, i16>(5) as u32,
                        bid: r.get(6),
                        ask: r.get(7),
                        last: r.get(8),
                        bid_size: r.get(9),
                        ask_size: r.get(10),
                        volume: r.get(11),
                        flags: r.get::<_, i64>(12) as u32,
                        replay: r.get(13),
                        ..Default::default()
                    })
                    .collect()
            }
        }
    }

    /// The rows of `bars` for a `GetBars` request, by open time then side, straight from SQL.
    async fn bars(&self, r: &pb::BarsRequest) -> Vec<pb::Bar> {
        let side = if r.price_side.is_empty() {
            String::new()
        } else {
            format!("AND price_side = '{}'", r.price_side)
        };
        let sql = format!(
            "SELECT {BAR_COLUMNS} FROM bars WHERE symbol = '{}' AND timeframe = '{}' {side} \
             AND open_time_ns >= {} AND open_time_ns < {} ORDER BY open_time_ns, price_side",
            r.symbol.to_uppercase(),
            r.timeframe,
            r.from_ns,
            r.to_ns
        );
        match self {
            Db::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                let mut stmt = c.prepare(&sql).unwrap();
                stmt.query_map([], |r| {
                    Ok(pb::Bar {
                        symbol: r.get(0)?,
                        timeframe: r.get(1)?,
                        price_side: r.get(2)?,
                        open_time_ns: r.get(3)?,
                        close_time_ns: r.get(4)?,
                        price_scale: r.get(5)?,
                        open: r.get(6)?,
                        high: r.get(7)?,
                        low: r.get(8)?,
                        close: r.get(9)?,
                        tick_count: r.get::<_, i64>(10)? as u64,
                        volume: r.get(11)?,
                        ts_recv_ns: r.get(12)?,
                        flags: r.get(13)?,
                    })
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Db::Postgres(url) => {
                let c = persister::postgres::connect(url).await.unwrap();
                c.query(&sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| pb::Bar {
                        symbol: r.get(0),
                        timeframe: r.get(1),
                        price_side: r.get(2),
                        open_time_ns: r.get(3),
                        close_time_ns: r.get(4),
                        price_scale: r.get::<_, i16>(5) as u32,
                        open: r.get(6),
                        high: r.get(7),
                        low: r.get(8),
                        close: r.get(9),
                        tick_count: r.get::<_, i64>(10) as u64,
                        volume: r.get(11),
                        ts_recv_ns: r.get(12),
                        flags: r.get::<_, i32>(13) as u32,
                    })
                    .collect()
            }
        }
    }
}

/// Ticks of EURUSD and GBPUSD (several per timestamp, so ties are ordered by key, and from two
/// sources), a few of USDJPY, some outside the range the tests ask for.
fn ticks() -> Vec<Tick> {
    let mut out = Vec::new();
    for i in 0..12_000i64 {
        let ts = T0 + (i / 3) * 250_000_000;
        for (symbol, source) in [("EURUSD", "sim"), ("GBPUSD", "oanda")] {
            let mut t = tick_core::testenv::tick(source, symbol, ts, 108_000 + i % 97);
            t.key = tick_core::idempotency_key(source, symbol, ts, (i % 3) as u32);
            t.ts_recv_ns = ts + 1_000 + i;
            t.last = (i % 5 == 0).then_some(108_001 + i);
            t.bid_size = 1.5;
            t.volume = (i % 7) as f64;
            t.flags = (i % 4) as u32;
            t.replay = i % 11 == 0;
            out.push(t);
        }
        if i % 100 == 0 {
            out.push(tick_core::testenv::tick("sim", "USDJPY", ts, 15_000_000));
        }
    }
    out
}

/// 1s bars of EURUSD on two sides (more than a chunk of each), 1m bars of EURUSD (bid) and
/// GBPUSD (bid, ask, mid).
fn bars() -> Vec<pb::Bar> {
    let bar = |symbol: &str, tf: &str, side: &str, len: i64, i: i64| pb::Bar {
        symbol: symbol.into(),
        timeframe: tf.into(),
        price_side: side.into(),
        open_time_ns: T0 + i * len,
        close_time_ns: T0 + (i + 1) * len,
        price_scale: if side == "mid" { 6 } else { 5 },
        open: 108_000 + i,
        high: 108_100 + i,
        low: 107_900 + i,
        close: 108_050 + i,
        tick_count: 1 + i as u64 % 17,
        volume: i as f64 * 0.5,
        ts_recv_ns: T0 + (i + 1) * len + 123,
        flags: (i % 3 == 0) as u32 * 2,
    };
    let mut out = Vec::new();
    for i in 0..(BARS_PER_CHUNK as i64 * 2 + 300) {
        out.push(bar("EURUSD", "1s", "bid", SEC, i));
        out.push(bar("EURUSD", "1s", "ask", SEC, i));
    }
    for i in 0..200 {
        out.push(bar("EURUSD", "1m", "bid", 60 * SEC, i));
        for side in ["bid", "ask", "mid"] {
            out.push(bar("GBPUSD", "1m", side, 60 * SEC, i));
        }
    }
    out
}

async fn fill(store: &dyn TickStore) {
    for batch in ticks().chunks(5_000) {
        store.insert_ticks(batch).await.unwrap();
    }
    store.insert_bars(&bars()).await.unwrap();
}

async fn get_history(
    client: &mut SignalServiceClient<Channel>,
    req: pb::HistoryRequest,
) -> Result<Vec<pb::TickChunk>, tonic::Status> {
    let mut s = client.get_history(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, s.message()).await.unwrap()? {
        out.push(chunk);
    }
    Ok(out)
}

async fn get_bars(
    client: &mut SignalServiceClient<Channel>,
    req: pb::BarsRequest,
) -> Result<Vec<pb::Bar>, tonic::Status> {
    let mut s = client.get_bars(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, s.message()).await.unwrap()? {
        assert!(!chunk.bars.is_empty() && chunk.bars.len() <= BARS_PER_CHUNK);
        out.extend(chunk.bars);
    }
    Ok(out)
}

fn history(symbols: &[&str], from_ns: i64, to_ns: i64, chunk: u32) -> pb::HistoryRequest {
    pb::HistoryRequest {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        from_ns,
        to_ns,
        max_ticks_per_chunk: chunk,
    }
}

fn bars_req(symbol: &str, tf: &str, side: &str, from_ns: i64, to_ns: i64) -> pb::BarsRequest {
    pb::BarsRequest {
        symbol: symbol.into(),
        timeframe: tf.into(),
        price_side: side.into(),
        from_ns,
        to_ns,
    }
}

/// Serves `store` and checks every answer against the tables read directly.
async fn check_against_sql(store: Arc<dyn TickStore>, db: Db) {
    fill(store.as_ref()).await;
    let reader: Arc<dyn HistoryReader> = store.clone();
    let server = Server::start(Some(reader), None).await;
    let mut client = server.client().await;
    let end = T0 + 3_600 * SEC;

    // Ticks: one symbol, several (merged in event-time order), a part of the range, lower case.
    for (symbols, from, to, chunk) in [
        (vec!["EURUSD"], T0, end, 0),
        (vec!["EURUSD", "GBPUSD", "USDJPY"], T0, end, 0),
        (
            vec!["gbpusd", "EURUSD"],
            T0 + 100 * SEC + 1,
            T0 + 700 * SEC,
            7,
        ),
        (vec!["EURUSD"], T0 + 250_000_000, T0 + 500_000_000, 1),
        (vec!["EURUSD"], T0, end, 50_000),
        (vec!["XAUUSD"], T0, end, 0),
        (vec!["EURUSD"], end, end + SEC, 0),
    ] {
        let got = get_history(&mut client, history(&symbols, from, to, chunk))
            .await
            .unwrap();
        let limit = match chunk as usize {
            0 => 1_000,
            n => n.min(MAX_TICKS_PER_CHUNK),
        };
        assert!(
            got.iter()
                .all(|c| !c.ticks.is_empty() && c.ticks.len() <= limit),
            "chunks of 1 to {limit} ticks"
        );
        let got: Vec<pb::Tick> = got.into_iter().flat_map(|c| c.ticks).collect();
        let upper: Vec<String> = symbols.iter().map(|s| s.to_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let want = db.ticks(&upper, from, to).await;
        assert_eq!(got.len(), want.len(), "{symbols:?} {from}..{to}");
        assert!(
            got == want,
            "{symbols:?} {from}..{to}: the stored ticks, in order"
        );
    }
    let all = db
        .ticks(&["EURUSD", "GBPUSD", "USDJPY"], T0, end)
        .await
        .len();
    assert_eq!(all, 24_000 + 120, "the test data is all there");

    // Bars: every side or one, paged, parts of the range, lower-case symbol.
    for req in [
        bars_req("EURUSD", "1s", "", T0, end),
        bars_req("EURUSD", "1s", "bid", T0, end),
        bars_req("EURUSD", "1s", "ask", T0 + 17 * SEC, T0 + 2_500 * SEC),
        bars_req("EURUSD", "1s", "mid", T0, end),
        bars_req("EURUSD", "1m", "", T0, end),
        bars_req("eurusd", "1m", "bid", T0 + 60 * SEC, T0 + 120 * SEC + 1),
        bars_req("GBPUSD", "1m", "", T0, end),
        bars_req("GBPUSD", "1m", "mid", T0, end),
        bars_req("GBPUSD", "5m", "", T0, end),
        bars_req("USDJPY", "1m", "", T0, end),
    ] {
        let got = get_bars(&mut client, req.clone()).await.unwrap();
        let want = db.bars(&req).await;
        assert_eq!(got.len(), want.len(), "{req:?}");
        assert!(got == want, "{req:?}: exactly the rows of the bars table");
    }
    assert_eq!(
        get_bars(
            &mut client,
            bars_req("EURUSD", "1s", "", T0, T0 + 86_400 * SEC)
        )
        .await
        .unwrap()
        .len(),
        2 * (2 * BARS_PER_CHUNK + 300),
        "the test data is all there"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_and_bars_equal_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let stores = StoreUrl::sqlite(&path)
        .open(&StoreOptions::pool(1))
        .await
        .unwrap();
    check_against_sql(stores.full.unwrap(), Db::Sqlite(path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_and_bars_equal_the_tables() {
    let Some(url) = tick_core::testenv::service("DATABASE_URL") else {
        return;
    };
    let db = format!("tickflow_history_{}", std::process::id());
    let test_url = persister::conformance::fresh_database(&url, &db).await;
    let stores = test_url
        .parse::<StoreUrl>()
        .unwrap()
        .open(&StoreOptions::pool(2))
        .await
        .unwrap();
    check_against_sql(stores.full.unwrap(), Db::Postgres(test_url)).await;
    persister::postgres::connect(&url)
        .await
        .unwrap()
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn history_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let stores = StoreUrl::sqlite(&dir.path().join("t.db"))
        .open(&StoreOptions::pool(1))
        .await
        .unwrap();
    let store = stores.full.unwrap();
    store
        .insert_ticks(&[tick_core::testenv::tick("sim", "EURUSD", T0, 108_000)])
        .await
        .unwrap();
    store.insert_bars(&bars()[..1]).await.unwrap();
    let server = Server::start(stores.reader, Some("s3cret")).await;
    let mut client = server.client().await;
    fn with<T>(auth: Option<&str>, req: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(req);
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let e = client
            .get_history(with(auth, history(&["EURUSD"], T0, T0 + SEC, 0)))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{auth:?}");
        let e = client
            .get_bars(with(auth, bars_req("EURUSD", "1s", "", T0, T0 + SEC)))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{auth:?}");
    }
    let ok = Some("Bearer s3cret");
    let mut s = client
        .get_history(with(ok, history(&["EURUSD"], T0, T0 + SEC, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().ticks.len(), 1);
    let mut s = client
        .get_bars(with(ok, bars_req("EURUSD", "1s", "bid", T0, T0 + SEC)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().bars.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_with_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let stores = StoreUrl::sqlite(&dir.path().join("t.db"))
        .open(&StoreOptions::pool(1))
        .await
        .unwrap();
    let server = Server::start(stores.reader, None).await;
    let mut client = server.client().await;
    let many: Vec<String> = (0..65).map(|i| format!("SYM{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (req, what) in [
        (history(&["EURUSD"], T0, T0, 0), "empty range"),
        (history(&["EURUSD"], T0 + 1, T0, 0), "empty range"),
        (history(&[], T0, T0 + SEC, 0), "symbols is empty"),
        (
            history(&["EURUSD", " "], T0, T0 + SEC, 0),
            "symbol is empty",
        ),
        (
            history(&["EUR/USD"], T0, T0 + SEC, 0),
            "not a canonical symbol",
        ),
        (
            history(&["EURUSD;DROP"], T0, T0 + SEC, 0),
            "not a canonical symbol",
        ),
        (history(&many, T0, T0 + SEC, 0), "at most 64"),
    ] {
        let e = get_history(&mut client, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}");
        assert!(e.message().contains(what), "{req:?}: {}", e.message());
    }
    for (req, what) in [
        (bars_req("EURUSD", "1m", "", T0, T0), "empty range"),
        (bars_req("", "1m", "", T0, T0 + SEC), "symbol is empty"),
        (
            bars_req("EUR_USD", "1m", "", T0, T0 + SEC),
            "not a canonical symbol",
        ),
        (
            bars_req("EURUSD", "", "", T0, T0 + SEC),
            "unknown timeframe",
        ),
        (
            bars_req("EURUSD", "1x", "", T0, T0 + SEC),
            "unknown timeframe",
        ),
        (
            bars_req("EURUSD", "0m", "", T0, T0 + SEC),
            "unknown timeframe",
        ),
        (
            bars_req("EURUSD", "m", "", T0, T0 + SEC),
            "unknown timeframe",
        ),
        (
            bars_req("EURUSD", "1m", "last", T0, T0 + SEC),
            "unknown price side",
        ),
    ] {
        let e = get_bars(&mut client, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}");
        assert!(e.message().contains(what), "{req:?}: {}", e.message());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_store_history_is_a_failed_precondition() {
    let server = Server::start(None, None).await;
    let mut client = server.client().await;
    let e = get_history(&mut client, history(&["EURUSD"], T0, T0 + SEC, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("--store"), "{}", e.message());
    let e = get_bars(&mut client, bars_req("EURUSD", "1m", "", T0, T0 + SEC))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Arguments are checked first: a bad request says what is wrong with it.
    let e = get_bars(&mut client, bars_req("EURUSD", "1m", "", T0, T0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    server.shutdown().await;
}

/// The distributed `indicators` stage (Kafka in, gRPC out) given `--store`: its `run` serves
/// `GetHistory` and `GetBars` from the persister's PostgreSQL database.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_stage_serves_history_from_its_store() {
    use clap::Parser;
    let (Some(brokers), Some(url)) = (
        tick_core::testenv::service("KAFKA_BROKERS"),
        tick_core::testenv::service("DATABASE_URL"),
    ) else {
        return;
    };
    let db = format!("tickflow_history_stage_{}", std::process::id());
    let test_url = persister::conformance::fresh_database(&url, &db).await;
    let stores = test_url
        .parse::<StoreUrl>()
        .unwrap()
        .open(&StoreOptions::pool(1))
        .await
        .unwrap();
    fill(stores.full.as_deref().unwrap()).await;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        stage: indicators::IndicatorsArgs,
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // An input topic of its own: the stage reads nothing of other tests' ticks.
    let input = format!("history-test-{}", std::process::id());
    let args = Args::parse_from([
        "indicators",
        "--kafka-brokers",
        &brokers,
        "--input-topic",
        &input,
        "--group",
        &input,
        "--warm-start",
        "0s",
        "--grpc-addr",
        &format!("127.0.0.1:{port}"),
        "--store",
        &test_url,
    ])
    .stage;
    args.kafka.create_topic(&input, 1).await.unwrap();
    let shutdown = CancellationToken::new();
    // Its `run` future is not `Send` (as in its binary, it runs on the test's task).
    let stage = indicators::run(args, shutdown.clone(), tick_core::health::Health::new());
    let checks = async {
        let deadline = std::time::Instant::now() + WAIT;
        let mut client = loop {
            match SignalServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "no gRPC server: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let pg = Db::Postgres(test_url.clone());
        let req = bars_req("GBPUSD", "1m", "", T0, T0 + 3_600 * SEC);
        let got = get_bars(&mut client, req.clone()).await.unwrap();
        assert_eq!(got.len(), 180, "an hour of 1m bars on three sides");
        assert!(got == pg.bars(&req).await, "the rows of the bars table");
        let got: Vec<pb::Tick> = get_history(
            &mut client,
            history(&["EURUSD", "USDJPY"], T0, T0 + 3_600 * SEC, 0),
        )
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.ticks)
        .collect();
        assert_eq!(got.len(), 12_120);
        assert!(got == pg.ticks(&["EURUSD", "USDJPY"], T0, T0 + 3_600 * SEC).await);
        shutdown.cancel();
    };
    let (result, ()) = tokio::time::timeout(WAIT * 2, async { tokio::join!(stage, checks) })
        .await
        .expect("the stage serves and drains");
    result.unwrap();
    persister::postgres::connect(&url)
        .await
        .unwrap()
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
