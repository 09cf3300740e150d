//! The gRPC `SignalService` served for real on loopback (tonic server and client, no mock of the
//! service): slow subscribers under both policies, resume tokens, bearer-token auth and TLS.

use indicators::service::{
    self, GAP_FOREIGN_TOKEN, GAP_INVALID_TOKEN, GAP_QUEUE_FULL, GAP_WINDOW_EXCEEDED, Hub,
    HubOptions, ServeOptions, Service, SlowSubscriber, SnapshotQuery,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tick_core::pb;
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::shutdown::CancellationToken;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(30);

/// A served hub: its address and what stops it.
struct Server {
    hub: Arc<Hub>,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(options: HubOptions, serve: ServeOptions) -> Self {
        let hub = Hub::with_options(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<SnapshotQuery>(8);
        // Stands in for the engine task: knows EURUSD only.
        tokio::spawn(async move {
            while let Some((symbol, reply)) = rx.recv().await {
                let snap = (symbol == "EURUSD").then(|| pb::Snapshot {
                    symbol,
                    ..Default::default()
                });
                let _ = reply.send(snap);
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(service::serve_with(
            listener,
            Service::new(hub.clone(), tx),
            serve,
            stop.clone(),
        ));
        Self {
            hub,
            addr,
            stop,
            task,
        }
    }

    /// A client with HTTP/2 flow-control windows of 64 KiB (hyper's defaults are MiBs), so a
    /// stalled reader stops the server's stream after some hundreds of events.
    async fn small_window_client(&self) -> SignalServiceClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        SignalServiceClient::new(channel)
    }

    async fn client(&self) -> SignalServiceClient<Channel> {
        // One connection per client: a stalled stream must not share a connection window.
        SignalServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.hub.close();
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

fn opts(queue: usize, resume_window: usize, slow_subscriber: SlowSubscriber) -> HubOptions {
    HubOptions {
        queue,
        resume_window,
        slow_subscriber,
    }
}

fn update(symbol: &str, i: u64) -> Kind {
    Kind::Update(pb::IndicatorUpdate {
        symbol: symbol.into(),
        timeframe: "tick".into(),
        price: i as f64,
        ..Default::default()
    })
}

fn all() -> pb::SubscribeRequest {
    pb::SubscribeRequest::default()
}

fn resume(token: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        resume_token: token.into(),
        ..Default::default()
    }
}

async fn open(
    client: &mut SignalServiceClient<Channel>,
    req: pb::SubscribeRequest,
) -> Streaming<pb::Event> {
    client.subscribe(req).await.unwrap().into_inner()
}

async fn next(s: &mut Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream not ended")
}

/// Reads until the event with sequence number `last`; returns everything read.
async fn read_until(s: &mut Streaming<pb::Event>, last: u64) -> Vec<pb::Event> {
    let mut out = Vec::new();
    loop {
        let ev = next(s).await;
        let done = ev.seq >= last;
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn seqs(events: &[pb::Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| !matches!(e.kind, Some(Kind::Gap(_))))
        .map(|e| e.seq)
        .collect()
}

fn gaps(events: &[pb::Event]) -> Vec<pb::Gap> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Gap(g)) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

fn token_seq(token: &str) -> u64 {
    token.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Spawns a reader that counts the events of a stream and checks they are contiguous from 1.
fn reader(
    mut s: Streaming<pb::Event>,
    progress: Arc<AtomicU64>,
    last: u64,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(ev) = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
        {
            assert!(
                !matches!(ev.kind, Some(Kind::Gap(_))),
                "a normal subscriber got a gap: {ev:?}"
            );
            assert_eq!(token_seq(&ev.resume_token), ev.seq);
            got.push(ev.seq);
            progress.store(ev.seq, Ordering::Release);
            if ev.seq >= last {
                break;
            }
        }
        got
    })
}

/// Publishes `n` events (alternating EURUSD, GBPUSD), never more than `ahead` events ahead of
/// the slowest of `readers` (the normal subscribers set the pace; the stalled one does not);
/// returns the time spent inside `publish`.
async fn publish_paced(hub: &Hub, n: u64, ahead: u64, readers: &[Arc<AtomicU64>]) -> Duration {
    publish_paced_as(hub, n, ahead, readers, |seq| {
        if seq % 2 == 0 { "GBPUSD" } else { "EURUSD" }
    })
    .await
}

/// As [`publish_paced`], the symbol of each event given by its sequence number.
async fn publish_paced_as(
    hub: &Hub,
    n: u64,
    ahead: u64,
    readers: &[Arc<AtomicU64>],
    symbol: impl Fn(u64) -> &'static str,
) -> Duration {
    let mut in_publish = Duration::ZERO;
    let base = hub.last_seq();
    for i in 1..=n {
        let deadline = Instant::now() + WAIT;
        while readers
            .iter()
            .any(|r| r.load(Ordering::Acquire) + ahead < base + i)
        {
            assert!(
                Instant::now() < deadline,
                "a normal subscriber stopped reading"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t = Instant::now();
        hub.publish(update(symbol(base + i), base + i));
        in_publish += t.elapsed();
    }
    in_publish
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_gets_a_gap_and_slows_no_one() {
    const N: u64 = 20_000;
    let server = Server::start(
        opts(512, 100_000, SlowSubscriber::DropOldest),
        ServeOptions::default(),
    )
    .await;
    let mut stalled_client = server.small_window_client().await;
    let mut stalled = open(&mut stalled_client, all()).await;
    let progress: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut readers = Vec::new();
    for p in &progress {
        let mut c = server.client().await;
        readers.push(reader(open(&mut c, all()).await, p.clone(), N));
    }
    assert_eq!(server.hub.subscribers(), 3);

    // Every publish completes while the stalled subscriber never reads.
    let in_publish = publish_paced(&server.hub, N, 256, &progress).await;
    assert!(
        in_publish < Duration::from_secs(2),
        "{N} publishes took {in_publish:?} in total"
    );
    for r in readers {
        let got = r.await.unwrap();
        assert_eq!(
            got,
            (1..=N).collect::<Vec<_>>(),
            "normal subscribers get every event in order"
        );
    }

    // Now the stalled one reads: what it received plus what it was told it lost is everything,
    // and each gap sits exactly where its events are missing.
    let events = read_until(&mut stalled, N).await;
    let gaps = gaps(&events);
    assert!(!gaps.is_empty(), "the stalled subscriber got no gap event");
    assert!(gaps.iter().all(|g| g.reason == GAP_QUEUE_FULL));
    let dropped: u64 = gaps.iter().map(|g| g.dropped).sum();
    assert_eq!(seqs(&events).len() as u64 + dropped, N);
    assert_eq!(server.hub.dropped(), dropped);
    let mut expect = 1;
    for ev in &events {
        match &ev.kind {
            Some(Kind::Gap(g)) => {
                assert_eq!(
                    token_seq(&ev.resume_token),
                    expect - 1,
                    "a gap's token is before its loss"
                );
                expect += g.dropped;
            }
            _ => {
                assert_eq!(ev.seq, expect);
                expect += 1;
            }
        }
    }
    assert_eq!(expect, N + 1);
    println!(
        "stalled subscriber: {} events received, {dropped} dropped in {} gaps",
        N - dropped,
        gaps.len()
    );
    drop(stalled);
    server.shutdown().await;
}

/// Four symbols in turn; EURUSD on every fourth event (sequence numbers divisible by 4).
fn four_symbols(seq: u64) -> &'static str {
    ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD"][(seq % 4) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_subscriber_among_unfiltered_traffic_is_told_exactly_what_it_missed() {
    // Two rounds of 20,000 events over four symbols; each ends with an EURUSD event, which a
    // lagging subscriber never loses (the newest events are the ones kept).
    const ROUND: u64 = 20_000;
    let server = Server::start(
        opts(512, 100_000, SlowSubscriber::DropOldest),
        ServeOptions::default(),
    )
    .await;
    // The filtered subscriber wants EURUSD only and stops reading (a 64 KiB window: the server
    // stops sending it after some hundreds of events, and its queue of 512 overflows).
    let mut eur_client = server.small_window_client().await;
    let eur_filter = || pb::SubscribeRequest {
        symbols: vec!["EURUSD".into()],
        ..Default::default()
    };
    let mut eur = open(&mut eur_client, eur_filter()).await;
    // Two unfiltered subscribers read everything and set the publisher's pace.
    let progress: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut readers = Vec::new();
    for p in &progress {
        let mut c = server.client().await;
        readers.push(reader(open(&mut c, all()).await, p.clone(), 2 * ROUND));
    }

    let mut received = Vec::new();
    for round in 1..=2 {
        publish_paced_as(&server.hub, ROUND, 256, &progress, four_symbols).await;
        // Only once everything is published does the filtered subscriber read, up to the
        // round's last event (an EURUSD one).
        received.extend(read_until(&mut eur, round * ROUND).await);
    }
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            (1..=2 * ROUND).collect::<Vec<_>>(),
            "unfiltered subscribers get every event, with no gap"
        );
    }

    // What it got: EURUSD events only, in order, each once.
    let got = seqs(&received);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    for ev in &received {
        if let Some(Kind::Update(u)) = &ev.kind {
            assert_eq!(u.symbol, "EURUSD");
            assert_eq!(token_seq(&ev.resume_token), ev.seq);
        }
    }
    // What it missed: the EURUSD events published and not received. The gaps' counts add up
    // to exactly that number.
    let published: Vec<u64> = (1..=2 * ROUND)
        .filter(|s| four_symbols(*s) == "EURUSD")
        .collect();
    let missed = published.len() - got.len();
    let gaps_seen = gaps(&received);
    assert!(
        gaps_seen.len() >= 2,
        "a gap per round: the queue overflowed twice ({gaps_seen:?})"
    );
    assert!(gaps_seen.iter().all(|g| g.reason == GAP_QUEUE_FULL));
    let dropped: u64 = gaps_seen.iter().map(|g| g.dropped).sum();
    assert_eq!(
        dropped, missed as u64,
        "Gap.dropped sums to the matching events missed"
    );
    assert!(
        missed > 1000,
        "most of the EURUSD events were lost: {missed}"
    );
    println!(
        "filtered subscriber: {} of {} EURUSD events received, {missed} missed, told in {} gaps",
        got.len(),
        published.len(),
        gaps_seen.len()
    );
    assert!(
        server.hub.dropped() >= dropped,
        "the hub also counts the lost events of other symbols"
    );

    // Each gap sits where its events are missing: `dropped` is the number of EURUSD events
    // between its position and the next event received, and resubscribing from its position
    // (same filter) replays exactly those, then the next event received here.
    let mut resume_client = server.client().await;
    for (i, ev) in received.iter().enumerate() {
        let Some(Kind::Gap(g)) = &ev.kind else {
            continue;
        };
        assert_eq!(ev.seq, 0);
        let at = token_seq(&ev.resume_token);
        let next = received[i + 1..]
            .iter()
            .find(|e| !matches!(e.kind, Some(Kind::Gap(_))))
            .expect("a round ends with a delivered event")
            .seq;
        let lost: Vec<u64> = (at + 1..next)
            .filter(|s| four_symbols(*s) == "EURUSD")
            .collect();
        assert!(got.iter().all(|s| !lost.contains(s)));
        assert_eq!(g.dropped, lost.len() as u64, "gap at {at}");
        let mut again = open(
            &mut resume_client,
            pb::SubscribeRequest {
                resume_token: ev.resume_token.clone(),
                ..eur_filter()
            },
        )
        .await;
        let replayed = read_until(&mut again, next).await;
        assert!(gaps(&replayed).is_empty(), "all of it is still retained");
        let mut want = lost;
        want.push(next);
        assert_eq!(
            seqs(&replayed),
            want,
            "the gap's position gives back its events"
        );
        drop(again);
    }
    drop(eur);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_disconnect_policy_a_stalled_subscriber_is_cut_off_and_can_resume() {
    const N: u64 = 20_000;
    let server = Server::start(
        opts(512, 100_000, SlowSubscriber::Disconnect),
        ServeOptions::default(),
    )
    .await;
    let mut stalled_client = server.small_window_client().await;
    let mut stalled = open(&mut stalled_client, all()).await;
    let progress = Arc::new(AtomicU64::new(0));
    let mut c = server.client().await;
    let normal = reader(open(&mut c, all()).await, progress.clone(), N);
    publish_paced(&server.hub, N, 256, std::slice::from_ref(&progress)).await;
    assert_eq!(normal.await.unwrap(), (1..=N).collect::<Vec<_>>());

    let mut received = Vec::new();
    let status = loop {
        let m = tokio::time::timeout(WAIT, stalled.message()).await;
        let m = m.unwrap_or_else(|_| {
            panic!(
                "stuck after {} events: {:?}",
                received.len(),
                received.last()
            )
        });
        match m {
            Ok(Some(ev)) => received.push(ev),
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("resume token"),
        "{}",
        status.message()
    );
    assert!(gaps(&received).is_empty());
    let got = seqs(&received);
    assert!(!got.is_empty() && (got.len() as u64) < N);
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());

    // Resuming with the last token replays the rest from the retained window.
    let token = received.last().unwrap().resume_token.clone();
    let mut s = open(&mut stalled_client, resume(&token)).await;
    let rest = read_until(&mut s, N).await;
    assert!(gaps(&rest).is_empty());
    assert_eq!(seqs(&rest), (got.len() as u64 + 1..=N).collect::<Vec<_>>());
    drop(s);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_the_last_token_gives_the_missed_events_then_live_ones() {
    let server = Server::start(
        opts(4096, 100_000, SlowSubscriber::DropOldest),
        ServeOptions::default(),
    )
    .await;
    let hub = server.hub.clone();
    let mut client = server.client().await;
    let mut s = open(&mut client, all()).await;
    let mut eur_client = server.client().await;
    let mut eur = open(
        &mut eur_client,
        pb::SubscribeRequest {
            symbols: vec!["eurusd".into()],
            ..Default::default()
        },
    )
    .await;
    for i in 1..=300 {
        hub.publish(update(if i % 2 == 0 { "GBPUSD" } else { "EURUSD" }, i));
    }
    let first = read_until(&mut s, 100).await;
    assert_eq!(seqs(&first), (1..=100).collect::<Vec<_>>());
    let first_eur = read_until(&mut eur, 99).await;
    assert_eq!(seqs(&first_eur), (1..=99).step_by(2).collect::<Vec<_>>());
    let (token, eur_token) = (
        first.last().unwrap().resume_token.clone(),
        first_eur.last().unwrap().resume_token.clone(),
    );
    assert_eq!(token, format!("{}:100", hub.instance_id()));
    // Disconnect (stream and connection dropped); more events are published meanwhile.
    drop((s, client, eur, eur_client));
    for i in 301..=1000 {
        hub.publish(update(if i % 2 == 0 { "GBPUSD" } else { "EURUSD" }, i));
    }
    // Resubscribe while a publisher keeps going: the replay must meet the live stream exactly.
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 1001..=3000 {
                hub.publish(update(if i % 2 == 0 { "GBPUSD" } else { "EURUSD" }, i));
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut client = server.client().await;
    let mut s = open(&mut client, resume(&token)).await;
    let mut eur_client = server.client().await;
    let mut eur = open(
        &mut eur_client,
        pb::SubscribeRequest {
            symbols: vec!["EURUSD".into()],
            resume_token: eur_token,
            ..Default::default()
        },
    )
    .await;
    publisher.await.unwrap();
    let rest = read_until(&mut s, 3000).await;
    assert!(gaps(&rest).is_empty(), "{:?}", gaps(&rest));
    assert_eq!(
        seqs(&rest),
        (101..=3000).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    for ev in &rest {
        assert_eq!(token_seq(&ev.resume_token), ev.seq);
    }
    let rest_eur = read_until(&mut eur, 2999).await;
    assert!(gaps(&rest_eur).is_empty());
    assert_eq!(seqs(&rest_eur), (101..=2999).step_by(2).collect::<Vec<_>>());
    assert!(
        rest_eur
            .iter()
            .all(|e| matches!(&e.kind, Some(Kind::Update(u)) if u.symbol == "EURUSD"))
    );
    drop((s, eur));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_instance_or_older_than_the_window_yields_a_gap() {
    let server = Server::start(
        opts(4096, 100, SlowSubscriber::DropOldest),
        ServeOptions::default(),
    )
    .await;
    let hub = server.hub.clone();
    for i in 1..=500 {
        hub.publish(update("EURUSD", i));
    }
    let mut client = server.client().await;

    // Another instance (e.g. the process before a restart): a gap, then live events.
    let other = Hub::new(16);
    assert_ne!(other.instance_id(), hub.instance_id());
    let mut s = open(&mut client, resume(&format!("{}:42", other.instance_id()))).await;
    let gap = next(&mut s).await;
    let Some(Kind::Gap(g)) = &gap.kind else {
        panic!("{gap:?}")
    };
    assert_eq!((g.reason.as_str(), g.dropped), (GAP_FOREIGN_TOKEN, 0));
    assert_eq!(gap.resume_token, format!("{}:500", hub.instance_id()));
    hub.publish(update("EURUSD", 501));
    assert_eq!(next(&mut s).await.seq, 501);
    drop(s);

    // Older than the window of 100 (events 402..=501 retained): the count lost, then the rest.
    let mut s = open(&mut client, resume(&format!("{}:10", hub.instance_id()))).await;
    let events = read_until(&mut s, 501).await;
    let gap = &events[0];
    let Some(Kind::Gap(g)) = &gap.kind else {
        panic!("{gap:?}")
    };
    assert_eq!((g.reason.as_str(), g.dropped), (GAP_WINDOW_EXCEEDED, 391));
    assert_eq!(
        token_seq(&gap.resume_token),
        401,
        "nothing before 402 can come back"
    );
    assert_eq!(seqs(&events), (402..=501).collect::<Vec<_>>());
    hub.publish(update("EURUSD", 502));
    assert_eq!(next(&mut s).await.seq, 502);
    drop(s);

    // Malformed, or a position this instance never reached.
    for bad in ["garbage".to_string(), format!("{}:9999", hub.instance_id())] {
        let mut s = open(&mut client, resume(&bad)).await;
        let gap = next(&mut s).await;
        let Some(Kind::Gap(g)) = &gap.kind else {
            panic!("{gap:?}")
        };
        assert_eq!(g.reason, GAP_INVALID_TOKEN, "{bad}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_subscribe_and_snapshot_but_not_health() {
    let server = Server::start(
        HubOptions::default(),
        ServeOptions {
            auth_token: Some("s3cret".into()),
            tls: None,
        },
    )
    .await;
    let with = |auth: Option<&str>, req| {
        let mut r = tonic::Request::new(req);
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    };
    let mut client = server.client().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cret2"),
    ] {
        let err = client.subscribe(with(auth, all())).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}");
        let mut r = tonic::Request::new(pb::SnapshotRequest {
            symbol: "EURUSD".into(),
        });
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        assert_eq!(
            client.get_snapshot(r).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let mut s = client
        .subscribe(with(Some("Bearer s3cret"), all()))
        .await
        .unwrap()
        .into_inner();
    server.hub.publish(update("EURUSD", 1));
    assert_eq!(next(&mut s).await.seq, 1);
    let mut r = tonic::Request::new(pb::SnapshotRequest {
        symbol: "eurusd".into(),
    });
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(
        client.get_snapshot(r).await.unwrap().into_inner().symbol,
        "EURUSD"
    );

    // Health stays open (for probes).
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tickflow.v1.SignalService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(s);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_to_a_client_trusting_its_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // rustls refuses a CA certificate as the server's own (openssl's default for a self-signed
    // one): mark it an end entity.
    let out = std::process::Command::new("openssl")
        .args("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost".split(' '))
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(&cert).unwrap();
    let server = Server::start(
        HubOptions::default(),
        ServeOptions {
            auth_token: None,
            tls: Some((pem.clone(), std::fs::read(&key).unwrap())),
        },
    )
    .await;

    for host in ["localhost", "127.0.0.1"] {
        let channel = Endpoint::from_shared(format!("https://{host}:{}", server.addr.port()))
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pem)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = SignalServiceClient::new(channel);
        let mut s = open(&mut client, all()).await;
        server.hub.publish(update("EURUSD", 1));
        let ev = next(&mut s).await;
        assert!(
            matches!(&ev.kind, Some(Kind::Update(u)) if u.symbol == "EURUSD"),
            "{ev:?}"
        );
    }

    // A plaintext client gets nowhere.
    let plain = tokio::time::timeout(WAIT, async {
        let mut c = SignalServiceClient::connect(format!("http://{}", server.addr)).await?;
        let mut s = c.subscribe(all()).await?.into_inner();
        s.message().await?;
        anyhow::Ok(())
    })
    .await
    .unwrap();
    assert!(plain.is_err());
    // A client that does not trust the certificate neither.
    let untrusted = Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new())
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = untrusted {
        assert!(SignalServiceClient::new(ch).subscribe(all()).await.is_err());
    }
    server.shutdown().await;
}
