//! The Kafka implementation of the bus (distributed mode), on librdkafka: idempotent producers
//! (`acks=all`), consumer groups whose offsets are stored only when the stage acknowledges a
//! message (after its output is confirmed or its batch committed), and topic provisioning.

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::time::Duration;
mod confirm;
pub mod coverage;
pub mod linger;
pub mod owned;
pub mod tail;

use tick_core::bus::{
    BatchReceipt, BusError, Consumer, Delivery, DeliveryId, Outgoing, Producer, Receipt, Refused,
    topics,
};
use tick_core::error::Cause;
use tokio_util::sync::CancellationToken;

/// Kafka connection settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long = "kafka-brokers",
        env = "TICKFLOW_KAFKA_BROKERS",
        default_value = "127.0.0.1:19092"
    )]
    pub brokers: String,
    /// Extra librdkafka properties as key=value (repeatable, or comma-separated in the env
    /// variable), e.g. security.protocol=SASL_SSL; they override tickflow's defaults.
    #[arg(
        long = "kafka-property",
        env = "TICKFLOW_KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub properties: Vec<String>,
    /// The linger of the stages' realtime producers.
    #[command(flatten)]
    pub linger: linger::LingerArgs,
    /// Whether to create missing topics at start.
    #[arg(long, env = "TICKFLOW_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// Partitions of the topics tickflow creates.
    #[arg(long, env = "TICKFLOW_TOPIC_PARTITIONS", default_value_t = 12)]
    pub topic_partitions: i32,
    /// Replication factor of the topics tickflow creates.
    #[arg(long, env = "TICKFLOW_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,
}

/// tickflow's producer settings: idempotent, `acks=all`; `realtime` sends each message at once
/// (`linger.ms=0`), otherwise messages are batched for a few milliseconds.
pub(crate) fn producer_defaults(realtime: bool) -> [(&'static str, &'static str); 7] {
    [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", if realtime { "0" } else { "5" }),
        ("compression.type", "lz4"),
        ("socket.nagle.disable", "true"),
        ("queue.buffering.max.messages", "1000000"),
        // Keep retrying a broker outage for a long time rather than failing deliveries.
        ("message.timeout.ms", "300000"),
    ]
}

/// tickflow's consumer group settings: offsets stored only by the stage's acknowledgement and
/// committed every second, cooperative-sticky assignment.
pub(crate) fn consumer_defaults(group: &str) -> [(&str, &str); 11] {
    [
        ("group.id", group),
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "1000"),
        // Offsets are stored by `ack`, only after the work is done.
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("fetch.wait.max.ms", "10"),
        ("socket.nagle.disable", "true"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "2000"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        // Rebalance callbacks run on the consumer's poll: keep the default 5 minutes explicit.
        ("max.poll.interval.ms", "300000"),
    ]
}

/// The retention of each topic tickflow provisions, in days.
const TOPIC_RETENTION_DAYS: [(&str, u64); 5] = [
    (topics::RAW, 7),
    (topics::CLEAN, 7),
    (topics::DLQ, 30),
    (topics::SIGNALS, 30),
    (topics::BARS, 30),
];

impl KafkaArgs {
    /// Returns a librdkafka configuration with the brokers, `defaults`, then the user's
    /// properties (which win).
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, BusError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for p in &self.properties {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                BusError::Broker(Cause::msg(format!("kafka property {p:?} is not key=value")))
            })?;
            c.set(k.trim(), v.trim());
        }
        Ok(c)
    }

    /// Returns an idempotent producer. `realtime` lingers as `--kafka-linger` says (by
    /// default 0 ms under 8,000 messages/s, 5 ms above); otherwise messages are batched for
    /// 5 ms.
    pub fn producer(&self, realtime: bool) -> Result<KafkaProducer, BusError> {
        Ok(KafkaProducer {
            inner: Arc::new(self.lingering(realtime, confirm::BatchContext::default())?),
        })
    }

    /// Whether `--kafka-property` sets the linger itself.
    fn linger_property(&self) -> bool {
        self.properties.iter().any(|p| {
            p.split_once('=')
                .is_some_and(|(k, _)| matches!(k.trim(), "linger.ms" | "queue.buffering.max.ms"))
        })
    }

    /// Creates a producer's client(s), each with a clone of `context` (see [`linger`]).
    pub(crate) fn lingering<C: ProducerContext + Clone + 'static>(
        &self,
        realtime: bool,
        context: C,
    ) -> Result<linger::Lingering<C>, BusError> {
        let client = |linger_ms: Option<f64>| -> Result<ThreadedProducer<C>, BusError> {
            let mut c = self.config(&producer_defaults(realtime))?;
            if let Some(ms) = linger_ms {
                c.set("linger.ms", ms.to_string());
            }
            ThreadedProducer::from_config_and_context(&c, context.clone())
                .map_err(|e| BusError::Broker(Cause::new("failed to create producer", e)))
        };
        if !realtime || self.linger_property() {
            return Ok(linger::Lingering::fixed(client(None)?));
        }
        let l = &self.linger;
        Ok(match l.linger {
            linger::Linger::Fixed(ms) => linger::Lingering::fixed(client(Some(ms))?),
            linger::Linger::Auto => linger::Lingering::auto(
                client(Some(0.0))?,
                client(Some(l.auto_ms))?,
                l.auto_ms,
                l.auto_rate,
            ),
        })
    }

    /// Returns a consumer in `group` subscribed to `topic` (one topic per consumer, so an
    /// acknowledgement names its partition unambiguously); its stream ends when `shutdown`
    /// fires. New groups start from the earliest retained message.
    pub fn consumer(
        &self,
        group: &str,
        topic: &str,
        shutdown: CancellationToken,
    ) -> Result<KafkaConsumer, BusError> {
        let consumer: StreamConsumer = self
            .config(&consumer_defaults(group))?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create consumer", e)))?;
        consumer.subscribe(&[topic]).map_err(|e| {
            BusError::Broker(Cause::new(format!("failed to subscribe to {topic}"), e))
        })?;
        let inner = Arc::new(consumer);
        spawn_lag_reporter(
            Arc::downgrade(&inner),
            group.to_string(),
            topic.to_string(),
            shutdown.clone(),
        );
        Ok(KafkaConsumer {
            inner,
            shutdown,
            topic: Arc::from(topic),
        })
    }

    /// Creates the tickflow topics at a stage's start unless `--create-topics false`: the one
    /// place every stage provisions them.
    pub async fn provision(&self) -> anyhow::Result<()> {
        if self.create_topics {
            use anyhow::Context;
            self.ensure_topics()
                .await
                .context("failed to provision topics")?;
        }
        Ok(())
    }

    /// Creates the tickflow topics that do not exist yet (partitions, replication, retention,
    /// lz4 compression); existing topics are left as they are.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config(&[])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create admin client", e)))?;
        let retention: Vec<(String, String)> = TOPIC_RETENTION_DAYS
            .iter()
            .map(|(t, d)| (t.to_string(), (d * 86_400_000).to_string()))
            .collect();
        let new: Vec<NewTopic> = retention
            .iter()
            .map(|(t, ms)| {
                NewTopic::new(
                    t,
                    self.topic_partitions,
                    TopicReplication::Fixed(self.topic_replication),
                )
                .set("retention.ms", ms)
                .set("compression.type", "lz4")
            })
            .collect();
        self.create_topics(&admin, &new).await
    }

    /// Creates topic `name` with `partitions` partitions unless it exists (benchmarks, tests).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config(&[])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create admin client", e)))?;
        let new = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(self.topic_replication),
        );
        self.create_topics(&admin, &[new]).await
    }

    /// Deletes `names` (tests that made topics of their own); a topic already gone is no error.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config(&[])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create admin client", e)))?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .delete_topics(names, &opts)
            .await
            .map_err(|e| BusError::Broker(Cause::new("failed to delete topics", e)))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, e)) => {
                    return Err(BusError::Broker(Cause::new(
                        format!("failed to delete topic {t}"),
                        e,
                    )));
                }
            }
        }
        Ok(())
    }

    async fn create_topics(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        new: &[NewTopic<'_>],
    ) -> Result<(), BusError> {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(new, &opts)
            .await
            .map_err(|e| BusError::Broker(Cause::new("failed to create topics", e)))?;
        for r in results {
            match r {
                Ok(t) => {
                    tracing::info!(topic = %t, partitions = self.topic_partitions, "created topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => {
                    return Err(BusError::Broker(Cause::new(
                        format!("failed to create topic {t}"),
                        e,
                    )));
                }
            }
        }
        Ok(())
    }

    /// Returns whether the cluster answers a metadata request within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer(true)?;
        tokio::task::spawn_blocking(move || {
            producer
                .inner
                .any()
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| BusError::Broker(Cause::new("kafka did not answer", e)))
        })
        .await
        .map_err(|e| BusError::Broker(Cause::wrap(e)))?
    }
}

/// Publishes `tickflow_consumer_lag{group,topic}` every 10 s: messages between this consumer's
/// position and the end of its assigned partitions. It holds the consumer weakly, so dropping
/// the consumer still closes it and leaves the group at once.
fn spawn_lag_reporter(
    consumer: std::sync::Weak<StreamConsumer>,
    group: String,
    topic: String,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let Some(c) = consumer.upgrade() else { return };
            let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
                let positions = c.position().ok()?;
                let mut lag = 0;
                for e in positions.elements() {
                    let (low, high) = c
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                        .ok()?;
                    let at = match e.offset() {
                        rdkafka::Offset::Offset(o) => o,
                        _ => low,
                    };
                    lag += (high - at).max(0);
                }
                Some(lag)
            })
            .await;
            if let Ok(Some(lag)) = lag {
                metrics::gauge!("tickflow_consumer_lag", "group" => group.clone(), "topic" => topic.clone())
                    .set(lag as f64);
            }
        }
    });
}

/// A [`Producer`] on Kafka. Deliveries are confirmed per batch (see [`Producer::send_batch`]);
/// a single `send` is a batch of one.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: Arc<linger::Lingering<confirm::BatchContext>>,
}

impl KafkaProducer {
    /// Returns whether the producer is batching (the automatic linger's high-rate client).
    pub fn is_batching(&self) -> bool {
        self.inner.is_batching()
    }

    /// Queues one message of batch `id` on `client`; waits while librdkafka's queue is full.
    async fn queue(
        client: &ThreadedProducer<confirm::BatchContext>,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        opaque: usize,
    ) -> Result<(), KafkaError> {
        loop {
            let record = BaseRecord::with_opaque_to(topic, opaque)
                .key(key)
                .payload(payload);
            match client.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full: wait for deliveries to make room (back-pressure).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn confirmations(&self) -> &confirm::Confirmations {
        &self.inner.any().context().confirmations
    }

    /// Queues `n` messages of `topic` as one batch; returns what the batch resolves to. A
    /// message refused part-way fails with every one after it; a refused first message is an
    /// error, with nothing queued.
    async fn queue_batch<'a>(
        &self,
        topic: &str,
        n: usize,
        messages: impl Iterator<Item = (&'a [u8], &'a [u8])> + Send,
    ) -> Result<tokio::sync::oneshot::Receiver<confirm::Outcome>, BusError> {
        let lease = self.inner.lease(n).await;
        let (id, rx) = self.confirmations().open(n);
        for (i, (key, payload)) in messages.enumerate() {
            if let Err(e) =
                Self::queue(lease.client, topic, key, payload, confirm::pack(id, i)).await
            {
                let e = BusError::Broker(Cause::wrap(e));
                if i == 0 {
                    self.confirmations().abandon(id);
                    return Err(e);
                }
                self.confirmations().unqueued(id, i..n, e);
                break;
            }
        }
        self.confirmations().release(id);
        Ok(rx)
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, topic: &str, key: &[u8], payload: Vec<u8>) -> Result<Receipt, BusError> {
        let rx = self
            .queue_batch(topic, 1, std::iter::once((key, &payload[..])))
            .await?;
        Ok(Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(refused)) => Err(refused.error),
                Err(_) => Err(BusError::Closed),
            }
        }))
    }

    async fn send_batch(&self, topic: &str, batch: &Outgoing) -> Result<BatchReceipt, BusError> {
        let n = batch.len();
        let rx = self.queue_batch(topic, n, batch.iter()).await?;
        Ok(Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Refused {
                    positions: (0..n).collect(),
                    error: BusError::Closed,
                })
            })
        }))
    }

    async fn flush(&self) -> Result<(), BusError> {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || p.flush_blocking(Duration::from_secs(60)))
            .await
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?
            .map_err(|e| BusError::Broker(Cause::new("flush failed", e)))
    }
}

/// A [`Consumer`] on a Kafka consumer group.
pub struct KafkaConsumer {
    inner: Arc<StreamConsumer>,
    shutdown: CancellationToken,
    topic: Arc<str>,
}

impl KafkaConsumer {
    /// Returns the underlying librdkafka consumer (for pause/resume and lag).
    pub fn raw(&self) -> Arc<StreamConsumer> {
        self.inner.clone()
    }
}

/// Copies message `m` of `topic` into a [`Delivery`].
fn delivery(topic: &Arc<str>, m: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
    Delivery {
        topic: topic.clone(),
        id: DeliveryId {
            partition: m.partition(),
            offset: m.offset(),
        },
        key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(None),
                m = self.inner.recv() => m,
            };
            match msg {
                Ok(m) => return Ok(Some(delivery(&self.topic, &m))),
                // librdkafka reconnects by itself; errors here are reports, not the end.
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn try_recv(&mut self) -> Result<Option<Delivery>, BusError> {
        use futures::{FutureExt as _, StreamExt as _};
        if self.shutdown.is_cancelled() {
            return Ok(None);
        }
        // An error is left for the next `recv` to report.
        Ok(match self.inner.stream().next().now_or_never() {
            Some(Some(Ok(m))) => Some(delivery(&self.topic, &m)),
            _ => None,
        })
    }

    fn ack(&mut self, id: DeliveryId) -> Result<(), BusError> {
        // librdkafka's offset store commits `offset + 1`, the next message to read.
        if let Err(e) = self
            .inner
            .store_offset(&self.topic, id.partition, id.offset)
        {
            // After a rebalance the partition may belong to another member: it reads the
            // message again, and idempotent writes make that harmless.
            tracing::debug!(error = %e, topic = %self.topic, ?id, "offset not stored");
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BusError> {
        let parts = self
            .inner
            .assignment()
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?;
        self.inner
            .pause(&parts)
            .map_err(|e| BusError::Broker(Cause::new("pause failed", e)))
    }

    fn resume(&mut self) -> Result<(), BusError> {
        let parts = self
            .inner
            .assignment()
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?;
        self.inner
            .resume(&parts)
            .map_err(|e| BusError::Broker(Cause::new("resume failed", e)))
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        let c = self.inner.clone();
        let r = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync))
            .await
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?;
        match r {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(BusError::Broker(Cause::new("offset commit failed", e))),
        }
    }
}

/// Where a replayed range of a topic starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A time, in ms since the epoch (Kafka message timestamps).
    TimeMs(i64),
    /// An offset, the same in every partition.
    Offset(i64),
}

impl std::str::FromStr for Bound {
    type Err = String;

    /// Parses an offset (`12345`) or an RFC 3339 time.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(o) = s.parse::<i64>() {
            return Ok(Bound::Offset(o));
        }
        let t = humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?} is neither an offset nor an RFC 3339 time: {e}"))?;
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{s:?} is before 1970"))?
            .as_millis();
        Ok(Bound::TimeMs(ms as i64))
    }
}

/// Returns the partition ids of `topic` (blocking: call it from `spawn_blocking`).
pub fn partitions<C: rdkafka::consumer::Consumer>(
    c: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let md = c.fetch_metadata(Some(topic), timeout)?;
    Ok(md
        .topics()
        .iter()
        .flat_map(|m| m.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Where a range ends: the same bound in every partition, or an offset per partition.
enum RangeEnd {
    Bound(Bound),
    Offsets(std::collections::HashMap<i32, i64>),
}

/// Reads a fixed range of a topic, every partition from `from` up to (not including) `to`,
/// then ends. It joins no consumer group and commits nothing: a replay never moves the
/// position of the live consumers.
pub struct RangeConsumer {
    inner: StreamConsumer,
    topic: Arc<str>,
    ends: std::collections::HashMap<i32, i64>,
    shutdown: CancellationToken,
}

impl KafkaArgs {
    /// Returns a consumer of `topic` over `[from, to)`.
    pub async fn range_consumer(
        &self,
        topic: &str,
        from: Bound,
        to: Bound,
        shutdown: CancellationToken,
    ) -> Result<RangeConsumer, BusError> {
        self.range(topic, from, RangeEnd::Bound(to), shutdown).await
    }

    /// Returns a consumer of `topic` from `from` up to (not including) the offset `ends` gives
    /// each partition; a partition missing from `ends` is not read.
    pub async fn range_consumer_to_offsets(
        &self,
        topic: &str,
        from: Bound,
        ends: std::collections::HashMap<i32, i64>,
        shutdown: CancellationToken,
    ) -> Result<RangeConsumer, BusError> {
        self.range(topic, from, RangeEnd::Offsets(ends), shutdown)
            .await
    }

    /// A client of consumer group `group` that neither subscribes nor commits by itself, to read
    /// or set the group's offsets.
    fn group_client(&self, group: &str) -> Result<rdkafka::consumer::BaseConsumer, BusError> {
        self.config(&[("group.id", group), ("enable.auto.commit", "false")])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create consumer", e)))
    }

    /// Returns the offsets consumer group `group` has committed on `topic`, per partition
    /// (partitions without a committed offset are left out).
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<std::collections::HashMap<i32, i64>, BusError> {
        let consumer = self.group_client(group)?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let err = |e: KafkaError| BusError::Broker(Cause::wrap(e));
            let t = Duration::from_secs(30);
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in partitions(&consumer, &topic, t).map_err(err)? {
                tpl.add_partition(&topic, p);
            }
            let committed = consumer.committed_offsets(tpl, t).map_err(err)?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect())
        })
        .await
        .map_err(|e| BusError::Broker(Cause::wrap(e)))?
    }

    /// Commits, for consumer group `group`, the current end of every partition of `topic`: the
    /// group then reads only what is produced from now on, however much the topic already
    /// holds (tests and benchmarks that must not chew through an old backlog).
    pub async fn commit_end_offsets(&self, group: &str, topic: &str) -> Result<(), BusError> {
        let consumer = Arc::new(self.group_client(group)?);
        // A topic created a moment ago may have no partition leader yet: retry for a while.
        let mut attempt = 0;
        loop {
            let c = consumer.clone();
            let topic = topic.to_string();
            let r = tokio::task::spawn_blocking(move || {
                let err = |e: KafkaError| BusError::Broker(Cause::wrap(e));
                let t = Duration::from_secs(30);
                let mut tpl = rdkafka::TopicPartitionList::new();
                for p in partitions(&*c, &topic, t).map_err(err)? {
                    let (_, high) = c.fetch_watermarks(&topic, p, t).map_err(err)?;
                    tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(high))
                        .map_err(err)?;
                }
                c.commit(&tpl, CommitMode::Sync).map_err(err)
            })
            .await
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot commit end offsets yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn range(
        &self,
        topic: &str,
        from: Bound,
        to: RangeEnd,
        shutdown: CancellationToken,
    ) -> Result<RangeConsumer, BusError> {
        let group = format!(
            "replayer-{}-{}",
            std::process::id(),
            tick_core::clock::now_ns()
        );
        let consumer: StreamConsumer = self
            .config(&[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create consumer", e)))?;
        let topic_s = topic.to_string();
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            let err = |e: KafkaError| BusError::Broker(Cause::wrap(e));
            let t = Duration::from_secs(30);
            let parts = partitions(&consumer, &topic_s, t).map_err(err)?;
            let resolve =
                |b: Bound, what: &str| -> Result<std::collections::HashMap<i32, i64>, BusError> {
                    let mut out = std::collections::HashMap::new();
                    match b {
                        Bound::Offset(o) => {
                            for p in &parts {
                                out.insert(*p, o);
                            }
                        }
                        Bound::TimeMs(ms) => {
                            let mut tpl = rdkafka::TopicPartitionList::new();
                            for p in &parts {
                                tpl.add_partition_offset(&topic_s, *p, rdkafka::Offset::Offset(ms))
                                    .map_err(err)?;
                            }
                            for e in consumer.offsets_for_times(tpl, t).map_err(err)?.elements() {
                                let (_, high) = consumer
                                    .fetch_watermarks(&topic_s, e.partition(), t)
                                    .map_err(err)?;
                                // No message at or after the time: the range ends at the end.
                                let o = match e.offset() {
                                    rdkafka::Offset::Offset(o) => o,
                                    _ => high,
                                };
                                out.insert(e.partition(), o);
                            }
                        }
                    }
                    tracing::debug!(what, ?out, "resolved replay bound");
                    Ok(out)
                };
            let starts = resolve(from, "from")?;
            let mut ends = match to {
                RangeEnd::Bound(b) => resolve(b, "to")?,
                RangeEnd::Offsets(mut m) => {
                    // A partition without an end is not read: its range is empty.
                    for p in &parts {
                        m.entry(*p).or_insert(i64::MIN);
                    }
                    m
                }
            };
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &parts {
                let (low, high) = consumer.fetch_watermarks(&topic_s, *p, t).map_err(err)?;
                let start = starts[p].clamp(low, high);
                let end = ends[p].clamp(low, high);
                if start < end {
                    tpl.add_partition_offset(&topic_s, *p, rdkafka::Offset::Offset(start))
                        .map_err(err)?;
                    ends.insert(*p, end);
                } else {
                    ends.remove(p);
                }
            }
            consumer.assign(&tpl).map_err(err)?;
            Ok::<_, BusError>((consumer, ends))
        })
        .await
        .map_err(|e| BusError::Broker(Cause::wrap(e)))??;
        Ok(RangeConsumer {
            inner: consumer,
            topic: Arc::from(topic),
            ends,
            shutdown,
        })
    }
}

#[async_trait]
impl Consumer for RangeConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BusError> {
        while !self.ends.is_empty() {
            let m = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(None),
                m = self.inner.recv() => m,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    continue;
                }
            };
            let Some(end) = self.ends.get(&m.partition()).copied() else {
                continue;
            };
            if m.offset() + 1 >= end {
                self.ends.remove(&m.partition());
            }
            if m.offset() >= end {
                continue;
            }
            return Ok(Some(delivery(&self.topic, &m)));
        }
        Ok(None)
    }

    fn ack(&mut self, _id: DeliveryId) -> Result<(), BusError> {
        // A replay commits nothing: re-running it is harmless (storage is idempotent).
        Ok(())
    }
}
