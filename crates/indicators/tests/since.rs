//! `Subscribe` with `since_ns` over real gRPC (tonic server and client) from a real SQLite
//! store, fed by a small pipeline of this test's own: the live engine publishes to the hub as
//! `run_indicators` does, and the store trails it like a persister (a lag of a few ticks).
//! What a subscriber receives must be the stored history followed by the live stream: every
//! tick from `since_ns` once, `symbol_seq` without a hole at the seam; a hole the store never
//! fills is a `Gap` counting exactly the missing ticks.

use indicators::engine::{Engine, EngineConfig};
use indicators::service::{self, Hub, HubOptions, ServeOptions, Service, SlowSubscriber};
use indicators::since::{GAP_HISTORY_BEFORE_STORE, GAP_HISTORY_INCOMPLETE};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::shutdown::CancellationToken;
use tick_core::store::{HistoryReader, TickWriter};
use tick_core::{RouteInfo, Tick, pb};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const MS: i64 = 1_000_000;
const SYMBOLS: [&str; 2] = ["EURUSD", "USDJPY"];

/// The pipeline of the test: a live engine publishing to a hub, and a store that receives each
/// tick `lag` ticks later (the persister's delay), unless told to lose it.
struct Pipeline {
    hub: Arc<Hub>,
    engine: Engine,
    store: Arc<persister::sqlite::SqliteStore>,
    seq: HashMap<&'static str, u64>,
    /// Ticks routed but not stored yet, oldest first.
    unstored: Vec<Tick>,
    lag: usize,
    start_ns: i64,
    n: i64,
    /// Every tick routed, in order.
    routed: Vec<Tick>,
}

impl Pipeline {
    fn new(hub: Arc<Hub>, store: Arc<persister::sqlite::SqliteStore>, lag: usize) -> Self {
        Self {
            hub,
            engine: Engine::new(EngineConfig::default()).unwrap(),
            store,
            seq: HashMap::new(),
            unstored: Vec::new(),
            lag,
            // Ten minutes ago: the router's clock checks are not in this test, `since_ns` is.
            start_ns: tick_core::clock::now_ns() - 600_000 * MS,
            n: 0,
            routed: Vec::new(),
        }
    }

    /// Routes the next tick of each symbol: numbers it, publishes its outputs, and stores the
    /// ticks that are now `lag` behind (all but those `lose` names, by symbol and sequence).
    async fn step(&mut self, lose: &HashSet<(&str, u64)>) {
        for (k, symbol) in SYMBOLS.into_iter().enumerate() {
            let ts = self.start_ns + self.n * 10 * MS + k as i64;
            let bid = if symbol == "EURUSD" {
                110_000
            } else {
                14_950_000
            } + (self.n % 37) * 3;
            let mut tick = tick_core::testenv::tick("sim", symbol, ts, bid);
            let seq = self.seq.entry(symbol).or_insert(0);
            tick.route = RouteInfo {
                ts_route_ns: ts + 1,
                symbol_seq: *seq,
                flags: 0,
                gap_ns: 0,
            };
            *seq += 1;
            let out = self.engine.on_tick(tick.clone());
            for b in out.bars {
                self.hub.publish(Kind::Bar(b));
            }
            for u in out.bar_updates {
                let names = self.engine.value_names(&u.timeframe).unwrap().clone();
                self.hub.publish_update(u, names);
            }
            if let Some(u) = out.update {
                let names = self.engine.value_names("tick").unwrap().clone();
                self.hub.publish_update(u, names);
            }
            for s in out.signals {
                self.hub.publish(Kind::Signal(s));
            }
            self.routed.push(tick.clone());
            if !lose.contains(&(symbol, tick.route.symbol_seq)) {
                self.unstored.push(tick);
            }
        }
        self.n += 1;
        if self.unstored.len() > self.lag {
            let due: Vec<Tick> = self
                .unstored
                .drain(..self.unstored.len() - self.lag)
                .collect();
            self.store.insert_ticks(&due).await.unwrap();
        }
    }

    /// Stores every tick still waiting.
    async fn flush(&mut self) {
        let due = std::mem::take(&mut self.unstored);
        self.store.insert_ticks(&due).await.unwrap();
    }

    /// The event time of the `i`-th step's EURUSD tick.
    fn ts(&self, i: i64) -> i64 {
        self.start_ns + i * 10 * MS
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

async fn serve(
    hub: Arc<Hub>,
    store: Option<Arc<dyn HistoryReader>>,
    seam_wait: Duration,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let mut svc = Service::new(hub, tx).with_engine(EngineConfig::default(), seam_wait);
    if let Some(s) = store {
        svc = svc.with_history(s);
    }
    let stop = CancellationToken::new();
    tokio::spawn(service::serve_with(
        listener,
        svc,
        ServeOptions::default(),
        stop.clone(),
    ));
    Server { addr, stop }
}

async fn store() -> (tempfile::TempDir, Arc<persister::sqlite::SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = persister::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
    store.migrate().await.unwrap();
    (dir, Arc::new(store))
}

fn hub(resume_window: usize) -> Arc<Hub> {
    Hub::with_options(HubOptions {
        queue: 1 << 16,
        resume_window,
        slow_subscriber: SlowSubscriber::DropOldest,
    })
}

async fn subscribe(
    addr: std::net::SocketAddr,
    request: pb::SubscribeRequest,
) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    let mut client = SignalServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.subscribe(request).await.map(|r| r.into_inner())
}

/// Reads events until every symbol's per-tick update numbered `last_seq` arrived.
async fn read_until(stream: &mut tonic::Streaming<pb::Event>, last_seq: u64) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut done = HashSet::new();
    while done.len() < SYMBOLS.len() {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("the stream stays open");
        if let Some(Kind::Update(u)) = &ev.kind
            && u.timeframe == "tick"
            && u.symbol_seq == last_seq
        {
            done.insert(u.symbol.clone());
        }
        out.push(ev);
    }
    out
}

/// Checks what a subscriber from `since` received against what the pipeline routed: per
/// symbol, the per-tick updates are the routed ticks from the first one at or after `since`,
/// each once and in sequence, history first and marked as such; returns how many were history.
fn check_seamless(events: &[pb::Event], routed: &[Tick], since: i64, last_seq: u64) -> usize {
    let mut history = 0;
    for symbol in SYMBOLS {
        let want: Vec<(&str, u64)> = routed
            .iter()
            .filter(|t| t.symbol == symbol && t.route.symbol_seq <= last_seq)
            .skip_while(|t| t.ts_event_ns < since)
            .map(|t| (t.key.as_str(), t.route.symbol_seq))
            .collect();
        let got: Vec<(&pb::Event, &pb::IndicatorUpdate)> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Update(u)) if u.timeframe == "tick" && u.symbol == symbol => {
                    Some((e, u))
                }
                _ => None,
            })
            .collect();
        let keys: Vec<(&str, u64)> = got
            .iter()
            .map(|(_, u)| (u.idempotency_key.as_str(), u.symbol_seq))
            .collect();
        assert_eq!(
            keys, want,
            "{symbol}: each tick from since once, in sequence"
        );
        let flags: Vec<bool> = got.iter().map(|(e, _)| e.history).collect();
        let n_hist = flags.iter().take_while(|h| **h).count();
        assert!(
            flags[n_hist..].iter().all(|h| !h),
            "{symbol}: history first, then live"
        );
        assert!(
            n_hist > 0 && n_hist < flags.len(),
            "{symbol}: {n_hist} of {}",
            flags.len()
        );
        for (e, _) in &got[..n_hist] {
            assert_eq!(
                (e.seq, e.resume_token.as_str()),
                (0, ""),
                "history is not in the sequence"
            );
        }
        for (e, _) in &got[n_hist..] {
            assert!(e.seq > 0 && !e.resume_token.is_empty());
        }
        history += n_hist;
    }
    assert!(
        events.iter().all(
            |e| !e.history || matches!(&e.kind, Some(Kind::Update(u)) if u.timeframe == "tick")
        ),
        "only per-tick updates are history"
    );
    history
}

#[tokio::test]
async fn history_then_live_each_tick_once_without_a_hole_at_the_seam() {
    let (_dir, store) = store().await;
    let hub = hub(100_000);
    let server = serve(hub.clone(), Some(store.clone()), Duration::from_secs(5)).await;
    let mut pipe = Pipeline::new(hub, store, 20);
    let none = HashSet::new();
    for _ in 0..400 {
        pipe.step(&none).await;
    }
    let since = pipe.ts(150);
    let mut stream = subscribe(
        server.addr,
        pb::SubscribeRequest {
            since_ns: since,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The subscriber reads while ticks keep flowing.
    let reader = tokio::spawn(async move { read_until(&mut stream, 799).await });
    for _ in 0..400 {
        pipe.step(&none).await;
        if pipe.n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pipe.flush().await;
    let events = reader.await.unwrap();
    let history = check_seamless(&events, &pipe.routed, since, 799);
    assert!(
        history >= 2 * 200,
        "the stored ticks since 150 came from history: {history}"
    );
    // Bars and signals are live from the call only, never history.
    let gaps: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Gap(_))))
        .collect();
    assert!(gaps.is_empty(), "{gaps:?}");
    server.stop.cancel();
}

#[tokio::test]
async fn a_seam_beyond_the_retained_events_is_filled_from_the_store_and_an_unfilled_hole_counted() {
    let (_dir, store) = store().await;
    // Eight retained events: the live part cannot reach back to where the store ends, so the
    // seam is filled from the store, waiting for the (lagging) persister.
    let hub = hub(8);
    let server = serve(
        hub.clone(),
        Some(store.clone()),
        Duration::from_millis(1500),
    )
    .await;
    let mut pipe = Pipeline::new(hub, store, 120);
    // EURUSD ticks 260..=264 are never stored.
    let lose: HashSet<(&str, u64)> = (260..=264).map(|s| ("EURUSD", s)).collect();
    for _ in 0..300 {
        pipe.step(&lose).await;
    }
    let since = pipe.ts(100);
    let mut stream = subscribe(
        server.addr,
        pb::SubscribeRequest {
            since_ns: since,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move { read_until(&mut stream, 459).await });
    // The history ends where the store does (step 240); the live part starts at step 296: the
    // seam waits for the persister, which catches up a moment later, within the seam wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pipe.flush().await;
    for _ in 0..160 {
        pipe.step(&lose).await;
    }
    pipe.flush().await;
    let events = reader.await.unwrap();
    let gaps: Vec<&pb::Gap> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Gap(g)) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0].reason.as_str(), gaps[0].dropped),
        (GAP_HISTORY_INCOMPLETE, 5)
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, Some(Kind::Gap(_))) || e.resume_token.is_empty())
    );
    // Everything else arrived once, in sequence.
    let routed: Vec<Tick> = pipe
        .routed
        .iter()
        .filter(|t| !lose.contains(&(t.symbol.as_str(), t.route.symbol_seq)))
        .cloned()
        .collect();
    check_seamless(&events, &routed, since, 459);
    server.stop.cancel();
}

#[tokio::test]
async fn a_since_before_the_store_gets_a_gap_first_and_bad_requests_are_refused() {
    let (_dir, store) = store().await;
    let hub = hub(1_000);
    let server = serve(hub.clone(), Some(store.clone()), Duration::from_secs(1)).await;
    let mut pipe = Pipeline::new(hub.clone(), store, 0);
    for _ in 0..50 {
        pipe.step(&HashSet::new()).await;
    }
    let mut stream = subscribe(
        server.addr,
        pb::SubscribeRequest {
            symbols: vec!["eurusd".into()],
            since_ns: pipe.start_ns - 3_600_000 * MS,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    match first.kind {
        Some(Kind::Gap(g)) => {
            assert_eq!(g.reason, GAP_HISTORY_BEFORE_STORE);
            assert_eq!(g.history_from_ns, pipe.ts(0), "where the history starts");
            assert!(
                first.resume_token.is_empty(),
                "part of the history, not of the sequence"
            );
        }
        other => panic!("a gap first, got {other:?}"),
    }
    let second = stream.message().await.unwrap().unwrap();
    assert!(second.history, "then the history");

    let addr = server.addr;
    let refused =
        |r: pb::SubscribeRequest| async move { subscribe(addr, r).await.unwrap_err().code() };
    let since = pipe.ts(0);
    assert_eq!(
        refused(pb::SubscribeRequest {
            since_ns: since,
            resume_token: "x:1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        refused(pb::SubscribeRequest {
            since_ns: since,
            kinds: vec![pb::EventKind::Bar as i32],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "bars are not replayed"
    );
    assert_eq!(
        refused(pb::SubscribeRequest {
            since_ns: tick_core::clock::now_ns() + 3_600_000 * MS,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "the future"
    );
    assert_eq!(
        refused(pb::SubscribeRequest {
            since_ns: since,
            symbols: vec!["EUR/USD".into()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument
    );
    let bare = serve(hub, None, Duration::from_secs(1)).await;
    assert_eq!(
        subscribe(
            bare.addr,
            pb::SubscribeRequest {
                since_ns: since,
                ..Default::default()
            }
        )
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    bare.stop.cancel();
    server.stop.cancel();
}

#[tokio::test]
async fn a_numbering_that_restarted_under_the_history_is_followed() {
    let (_dir, store) = store().await;
    let hub = hub(100_000);
    let server = serve(hub.clone(), Some(store.clone()), Duration::from_secs(2)).await;
    let mut pipe = Pipeline::new(hub, store, 0);
    let none = HashSet::new();
    for _ in 0..300 {
        pipe.step(&none).await;
    }
    // A router restarted after its symbols were silent for longer than its de-duplication
    // window numbers them from 0 again (its read-back holds none of their ticks). The store
    // has not caught up with the new numbers when the subscriber calls: the history ends on
    // the old numbering (299), and the live part continues on the new one (from 0).
    pipe.seq.clear();
    pipe.lag = usize::MAX;
    for _ in 0..50 {
        pipe.step(&none).await;
    }
    let since = pipe.ts(100);
    let mut stream = subscribe(
        server.addr,
        pb::SubscribeRequest {
            since_ns: since,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pipe.lag = 10;
    for _ in 0..200 {
        pipe.step(&none).await;
    }
    pipe.flush().await;
    // Read until the last tick of each symbol arrived.
    let mut last: HashSet<String> = SYMBOLS
        .iter()
        .filter_map(|s| pipe.routed.iter().rev().find(|t| t.symbol == *s))
        .map(|t| t.key.clone())
        .collect();
    let mut events = Vec::new();
    while !last.is_empty() {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("the stream stays open");
        if let Some(Kind::Update(u)) = &ev.kind {
            last.remove(&u.idempotency_key);
        }
        events.push(ev);
    }
    assert!(
        !events.iter().any(|e| matches!(e.kind, Some(Kind::Gap(_)))),
        "nothing is missing"
    );
    for symbol in SYMBOLS {
        let want: Vec<&str> = pipe
            .routed
            .iter()
            .filter(|t| t.symbol == symbol && t.ts_event_ns >= since)
            .map(|t| t.key.as_str())
            .collect();
        let got: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Update(u)) if u.timeframe == "tick" && u.symbol == symbol => {
                    Some(u.idempotency_key.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            got, want,
            "{symbol}: every tick from since once, across the restart"
        );
    }
    server.stop.cancel();
}
