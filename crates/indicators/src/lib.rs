//! The indicators stage: reads `ticks.clean`, feeds the [`engine::Engine`], streams every update,
//! closed bar and signal to subscribed bots over gRPC, and publishes signals to the `signals`
//! topic for audit and replay.

pub mod bars;
pub mod engine;
pub mod indicator;
pub mod rules;
pub mod service;

use engine::Engine;
use prost::Message;
use service::{Hub, SnapshotQuery};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Consumer, InFlight, Producer, topics};
use tick_core::latency::LatencyRecorder;
use tick_core::{Tick, clock, pb};
use tokio::sync::mpsc;

use pb::event::Kind;

/// How many consumed ticks may await confirmation of their signals at once.
const MAX_IN_FLIGHT: usize = 10_000;

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

/// Processes every tick of `consumer` until its stream ends; answers snapshot queries from the
/// gRPC service meanwhile; closes the hub (ending subscriber streams) when done.
pub async fn run_indicators(
    mut consumer: Box<dyn Consumer>,
    mut engine: Engine,
    hub: Arc<Hub>,
    mut snapshots: mpsc::Receiver<SnapshotQuery>,
    signals: Option<Arc<dyn Producer>>,
    stats: Arc<IndicatorStats>,
) -> anyhow::Result<()> {
    let mut in_flight = InFlight::default();
    let mut clock_timer = tokio::time::interval(Duration::from_millis(50));
    clock_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                Some((id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    result?;
                    consumer.ack(id)?;
                }
                Some((symbol, reply)) = snapshots.recv() => {
                    let _ = reply.send(engine.snapshot(&symbol));
                }
                _ = clock_timer.tick() => {
                    for bar in engine.on_clock(clock::now_ns()) {
                        stats.bars.fetch_add(1, Ordering::Relaxed);
                        hub.publish(Kind::Bar(bar));
                    }
                }
                next = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let Some(delivery) = next? else { break };
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let tick = match Tick::decode(&delivery.payload) {
                        Ok(t) => t,
                        Err(e) => {
                            // The router only publishes valid ticks: this is a foreign writer.
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, topic = %delivery.topic, "skipping a payload that is not a tick");
                            in_flight.push(delivery.id, vec![]);
                            continue;
                        }
                    };
                    let ts_recv = tick.ts_recv_ns;
                    let updates = engine.on_tick(tick);
                    for bar in updates.bars {
                        stats.bars.fetch_add(1, Ordering::Relaxed);
                        hub.publish(Kind::Bar(bar));
                    }
                    if let Some(u) = updates.update {
                        stats.updates.fetch_add(1, Ordering::Relaxed);
                        hub.publish(Kind::Update(u));
                    }
                    let mut receipts = Vec::new();
                    for s in updates.signals {
                        stats.signals.fetch_add(1, Ordering::Relaxed);
                        if let Some(p) = &signals {
                            receipts.push(p.send(topics::SIGNALS, s.symbol.as_bytes(), s.encode_to_vec()).await?);
                        }
                        hub.publish(Kind::Signal(s));
                    }
                    stats.latency.record(clock::now_ns() - ts_recv);
                    in_flight.push(delivery.id, receipts);
                }
            }
        }
        while let Some((id, result)) = in_flight.next().await {
            result?;
            consumer.ack(id)?;
        }
        if let Some(p) = &signals {
            p.flush().await?;
        }
        consumer.commit().await?;
        Ok(())
    }
    .await;
    hub.close();
    result
}
