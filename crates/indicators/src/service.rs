//! The gRPC `SignalService` bots subscribe to, plus health and reflection services.
//!
//! Events fan out through a broadcast ring: publishing never waits for a subscriber. Each
//! subscriber reads at its own pace; one that falls more than the ring's capacity behind loses
//! the oldest events and receives a `Gap` event with their count instead (drop-oldest policy),
//! so a stalled bot never slows the pipeline or other bots.

use futures::{Stream, StreamExt};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tick_core::shutdown::CancellationToken;
use tick_core::{clock, pb};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use pb::event::Kind;
use pb::signal_service_server::{SignalService, SignalServiceServer};

/// A snapshot request sent to the task that owns the engine.
pub type SnapshotQuery = (String, oneshot::Sender<Option<pb::Snapshot>>);

/// The fan-out point between the engine and every subscriber.
pub struct Hub {
    tx: broadcast::Sender<Arc<pb::Event>>,
    seq: AtomicU64,
    subscribers: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    closed: CancellationToken,
}

impl Hub {
    /// Returns a hub whose subscribers may fall `capacity` events behind before losing any.
    pub fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            tx,
            seq: AtomicU64::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            closed: CancellationToken::new(),
        })
    }

    /// Sends an event to every current subscriber; never waits.
    pub fn publish(&self, kind: Kind) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // No subscriber is not an error: the event simply has no reader.
        let _ = self.tx.send(Arc::new(pb::Event {
            seq,
            ts_sent_ns: 0,
            kind: Some(kind),
        }));
    }

    /// Returns how many subscribers are connected.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Returns how many events were dropped for slow subscribers, summed over subscribers.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends every subscriber stream (on shutdown, after the last event was published); events
    /// a lagging subscriber has not read yet are not delivered.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Returns a stream of the events matching `filter`, with gap events where some were lost.
    pub fn subscribe(&self, filter: Filter) -> impl Stream<Item = pb::Event> + Send + 'static {
        let guard = SubscriberGuard::new(self.subscribers.clone());
        let dropped = self.dropped.clone();
        BroadcastStream::new(self.tx.subscribe())
            .filter_map(move |r| {
                let _keep = &guard;
                let out = match r {
                    Ok(ev) if filter.matches(&ev) => {
                        let mut ev = (*ev).clone();
                        ev.ts_sent_ns = clock::now_ns();
                        Some(ev)
                    }
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        dropped.fetch_add(n, Ordering::Relaxed);
                        metrics::counter!("tickflow_indicators_events_dropped_total").increment(n);
                        Some(pb::Event {
                            seq: 0,
                            ts_sent_ns: clock::now_ns(),
                            kind: Some(Kind::Gap(pb::Gap {
                                dropped: n,
                                reason: "subscriber_queue_full".into(),
                            })),
                        })
                    }
                };
                futures::future::ready(out)
            })
            .take_until(self.closed.clone().cancelled_owned())
    }
}

struct SubscriberGuard(Arc<AtomicUsize>);

impl SubscriberGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("tickflow_indicators_subscribers").set(n as f64);
        Self(count)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("tickflow_indicators_subscribers").set(n as f64);
    }
}

/// Which events a subscriber wants; empty sets mean everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    symbols: HashSet<String>,
    kinds: HashSet<i32>,
    timeframes: HashSet<String>,
}

impl Filter {
    /// Returns the filter of a subscribe request.
    pub fn from_request(r: &pb::SubscribeRequest) -> Self {
        Self {
            symbols: r.symbols.iter().map(|s| s.trim().to_uppercase()).collect(),
            kinds: r
                .kinds
                .iter()
                .copied()
                .filter(|k| *k != pb::EventKind::Unspecified as i32)
                .collect(),
            timeframes: r.timeframes.iter().cloned().collect(),
        }
    }

    /// Returns whether `ev` passes the filter.
    pub fn matches(&self, ev: &pb::Event) -> bool {
        let (kind, symbol, tf) = match &ev.kind {
            Some(Kind::Update(u)) => (pb::EventKind::Update, &u.symbol, u.timeframe.as_str()),
            Some(Kind::Bar(b)) => (pb::EventKind::Bar, &b.symbol, b.timeframe.as_str()),
            Some(Kind::Signal(s)) => (pb::EventKind::Signal, &s.symbol, "tick"),
            Some(Kind::Gap(_)) => return true,
            None => return false,
        };
        (self.kinds.is_empty() || self.kinds.contains(&(kind as i32)))
            && (self.symbols.is_empty() || self.symbols.contains(symbol))
            && (self.timeframes.is_empty() || self.timeframes.contains(tf))
    }
}

/// The `SignalService` implementation.
pub struct Service {
    hub: Arc<Hub>,
    snapshots: mpsc::Sender<SnapshotQuery>,
}

impl Service {
    /// Returns the service over `hub`, answering snapshots through `snapshots`.
    pub fn new(hub: Arc<Hub>, snapshots: mpsc::Sender<SnapshotQuery>) -> Self {
        Self { hub, snapshots }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SignalService for Service {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::from_request(request.get_ref());
        tracing::info!(request = ?request.get_ref(), "subscriber joined");
        let stream = self.hub.subscribe(filter).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let symbol = request.into_inner().symbol.trim().to_uppercase();
        let (tx, rx) = oneshot::channel();
        self.snapshots
            .send((symbol.clone(), tx))
            .await
            .map_err(|_| Status::unavailable("the indicators engine is not running"))?;
        match rx.await {
            Ok(Some(s)) => Ok(Response::new(s)),
            Ok(None) => Err(Status::not_found(format!("no tick seen for {symbol}"))),
            Err(_) => Err(Status::unavailable("the indicators engine stopped")),
        }
    }
}

/// Serves `SignalService`, gRPC health and reflection on `listener` until `shutdown` fires
/// and every stream has ended.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SignalServiceServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(SignalServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
