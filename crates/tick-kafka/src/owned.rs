//! Partition ownership for a stage whose state belongs to the partitions it consumes (the
//! router): a consumer that tells the stage which partitions it gained and lost, holds a gained
//! partition paused until the stage has rebuilt its state, and before giving a partition up
//! waits until every output of that partition is confirmed and commits it; and a producer whose
//! confirmations are counted per input message in a [`Ledgers`], so the stage acknowledges
//! inputs by batch, not with a future and a channel per message.
//!
//! Why waiting at a revocation matters: the member that gains a partition rebuilds its state
//! from what the partition's outputs hold when it starts reading. With cooperative-sticky
//! assignment a partition moves only after its old owner has finished revoking it, so an old
//! owner that flushes before it lets go leaves nothing in flight that the new owner could miss.

use crate::KafkaArgs;
use crate::linger::Lingering;
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, MessageStream, Rebalance,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, ProducerContext};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tick_core::bus::BusError;
use tick_core::error::Cause;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

const _: () = assert!(usize::BITS == 64, "delivery tokens are packed into 64 bits");

/// A change of the partitions this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Partitions gained; they stay paused until [`OwnedConsumer::resume`]. Empty when a
    /// rebalance gave this member nothing (as when it joins a group that has no partition to
    /// spare).
    Assigned(Vec<i32>),
    /// Partitions lost; their outputs were confirmed and their offsets committed first (as far
    /// as the outputs were confirmed within the revocation wait).
    Revoked(Vec<i32>),
}

/// Names one consumed message in its partition's ledger; carried by each output the message
/// causes as the delivery's opaque value (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    partition: u16,
    generation: u16,
    seq: u32,
}

impl Token {
    fn pack(self) -> usize {
        (usize::from(self.partition) << 48)
            | (usize::from(self.generation) << 32)
            | self.seq as usize
    }

    fn unpack(v: usize) -> Self {
        Self {
            partition: (v >> 48) as u16,
            generation: (v >> 32) as u16,
            seq: v as u32,
        }
    }

    /// Returns the input partition.
    pub fn partition(self) -> i32 {
        i32::from(self.partition)
    }
}

struct Entry {
    offset: i64,
    /// Outputs not yet confirmed, plus one while the stage still works on the message.
    pending: u32,
}

struct Ledger {
    generation: u16,
    /// Sequence number of `entries[0]`.
    head: u32,
    entries: VecDeque<Entry>,
}

impl Ledger {
    fn entry(&mut self, t: Token) -> Option<&mut Entry> {
        if t.generation != self.generation {
            return None;
        }
        let i = t.seq.wrapping_sub(self.head) as usize;
        self.entries.get_mut(i)
    }
}

#[derive(Default)]
struct State {
    parts: HashMap<i32, Ledger>,
    generation: u16,
    failed: Option<String>,
}

/// Per input partition, the consumed messages whose outputs are not all confirmed yet, in input
/// order. A message is done when its outputs are confirmed and the stage has released it; the
/// done prefix of each partition is what may be acknowledged.
#[derive(Default)]
pub struct Ledgers {
    state: Mutex<State>,
    in_flight: AtomicUsize,
    notify: Notify,
}

impl Ledgers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new ledger for `partition` (a new generation: confirmations for an earlier
    /// ownership of it are ignored).
    pub fn open(&self, partition: i32) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        if let Some(old) = s.parts.insert(
            partition,
            Ledger {
                generation,
                head: 0,
                entries: VecDeque::new(),
            },
        ) {
            self.in_flight
                .fetch_sub(old.entries.len(), Ordering::Relaxed);
        }
    }

    /// Forgets the ledger of `partition`; later confirmations of it are ignored.
    pub fn close(&self, partition: i32) {
        if let Some(old) = self.lock().parts.remove(&partition) {
            self.in_flight
                .fetch_sub(old.entries.len(), Ordering::Relaxed);
        }
    }

    /// Records message `offset` of `partition` as being worked on; `None` if the partition has
    /// no open ledger (it is not owned, or not ready).
    pub fn begin(&self, partition: i32, offset: i64) -> Option<Token> {
        let mut s = self.lock();
        let l = s.parts.get_mut(&partition)?;
        let seq = l.head.wrapping_add(l.entries.len() as u32);
        l.entries.push_back(Entry { offset, pending: 1 });
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Token {
            partition: partition as u16,
            generation: l.generation,
            seq,
        })
    }

    /// Counts one more output of the message; false if its ledger is gone (the partition was
    /// revoked: its new owner reads the message again).
    fn add(&self, t: Token) -> bool {
        let mut s = self.lock();
        match s.parts.get_mut(&t.partition()).and_then(|l| l.entry(t)) {
            Some(e) => {
                e.pending += 1;
                true
            }
            None => false,
        }
    }

    /// Counts one output of the message as confirmed, or the stage as done with it.
    pub fn done(&self, t: Token) {
        let wake = {
            let mut s = self.lock();
            match s.parts.get_mut(&t.partition()).and_then(|l| l.entry(t)) {
                Some(e) => {
                    e.pending = e.pending.saturating_sub(1);
                    e.pending == 0
                }
                None => false,
            }
        };
        if wake {
            self.notify.notify_one();
        }
    }

    fn fail(&self, why: String) {
        self.lock().failed.get_or_insert(why);
        self.notify.notify_one();
    }

    /// Returns the first delivery failure, if any: the stage stops, and its inputs are read
    /// again from the last committed offsets.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Waits until a message may have become done (or a delivery failed).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Removes the done prefix of every partition and returns, per partition, the offset of
    /// the last message removed: everything up to it may be acknowledged.
    pub fn take_done(&self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        let mut removed = 0;
        let mut s = self.lock();
        for (p, l) in s.parts.iter_mut() {
            let mut last = None;
            while l.entries.front().is_some_and(|e| e.pending == 0) {
                last = l.entries.pop_front().map(|e| e.offset);
                l.head = l.head.wrapping_add(1);
                removed += 1;
            }
            if let Some(o) = last {
                out.push((*p, o));
            }
        }
        drop(s);
        self.in_flight.fetch_sub(removed, Ordering::Relaxed);
        out
    }

    /// Returns how many consumed messages are not done, over every partition.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts each delivery in the ledgers.
#[derive(Clone)]
pub struct LedgerContext {
    ledgers: Arc<Ledgers>,
}

impl ClientContext for LedgerContext {}

impl ProducerContext for LedgerContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(_) => self.ledgers.done(Token::unpack(opaque)),
            Err((e, m)) => self.ledgers.fail(format!(
                "delivery to {} partition {} failed: {e}",
                m.topic(),
                m.partition()
            )),
        }
    }
}

/// An idempotent producer whose deliveries are counted in [`Ledgers`].
#[derive(Clone)]
pub struct OwnedProducer {
    inner: Arc<Lingering<LedgerContext>>,
    ledgers: Arc<Ledgers>,
}

impl OwnedProducer {
    /// Returns the ledgers the deliveries are counted in.
    pub fn ledgers(&self) -> &Arc<Ledgers> {
        &self.ledgers
    }

    /// Queues `payload` for `topic` (to `partition`, or by key when `None`) as an output of the
    /// message `token` names; waits only while the local queue is full. Returns false, sending
    /// nothing, when that message's partition was revoked meanwhile.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        token: Token,
    ) -> Result<bool, BusError> {
        if !self.ledgers.add(token) {
            return Ok(false);
        }
        let lease = self.inner.lease(1).await;
        loop {
            let mut record = BaseRecord::with_opaque_to(topic, token.pack())
                .key(key)
                .payload(payload);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            match lease.client.send(record) {
                Ok(()) => return Ok(true),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    self.ledgers.done(token);
                    return Err(BusError::Broker(Cause::new(
                        format!("failed to produce to {topic}"),
                        e,
                    )));
                }
            }
        }
    }

    /// Waits until every queued message is delivered or failed, for at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || p.flush_blocking(timeout))
            .await
            .map_err(|e| BusError::Broker(Cause::wrap(e)))?
            .map_err(|e| BusError::Broker(Cause::new("flush failed", e)))
    }
}

/// Reacts to the group's rebalances (see the module docs).
pub struct OwnerContext {
    topic: String,
    ledgers: Arc<Ledgers>,
    producer: Arc<Lingering<LedgerContext>>,
    events: mpsc::UnboundedSender<Ownership>,
    revoke_wait: Duration,
}

impl OwnerContext {
    fn ours(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for OwnerContext {}

impl ConsumerContext for OwnerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts = self.ours(tpl);
        if parts.is_empty() {
            return;
        }
        // Every output of these partitions must be in their topics before another member
        // rebuilds its state from them. (This blocks the consumer's poll, which is the point.)
        if let Err(e) = self.producer.flush_blocking(self.revoke_wait) {
            tracing::warn!(error = %e, ?parts, "outputs still unconfirmed when giving up partitions");
        }
        for (p, offset) in self.ledgers.take_done() {
            if let Err(e) = consumer.store_offset(&self.topic, p, offset) {
                tracing::debug!(error = %e, p, offset, "offset not stored");
            }
        }
        for p in &parts {
            self.ledgers.close(*p);
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "commit at revocation failed"),
        }
        tracing::info!(?parts, "partitions revoked");
        let _ = self.events.send(Ownership::Revoked(parts));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let parts = self.ours(tpl);
        // An empty assignment is reported too: it tells the stage it has joined the group
        // (a member of a group with more members than partitions may never own one).
        if !parts.is_empty() {
            // Paused before the first fetch returns anything: nothing of these partitions is
            // read until the stage has rebuilt their state and resumes them.
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(error = %e, ?parts, "failed to pause assigned partitions");
            }
            tracing::info!(?parts, "partitions assigned");
        }
        let _ = self.events.send(Ownership::Assigned(parts));
    }
}

/// A consumer group member of one topic whose partitions come and go as [`Ownership`] events.
pub struct OwnedConsumer {
    inner: StreamConsumer<OwnerContext>,
    topic: String,
    shutdown: CancellationToken,
}

/// One consumed message, borrowed from the consumer (no copy of key or payload).
pub struct Incoming<'a>(BorrowedMessage<'a>);

impl Incoming<'_> {
    /// Returns the partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }
    /// Returns the message's offset.
    pub fn offset(&self) -> i64 {
        self.0.offset()
    }
    /// Returns the message key (empty if none).
    pub fn key(&self) -> &[u8] {
        self.0.key().unwrap_or_default()
    }
    /// Returns the payload (empty if none).
    pub fn payload(&self) -> &[u8] {
        self.0.payload().unwrap_or_default()
    }
}

/// The messages of an [`OwnedConsumer`], for a stage that takes them in batches: wait for one
/// with [`Messages::recv`], then take those already fetched with [`Messages::try_recv`] (a
/// fetch response brings many), so a batch costs one wake-up and one pass of the stage's loop.
pub struct Messages<'a> {
    stream: MessageStream<'a, OwnerContext>,
    shutdown: &'a CancellationToken,
}

impl<'a> Messages<'a> {
    /// Returns the next message, or `None` once shutdown is requested. Rebalance callbacks run
    /// while this is awaited. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Incoming<'a>> {
        loop {
            let m = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                m = self.stream.next() => m.expect("kafka streams never end"),
            };
            match m {
                Ok(m) => return Some(Incoming(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Returns a message already fetched, without waiting: `None` when there is none (or an
    /// error, which the next [`Messages::recv`] reports).
    pub fn try_recv(&mut self) -> Option<Incoming<'a>> {
        match self.stream.next().now_or_never()? {
            Some(Ok(m)) => Some(Incoming(m)),
            _ => None,
        }
    }
}

impl OwnedConsumer {
    /// Returns the consumer's messages (one such view at a time is enough; several share them).
    pub fn messages(&self) -> Messages<'_> {
        Messages {
            stream: self.inner.stream(),
            shutdown: &self.shutdown,
        }
    }

    /// Returns the next message, or `None` once shutdown is requested (one message at a time:
    /// see [`OwnedConsumer::messages`] for batches).
    pub async fn recv(&self) -> Option<Incoming<'_>> {
        self.messages().recv().await
    }

    /// Resumes fetching `partition` (after its state is rebuilt).
    pub fn resume(&self, partition: i32) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        self.inner
            .resume(&tpl)
            .map_err(|e| BusError::Broker(Cause::new("resume failed", e)))
    }

    /// Acknowledges message `offset` of `partition` and everything before it.
    pub fn ack(&self, partition: i32, offset: i64) {
        // librdkafka's offset store commits `offset + 1`, the next message to read.
        if let Err(e) = self.inner.store_offset(&self.topic, partition, offset) {
            tracing::debug!(error = %e, partition, offset, "offset not stored");
        }
    }

    /// Commits acknowledged positions now.
    pub async fn commit(&self) -> Result<(), BusError> {
        match self.inner.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(BusError::Broker(Cause::new("offset commit failed", e))),
        }
    }
}

impl KafkaArgs {
    /// Returns a member of consumer group `group` on `topic` (cooperative-sticky assignment,
    /// offsets stored only by [`OwnedConsumer::ack`]), a producer whose deliveries are counted
    /// per consumed message, and the channel of ownership changes. At a revocation the member
    /// waits up to `revoke_wait` for the producer's outputs before letting the partitions go.
    pub fn owned(
        &self,
        group: &str,
        topic: &str,
        revoke_wait: Duration,
        shutdown: CancellationToken,
    ) -> Result<
        (
            OwnedConsumer,
            OwnedProducer,
            mpsc::UnboundedReceiver<Ownership>,
        ),
        BusError,
    > {
        let ledgers = Arc::new(Ledgers::default());
        let producer = Arc::new(self.lingering(
            true,
            LedgerContext {
                ledgers: ledgers.clone(),
            },
        )?);
        let (tx, rx) = mpsc::unbounded_channel();
        let config: ClientConfig = self.config(&crate::consumer_defaults(group))?;
        let consumer: StreamConsumer<OwnerContext> = StreamConsumer::from_config_and_context(
            &config,
            OwnerContext {
                topic: topic.to_string(),
                ledgers: ledgers.clone(),
                producer: producer.clone(),
                events: tx,
                revoke_wait,
            },
        )
        .map_err(|e| BusError::Broker(Cause::new("failed to create consumer", e)))?;
        consumer.subscribe(&[topic]).map_err(|e| {
            BusError::Broker(Cause::new(format!("failed to subscribe to {topic}"), e))
        })?;
        Ok((
            OwnedConsumer {
                inner: consumer,
                topic: topic.to_string(),
                shutdown,
            },
            OwnedProducer {
                inner: producer,
                ledgers,
            },
            rx,
        ))
    }

    /// Returns the number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<usize, BusError> {
        let c: BaseConsumer = self
            .config(&[])?
            .create()
            .map_err(|e| BusError::Broker(Cause::new("failed to create consumer", e)))?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            crate::partitions(&c, &topic, Duration::from_secs(30))
                .map(|p| p.len())
                .map_err(|e| BusError::Broker(Cause::wrap(e)))
        })
        .await
        .map_err(|e| BusError::Broker(Cause::wrap(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_the_opaque_value() {
        for t in [
            Token {
                partition: 0,
                generation: 0,
                seq: 0,
            },
            Token {
                partition: 11,
                generation: 65_535,
                seq: u32::MAX,
            },
        ] {
            assert_eq!(Token::unpack(t.pack()), t);
        }
    }

    /// Acknowledgement follows input order per partition: a message whose outputs are
    /// confirmed waits for every earlier one; a revoked partition's late confirmations are
    /// ignored.
    #[test]
    fn the_done_prefix_advances_in_input_order() {
        let l = Ledgers::default();
        l.open(3);
        l.open(4);
        let a = l.begin(3, 10).unwrap();
        let b = l.begin(3, 11).unwrap();
        let c = l.begin(4, 7).unwrap();
        assert!(l.begin(5, 0).is_none(), "not owned");
        assert!(l.add(a) && l.add(b) && l.add(b));
        for t in [a, b, c] {
            l.done(t); // the stage is done with each
        }
        l.done(b);
        l.done(b);
        let mut d = l.take_done();
        d.sort();
        assert_eq!(d, vec![(4, 7)], "10 waits for its output, so 11 waits too");
        assert_eq!(l.in_flight(), 2);
        l.done(a);
        assert_eq!(l.take_done(), vec![(3, 11)]);
        assert_eq!(l.in_flight(), 0);
        let late = l.begin(3, 12).unwrap();
        assert!(l.add(late));
        l.close(3);
        l.open(3);
        l.done(late); // a confirmation from before the revocation
        let fresh = l.begin(3, 12).unwrap();
        assert_ne!(fresh, late);
        assert!(!l.add(late), "an old generation counts nothing");
        l.done(fresh);
        assert_eq!(l.take_done(), vec![(3, 12)]);
    }
}
