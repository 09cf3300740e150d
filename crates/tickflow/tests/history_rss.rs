//! `GetHistory` of 1,000,000 stored ticks from a real `tickflow run` process (the embedded
//! wiring: the service reads the store the pipeline writes), measuring the server's peak
//! resident memory (`VmHWM` in /proc/<pid>/status) before and after a client streamed them all:
//! the server pages the store, so the peak grows by far less than the data (about 150 MiB as
//! protobuf). `TICKFLOW_HISTORY_RSS_TICKS` changes the count.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tick_core::pb;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::testenv::{free_port, tick};

/// 2019-02-04T00:00:00Z.
const T0: i64 = 1_549_238_400_000_000_000;
const LIMIT_KIB: u64 = 64 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_history_streams_a_million_ticks_in_bounded_server_memory() {
    let n: i64 = std::env::var("TICKFLOW_HISTORY_RSS_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let url = persister::stores::StoreUrl::sqlite(&db);

    // 1. n EURUSD ticks (and every tenth a GBPUSD one, which the request leaves out), stored
    //    in bulk through the store, as `replayer import` stores them.
    let started = Instant::now();
    {
        let stores = url
            .open(&persister::stores::StoreOptions::pool(1))
            .await
            .unwrap();
        let mut batch = Vec::with_capacity(50_000);
        for i in 0..n {
            let ts = T0 + i * 10_000_000;
            batch.push(tick("dukascopy", "EURUSD", ts, 113_000 + i % 500));
            if i % 10 == 0 {
                batch.push(tick("dukascopy", "GBPUSD", ts, 129_000));
            }
            if batch.len() >= 50_000 || i == n - 1 {
                stores.writer.insert_ticks(&batch).await.unwrap();
                batch.clear();
            }
        }
    }
    eprintln!("stored {n} ticks in {:.1?}", started.elapsed());

    // 2. `tickflow run` on that store, with a source that sends nothing (MT5, no terminal).
    let (grpc, mt5) = (free_port(), free_port());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_tickflow"))
            .args(["run", "--source", "mt5", "--mt5-token", "t"])
            .args(["--mt5-listen", &format!("127.0.0.1:{mt5}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--store", url.as_str(), "--status-interval", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tickflow run"),
    );
    let pid = server.0.id();
    let addr = format!("http://127.0.0.1:{grpc}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match SignalServiceClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("tickflow run does not serve gRPC: {e}"),
        }
    };
    // A short request first: the server's steady state, connection and store open.
    let mut warm = client
        .get_history(pb::HistoryRequest {
            symbols: vec!["EURUSD".into()],
            from_ns: T0,
            to_ns: T0 + 1_000_000_000,
            max_ticks_per_chunk: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while warm.message().await.unwrap().is_some() {}
    let before = status_kib(pid, "VmHWM:");

    // 3. Every EURUSD tick, read by the client as fast as it can.
    let started = Instant::now();
    let mut stream = client
        .get_history(pb::HistoryRequest {
            symbols: vec!["EURUSD".into()],
            from_ns: T0,
            to_ns: T0 + n * 10_000_000,
            max_ticks_per_chunk: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut count, mut last) = (0i64, i64::MIN);
    while let Some(chunk) = stream.message().await.unwrap() {
        for t in chunk.ticks {
            assert!(t.ts_event_ns > last, "event-time order");
            assert_eq!(t.symbol, "EURUSD");
            assert_eq!(t.bid, 113_000 + count % 500, "tick {count}");
            last = t.ts_event_ns;
            count += 1;
        }
    }
    let elapsed = started.elapsed();
    let after = status_kib(pid, "VmHWM:");
    let rss = status_kib(pid, "VmRSS:");
    assert_eq!(count, n, "every stored EURUSD tick, once");
    let growth = after.saturating_sub(before);
    println!(
        "GetHistory streamed {count} ticks in {:.1?} ({:.0} ticks/s); server VmHWM {:.1} MiB \
         before, {:.1} MiB after: peak grew by {:.1} MiB (VmRSS now {:.1} MiB)",
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        growth as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    assert!(
        growth < LIMIT_KIB,
        "the server's peak RSS grew by {growth} KiB streaming {count} ticks"
    );
    drop(server);
}
