//! The router stage: reads `ticks.raw`, lets valid ticks through to `ticks.clean` keyed by
//! symbol, and sends every reject to `ticks.dlq` with its reason and the original payload.

pub mod core;

use crate::core::{RejectReason, Routed, Router, RouterConfig};
use anyhow::Context;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{Consumer, Delivery, InFlight, Producer, Receipt, topics};
use tick_core::kafka::KafkaArgs;
use tick_core::ops::Health;
use tick_core::shutdown::CancellationToken;
use tick_core::{Tick, clock, pb};

/// Configuration of the `router` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// How far in the future a live tick's event time may be (clock skew allowance).
    #[arg(long, env = "TICKFLOW_MAX_FUTURE", value_parser = humantime::parse_duration, default_value = "5s")]
    pub max_future: Duration,
    /// How far in the past a live tick's event time may be (replays are exempt).
    #[arg(long, env = "TICKFLOW_MAX_PAST", value_parser = humantime::parse_duration, default_value = "24h")]
    pub max_past: Duration,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl RouterArgs {
    /// Returns the router rules these options describe.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            max_future_ns: self.max_future.as_nanos() as i64,
            max_past_ns: self.max_past.as_nanos() as i64,
        }
    }
}

/// Runs the router stage on Kafka (group `router`) until `shutdown` fires.
pub async fn run(
    cfg: RouterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    if cfg.kafka.create_topics {
        cfg.kafka
            .ensure_topics()
            .await
            .context("failed to provision topics")?;
    }
    let producer = cfg
        .kafka
        .producer(true)
        .context("failed to create the producer")?;
    let consumer = cfg
        .kafka
        .consumer("router", topics::RAW, shutdown)
        .context("failed to create the consumer")?;
    health.set_ready(true);
    let stats = Arc::new(RouterStats::default());
    run_router(
        Box::new(consumer),
        Arc::new(producer),
        Router::new(cfg.router_config()),
        stats,
    )
    .await
}

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
            metrics::counter!("tickflow_router_ticks_total", "outcome" => "clean").increment(1);
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
    metrics::counter!("tickflow_router_ticks_total", "outcome" => "rejected").increment(1);
    metrics::counter!("tickflow_router_rejects_total", "reason" => reason.code()).increment(1);
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
