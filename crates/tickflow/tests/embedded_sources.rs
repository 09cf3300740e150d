//! Embedded mode on real sources: `tickflow run --source dukascopy` over the real fixture files
//! stores exactly the ticks they hold, with the fixture's independently decoded prices, and
//! publishes bars; `--source mt5` acknowledges to the expert advisor only what SQLite has
//! committed, checked by killing the process (SIGKILL) right after an acknowledgement;
//! `--source csv` and `--source oanda` killed halfway and started again store every tick once.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tick_core::shutdown::CancellationToken;
use tick_core::testenv::free_port;
use tickflow::embedded::{RunArgs, Summary};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/dukascopy")
}

fn run_args(db: &Path, argv: &[&str]) -> RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        run: RunArgs,
    }
    let store = format!("sqlite:{}", db.display());
    let mut full = vec!["test", "--grpc-addr", "127.0.0.1:0", "--store", &store];
    full.extend_from_slice(argv);
    P::parse_from(full).run
}

async fn run(a: RunArgs) -> Summary {
    tickflow::embedded::run(a, CancellationToken::new(), |_| {})
        .await
        .unwrap()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI is installed");
    assert!(out.status.success(), "{sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rows(db: &Path, sql: &str) -> Vec<Vec<i64>> {
    sqlite(db, sql)
        .lines()
        .map(|l| l.split('|').map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// Counts the records of the fixture's hours of `symbol` from `from_ns`, decoding each file
/// with the `.bi5` decoder alone (no source, no pipeline).
fn records(symbol: &str, from_ns: i64, hours: i64) -> u64 {
    use ingest::dukascopy::{HOUR_NS, decode_bi5, hour_path};
    (0..hours)
        .map(|i| {
            let path = hour_path(&fixtures(), symbol, from_ns + i * HOUR_NS);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            decode_bi5(&path.display().to_string(), &bytes)
                .unwrap()
                .len() as u64
        })
        .sum()
}

/// 2019-02-04T00:00:00Z and 2023-02-20T12:00:00Z, in ns.
const EURUSD_FROM: i64 = 1_549_238_400_000_000_000;
const BTCUSD_FROM: i64 = 1_676_894_400_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dukascopy_history_is_stored_exactly_with_the_fixture_prices_and_makes_bars() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let fx = fixtures();
    let fx = fx.to_str().unwrap();
    let eurusd = run(run_args(
        &db,
        &[
            "--source",
            "dukascopy",
            "--dukascopy-dir",
            fx,
            "--symbols",
            "EURUSD",
            "--from",
            "2019-02-04T00:00:00Z",
            "--to",
            "2019-02-06T00:00:00Z",
        ],
    ))
    .await;
    let btcusd = run(run_args(
        &db,
        &[
            "--source",
            "dukascopy",
            "--dukascopy-dir",
            fx,
            "--symbols",
            "btcusd",
            "--from",
            "2023-02-20T12:00:00Z",
            "--to",
            "2023-02-20T14:00:00Z",
        ],
    ))
    .await;
    eprintln!("{eurusd}\n{btcusd}");
    let want_eur = records("EURUSD", EURUSD_FROM, 48);
    let want_btc = records("BTCUSD", BTCUSD_FROM, 2);
    assert_eq!((eurusd.ticks_in, eurusd.stored), (want_eur, want_eur));
    assert_eq!((btcusd.ticks_in, btcusd.stored), (want_btc, want_btc));
    assert_eq!(eurusd.rejected + btcusd.rejected, 0);
    for (symbol, want) in [("EURUSD", want_eur), ("BTCUSD", want_btc)] {
        assert_eq!(
            sqlite(
                &db,
                &format!(
                    "select count(*), count(distinct idempotency_key) from ticks where symbol = '{symbol}'"
                )
            ),
            format!("{want}|{want}"),
            "{symbol}: every tick once"
        );
    }

    // EURUSD 2019-02-04 00h: every raw record (ms offset, ask and bid points) as the fixture's
    // reference decoder gave them, at 5 decimals.
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected/EURUSD-2019-02-04T00-raw.json")).unwrap(),
    )
    .unwrap();
    let mut want: Vec<Vec<i64>> = expected["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (0..3).map(|i| r[i].as_i64().unwrap()).collect())
        .collect();
    let mut got = rows(
        &db,
        &format!(
            "select (ts_event_ns - {EURUSD_FROM}) / 1000000, ask, bid from ticks \
             where symbol = 'EURUSD' and ts_event_ns < {EURUSD_FROM} + 3600000000000 and price_scale = 5"
        ),
    );
    want.sort();
    got.sort();
    assert_eq!(got.len(), 3733);
    assert_eq!(got, want, "EURUSD 00h prices");

    // BTCUSD 2023-02-20 12h: every tick as (ms UTC, ask, bid); tickflow keeps BTCUSD at two
    // decimals (Dukascopy's files have one).
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected/BTCUSD-2023-02-20T12-ticks.json")).unwrap(),
    )
    .unwrap();
    let cents = |v: &serde_json::Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    let mut want: Vec<Vec<i64>> = expected
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            vec![
                t["timestamp"].as_i64().unwrap(),
                cents(&t["askPrice"]),
                cents(&t["bidPrice"]),
            ]
        })
        .collect();
    let mut got = rows(
        &db,
        &format!(
            "select ts_event_ns / 1000000, ask, bid from ticks where symbol = 'BTCUSD' \
             and ts_event_ns < {BTCUSD_FROM} + 3600000000000 and price_scale = 2"
        ),
    );
    want.sort();
    got.sort();
    assert_eq!(got.len(), 8523);
    assert_eq!(got, want, "BTCUSD 12h prices");

    // History makes bars as a live feed does, and they are stored.
    assert!(eurusd.bars > 1000 && btcusd.bars > 100, "bars published");
    assert_eq!(
        sqlite(&db, "select count(*) from bars"),
        (eurusd.bars_stored + btcusd.bars_stored).to_string()
    );
    assert_eq!(eurusd.bars_stored, eurusd.bars);
}

/// A `tickflow run` child process, killed (SIGKILL) when dropped, so a failing assertion
/// never leaves it running.
struct Tickflow(Child);

impl Tickflow {
    /// Kills the process with SIGKILL and reaps it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tickflow {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `tickflow run` with `args`, storing to `db`.
fn spawn_tickflow(db: &Path, args: &[&str]) -> Tickflow {
    Tickflow(
        Command::new(env!("CARGO_BIN_EXE_tickflow"))
            .arg("run")
            .args(["--store", &format!("sqlite:{}", db.display())])
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn connect_with_retry(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("tickflow never listened on {port}: {e}"),
        }
    }
}

/// The EA's tick line for the i-th tick: two ticks per millisecond, server time = UTC + 2 h.
fn mt5_tick(base_msc: i64, i: i64) -> (i64, String) {
    let msc = base_msc + i / 2;
    let bid = 10_000 + (i % 13);
    (
        msc,
        format!(
            "{{\"type\":\"tick\",\"symbol\":\"EURUSD\",\"time_msc\":{msc},\"bid\":1.{bid:05},\"ask\":1.{:05},\"last\":0,\"volume\":0,\"volume_real\":0,\"flags\":6}}\n",
            bid + 3
        ),
    )
}

#[test]
fn an_mt5_acknowledgement_in_embedded_mode_never_runs_ahead_of_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A slow commit cadence (1 s batches) makes an acknowledgement that ran ahead of SQLite
    // lose ticks to the kill below.
    let mut child = spawn_tickflow(
        &db,
        &[
            "--source",
            "mt5",
            "--mt5-listen",
            &listen,
            "--mt5-token",
            "secret",
            "--batch-delay",
            "1s",
            "--batch-rows",
            "100000",
        ],
    );
    let stream = connect_with_retry(port);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut write = stream.try_clone().unwrap();
    let mut read = BufReader::new(stream);
    write
        .write_all(b"{\"type\":\"hello\",\"token\":\"secret\",\"terminal\":\"kill\",\"utc_offset_s\":7200}\n")
        .unwrap();
    let mut line = String::new();
    read.read_line(&mut line).unwrap();
    assert!(line.contains("welcome"), "{line}");

    // Live ticks carry the present time (the router refuses stale live ticks), in server time.
    let base = tick_core::clock::now_ns() / 1_000_000 + 7_200_000;
    let mut sent = Vec::new();
    let mut acked = i64::MIN;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Keep sending until an ack arrives for ticks sent in the last round, then kill at once.
    let mut i = 0;
    while acked < base && Instant::now() < deadline {
        for _ in 0..200 {
            let (msc, l) = mt5_tick(base, i);
            write.write_all(l.as_bytes()).unwrap();
            sent.push(msc);
            i += 1;
        }
        write.write_all(b"{\"type\":\"hb\"}\n").unwrap();
        line.clear();
        read.read_line(&mut line).unwrap();
        if line.contains("\"ack\"") {
            let at = line.find("\"time_msc\":").unwrap() + 11;
            acked = line[at..].trim().trim_end_matches('}').parse().unwrap();
        }
    }
    child.kill(); // SIGKILL
    assert!(acked >= base, "an ack arrived");
    // An ack of T covers every tick before T and at least one at T: the EA resends from T
    // inclusive, so a millisecond durable only in part is resent whole.
    let want = sent.iter().filter(|&&m| m < acked).count();
    let acked_utc_ns = (acked - 7_200_000) * 1_000_000;
    let count = |op: &str| -> usize {
        sqlite(
            &db,
            &format!("select count(*) from ticks where ts_event_ns {op} {acked_utc_ns}"),
        )
        .parse()
        .unwrap()
    };
    let (stored, at_ack) = (count("<"), count("="));
    eprintln!(
        "sent {} ticks, {want} before the acknowledged ms {acked}: {stored} of those stored, {at_ack} at it",
        sent.len()
    );
    assert_eq!(stored, want, "every acknowledged tick is in SQLite");
    assert!(at_ack >= 1, "the acknowledged tick itself is in SQLite");
}

#[test]
fn a_csv_run_killed_halfway_and_run_again_stores_every_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let csv = dir.path().join("eurusd.csv");
    let mut text = String::from("timestamp,bid,ask\n");
    let n = 3000;
    for i in 0..n {
        let bid = 10_800 + (i % 50);
        text.push_str(&format!(
            "{},1.{bid:05},1.{:05}\n",
            1_700_000_000_000i64 + i * 10,
            bid + 2
        ));
    }
    std::fs::write(&csv, text).unwrap();
    // At 10 ms between ticks and 1x speed the file takes 30 s: kill it after 2 s.
    let args = [
        "--source",
        "csv",
        "--csv-file",
        csv.to_str().unwrap(),
        "--csv-symbol",
        "EURUSD",
        "--speed",
        "1",
    ];
    let mut child = spawn_tickflow(&db, &args);
    std::thread::sleep(Duration::from_secs(3));
    child.kill();
    let partial: i64 = sqlite(&db, "select count(*) from ticks").parse().unwrap();
    assert!(partial > 0 && partial < n, "killed halfway: {partial}");
    // Again, as fast as possible: what was stored is not stored twice.
    let status = Command::new(env!("CARGO_BIN_EXE_tickflow"))
        .arg("run")
        .args(["--store", &format!("sqlite:{}", db.display())])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(&args[..6])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        sqlite(
            &db,
            "select count(*), count(distinct idempotency_key) from ticks"
        ),
        format!("{n}|{n}")
    );
}

/// A local stand-in for OANDA's pricing stream: every connection gets the same `prices`, one
/// every `every`, then heartbeats until the client goes away.
fn oanda_replay_server(prices: Vec<String>, every: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let prices = prices.clone();
            std::thread::spawn(move || {
                let mut req = BufReader::new(conn.try_clone().unwrap());
                let mut l = String::new();
                while req.read_line(&mut l).is_ok_and(|n| n > 0) && l != "\r\n" {
                    l.clear();
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                );
                for p in &prices {
                    if conn.write_all(p.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(every);
                }
                loop {
                    let hb =
                        "{\"type\":\"HEARTBEAT\",\"time\":\"2026-01-05T10:00:00.000000000Z\"}\n";
                    if conn.write_all(hb.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    port
}

#[test]
fn an_oanda_run_killed_and_started_again_stores_every_price_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let n = 400;
    // Live prices carry the present time (the router refuses stale live ticks), 10 ms apart;
    // every connection gets the same ones, as OANDA repeats prices after a reconnect.
    let start = std::time::SystemTime::now();
    let prices: Vec<String> = (0..n)
        .map(|i| {
            let bid = 10_800 + (i % 40);
            let at = humantime::format_rfc3339_nanos(start + Duration::from_millis(10 * i as u64));
            format!(
                "{{\"type\":\"PRICE\",\"time\":\"{at}\",\"instrument\":\"EUR_USD\",\"bids\":[{{\"price\":\"1.{bid:05}\",\"liquidity\":1000000}}],\"asks\":[{{\"price\":\"1.{:05}\",\"liquidity\":1000000}}]}}\n",
                bid + 2
            )
        })
        .collect();
    let port = oanda_replay_server(prices, Duration::from_millis(10));
    let url = format!("http://127.0.0.1:{port}");
    let args = [
        "--source",
        "oanda",
        "--oanda-url",
        &url,
        "--oanda-account",
        "101-004-1",
        "--oanda-token",
        "t",
    ];
    // 400 prices at 10 ms take 4 s: kill after 2 s, then run to the end of the stream.
    let mut child = spawn_tickflow(&db, &args);
    std::thread::sleep(Duration::from_secs(2));
    child.kill();
    let partial: i64 = sqlite(&db, "select count(*) from ticks").parse().unwrap();
    assert!(partial > 0 && partial < n, "killed halfway: {partial}");
    let mut child = spawn_tickflow(&db, &[&args[..], &["--duration", "8s"]].concat());
    let status = child.0.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        sqlite(
            &db,
            "select count(*), count(distinct idempotency_key) from ticks"
        ),
        format!("{n}|{n}")
    );
}
