//! Plays the expert advisor's part of the MT5 protocol over TCP against the real ingest (and
//! router) on a real Kafka: hello, ticks, heartbeats, a bad token, a malformed line, a dropped
//! connection and the resend from the last acknowledgement. Every tick must reach
//! `ticks.clean` exactly once.

use clap::Parser;
use std::time::{Duration, Instant};
use tick_core::clock;
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct IngestCli {
    #[command(flatten)]
    c: ingest::IngestConfig,
}

#[derive(Parser)]
struct RouterCli {
    #[command(flatten)]
    c: router::RouterArgs,
}

struct Ea {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Ea {
    async fn connect(port: u16, token: &str, terminal: &str) -> (Ea, String) {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = s.into_split();
        let mut ea = Ea {
            lines: BufReader::new(r).lines(),
            write: w,
        };
        ea.send(&format!(
            r#"{{"type":"hello","token":"{token}","terminal":"{terminal}","utc_offset_s":7200}}"#
        ))
        .await;
        let first = ea.next().await.unwrap_or_default();
        (ea, first)
    }

    async fn send(&mut self, line: &str) {
        let _ = self.write.write_all(format!("{line}\n").as_bytes()).await;
    }

    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .ok()?
            .ok()?
    }

    /// Reads replies until an ack of at least `msc` arrives; returns the acked time.
    async fn await_ack(&mut self, msc: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.send(r#"{"type":"hb"}"#).await;
            if let Some(l) = self.next().await
                && let Some(at) = l.find("\"time_msc\":")
                && l.contains("\"ack\"")
            {
                let t: i64 = l[at + 11..].trim_end_matches('}').parse().unwrap();
                if t >= msc {
                    return t;
                }
            }
        }
        panic!("no ack of {msc} within 30 s");
    }
}

/// The EA's tick line for the i-th tick: two ticks per millisecond, server time = UTC + 2 h.
fn tick_line(base_msc: i64, i: i64) -> (i64, String) {
    let msc = base_msc + i / 2;
    let bid = 10_000 + (i % 13);
    (
        msc,
        format!(
            r#"{{"type":"tick","symbol":"EURUSD","time_msc":{msc},"bid":1.{bid:05},"ask":1.{:05},"last":0,"volume":0,"volume_real":0,"flags":6}}"#,
            bid + 3
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ea_protocol_delivers_every_tick_once_across_a_dropped_connection() {
    let Some(brokers) = tick_core::testenv::service("KAFKA_BROKERS") else {
        return;
    };
    let run = clock::now_ns();
    let terminal = format!("proto{run}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spool = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();

    // A group of its own, positioned at the end of ticks.raw: whatever backlog the topic
    // holds from earlier runs is not this test's to read.
    let group = format!("router-mt5-test-{}", tick_core::clock::now_ns());
    let r = RouterCli::parse_from(["router", "--kafka-brokers", &brokers, "--group", &group]).c;
    r.kafka.ensure_topics().await.unwrap();
    r.kafka
        .commit_end_offsets(&group, tick_core::bus::topics::RAW)
        .await
        .unwrap();
    let router_health = tick_core::health::Health::new();
    let router_task = tokio::spawn(router::run(r, stop.clone(), router_health.clone()));
    let listen = format!("127.0.0.1:{port}");
    let i = IngestCli::parse_from([
        "ingest",
        "--source",
        "mt5",
        "--mt5-listen",
        &listen,
        "--mt5-token",
        "secret",
        "--kafka-brokers",
        &brokers,
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ])
    .c;
    let ingest_health = tick_core::health::Health::new();
    let ingest_task = tokio::spawn(ingest::run(i, stop.clone(), ingest_health.clone()));
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !(router_health.is_ready() && ingest_health.is_ready()) {
        assert!(
            !router_task.is_finished(),
            "router stopped: {:?}",
            router_task.await
        );
        assert!(
            !ingest_task.is_finished(),
            "ingest stopped: {:?}",
            ingest_task.await
        );
        assert!(
            Instant::now() < ready_by,
            "router and ingest not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = Instant::now();

    // A wrong token is refused and closed.
    let (mut bad, reply) = Ea::connect(port, "wrong", "intruder").await;
    assert!(reply.contains("authentication failed"), "{reply}");
    assert!(bad.next().await.is_none(), "closed after the refusal");

    let base = clock::now_ns() / 1_000_000 + 7_200_000;
    let (mut ea, welcome) = Ea::connect(port, "secret", &terminal).await;
    assert!(welcome.contains("welcome"), "{welcome}");
    for i in 0..300 {
        ea.send(&tick_line(base, i).1).await;
    }
    ea.send("this is not json").await;
    let acked = ea.await_ack(tick_line(base, 299).0).await;
    // 100 more, then the connection drops before they are acknowledged.
    for i in 300..400 {
        ea.send(&tick_line(base, i).1).await;
    }
    drop(ea);

    // Reconnect and resend everything from the acknowledged millisecond on, as CopyTicksRange
    // does, then continue with new ticks.
    let (mut ea, welcome) = Ea::connect(port, "secret", &terminal).await;
    assert!(welcome.contains("welcome"));
    for i in 0..500 {
        let (msc, line) = tick_line(base, i);
        if msc >= acked {
            ea.send(&line).await;
        }
    }
    ea.await_ack(tick_line(base, 499).0).await;

    let kafka = KafkaArgs {
        brokers: brokers.clone(),
        properties: vec![],
        linger: Default::default(),
        create_topics: false,
        topic_partitions: 12,
        topic_replication: 1,
    };
    let (seen, mut tail) = router::tail::follow_clean(
        &kafka,
        since.elapsed() + Duration::from_secs(5),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let source = format!("mt5:{terminal}");
    let mut got: Vec<_> = seen.into_iter().filter(|t| t.source == source).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 500 && Instant::now() < deadline {
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_millis(500), tail.recv()).await
            && t.source == source
        {
            got.push(t);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(t) = tail.try_recv() {
        if t.source == source {
            got.push(t);
        }
    }
    stop.cancel();
    ingest_task.await.unwrap().unwrap();
    router_task.await.unwrap().unwrap();

    let keys: std::collections::HashSet<_> = got.iter().map(|t| t.key.clone()).collect();
    assert_eq!(keys.len(), 500, "every tick arrived");
    assert_eq!(got.len(), 500, "none twice");
    assert!(
        got.iter()
            .all(|t| t.ts_event_ns / 1_000_000 < base && t.scale == 5),
        "server time converted to UTC"
    );
}

#[derive(Parser)]
struct Mt5Cli {
    #[command(flatten)]
    a: ingest::mt5::Mt5Args,
}

/// The EA's side over TLS (what `SocketTlsHandshake` does in MQL5): the listener serves the
/// certificate from `--mt5-tls-cert`/`--mt5-tls-key`; an EA that trusts its CA connects to
/// `localhost`, says hello, sends ticks and gets them acknowledged once durable. A client that
/// does not trust the CA, and one that speaks plain TCP, get nothing.
#[tokio::test]
async fn an_ea_streams_over_tls() {
    use ingest::source::{BuildSource, Durability, SourceContext};
    use tokio::io::AsyncReadExt;
    let certs = tick_core::testenv::tls::Certificates::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certs.server.to_pem().unwrap()).unwrap();
    std::fs::write(&key, certs.server_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = Mt5Cli::parse_from([
        "ingest",
        "--mt5-listen",
        &listen,
        "--mt5-token",
        "secret",
        "--mt5-tls-cert",
        cert.to_str().unwrap(),
        "--mt5-tls-key",
        key.to_str().unwrap(),
    ])
    .a;
    let durable = Durability::default();
    let cx = SourceContext {
        intake: ingest::source::IntakeArgs {
            symbols: vec![],
            duration: None,
            from: None,
            to: None,
            speed: None,
        },
        shutdown: CancellationToken::new(),
        durable: durable.clone(),
    };
    let mut source = args.build(&cx).await.unwrap();

    let connector = |ca: &openssl::x509::X509| {
        tokio_native_tls::TlsConnector::from(
            native_tls::TlsConnector::builder()
                .add_root_certificate(
                    native_tls::Certificate::from_pem(&ca.to_pem().unwrap()).unwrap(),
                )
                .disable_built_in_roots(true)
                .build()
                .unwrap(),
        )
    };
    // A client that does not trust the CA refuses the server.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        connector(&certs.other_ca)
            .connect("localhost", tcp)
            .await
            .is_err()
    );
    // Plain TCP to a TLS listener: the hello is not understood, nothing comes back in clear.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain
        .write_all(b"{\"type\":\"hello\",\"token\":\"secret\",\"terminal\":\"x\"}\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("welcome"));

    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector(&certs.ca)
        .connect("localhost", tcp)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(tls);
    let mut lines = BufReader::new(r).lines();
    w.write_all(
        b"{\"type\":\"hello\",\"token\":\"secret\",\"terminal\":\"tls-demo\",\"utc_offset_s\":0}\n",
    )
    .await
    .unwrap();
    let welcome = lines.next_line().await.unwrap().unwrap();
    assert!(welcome.contains("welcome"), "{welcome}");
    let base = clock::now_ns() / 1_000_000;
    for i in 0..10 {
        let (_, line) = tick_line(base, i);
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }
    let mut ticks = Vec::new();
    while ticks.len() < 10 {
        source.next_batch(&mut ticks).await.unwrap();
    }
    assert!(
        ticks
            .iter()
            .all(|t| t.source == "mt5:tls-demo" && t.scale == 5)
    );
    // Once durable, the EA is acknowledged over the same TLS stream.
    durable.set(10);
    let last = tick_line(base, 9).0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut acked = false;
    while !acked && Instant::now() < deadline {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        acked = line.contains(&format!("\"ack\",\"time_msc\":{last}"));
    }
    assert!(acked, "the last tick was acknowledged over TLS");
    cx.shutdown.cancel();
}
