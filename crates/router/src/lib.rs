//! The router stage: reads `ticks.raw`, lets valid ticks through to `ticks.clean` keyed by
//! symbol, and sends every reject to `ticks.dlq` with its reason and the original payload.

pub mod core;

use crate::core::{RejectReason, Routed, Router};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tick_core::bus::{Consumer, Delivery, InFlight, Producer, Receipt, topics};
use tick_core::{Tick, clock, pb};

/// How many consumed messages may await publication confirmation at once.
const MAX_IN_FLIGHT: usize = 10_000;

/// Counters of the router stage.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Messages read from `ticks.raw`.
    pub received: AtomicU64,
    /// Ticks passed to `ticks.clean`.
    pub clean: AtomicU64,
    /// Records sent to `ticks.dlq`, per reason in [`RejectReason::ALL`] order.
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl RouterStats {
    /// Returns the total number of rejects.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Routes every message of `consumer` until its stream ends, acknowledging each one only after
/// its output is confirmed by the bus.
pub async fn run_router(
    mut consumer: Box<dyn Consumer>,
    producer: Arc<dyn Producer>,
    mut router: Router,
    stats: Arc<RouterStats>,
) -> anyhow::Result<()> {
    let mut in_flight = InFlight::default();
    loop {
        tokio::select! {
            biased;
            Some((id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                result?;
                consumer.ack(id)?;
            }
            next = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(delivery) = next? else { break };
                let receipt = route_one(&delivery, &mut router, producer.as_ref(), &stats).await?;
                in_flight.push(delivery.id, vec![receipt]);
            }
        }
    }
    while let Some((id, result)) = in_flight.next().await {
        result?;
        consumer.ack(id)?;
    }
    producer.flush().await?;
    consumer.commit().await?;
    Ok(())
}

async fn route_one(
    delivery: &Delivery,
    router: &mut Router,
    producer: &dyn Producer,
    stats: &RouterStats,
) -> anyhow::Result<Receipt> {
    stats.received.fetch_add(1, Ordering::Relaxed);
    let now = clock::now_ns();
    let routed = match Tick::decode(&delivery.payload) {
        Ok(tick) => router.on_tick(tick, now),
        Err(e) => {
            return dead_letter(
                delivery,
                RejectReason::MalformedPayload,
                e.to_string(),
                producer,
                stats,
            )
            .await;
        }
    };
    match routed {
        Routed::Clean(tick) => {
            stats.clean.fetch_add(1, Ordering::Relaxed);
            Ok(producer
                .send(topics::CLEAN, tick.symbol.as_bytes(), tick.encode())
                .await?)
        }
        Routed::Reject(_, reject) => {
            dead_letter(delivery, reject.reason, reject.detail, producer, stats).await
        }
    }
}

async fn dead_letter(
    delivery: &Delivery,
    reason: RejectReason,
    detail: String,
    producer: &dyn Producer,
    stats: &RouterStats,
) -> anyhow::Result<Receipt> {
    let idx = RejectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0);
    stats.rejected[idx].fetch_add(1, Ordering::Relaxed);
    tracing::debug!(reason = reason.code(), %detail, "tick rejected");
    let record = pb::DeadLetter {
        reason: reason.code().to_string(),
        detail,
        payload: delivery.payload.clone(),
        origin: delivery.topic.to_string(),
        ts_rejected_ns: clock::now_ns(),
        component: "router".into(),
    };
    Ok(producer
        .send(topics::DLQ, &delivery.key, record.encode_to_vec())
        .await?)
}
