//! The indicators stage: reads `ticks.clean`, feeds the [`engine::Engine`], streams every update,
//! closed bar and signal to subscribed bots over gRPC, and publishes signals to the `signals`
//! topic for audit and replay.

pub mod bars;
pub mod config;
pub mod engine;
pub mod history;
pub mod indicator;
pub mod rules;
pub mod service;
pub mod since;
pub mod snapshots;
#[cfg(feature = "kafka")]
pub mod warm;

#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
pub use distributed::{IndicatorsArgs, run};

use engine::Engine;
use prost::Message;
use service::{Hub, SnapshotQuery};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{BusError, Consumer, InFlight, Producer, Receipt, topics};
use tick_core::latency::LatencyRecorder;
use tick_core::{Tick, clock, pb};
use tokio::sync::mpsc;

use pb::event::Kind;

/// How many consumed ticks may await confirmation of their signals at once.
const MAX_IN_FLIGHT: usize = 10_000;

/// Ticks handled per pass of the stage's loop at most, when that many are already there.
const BATCH: usize = 256;

/// Counters and latency of the indicators stage.
#[derive(Default)]
pub struct IndicatorStats {
    /// Ticks read from `ticks.clean`.
    pub received: AtomicU64,
    /// Payloads on `ticks.clean` that were not ticks (skipped, logged).
    pub malformed: AtomicU64,
    /// Indicator updates published.
    pub updates: AtomicU64,
    /// Bars published.
    pub bars: AtomicU64,
    /// Signals published.
    pub signals: AtomicU64,
    /// Tick receipt (`ts_recv_ns`) to update published, in ns.
    pub latency: LatencyRecorder,
}

/// Where the indicators stage sends what it computes besides the gRPC hub.
#[derive(Default)]
pub struct Outputs {
    /// Producer for the `bars` topic (closed bars, for storage) and the signals topic.
    pub producer: Option<Arc<dyn Producer>>,
    /// Topic the signals are published to; `None`: they go to the gRPC hub only.
    pub signals_topic: Option<String>,
    /// Queue of the Redis snapshot writer.
    pub snapshots: Option<mpsc::Sender<Vec<pb::Snapshot>>>,
}

/// Hands the snapshots that changed to the Redis writer; skips a round (counted) rather than
/// wait when the writer is behind.
fn push_snapshots(engine: &mut Engine, snapshots: &Option<mpsc::Sender<Vec<pb::Snapshot>>>) {
    let changed = engine.take_changed_snapshots();
    if let Some(tx) = snapshots
        && !changed.is_empty()
        && tx.try_send(changed).is_err()
    {
        metrics::counter!("tickflow_indicators_snapshots_skipped_total").increment(1);
    }
}

/// Where the indicators stage sends what the engine computed: the gRPC hub always, closed bars
/// to the `bars` topic and signals to the signals topic when it has a producer for them.
struct Publisher {
    /// The names of each group's values, which the engine's updates come without.
    names: Vec<Arc<engine::ValueNames>>,
    producer: Option<Arc<dyn Producer>>,
    signals: Option<(Arc<dyn Producer>, String)>,
    hub: Arc<Hub>,
    stats: Arc<IndicatorStats>,
}

impl Publisher {
    /// Publishes bars, then indicator updates, then signals, in that order (the same for a tick
    /// and for the clock); returns the receipts of what went to the bus.
    async fn publish(
        &self,
        bars: Vec<pb::Bar>,
        updates: impl IntoIterator<Item = pb::IndicatorUpdate>,
        signals: Vec<pb::Signal>,
    ) -> Result<Vec<Receipt>, BusError> {
        let mut receipts = Vec::new();
        for bar in bars {
            self.stats.bars.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = &self.producer {
                receipts.push(
                    p.send(topics::BARS, bar.symbol.as_bytes(), bar.encode_to_vec())
                        .await?,
                );
            }
            self.hub.publish(Kind::Bar(bar));
        }
        for u in updates {
            self.stats.updates.fetch_add(1, Ordering::Relaxed);
            let timeframe = engine::update_timeframe(&u);
            match self.names.iter().find(|n| n.timeframe == timeframe) {
                Some(names) => self.hub.publish_update(u, names.clone()),
                None => self.hub.publish(Kind::Update(u)),
            }
        }
        for s in signals {
            self.stats.signals.fetch_add(1, Ordering::Relaxed);
            if let Some((p, topic)) = &self.signals {
                receipts.push(
                    p.send(topic, s.symbol.as_bytes(), s.encode_to_vec())
                        .await?,
                );
            }
            self.hub.publish(Kind::Signal(s));
        }
        Ok(receipts)
    }
}

/// Hops of the latency from a tick's receipt to its update's publication, on `/metrics` as
/// `tickflow_indicators_hop_seconds{hop}`: `ingest_to_router` (`ts_recv_ns` to `ts_route_ns`),
/// `router_to_indicators` (to the moment this stage took the tick) and `engine` (to the update
/// published to the subscriber hub). A tick without a router stamp skips the first two.
fn record_hops(ts_recv: i64, ts_route: i64, taken: i64, published: i64) {
    let s = |ns: i64| ns.max(0) as f64 / 1e9;
    if ts_route > 0 {
        metrics::histogram!("tickflow_indicators_hop_seconds", "hop" => "ingest_to_router")
            .record(s(ts_route - ts_recv));
        metrics::histogram!("tickflow_indicators_hop_seconds", "hop" => "router_to_indicators")
            .record(s(taken - ts_route));
    }
    metrics::histogram!("tickflow_indicators_hop_seconds", "hop" => "engine")
        .record(s(published - taken));
}

/// Feeds one tick of `ticks.clean` to the engine and publishes what it caused; the input is
/// acknowledged once the bus has confirmed those outputs (`in_flight`).
async fn on_delivery(
    delivery: tick_core::bus::Delivery,
    engine: &mut Engine,
    publisher: &Publisher,
    in_flight: &mut InFlight,
) -> anyhow::Result<()> {
    let stats = &publisher.stats;
    stats.received.fetch_add(1, Ordering::Relaxed);
    let tick = match Tick::decode(&delivery.payload) {
        Ok(t) => t,
        Err(e) => {
            // The router only publishes valid ticks: this is a foreign writer.
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, topic = %delivery.topic, "skipping a payload that is not a tick");
            in_flight.push(delivery.id, vec![]);
            return Ok(());
        }
    };
    let taken = clock::now_ns();
    let (ts_recv, ts_route) = (tick.ts_recv_ns, tick.route.ts_route_ns);
    let mut updates = engine.on_tick(tick);
    for u in updates
        .update
        .iter_mut()
        .chain(updates.bar_updates.iter_mut())
    {
        u.ts_engine_ns = taken;
    }
    let receipts = publisher
        .publish(
            updates.bars,
            updates.bar_updates.into_iter().chain(updates.update),
            updates.signals,
        )
        .await?;
    let published = clock::now_ns();
    let latency = published.saturating_sub(ts_recv);
    stats.latency.record(latency);
    metrics::counter!("tickflow_indicators_ticks_total").increment(1);
    metrics::histogram!("tickflow_indicators_tick_to_update_seconds").record(latency as f64 / 1e9);
    record_hops(ts_recv, ts_route, taken, published);
    in_flight.push(delivery.id, receipts);
    Ok(())
}

/// Processes every tick of `consumer` until its stream ends; answers snapshot queries from the
/// gRPC service meanwhile; closes the hub (ending subscriber streams) when done.
pub async fn run_indicators(
    mut consumer: Box<dyn Consumer>,
    mut engine: Engine,
    hub: Arc<Hub>,
    mut queries: mpsc::Receiver<SnapshotQuery>,
    outputs: Outputs,
    stats: Arc<IndicatorStats>,
) -> anyhow::Result<()> {
    let Outputs {
        producer,
        signals_topic,
        snapshots,
    } = outputs;
    let publisher = Publisher {
        names: engine.value_name_tables(),
        // Where signals are published: a producer and a topic both given.
        signals: producer.clone().zip(signals_topic),
        producer,
        hub: hub.clone(),
        stats: stats.clone(),
    };
    let mut in_flight = InFlight::default();
    let mut clock_timer = tokio::time::interval(Duration::from_millis(50));
    clock_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut snapshot_timer = tokio::time::interval(Duration::from_millis(500));
    snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                Some((id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    result?;
                    consumer.ack(id)?;
                    // And the inputs after it that are finished too, in this same pass.
                    while let Some((id, result)) = in_flight.try_next() {
                        result?;
                        consumer.ack(id)?;
                    }
                }
                Some((symbol, reply)) = queries.recv() => {
                    let _ = reply.send(engine.snapshot(&symbol));
                }
                _ = snapshot_timer.tick(), if snapshots.is_some() => push_snapshots(&mut engine, &snapshots),
                _ = clock_timer.tick() => {
                    // Bars the clock closed, with their bar-fed indicators and rules.
                    let closed = engine.on_clock(clock::now_ns());
                    let receipts = publisher.publish(closed.bars, closed.bar_updates, closed.signals).await?;
                    // They answer to no input message: their delivery is watched on its own (a
                    // crash in between loses them from storage; warm start publishes them again).
                    if !receipts.is_empty() {
                        tokio::spawn(async move {
                            for r in receipts {
                                if let Err(e) = r.await {
                                    tracing::warn!(error = %tick_core::error::chain(&e), "a bar or signal the clock closed was not published");
                                }
                            }
                        });
                    }
                }
                next = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let Some(delivery) = next? else { break };
                    // The pass's events reach the subscribers together, at its end.
                    let deferred = hub.defer();
                    on_delivery(delivery, &mut engine, &publisher, &mut in_flight).await?;
                    // Then what else is already there, up to a batch, in this same pass.
                    let mut full = true;
                    for _ in 1..BATCH {
                        if in_flight.len() >= MAX_IN_FLIGHT {
                            break;
                        }
                        let Some(delivery) = consumer.try_recv()? else {
                            full = false;
                            break;
                        };
                        on_delivery(delivery, &mut engine, &publisher, &mut in_flight).await?;
                    }
                    drop(deferred);
                    if full {
                        // More may wait: let the rest of the thread run between passes.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        while let Some((id, result)) = in_flight.next().await {
            result?;
            consumer.ack(id)?;
        }
        if let Some(p) = &publisher.producer {
            p.flush().await?;
        }
        consumer.commit().await?;
        Ok(())
    }
    .await;
    hub.close();
    drop(snapshots);
    result
}
