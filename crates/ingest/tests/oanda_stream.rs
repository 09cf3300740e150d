//! The OANDA adapter against a local HTTP server that replays a pricing stream in the documented
//! format: heartbeats, a stall (heartbeats but no prices), a dropped connection and the price
//! snapshot OANDA repeats on every connect. Every price must come out exactly once, in order.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use ingest::oanda::{OandaConfig, OandaSource};
use ingest::source::TickSource;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn price(sec: u32) -> String {
    format!(
        r#"{{"type":"PRICE","time":"2024-01-02T10:00:{sec:02}.123456789Z","bids":[{{"price":"1.1{sec:03}0","liquidity":1000000}}],"asks":[{{"price":"1.1{sec:03}4","liquidity":1000000}}],"closeoutBid":"1.1","closeoutAsk":"1.2","status":"tradeable","tradeable":true,"instrument":"EUR_USD"}}"#
    ) + "\n"
}

const HEARTBEAT: &str = "{\"type\":\"HEARTBEAT\",\"time\":\"2024-01-02T10:00:00.000000000Z\"}\n";

async fn stream(State(conns): State<Arc<AtomicUsize>>, headers: HeaderMap) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Body::empty())
            .unwrap();
    }
    let n = conns.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let send = |s: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(s)).await.is_ok() }
        };
        match n {
            // Prices 1-3, then only heartbeats: the price watchdog must reconnect.
            0 => {
                send(HEARTBEAT.into()).await;
                for s in 1..=3 {
                    send(price(s)).await;
                }
                while send(HEARTBEAT.into()).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // The snapshot repeats 3, then 4 and 5, then the connection drops.
            1 => {
                for s in 3..=5 {
                    send(price(s)).await;
                }
            }
            // Snapshot 5 again, then 6, then a healthy stream of heartbeats.
            _ => {
                send(price(5)).await;
                send(price(6)).await;
                while send(HEARTBEAT.into()).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

#[tokio::test]
async fn every_price_once_across_a_stall_and_a_dropped_connection() {
    let conns = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/v3/accounts/{account}/pricing/stream", get(stream))
        .with_state(conns.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cfg = OandaConfig {
        base_url: format!("http://{addr}"),
        account: "101-004-1".into(),
        token: "secret".into(),
        instruments: vec!["EUR_USD".into()],
        silence: Duration::from_secs(5),
        price_stall: Duration::from_secs(1),
        max_backoff: Duration::from_millis(500),
        max_line: 64 * 1024,
    };
    let mut src = OandaSource::start(cfg.clone()).unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 6 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(1), src.next_batch(&mut got)).await;
    }
    // Anything more would be a duplicate.
    let _ = tokio::time::timeout(Duration::from_secs(1), src.next_batch(&mut got)).await;
    let secs: Vec<i64> = got
        .iter()
        .map(|t| (t.ts_event_ns / 1_000_000_000) % 60)
        .collect();
    assert_eq!(secs, vec![1, 2, 3, 4, 5, 6], "each price once, in order");
    assert!(
        got.iter()
            .all(|t| t.symbol == "EURUSD" && t.scale == 5 && t.ask - t.bid == 4)
    );
    assert!(
        conns.load(Ordering::SeqCst) >= 3,
        "reconnected after the stall and the drop"
    );
    // The prices the reconnects repeated (3 and 5) were skipped with a reason, not silently.
    let skipped = src.take_skipped();
    assert!(
        skipped.len() == 2 && skipped.iter().all(|s| s.reason == "not_newer"),
        "{skipped:?}"
    );

    // A wrong token is refused (and retried with backoff, delivering nothing).
    let mut bad = OandaSource::start(OandaConfig {
        token: "wrong".into(),
        ..cfg
    })
    .unwrap();
    let mut none = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), bad.next_batch(&mut none)).await;
    assert!(none.is_empty());
}
