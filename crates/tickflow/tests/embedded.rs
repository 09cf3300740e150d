//! End-to-end tests of embedded mode through the same `run` the binary uses: ticks flow from
//! the simulator to a real gRPC subscriber and into a real SQLite file.

use std::time::Duration;
use tick_core::pb;
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::shutdown::CancellationToken;
use tickflow::embedded::{RunArgs, Summary};

fn args(db: &std::path::Path, ticks: u64, rate: f64) -> RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        run: RunArgs,
    }
    let mut a = P::parse_from(["test"]).run;
    a.store = persister::stores::StoreUrl::sqlite(db);
    a.source.sim.max_ticks = Some(ticks);
    a.source.sim.rate = rate;
    a.grpc_addr = "127.0.0.1:0".parse().unwrap();
    a
}

async fn start(a: RunArgs) -> (tokio::task::JoinHandle<anyhow::Result<Summary>>, String) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(tickflow::embedded::run(
        a,
        CancellationToken::new(),
        move |addr| {
            let _ = tx.send(addr);
        },
    ));
    let addr = rx.await.expect("server listened");
    (task, format!("http://{addr}"))
}

fn count_rows(db: &std::path::Path, sql: &str) -> i64 {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI is installed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_is_stored_once_and_the_subscriber_gets_only_its_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let (task, url) = start(args(&db, 3000, 2000.0)).await;

    let mut client = SignalServiceClient::connect(url.clone()).await.unwrap();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            symbols: vec!["EURUSD".into()],
            kinds: vec![pb::EventKind::Update as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut updates = 0;
    let mut last_seq = 0;
    // The stream ends when the run drains and closes the hub.
    while let Some(ev) = stream.message().await.unwrap() {
        let Some(Kind::Update(u)) = ev.kind else {
            panic!("asked for updates only, got {ev:?}")
        };
        assert_eq!(u.symbol, "EURUSD");
        assert!(u.ts_recv_ns > 0 && u.ts_recv_ns <= ev.ts_sent_ns);
        assert!(ev.seq > last_seq, "events arrive in order");
        last_seq = ev.seq;
        updates += 1;
    }
    let s = task.await.unwrap().unwrap();
    assert_eq!(s.ticks_in, 3000);
    assert_eq!(s.clean, 3000);
    assert_eq!(s.stored, 3000);
    assert_eq!(s.rows_in_db, 3000);
    assert!(s.latency.count == 3000 && s.latency.p99 > 0);
    assert!(
        updates > 100,
        "EURUSD is about a tenth of 3000 ticks, got {updates}"
    );
    assert_eq!(
        count_rows(&db, "select count(distinct idempotency_key) from ticks"),
        3000
    );
    assert!(count_rows(&db, "select count(*) from ticks where symbol = 'EURUSD'") >= updates);
    // Closed bars are stored too, once each.
    assert!(s.bars > 0, "{s:?}");
    assert_eq!(s.bars_stored, s.bars);
    assert_eq!(count_rows(&db, "select count(*) from bars"), s.bars as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_become_dead_letters_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut a = args(&db, 2000, 10_000.0);
    a.source.sim.bad_ratio = 0.1;
    let (task, url) = start(a).await;
    let s = task.await.unwrap().unwrap();
    assert!(s.rejected > 100 && s.rejected < 300, "{s:?}");
    assert_eq!(s.clean + s.rejected, 2000);
    assert_eq!(s.dead_letters, s.rejected);
    assert_eq!(s.rows_in_db, s.clean);
    assert_eq!(
        count_rows(
            &db,
            "select count(*) from dead_letters where reason = 'crossed_quote'"
        ),
        s.rejected as i64
    );
    // The server is gone after the drain.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(SignalServiceClient::connect(url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reports_the_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let (task, url) = start(args(&dir.path().join("t.db"), 4000, 1000.0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut client = SignalServiceClient::connect(url).await.unwrap();
    let snap = client
        .get_snapshot(pb::SnapshotRequest {
            symbol: "usdjpy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.symbol, "USDJPY");
    let t = snap.last_tick.unwrap();
    assert_eq!((t.symbol.as_str(), t.price_scale), ("USDJPY", 3));
    let latest = snap.latest.unwrap();
    assert_eq!(latest.values.len(), 4);
    assert!(
        latest.values.iter().all(|v| v.warm),
        "warm after ~100 USDJPY ticks"
    );
    let missing = client
        .get_snapshot(pb::SnapshotRequest {
            symbol: "NOPE".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_stores_exactly_rate_times_duration_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut a = args(&db, 0, 1000.0);
    a.source.sim.max_ticks = None;
    a.source.intake.duration = Some(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let (task, _) = start(a).await;
    let s = task.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the feed keeps its schedule"
    );
    assert_eq!((s.ticks_in, s.stored, s.rows_in_db), (1500, 1500, 1500));
    assert_eq!(
        count_rows(&db, "select count(distinct idempotency_key) from ticks"),
        1500
    );
}
