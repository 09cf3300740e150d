//! Distributed mode of the router (the `kafka` feature): its binary's options and the `run`
//! that wires the stage to Kafka.
//!
//! **State belongs to partitions.** Ingest keys `ticks.raw` by canonical symbol, so one
//! partition carries every tick of a symbol, resends included. The router produces each clean
//! tick to the *same partition number* of `ticks.clean` that it read the raw tick from (an
//! explicit partition, not the key's hash), so partition p of `ticks.clean` holds exactly the
//! output of partition p of `ticks.raw`. Each owned partition has a [`Router`] core of its own
//! (de-duplication, numbering, arbitration, spike filter). When the group assigns a partition,
//! the consumer pauses it, the core is rebuilt from the same partition of `ticks.clean` (the
//! last `--dedup-window` of it, up to its end), and only then is the partition resumed. When a
//! partition is revoked, the consumer first waits for every output of it to be confirmed and
//! commits it (so its next owner's rebuild sees everything this one let through), then its core
//! is dropped. A tick resent across the move is therefore known to whoever owns it next.
//!
//! **Batch-level confirmation.** Outputs carry a small token (partition, generation, sequence)
//! as the delivery's opaque value; the producer's delivery callback counts them in per-partition
//! ledgers, and the loop acknowledges the done prefix of each partition after each pass and on
//! its 100 ms timer: no future, channel or payload copy per message, and no wake-up per
//! delivery report (a report wakes the loop only when [`MAX_IN_FLIGHT`] inputs wait on it).
//!
//! **Batch-level consumption.** The loop waits for one message, then routes up to [`BATCH`] of
//! those already fetched in the same pass: when traffic is light a tick is routed the moment it
//! arrives, and under load a wake-up serves a whole fetch.

use super::*;
use anyhow::Context;
use tick_core::health::Health;
use tick_core::shutdown::CancellationToken;
use tick_kafka::KafkaArgs;
use tick_kafka::owned::{Incoming, OwnedConsumer, OwnedProducer, Ownership, Token};

/// Configuration of the `router` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Routing rules.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// Consumer group; router pods of one group share the partitions of `ticks.raw`.
    #[arg(long, env = "TICKFLOW_GROUP", default_value = "router")]
    pub group: String,
    /// Topic the raw ticks are read from.
    #[arg(long, env = "TICKFLOW_ROUTER_INPUT_TOPIC", default_value = topics::RAW)]
    pub input_topic: String,
    /// Topic the clean ticks go to (partition for partition with the input topic, so it needs
    /// at least as many partitions).
    #[arg(long, env = "TICKFLOW_ROUTER_OUTPUT_TOPIC", default_value = topics::CLEAN)]
    pub output_topic: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Messages routed per pass of the loop at most, when that many are already fetched.
const BATCH: usize = 256;

/// How long a revocation waits for the outputs of the partitions it gives up.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// Runs the router stage on Kafka (group `--group`, default `router`) until `shutdown` fires.
pub async fn run(
    cfg: RouterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    run_with_stats(cfg, shutdown, health, Arc::new(RouterStats::default())).await
}

/// Like [`run`], counting into `stats` (tests and benchmarks watch them).
pub async fn run_with_stats(
    cfg: RouterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
    stats: Arc<RouterStats>,
) -> anyhow::Result<()> {
    let config = cfg.rules.router_config()?;
    cfg.kafka.provision().await?;
    let (raw, clean) = (
        cfg.kafka.partition_count(&cfg.input_topic).await?,
        cfg.kafka.partition_count(&cfg.output_topic).await?,
    );
    anyhow::ensure!(
        clean >= raw,
        "{} has {clean} partitions, fewer than the {raw} of {}: the router writes each clean \
         tick to the partition number it read the raw tick from",
        cfg.output_topic,
        cfg.input_topic
    );
    let (consumer, producer, ownership) = cfg
        .kafka
        .owned(&cfg.group, &cfg.input_topic, REVOKE_WAIT, shutdown.clone())
        .context("failed to create the consumer and producer")?;
    Owned {
        consumer,
        producer,
        config,
        kafka: cfg.kafka,
        input: cfg.input_topic,
        output: cfg.output_topic,
        window: cfg.rules.dedup_window,
        stats,
        shutdown,
        rebuilds: Arc::new(tokio::sync::Semaphore::new(rebuilds_at_once())),
        health,
    }
    .run(ownership)
    .await
}

/// A held tick of an owned partition: its input stays unacknowledged (its token open) until
/// the spike filter decides.
struct OwnedHeld {
    since: std::time::Instant,
    token: Token,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// The core of one owned partition.
struct Part {
    router: Router,
    holds: HashMap<HoldId, OwnedHeld>,
    /// Unchecked ticks (older than their stream's horizon) already added to the metric.
    unchecked_reported: u64,
}

enum Slot {
    /// Paused while its core is rebuilt; `generation` tells a stale rebuild from the current one.
    /// `early` keeps what a fetch that raced the pause returned, to be routed after the rebuild
    /// (librdkafka has moved past it, so it must not be dropped).
    Rebuilding {
        generation: u64,
        early: Vec<(i64, Vec<u8>, Vec<u8>)>,
    },
    Ready(Box<Part>),
}

struct Owned {
    consumer: OwnedConsumer,
    producer: OwnedProducer,
    config: RouterConfig,
    kafka: KafkaArgs,
    input: String,
    output: String,
    window: Duration,
    stats: Arc<RouterStats>,
    shutdown: CancellationToken,
    /// Limits the partitions rebuilt at once (see [`rebuilds_at_once`]).
    rebuilds: Arc<tokio::sync::Semaphore>,
    /// Ready once the member has joined its group and rebuilt every partition of its first
    /// assignment (see [`Owned::check_ready`]).
    health: Arc<Health>,
}

/// Partitions rebuilt at once: one per core (the runtime's threads), and one more to keep a
/// fetch in flight.
fn rebuilds_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

/// The input being decided: its token, and where its bytes are for a dead letter or a hold.
struct Input<'a> {
    token: Token,
    key: &'a [u8],
    payload: &'a [u8],
    held: bool,
}

type Rebuilt = (i32, u64, anyhow::Result<Router>);

impl Owned {
    async fn run(self, mut ownership: mpsc::UnboundedReceiver<Ownership>) -> anyhow::Result<()> {
        let ledgers = self.producer.ledgers().clone();
        let mut parts: HashMap<i32, Slot> = HashMap::new();
        let mut generation = 0u64;
        // Whether the group has given this member its first assignment (maybe empty).
        let mut joined = false;
        let (rebuilt_tx, mut rebuilt) = mpsc::unbounded_channel::<Rebuilt>();
        let mut timer = tokio::time::interval(Duration::from_millis(100));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut out = Vec::new();
        let mut messages = self.consumer.messages();
        loop {
            tokio::select! {
                biased;
                // Deliveries are acknowledged after each pass and on the timer, so a delivery
                // report wakes this loop only when the in-flight bound waits for one.
                _ = ledgers.changed(), if ledgers.in_flight() >= MAX_IN_FLIGHT => {
                    self.acknowledge()?;
                }
                Some(change) = ownership.recv() => match change {
                    Ownership::Assigned(ps) => {
                        joined = true;
                        for p in ps {
                            generation += 1;
                            parts.insert(p, Slot::Rebuilding { generation, early: Vec::new() });
                            self.spawn_rebuild(p, generation, rebuilt_tx.clone());
                        }
                        self.check_ready(joined, &parts);
                    }
                    Ownership::Revoked(ps) => {
                        // The ledgers were closed and the finished offsets committed in the
                        // callback; what is left (held ticks) is read again by the next owner.
                        for p in ps {
                            parts.remove(&p);
                        }
                        self.count_owned(&parts);
                        self.check_ready(joined, &parts);
                    }
                },
                Some((p, g, result)) = rebuilt.recv() => {
                    if !matches!(parts.get(&p), Some(Slot::Rebuilding { generation, .. }) if *generation == g)
                        || self.shutdown.is_cancelled()
                    {
                        // Revoked (or reassigned) meanwhile, or stopping (a rebuild cut short by
                        // the shutdown is no failure).
                        continue;
                    }
                    let router = result.with_context(|| format!("failed to rebuild partition {p} from {}", self.output))?;
                    let (keys, streams, _) = router.dedup_stats();
                    tracing::info!(partition = p, keys, streams, "partition state rebuilt; consuming it");
                    ledgers.open(p);
                    let mut part = Part { router, holds: HashMap::new(), unchecked_reported: 0 };
                    if let Some(Slot::Rebuilding { early, .. }) = parts.remove(&p) {
                        for (offset, key, payload) in early {
                            self.process(&mut part, p, offset, &key, &payload, &mut out).await?;
                        }
                    }
                    parts.insert(p, Slot::Ready(Box::new(part)));
                    self.count_owned(&parts);
                    self.consumer.resume(p)?;
                    self.check_ready(joined, &parts);
                }
                _ = timer.tick() => {
                    self.acknowledge()?;
                    let now = clock::now_ns();
                    let (mut keys, mut unchecked) = (0, 0u64);
                    for (p, slot) in parts.iter_mut() {
                        let Slot::Ready(part) = slot else { continue };
                        part.router.on_timer(now, &mut out);
                        log_switches(&mut part.router, &self.stats);
                        self.settle(&mut out, None, part, *p).await?;
                        let (k, _, u) = part.router.dedup_stats();
                        keys += k;
                        unchecked += u - part.unchecked_reported;
                        part.unchecked_reported = u;
                    }
                    metrics::gauge!("tickflow_router_dedup_keys").set(keys as f64);
                    metrics::counter!("tickflow_router_dedup_unchecked_total").increment(unchecked);
                }
                m = messages.recv(), if ledgers.in_flight() < MAX_IN_FLIGHT => {
                    let Some(m) = m else { break };
                    self.route(&mut parts, m, &mut out).await?;
                    // Then what the same fetches brought, up to a batch, in this same pass: one
                    // wake-up and one pass of this loop per batch, not per message.
                    for _ in 1..BATCH {
                        if ledgers.in_flight() >= MAX_IN_FLIGHT {
                            break;
                        }
                        let Some(m) = messages.try_recv() else { break };
                        self.route(&mut parts, m, &mut out).await?;
                    }
                    self.acknowledge()?;
                }
            }
        }
        // Kafka keeps the input: held ticks stay unacknowledged, so the next owner reads them
        // again and decides with the tick that follows.
        parts.clear();
        self.count_owned(&parts);
        self.producer.flush(Duration::from_secs(60)).await?;
        self.acknowledge()?;
        self.consumer.commit().await?;
        Ok(())
    }

    /// Acknowledges the input of every output confirmed so far (the done prefix of each
    /// partition's ledger); fails the stage if a delivery failed.
    fn acknowledge(&self) -> anyhow::Result<()> {
        let ledgers = self.producer.ledgers();
        if let Some(why) = ledgers.failed() {
            anyhow::bail!("a clean tick or dead letter was not delivered: {why}");
        }
        for (p, offset) in ledgers.take_done() {
            self.consumer.ack(p, offset);
        }
        Ok(())
    }

    /// Marks the router ready once it has joined its group and no partition it owns is being
    /// rebuilt: before that, the ticks of its partitions wait in the input topic, so a rolling
    /// update that took readiness for routing would stop the old member too early. Readiness
    /// then stays: a later rebalance's rebuild is part of normal work, and flapping readiness
    /// on every rebalance would only stall rollouts.
    fn check_ready(&self, joined: bool, parts: &HashMap<i32, Slot>) {
        // Not once stopping: a draining router does not turn ready.
        if joined
            && !self.health.is_ready()
            && !self.shutdown.is_cancelled()
            && !parts.values().any(|s| matches!(s, Slot::Rebuilding { .. }))
        {
            tracing::info!(
                partitions = parts.len(),
                "ready: every assigned partition is rebuilt"
            );
            self.health.set_ready(true);
        }
    }

    /// Routes message `m` if its partition is ready, keeps it for after the rebuild if it is
    /// being rebuilt, and ignores it if the partition is not (any more) owned.
    async fn route(
        &self,
        parts: &mut HashMap<i32, Slot>,
        m: Incoming<'_>,
        out: &mut Vec<Decision>,
    ) -> anyhow::Result<()> {
        let p = m.partition();
        match parts.get_mut(&p) {
            Some(Slot::Ready(part)) => {
                self.process(part, p, m.offset(), m.key(), m.payload(), out)
                    .await?;
            }
            Some(Slot::Rebuilding { early, .. }) => {
                // Paused partitions return nothing; this fetch raced the pause.
                tracing::debug!(
                    partition = p,
                    offset = m.offset(),
                    "message before the rebuild; kept for after it"
                );
                early.push((m.offset(), m.key().to_vec(), m.payload().to_vec()));
            }
            // Not ours (any more): its owner reads it.
            None => {}
        }
        Ok(())
    }

    fn count_owned(&self, parts: &HashMap<i32, Slot>) {
        let n = parts
            .values()
            .filter(|s| matches!(s, Slot::Ready(_)))
            .count();
        self.stats.partitions.store(n as u64, Ordering::Relaxed);
        metrics::gauge!("tickflow_router_partitions_owned").set(n as f64);
    }

    /// Routes message `offset` of partition `p`.
    async fn process(
        &self,
        part: &mut Part,
        p: i32,
        offset: i64,
        key: &[u8],
        payload: &[u8],
        out: &mut Vec<Decision>,
    ) -> anyhow::Result<()> {
        let ledgers = self.producer.ledgers();
        let Some(token) = ledgers.begin(p, offset) else {
            return Ok(());
        };
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let mut input = Input {
            token,
            key,
            payload,
            held: false,
        };
        match Tick::decode(payload) {
            Ok(tick) => {
                part.router.on_tick(tick, clock::now_ns(), out);
                log_switches(&mut part.router, &self.stats);
                self.settle(out, Some(&mut input), part, p).await?;
            }
            Err(e) => {
                self.dead_letter(
                    token,
                    key,
                    payload,
                    RejectReason::MalformedPayload,
                    e.to_string(),
                )
                .await?;
            }
        }
        if !input.held {
            ledgers.done(token);
        }
        Ok(())
    }

    /// Rebuilds the core of partition `p` from the same partition of `ticks.clean`.
    fn spawn_rebuild(&self, p: i32, generation: u64, done: mpsc::UnboundedSender<Rebuilt>) {
        let (kafka, output, config, window, shutdown) = (
            self.kafka.clone(),
            self.output.clone(),
            self.config.clone(),
            self.window,
            self.shutdown.clone(),
        );
        let rebuilds = self.rebuilds.clone();
        tokio::spawn(async move {
            // Rebuilding is bound by decoding on the runtime's threads: more at once would not
            // finish sooner, each would hold its consumer's buffers longer, and no partition
            // would resume before all of them.
            let Ok(_permit) = rebuilds.acquire_owned().await else {
                return;
            };
            let started = std::time::Instant::now();
            let mut router = Router::new(config);
            let since_ms = clock::now_ns() / 1_000_000 - window.as_millis() as i64;
            let result = tail::read_partition(&kafka, &output, p, since_ms, shutdown, |t| {
                router.remember(&t)
            })
            .await;
            let result = result.map(|n| {
                tracing::info!(partition = p, ticks = n, took = ?started.elapsed(), "read back ticks.clean");
                router
            });
            let _ = done.send((p, generation, result));
        });
    }

    /// Publishes the decisions in `out` for partition `p`; `input` is the message being decided
    /// (none on the timer). Decisions that settle earlier holds complete those holds' inputs.
    async fn settle(
        &self,
        out: &mut Vec<Decision>,
        mut input: Option<&mut Input<'_>>,
        part: &mut Part,
        p: i32,
    ) -> anyhow::Result<()> {
        let (stats, ledgers) = (&*self.stats, self.producer.ledgers());
        for decision in out.drain(..) {
            match decision {
                Decision::Clean { tick, held } => {
                    stats.clean.fetch_add(1, Ordering::Relaxed);
                    if held.is_some() {
                        stats.released.fetch_add(1, Ordering::Relaxed);
                    }
                    metrics::counter!("tickflow_router_ticks_total", "outcome" => "clean")
                        .increment(1);
                    let h = held.and_then(|id| part.holds.remove(&id));
                    let token = match (&h, &input) {
                        (Some(h), _) => h.token,
                        (None, Some(i)) => i.token,
                        (None, None) => continue,
                    };
                    self.producer
                        .send(
                            &self.output,
                            Some(p),
                            tick.symbol.as_bytes(),
                            &tick.encode(),
                            token,
                        )
                        .await?;
                    if let Some(h) = h {
                        record_hold(h.since, stats);
                        ledgers.done(h.token);
                    }
                }
                Decision::Reject { reject, held } => {
                    if held.is_some() {
                        stats.released.fetch_add(1, Ordering::Relaxed);
                    }
                    match held.and_then(|id| part.holds.remove(&id)) {
                        Some(h) => {
                            record_hold(h.since, stats);
                            self.dead_letter(
                                h.token,
                                &h.key,
                                &h.payload,
                                reject.reason,
                                reject.detail,
                            )
                            .await?;
                            ledgers.done(h.token);
                        }
                        None => {
                            let Some(i) = &input else { continue };
                            self.dead_letter(
                                i.token,
                                i.key,
                                i.payload,
                                reject.reason,
                                reject.detail,
                            )
                            .await?;
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
                    metrics::counter!("tickflow_router_ticks_total", "outcome" => "held")
                        .increment(1);
                    if let Some(i) = input.as_deref_mut() {
                        // The input's token stays open until the hold is settled.
                        i.held = true;
                        part.holds.insert(
                            id,
                            OwnedHeld {
                                since: std::time::Instant::now(),
                                token: i.token,
                                key: i.key.to_vec(),
                                payload: i.payload.to_vec(),
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a dead letter for the input `token` names, sending it again with backoff while
    /// the producer refuses it (until shutdown).
    async fn dead_letter(
        &self,
        token: Token,
        key: &[u8],
        payload: &[u8],
        reason: RejectReason,
        detail: String,
    ) -> anyhow::Result<()> {
        count_reject(reason, &detail, &self.stats);
        let record = tick_core::store::DeadLetterRecord::new(
            "router",
            reason.code(),
            detail,
            payload.to_vec(),
            &self.input,
        )
        .encode();
        let mut backoff =
            tick_core::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self
                .producer
                .send(topics::DLQ, None, key, &record, token)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    metrics::counter!("tickflow_dead_letter_send_retries_total", "component" => "router")
                        .increment(1);
                    tracing::warn!(error = %tick_core::error::chain(&e), "the bus refused a dead letter; sending it again");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(BusError::Closed.into()),
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}
