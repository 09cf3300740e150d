//! The router stage: reads `ticks.raw`, lets valid, new ticks of the active source through to
//! `ticks.clean` keyed by symbol (on Kafka, to the partition number the raw tick came from), and
//! sends every reject to `ticks.dlq` with its reason and the original payload. An input is
//! acknowledged only after what it caused is confirmed by the bus, in input order, so a crash
//! never skips a tick.

pub mod arbitration;
pub mod core;
pub mod dedup;
pub mod spike;
pub mod symbols;
#[cfg(feature = "kafka")]
pub use tick_kafka::tail;

#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
pub use distributed::{RouterArgs, run, run_with_stats};

use crate::arbitration::Arbitration;
use crate::core::{Decision, HoldId, RejectReason, Router, RouterConfig};
use crate::spike::SpikeConfig;
use crate::symbols::SymbolMap;
use futures::FutureExt as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::bus::{
    BusError, Consumer, DeliveryId, InFlight, Outgoing, Producer, Receipt, topics,
};
use tick_core::shutdown::CancellationToken;
use tick_core::{Tick, clock};
use tokio::sync::{mpsc, oneshot};

/// Inputs whose outputs await confirmation, at most. In embedded mode a confirmation is a SQLite
/// commit (tens of ms), so at 100,000 ticks/s several thousand are in flight by design.
const MAX_IN_FLIGHT: usize = 65_536;

/// Inputs routed in one pass, at most: what is waiting, taken without waiting for more, so a
/// tick that arrives alone is routed and published at once.
const BATCH: usize = 256;

/// How several sources of a symbol are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArbitrationMode {
    /// Pass every source, each tick tagged with its source.
    Merge,
    /// Pass the most preferred live source of --source-priority.
    PrimaryFailover,
}

/// Router rules on the command line (shared by `router` and `tickflow run`).
#[derive(Debug, Clone, clap::Args)]
pub struct RulesArgs {
    /// How far in the future a live tick's event time may be (clock skew allowance).
    #[arg(long, env = "TICKFLOW_MAX_FUTURE", value_parser = humantime::parse_duration, default_value = "5s")]
    pub max_future: Duration,
    /// How far in the past a live tick's event time may be (replays are exempt).
    #[arg(long, env = "TICKFLOW_MAX_PAST", value_parser = humantime::parse_duration, default_value = "24h")]
    pub max_past: Duration,
    /// Symbol aliases, comma-separated ALIAS=CANONICAL (EUR_USD, EUR/USD and EURUSD.m resolve without one).
    #[arg(long, env = "TICKFLOW_SYMBOL_MAP", value_delimiter = ',')]
    pub symbol_map: Vec<String>,
    /// Extra or overriding instruments, comma-separated SYMBOL:SCALE[:MAX_SPREAD_POINTS].
    #[arg(long, env = "TICKFLOW_INSTRUMENTS", value_delimiter = ',')]
    pub instrument: Vec<String>,
    /// How several sources of one symbol are combined.
    #[arg(
        long,
        env = "TICKFLOW_ARBITRATION",
        value_enum,
        default_value = "merge"
    )]
    pub arbitration: ArbitrationMode,
    /// Sources from most to least preferred, for primary-failover (e.g. mt5:icmarkets,oanda).
    #[arg(long, env = "TICKFLOW_SOURCE_PRIORITY", value_delimiter = ',')]
    pub source_priority: Vec<String>,
    /// Silence after which primary-failover moves to the next source.
    #[arg(long, env = "TICKFLOW_FAILOVER_AFTER", value_parser = humantime::parse_duration, default_value = "2s")]
    pub failover_after: Duration,
    /// Spike threshold as a multiple of the mean absolute move (0 turns the filter off).
    #[arg(long, env = "TICKFLOW_SPIKE_MULTIPLE", default_value_t = 20.0)]
    pub spike_multiple: f64,
    /// Moves observed per symbol before the spike filter judges.
    #[arg(long, env = "TICKFLOW_SPIKE_WARMUP", default_value_t = 50)]
    pub spike_warmup: u32,
    /// A held tick not confirmed within this time is rejected as a spike.
    #[arg(long, env = "TICKFLOW_SPIKE_MAX_HOLD", value_parser = humantime::parse_duration, default_value = "5s")]
    pub spike_max_hold: Duration,
    /// Floor of the spike filter's volatility estimate, in price points of the instrument (a
    /// calm spell then never makes ordinary moves look like spikes).
    #[arg(long, env = "TICKFLOW_SPIKE_FLOOR_POINTS", default_value_t = 5.0)]
    pub spike_floor_points: f64,
    /// Held ticks in a row that agree with each other (a new price level, not spikes) after
    /// which the spike filter re-anchors at the new level and passes them (0: never).
    #[arg(long, env = "TICKFLOW_SPIKE_REANCHOR_AFTER", default_value_t = 3)]
    pub spike_reanchor_after: u32,
    /// How long (in event time) idempotency keys are remembered for de-duplication, at most;
    /// also how far back `ticks.clean` is read when a partition is assigned.
    #[arg(long, env = "TICKFLOW_DEDUP_WINDOW", value_parser = humantime::parse_duration, default_value = "15m")]
    pub dedup_window: Duration,
    /// How many idempotency keys are remembered per (source, symbol), at most: the resend
    /// horizon in ticks, and the bound of de-duplication memory (at most 104 bytes a key).
    #[arg(long, env = "TICKFLOW_DEDUP_KEYS", default_value_t = crate::dedup::DEFAULT_MAX_KEYS)]
    pub dedup_keys: usize,
    /// A pause longer than this in a symbol's ticks marks the next one AFTER_SILENCE.
    #[arg(long, env = "TICKFLOW_SILENCE", value_parser = humantime::parse_duration, default_value = "60s")]
    pub silence: Duration,
}

impl RulesArgs {
    /// Returns the router rules these options describe.
    pub fn router_config(&self) -> anyhow::Result<RouterConfig> {
        let mut symbols = SymbolMap::with_defaults();
        for a in &self.symbol_map {
            symbols.add_alias_spec(a)?;
        }
        for i in &self.instrument {
            symbols.add_instrument_spec(i)?;
        }
        let arbitration = match self.arbitration {
            ArbitrationMode::Merge => Arbitration::Merge,
            ArbitrationMode::PrimaryFailover => {
                anyhow::ensure!(
                    !self.source_priority.is_empty(),
                    "--arbitration primary-failover needs --source-priority"
                );
                Arbitration::PrimaryFailover {
                    priority: self.source_priority.clone(),
                    silence_ns: self.failover_after.as_nanos() as i64,
                }
            }
        };
        let spike = (self.spike_multiple > 0.0).then(|| SpikeConfig {
            multiple: self.spike_multiple,
            warmup: self.spike_warmup,
            max_hold_ns: self.spike_max_hold.as_nanos() as i64,
            floor_points: self.spike_floor_points,
            reanchor_after: self.spike_reanchor_after,
            ..SpikeConfig::default()
        });
        Ok(RouterConfig {
            max_future_ns: self.max_future.as_nanos() as i64,
            max_past_ns: self.max_past.as_nanos() as i64,
            symbols,
            arbitration,
            spike,
            dedup_window_ns: self.dedup_window.as_nanos() as i64,
            dedup_keys: self.dedup_keys,
            silence_ns: self.silence.as_nanos() as i64,
        })
    }
}

/// Counters of the router stage.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Messages read from `ticks.raw`.
    pub received: AtomicU64,
    /// Ticks passed to `ticks.clean`.
    pub clean: AtomicU64,
    /// Records sent to `ticks.dlq`, per reason in [`RejectReason::ALL`] order.
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Resent or replayed ticks already let through.
    pub duplicates: AtomicU64,
    /// Ticks of standby sources (primary-failover).
    pub standby: AtomicU64,
    /// Ticks held by the spike filter.
    pub held: AtomicU64,
    /// Held ticks since settled: released to `ticks.clean` or rejected (and counted there too).
    pub released: AtomicU64,
    /// Total time the settled held ticks waited, in nanoseconds (wall clock, hold to decision).
    pub held_ns_total: AtomicU64,
    /// Longest time a settled held tick waited, in nanoseconds.
    pub held_ns_max: AtomicU64,
    /// Source switches.
    pub switches: AtomicU64,
    /// Partitions of `ticks.raw` this instance owns and routes (distributed mode; partitions
    /// still being rebuilt are not counted).
    pub partitions: AtomicU64,
}

impl RouterStats {
    /// Returns the inputs accounted for by an outcome: clean + rejected + duplicates + standby +
    /// still held. Every input read has exactly one, so this equals `received` whenever no
    /// input is between its read and its decision.
    pub fn accounted(&self) -> u64 {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        n(&self.clean)
            + self.rejected_total()
            + n(&self.duplicates)
            + n(&self.standby)
            + n(&self.held)
            - n(&self.released)
    }

    /// Returns the total number of rejects.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

struct Held {
    /// When the spike filter held it (set at the hold).
    since: std::time::Instant,
    /// Set at the hold: the input waits on it (no channel is made for an input never held).
    done: Option<oneshot::Sender<Result<(), BusError>>>,
    key: Vec<u8>,
    payload: Vec<u8>,
    origin: Arc<str>,
}

/// Routes every message of `consumer` with one core until its stream ends, acknowledging each
/// only after its outputs are confirmed (embedded mode, on the in-memory bus; on Kafka the
/// router keeps a core per owned partition instead, see `distributed.rs`). `tail`, if any,
/// carries ticks already let through elsewhere, for the core to remember. A dead letter the bus
/// refuses is sent again with backoff until `shutdown` fires.
pub async fn run_router(
    mut consumer: Box<dyn Consumer>,
    producer: Arc<dyn Producer>,
    mut router: Router,
    stats: Arc<RouterStats>,
    mut tail: Option<mpsc::Receiver<Tick>>,
    reject_holds_at_end: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Ctx {
        producer: producer.as_ref(),
        stats: &stats,
        shutdown: &shutdown,
    };
    let mut in_flight = Unconfirmed::default();
    let mut holds: HashMap<HoldId, Held> = HashMap::new();
    let mut timer = tokio::time::interval(Duration::from_millis(100));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::new();
    let mut pass = Pass::default();
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
            Some(t) = async { tail.as_mut()?.recv().await }, if tail.is_some() => router.remember(&t),
            _ = timer.tick() => {
                router.on_timer(clock::now_ns(), &mut out);
                settle(&mut out, None, &mut holds, &mut pass, &ctx).await?;
                pass.publish(&mut in_flight, &ctx).await?;
                log_switches(&mut router, &stats);
            }
            next = consumer.recv(), if in_flight.inputs < MAX_IN_FLIGHT => {
                let Some(d) = next? else { break };
                let mut next = Some(d);
                // This input, then what else is already there, up to a batch.
                while let Some(d) = next.take() {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let input = Held { since: std::time::Instant::now(), done: None, key: d.key, payload: d.payload, origin: d.topic };
                    let own = match Tick::decode(&input.payload) {
                        Ok(tick) => {
                            router.on_tick(tick, clock::now_ns(), &mut out);
                            log_switches(&mut router, &stats);
                            settle(&mut out, Some(input), &mut holds, &mut pass, &ctx).await?
                        }
                        Err(e) => Own {
                            receipts: vec![dead_letter(&input, RejectReason::MalformedPayload, e.to_string(), &ctx).await?],
                            ..Own::default()
                        },
                    };
                    pass.inputs.push((d.id, own));
                    if pass.inputs.len() >= BATCH || in_flight.inputs + pass.inputs.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    next = consumer.try_recv()?;
                }
                let full = pass.inputs.len() >= BATCH;
                pass.publish(&mut in_flight, &ctx).await?;
                if full {
                    // More may wait: let the stages after this one on the thread take this
                    // pass's ticks first.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    if reject_holds_at_end {
        // The input is gone for good (embedded mode): a held tick can no longer be confirmed,
        // so it becomes a dead letter rather than vanish.
        router.on_timer(i64::MAX, &mut out);
        settle(&mut out, None, &mut holds, &mut pass, &ctx).await?;
        pass.publish(&mut in_flight, &ctx).await?;
    } else {
        // Kafka keeps the input: leave held ticks unacknowledged, so the next instance reads
        // them again and decides with the tick that follows.
        holds.clear();
    }
    while let Some((id, result)) = in_flight.next().await {
        if result.is_err() {
            break;
        }
        consumer.ack(id)?;
    }
    producer.flush().await?;
    consumer.commit().await?;
    Ok(())
}

fn log_switches(router: &mut Router, stats: &RouterStats) {
    for s in router.take_switches() {
        stats.switches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tickflow_router_source_switches_total", "why" => s.why).increment(1);
        tracing::warn!(symbol = %s.symbol, from = ?s.from, to = %s.to, why = s.why, "source switch");
    }
}

/// What publishing a decision needs.
struct Ctx<'a> {
    producer: &'a dyn Producer,
    stats: &'a RouterStats,
    shutdown: &'a CancellationToken,
}

/// What an input waits on before it is acknowledged.
#[derive(Default)]
struct Own {
    /// Receipts of its dead letter, or of its hold's decision.
    receipts: Vec<Receipt>,
    /// Its tick is among the pass's clean ticks.
    clean: bool,
    /// The spike filter holds it: it may wait for a later tick of its symbol.
    held: bool,
}

/// The clean ticks of one pass over the input, published as one batch, and who waits on them.
#[derive(Default)]
struct Pass {
    clean: Outgoing,
    /// Earlier holds the pass's clean ticks release: their inputs wait on its receipt.
    released: Vec<Held>,
    /// The pass's inputs, in order.
    inputs: Vec<(DeliveryId, Own)>,
}

/// Inputs whose outputs await confirmation, in groups acknowledged in input order, each by the
/// id of its last input (an acknowledgement covers everything before it in its partition).
#[derive(Default)]
struct Unconfirmed {
    groups: InFlight,
    /// Inputs per group, oldest first.
    sizes: std::collections::VecDeque<usize>,
    /// Inputs over all groups.
    inputs: usize,
}

impl Unconfirmed {
    /// Tracks a group of `inputs` inputs, the last `last`, done once `receipts` resolve.
    fn push(&mut self, last: DeliveryId, inputs: usize, receipts: Vec<Receipt>) {
        self.groups.push(last, receipts);
        self.sizes.push_back(inputs);
        self.inputs += inputs;
    }

    fn done(
        &mut self,
        next: Option<(DeliveryId, Result<(), BusError>)>,
    ) -> Option<(DeliveryId, Result<(), BusError>)> {
        if next.is_some() {
            self.inputs -= self.sizes.pop_front().expect("a size per group");
        }
        next
    }

    /// Returns the next group whose outputs all resolved, in input order (see [`InFlight::next`]).
    async fn next(&mut self) -> Option<(DeliveryId, Result<(), BusError>)> {
        let next = self.groups.next().await;
        self.done(next)
    }

    /// Returns the next group whose outputs all resolved, if one is now.
    fn try_next(&mut self) -> Option<(DeliveryId, Result<(), BusError>)> {
        let next = self.groups.try_next();
        self.done(next)
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Inputs acknowledged together, by the id of the last.
struct Group {
    last: DeliveryId,
    inputs: usize,
    receipts: Vec<Receipt>,
    /// One of them waits on the pass's clean ticks.
    clean: bool,
    /// It is a held input (alone in its group).
    held: bool,
}

impl Pass {
    /// Publishes the pass's clean ticks and hands its inputs to `in_flight`, in groups: a held
    /// input is a group of its own, so a hold delays only the acknowledgements after it (as
    /// acknowledgements go in input order), never those before it.
    async fn publish(&mut self, in_flight: &mut Unconfirmed, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let receipt = if self.clean.is_empty() {
            None
        } else {
            let r = ctx.producer.send_batch(topics::CLEAN, &self.clean).await?;
            self.clean.clear();
            Some(r.shared())
        };
        let receipt = || -> Receipt {
            let r = receipt.clone().expect("a clean tick was published");
            Box::pin(r.map(|r| r.map_err(|refused| refused.error)))
        };
        for h in self.released.drain(..) {
            resolve_later(h, receipt());
        }
        let mut close = |g: Group| {
            let mut receipts = g.receipts;
            receipts.extend(g.clean.then(receipt));
            in_flight.push(g.last, g.inputs, receipts);
        };
        let mut group: Option<Group> = None;
        for (id, own) in self.inputs.drain(..) {
            // A held input starts a group and ends it; an acknowledgement covers its own
            // partition only.
            if let Some(g) =
                group.take_if(|g| g.held || own.held || g.last.partition != id.partition)
            {
                close(g);
            }
            let g = group.get_or_insert_with(|| Group {
                last: id,
                inputs: 0,
                receipts: Vec::new(),
                clean: false,
                held: own.held,
            });
            g.last = id;
            g.inputs += 1;
            g.receipts.extend(own.receipts);
            g.clean |= own.clean;
        }
        if let Some(g) = group {
            close(g);
        }
        Ok(())
    }
}

/// Handles the decisions in `out`: clean ticks join `pass`, rejects are sent as dead letters.
/// Returns what the current input (if any) waits for. Decisions that settle earlier holds
/// resolve those holds' receipts.
async fn settle(
    out: &mut Vec<Decision>,
    input: Option<Held>,
    holds: &mut HashMap<HoldId, Held>,
    pass: &mut Pass,
    ctx: &Ctx<'_>,
) -> anyhow::Result<Own> {
    let stats = ctx.stats;
    let mut input = input;
    let mut own = Own::default();
    for decision in out.drain(..) {
        match decision {
            Decision::Clean { tick, held } => {
                stats.clean.fetch_add(1, Ordering::Relaxed);
                if held.is_some() {
                    stats.released.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!("tickflow_router_ticks_total", "outcome" => "clean").increment(1);
                pass.clean
                    .push(tick.symbol.as_bytes(), |b| tick.encode_into(b));
                match held.and_then(|id| holds.remove(&id)) {
                    Some(h) => {
                        record_hold(h.since, stats);
                        pass.released.push(h);
                    }
                    None => own.clean = true,
                }
            }
            Decision::Reject { reject, held } => {
                if held.is_some() {
                    stats.released.fetch_add(1, Ordering::Relaxed);
                }
                let source = match held {
                    Some(id) => holds.remove(&id),
                    None => None,
                };
                match source {
                    Some(h) => {
                        record_hold(h.since, stats);
                        let r = dead_letter(&h, reject.reason, reject.detail, ctx).await?;
                        resolve_later(h, r);
                    }
                    None => {
                        let Some(i) = &input else { continue };
                        own.receipts
                            .push(dead_letter(i, reject.reason, reject.detail, ctx).await?);
                    }
                }
            }
            Decision::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tickflow_router_ticks_total", "outcome" => "duplicate")
                    .increment(1);
            }
            Decision::Standby => {
                stats.standby.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tickflow_router_ticks_total", "outcome" => "standby")
                    .increment(1);
            }
            Decision::Hold(id) => {
                stats.held.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tickflow_router_ticks_total", "outcome" => "held").increment(1);
                if let Some(mut h) = input.take() {
                    let (tx, rx) = oneshot::channel();
                    h.done = Some(tx);
                    h.since = std::time::Instant::now();
                    holds.insert(id, h);
                    own.held = true;
                    own.receipts.push(Box::pin(async move {
                        rx.await.unwrap_or(Err(BusError::Closed))
                    }));
                }
            }
        }
    }
    Ok(own)
}

/// Records how long a held tick waited for its decision.
fn record_hold(since: std::time::Instant, stats: &RouterStats) {
    let waited = since.elapsed();
    let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
    stats.held_ns_total.fetch_add(ns, Ordering::Relaxed);
    stats.held_ns_max.fetch_max(ns, Ordering::Relaxed);
    metrics::histogram!("tickflow_router_spike_hold_seconds").record(waited.as_secs_f64());
}

fn resolve_later(h: Held, receipt: Receipt) {
    tokio::spawn(async move {
        let r = receipt.await;
        if let Some(done) = h.done {
            let _ = done.send(r);
        }
    });
}

/// Counts a reject in the stats and metrics.
fn count_reject(reason: RejectReason, detail: &str, stats: &RouterStats) {
    stats.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tickflow_router_ticks_total", "outcome" => "rejected").increment(1);
    metrics::counter!("tickflow_router_rejects_total", "reason" => reason.code()).increment(1);
    tracing::debug!(reason = reason.code(), %detail, "tick rejected");
}

async fn dead_letter(
    input: &Held,
    reason: RejectReason,
    detail: String,
    ctx: &Ctx<'_>,
) -> anyhow::Result<Receipt> {
    count_reject(reason, &detail, ctx.stats);
    let record = tick_core::store::DeadLetterRecord::new(
        "router",
        reason.code(),
        detail,
        input.payload.clone(),
        &input.origin,
    );
    Ok(tick_core::bus::send_dead_letter(
        ctx.producer,
        &input.key,
        record.encode(),
        "router",
        ctx.shutdown,
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tick_core::bus::MemoryBus;
    use tick_core::pb;

    fn tick(key: &str, bid: i64, ask: i64) -> Tick {
        let now = clock::now_ns();
        Tick {
            symbol: "EUR/USD".into(),
            source: "test".into(),
            ts_event_ns: now,
            ts_recv_ns: now,
            scale: 5,
            bid,
            ask,
            last: None,
            bid_size: 1.0,
            ask_size: 1.0,
            volume: 0.0,
            flags: 0,
            key: key.into(),
            route: Default::default(),
            replay: false,
        }
    }

    /// A router whose spike filter judges after 10 moves and holds a tick at most `max_hold_ns`.
    fn spike_router(max_hold_ns: i64) -> Router {
        Router::new(RouterConfig {
            spike: Some(SpikeConfig {
                warmup: 10,
                max_hold_ns,
                ..SpikeConfig::default()
            }),
            ..RouterConfig::default()
        })
    }

    /// Routes `raw` to `bus` until the input ends (embedded mode: holds left at the end are
    /// rejected).
    fn route(
        raw: tick_core::bus::MemoryConsumer,
        bus: &MemoryBus,
        router: Router,
        stats: &Arc<RouterStats>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
        run_router(
            Box::new(raw),
            Arc::new(bus.producer()),
            router,
            stats.clone(),
            None,
            true,
            CancellationToken::new(),
        )
    }

    /// The adapter end to end on the in-memory bus: every input ends up clean, dead-lettered
    /// with its original payload, or counted as a duplicate; every input is acknowledged.
    #[tokio::test]
    async fn routes_rejects_and_acknowledges_every_input() {
        let bus = MemoryBus::new();
        let raw = bus.subscribe(topics::RAW, 16);
        let mut clean = bus.subscribe(topics::CLEAN, 16);
        let mut dlq = bus.subscribe(topics::DLQ, 16);
        let p = bus.producer();
        let garbage = vec![0xff, 0x01, 0x02];
        for payload in [
            tick("a", 110_000, 110_002).encode(),
            garbage.clone(),
            tick("b", 110_003, 110_001).encode(),
            tick("a", 110_000, 110_002).encode(),
        ] {
            p.send(topics::RAW, b"EURUSD", payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        bus.close(topics::RAW);
        let stats = Arc::new(RouterStats::default());
        run_router(
            Box::new(raw),
            Arc::new(bus.producer()),
            Router::default(),
            stats.clone(),
            None,
            true,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        bus.close(topics::CLEAN);
        bus.close(topics::DLQ);

        let c = clean.recv().await.unwrap().unwrap();
        let t = Tick::decode(&c.payload).unwrap();
        assert_eq!((t.symbol.as_str(), t.route.symbol_seq), ("EURUSD", 0));
        assert!(
            clean.recv().await.unwrap().is_none(),
            "the resend of `a` is not passed again"
        );
        let mut reasons = vec![];
        while let Some(d) = dlq.recv().await.unwrap() {
            let r = pb::DeadLetter::decode(d.payload.as_slice()).unwrap();
            if r.reason == "malformed_payload" {
                assert_eq!(r.payload, garbage, "the original bytes are kept");
            }
            assert_eq!(
                (r.component.as_str(), r.origin.as_str()),
                ("router", topics::RAW)
            );
            reasons.push(r.reason);
        }
        assert_eq!(reasons, vec!["malformed_payload", "crossed_quote"]);
        assert_eq!(stats.received.load(Ordering::Relaxed), 4);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rejected_total(), 2);
        assert_eq!(stats.accounted(), 4, "every input counted once");
    }

    /// Held ticks are counted once whatever becomes of them: released, rejected as a spike, or
    /// rejected when the input ends.
    #[tokio::test]
    async fn counters_add_up_with_spike_holds() {
        let bus = MemoryBus::new();
        let raw = bus.subscribe(topics::RAW, 4096);
        let _clean = bus.subscribe(topics::CLEAN, 4096);
        let _dlq = bus.subscribe(topics::DLQ, 4096);
        let p = bus.producer();
        let mut n = 0;
        let mut send = |key: String, bid: i64| {
            n += 1;
            let payload = tick(&key, bid, bid + 3).encode();
            let p = &p;
            async move {
                p.send(topics::RAW, b"EURUSD", payload)
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            }
        };
        for i in 0..100 {
            send(format!("w{i}"), 110_000 + i % 2).await;
        }
        send("spike".into(), 112_000).await; // held, then rejected by the next
        send("back".into(), 110_001).await;
        send("jump".into(), 111_000).await; // held, then confirmed
        send("confirm".into(), 111_001).await;
        send("last".into(), 113_000).await; // held when the input ends
        send("w5".into(), 110_001).await; // a duplicate
        let sent = n;
        bus.close(topics::RAW);
        let stats = Arc::new(RouterStats::default());
        let max_hold = SpikeConfig::default().max_hold_ns;
        route(raw, &bus, spike_router(max_hold), &stats)
            .await
            .unwrap();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(n(&stats.received), sent);
        assert_eq!((n(&stats.held), n(&stats.released)), (3, 3), "{stats:?}");
        assert!(n(&stats.held_ns_max) > 0 && n(&stats.held_ns_total) >= n(&stats.held_ns_max));
        assert_eq!(
            stats.rejected_total(),
            2,
            "the spike and the one held at the end"
        );
        assert_eq!(n(&stats.duplicates), 1);
        assert_eq!(stats.accounted(), sent, "{stats:?}");
    }

    /// Inputs waiting together are routed in passes: their clean ticks reach `ticks.clean` in
    /// input order, a held tick and the one that confirms it land in the same or a later pass,
    /// and every input is acknowledged (the receipts of `ticks.raw` resolve only then).
    #[tokio::test]
    async fn a_backlog_is_routed_in_passes_in_order_and_every_input_is_acknowledged() {
        let bus = MemoryBus::new();
        let raw = bus.subscribe_confirming(topics::RAW, 4096);
        let mut clean = bus.subscribe(topics::CLEAN, 4096);
        let _dlq = bus.subscribe(topics::DLQ, 4096);
        let p = bus.producer();
        let mut keys = vec![];
        let mut receipts = vec![];
        for i in 0..1000 {
            // A jump at 600, confirmed by the tick after it: held, then both pass.
            let bid = if i < 600 {
                110_000 + i % 2
            } else {
                111_000 + i % 2
            };
            let key = format!("k{i}");
            receipts.push(
                p.send(topics::RAW, b"EURUSD", tick(&key, bid, bid + 3).encode())
                    .await
                    .unwrap(),
            );
            keys.push(key);
        }
        bus.close(topics::RAW);
        let stats = Arc::new(RouterStats::default());
        let max_hold = SpikeConfig::default().max_hold_ns;
        route(raw, &bus, spike_router(max_hold), &stats)
            .await
            .unwrap();
        for r in receipts {
            r.await.expect("every input is acknowledged");
        }
        bus.close(topics::CLEAN);
        let mut passed = vec![];
        while let Some(d) = clean.recv().await.unwrap() {
            passed.push(Tick::decode(&d.payload).unwrap().key);
        }
        assert_eq!(passed, keys, "every tick passes, in input order");
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((n(&stats.held), n(&stats.released)), (1, 1), "{stats:?}");
        assert_eq!(stats.accounted(), 1000, "{stats:?}");
    }

    /// A held tick delays the acknowledgement of the inputs after it (acknowledgements go in
    /// input order), never of those before it in the same pass.
    #[tokio::test]
    async fn a_hold_does_not_delay_the_inputs_before_it_in_its_pass() {
        let bus = MemoryBus::new();
        let raw = bus.subscribe_confirming(topics::RAW, 4096);
        let _clean = bus.subscribe(topics::CLEAN, 4096);
        let _dlq = bus.subscribe(topics::DLQ, 4096);
        let p = bus.producer();
        /// Queues a tick on `ticks.raw`; its receipt resolves once the router acknowledges it.
        async fn queue(p: &tick_core::bus::MemoryProducer, key: &str, bid: i64) -> Receipt {
            p.send(topics::RAW, b"EURUSD", tick(key, bid, bid + 3).encode())
                .await
                .unwrap()
        }
        let mut warmup = vec![];
        for i in 0..20 {
            warmup.push(queue(&p, &format!("w{i}"), 110_000 + i % 2).await);
        }
        // Queued together, so the router takes them in one pass: a clean tick, then a jump
        // that waits for the symbol's next tick (which never comes).
        let before = queue(&p, "before", 110_001).await;
        let jump = queue(&p, "jump", 112_000).await;
        let stats = Arc::new(RouterStats::default());
        let router = tokio::spawn(route(
            raw,
            &bus,
            spike_router(3_600 * 1_000_000_000),
            &stats,
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            for r in warmup {
                r.await.unwrap();
            }
            before.await.unwrap();
        })
        .await
        .expect("acknowledged while the jump is still held");
        assert_eq!(stats.held.load(Ordering::Relaxed), 1);
        let mut jump = jump;
        assert!(
            futures::poll!(&mut jump).is_pending(),
            "the held tick waits"
        );
        // The input ends: the held tick becomes a dead letter, and is acknowledged.
        bus.close(topics::RAW);
        router.await.unwrap().unwrap();
        jump.await.unwrap();
    }
}
