//! The message bus that links the stages: a producer that publishes keyed payloads and reports
//! delivery, and a consumer whose messages are acknowledged only after the work they caused is
//! done. Kafka implements it in distributed mode, [`MemoryBus`] in embedded mode.

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Topic names shared by every stage.
pub mod topics {
    /// Ticks as ingested, before validation.
    pub const RAW: &str = "ticks.raw";
    /// Ticks the router let through.
    pub const CLEAN: &str = "ticks.clean";
    /// Rejected records with their reason.
    pub const DLQ: &str = "ticks.dlq";
    /// Signals emitted by the indicators stage.
    pub const SIGNALS: &str = "signals";
    /// Closed bars emitted by the indicators stage, stored by the persister.
    pub const BARS: &str = "bars";
}

/// Identifies one consumed message, for acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryId {
    /// Partition the message was read from.
    pub partition: i32,
    /// Offset of the message within its partition.
    pub offset: i64,
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Topic the message was read from.
    pub topic: Arc<str>,
    /// Where the message sits, for acknowledgement.
    pub id: DeliveryId,
    /// Message key (the symbol for tick topics).
    pub key: Vec<u8>,
    /// Message payload (protobuf).
    pub payload: Vec<u8>,
}

/// Why a bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus is closed or shutting down.
    #[error("bus closed")]
    Closed,
    /// The broker reported an error (or refused a setting); the client's error is its source.
    #[error("broker error")]
    Broker(#[source] crate::error::Cause),
}

/// Resolves when the broker has durably accepted a published message.
pub type Receipt = BoxFuture<'static, Result<(), BusError>>;

/// Messages for one topic, queued together under one receipt ([`Producer::send_batch`]). Keys
/// and payloads are written back to back into one buffer, which the caller clears and reuses:
/// a batch costs no allocation per message.
#[derive(Debug, Default)]
pub struct Outgoing {
    bytes: Vec<u8>,
    /// Per message: where its key ends and where its payload ends in `bytes`.
    ends: Vec<(usize, usize)>,
}

impl Outgoing {
    /// Appends a message: `key`, then the payload `write` appends to the buffer it is given.
    pub fn push(&mut self, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        write(&mut self.bytes);
        self.ends.push((key_end, self.bytes.len()));
    }

    /// Returns how many messages the batch holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Returns whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Returns each message's key and payload, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, end)| {
            let m = (&self.bytes[start..key_end], &self.bytes[key_end..end]);
            start = end;
            m
        })
    }
}

/// The messages of a batch that were not accepted.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Their positions in the batch, ascending (at least one).
    pub positions: Vec<usize>,
    /// The error of one of them (the first reported).
    pub error: BusError,
}

impl Refused {
    /// Adds the messages at `positions`, failed with `error`, to `refused` (which keeps the
    /// first error it was given).
    pub fn add(refused: &mut Option<Refused>, positions: std::ops::Range<usize>, error: BusError) {
        refused
            .get_or_insert_with(|| Refused {
                positions: Vec::new(),
                error,
            })
            .positions
            .extend(positions);
    }
}

/// Resolves when every message of a batch is accepted, or else with those that were not
/// (the others were accepted).
pub type BatchReceipt = BoxFuture<'static, Result<(), Refused>>;

/// Publishes keyed messages.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Queues a message; waits only while the outgoing queue is full. The returned receipt
    /// resolves when the message is durably accepted.
    async fn send(&self, topic: &str, key: &[u8], payload: Vec<u8>) -> Result<Receipt, BusError>;

    /// Queues every message of `batch` for `topic`, in order; waits only while the outgoing
    /// queue is full. The one receipt resolves once every message is accepted or failed, and
    /// names the failed ones: a message the bus refused to queue after the first fails there,
    /// with those after it. An error here means the first message was refused and nothing was
    /// queued. The default sends each message with [`Producer::send`].
    async fn send_batch(&self, topic: &str, batch: &Outgoing) -> Result<BatchReceipt, BusError> {
        let n = batch.len();
        let mut receipts = Vec::with_capacity(n);
        let mut unqueued = None;
        for (key, payload) in batch.iter() {
            match self.send(topic, key, payload.to_vec()).await {
                Ok(r) => receipts.push(r),
                Err(e) if receipts.is_empty() => return Err(e),
                Err(e) => {
                    unqueued = Some(e);
                    break;
                }
            }
        }
        Ok(Box::pin(async move {
            let queued = receipts.len();
            let mut refused = None;
            for (i, r) in receipts.into_iter().enumerate() {
                if let Err(error) = r.await {
                    Refused::add(&mut refused, i..i + 1, error);
                }
            }
            if let Some(error) = unqueued {
                Refused::add(&mut refused, queued..n, error);
            }
            refused.map_or(Ok(()), Err)
        }))
    }

    /// Waits until every queued message is delivered or failed.
    async fn flush(&self) -> Result<(), BusError>;
}

/// Reads messages of one topic for one consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Returns the next message, or `None` when the stream has ended (the topic was closed or
    /// shutdown was requested).
    async fn recv(&mut self) -> Result<Option<Delivery>, BusError>;

    /// Returns a message already fetched, without waiting: `None` when none is ready (or the
    /// bus cannot tell without waiting). A stage calls it after [`Consumer::recv`] to take
    /// what else is there in the same pass: one wake-up per batch under load, while a message
    /// that arrives alone is still handled the moment it arrives.
    fn try_recv(&mut self) -> Result<Option<Delivery>, BusError> {
        Ok(None)
    }

    /// Marks a message and everything before it in its partition as done. Call it only after
    /// the work the message caused is durably finished.
    fn ack(&mut self, id: DeliveryId) -> Result<(), BusError>;

    /// Stops fetching from the bus while the stage cannot make progress (the data waits on the
    /// bus); keep calling `recv` meanwhile so the consumer stays in its group. A message that
    /// was already fetched may still be returned. A no-op where the bus has nothing to pause.
    fn pause(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    /// Fetches again after [`Consumer::pause`].
    fn resume(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    /// Commits acknowledged positions now (on shutdown); a no-op where acks are immediate.
    async fn commit(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Publishes every `(key, payload)` of `records` to `topic`, then waits until each is confirmed.
pub async fn publish_all<K: AsRef<[u8]>>(
    producer: &dyn Producer,
    topic: &str,
    records: impl IntoIterator<Item = (K, Vec<u8>)>,
) -> Result<(), BusError> {
    let mut receipts = Vec::new();
    for (key, payload) in records {
        receipts.push(producer.send(topic, key.as_ref(), payload).await?);
    }
    for r in receipts {
        r.await?;
    }
    Ok(())
}

/// Sends a dead letter (an encoded, bounded [`DeadLetterRecord`](crate::store::DeadLetterRecord))
/// to `ticks.dlq`, sending it again with backoff while the bus refuses it (a full queue, a
/// broker away): a refused dead letter is a counted, logged retry, never the end of the
/// process. (Records are bounded, so a refusal for size cannot repeat.) Stops retrying, with
/// [`BusError::Closed`], when `shutdown` fires or the bus is closed.
pub async fn send_dead_letter(
    producer: &dyn Producer,
    key: &[u8],
    payload: Vec<u8>,
    component: &'static str,
    shutdown: &crate::shutdown::CancellationToken,
) -> Result<Receipt, BusError> {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(5),
    );
    loop {
        match producer.send(topics::DLQ, key, payload.clone()).await {
            Ok(r) => return Ok(r),
            // A closed bus does not open again (embedded mode stopping).
            Err(BusError::Closed) => return Err(BusError::Closed),
            Err(e) => {
                metrics::counter!("tickflow_dead_letter_send_retries_total", "component" => component)
                    .increment(1);
                tracing::warn!(component, error = %crate::error::chain(&e), "the bus refused a dead letter; sending it again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(BusError::Closed),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Publishes dead letters and waits until each is confirmed, sending again (with backoff) any
/// the bus refuses or fails to deliver, until all are confirmed or `shutdown` fires.
pub async fn publish_dead_letters(
    producer: &dyn Producer,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    component: &'static str,
    shutdown: &crate::shutdown::CancellationToken,
) -> Result<(), BusError> {
    let mut todo = records;
    while !todo.is_empty() {
        let mut receipts = Vec::with_capacity(todo.len());
        for (key, payload) in &todo {
            receipts
                .push(send_dead_letter(producer, key, payload.clone(), component, shutdown).await?);
        }
        let mut failed = Vec::new();
        for (record, r) in todo.into_iter().zip(receipts) {
            if let Err(e) = r.await {
                if matches!(e, BusError::Closed) {
                    return Err(e);
                }
                tracing::warn!(component, error = %crate::error::chain(&e), "a dead letter was not delivered; sending it again");
                failed.push(record);
            }
        }
        todo = failed;
    }
    Ok(())
}

/// Messages whose outputs are published but not yet confirmed, acknowledged in input order as
/// their receipts resolve, so a crash never skips an unconfirmed message.
#[derive(Default)]
pub struct InFlight {
    queue: FuturesOrdered<BoxFuture<'static, (DeliveryId, Result<(), BusError>)>>,
}

impl InFlight {
    /// Tracks `id` as done once every receipt in `receipts` has resolved.
    pub fn push(&mut self, id: DeliveryId, receipts: Vec<Receipt>) {
        self.queue.push_back(Box::pin(async move {
            for r in receipts {
                if let Err(e) = r.await {
                    return (id, Err(e));
                }
            }
            (id, Ok(()))
        }));
    }

    /// Returns the next input whose outputs all resolved, in input order; pending forever when
    /// nothing is in flight (use it in `select!` guarded by [`InFlight::is_empty`]).
    pub async fn next(&mut self) -> Option<(DeliveryId, Result<(), BusError>)> {
        self.queue.next().await
    }

    /// Returns the next input whose outputs all resolved if it is ready now, without waiting
    /// (to acknowledge a run of finished inputs in one pass).
    pub fn try_next(&mut self) -> Option<(DeliveryId, Result<(), BusError>)> {
        use futures::FutureExt as _;
        if self.queue.is_empty() {
            return None;
        }
        self.queue.next().now_or_never().flatten()
    }

    /// Returns how many inputs are unconfirmed.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Returns whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

struct TopicState {
    name: Arc<str>,
    next_offset: AtomicI64,
    subscribers: Vec<mpsc::Sender<Delivery>>,
    /// Set when one group's acknowledgements confirm publications (see
    /// [`MemoryBus::subscribe_confirming`]).
    confirmations: Option<Arc<Confirmations>>,
    /// Held by a publisher of a confirmed topic from the choice of its offset until every
    /// group has its message, so messages reach the groups in offset order: an acknowledgement
    /// covers everything before it only if nothing before it can still be on its way.
    publishing: Arc<tokio::sync::Mutex<()>>,
}

impl TopicState {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            next_offset: AtomicI64::new(0),
            subscribers: Vec::new(),
            confirmations: None,
            publishing: Arc::default(),
        }
    }
}

/// Publications of a topic waiting for the confirming group to acknowledge them.
struct Confirmations {
    state: Mutex<Waiting>,
}

struct Waiting {
    /// The highest offset the confirming group acknowledged (-1 before the first).
    confirmed: i64,
    /// Set when the confirming group went away: nothing is confirmed any more.
    gone: bool,
    /// Receipts waiting, by the offset that confirms them, oldest first.
    queue: std::collections::VecDeque<(i64, tokio::sync::oneshot::Sender<()>)>,
}

impl Confirmations {
    fn new() -> Self {
        Self {
            state: Mutex::new(Waiting {
                confirmed: -1,
                gone: false,
                queue: Default::default(),
            }),
        }
    }

    /// Returns a receiver that resolves once `offset` is acknowledged, and fails if the
    /// confirming group goes away first. Registered in offset order (the publishing lock).
    fn register(&self, offset: i64) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut state = self.state.lock().expect("confirmation lock poisoned");
        if offset <= state.confirmed {
            let _ = tx.send(());
        } else if !state.gone {
            state.queue.push_back((offset, tx));
        }
        rx
    }

    /// Resolves the receipts of every publication up to `offset`.
    fn confirm_upto(&self, offset: i64) {
        let mut state = self.state.lock().expect("confirmation lock poisoned");
        state.confirmed = state.confirmed.max(offset);
        while state.queue.front().is_some_and(|(o, _)| *o <= offset) {
            let (_, done) = state.queue.pop_front().expect("front exists");
            let _ = done.send(());
        }
    }

    /// Returns the highest acknowledged offset.
    fn confirmed(&self) -> i64 {
        self.state
            .lock()
            .expect("confirmation lock poisoned")
            .confirmed
    }

    /// Fails every waiting receipt, and those registered later (the group went away).
    fn close(&self) {
        let mut state = self.state.lock().expect("confirmation lock poisoned");
        state.gone = true;
        state.queue.clear();
    }
}

/// An in-process bus of bounded channels for embedded mode.
///
/// Every consumer group subscribed to a topic receives every message (fan-out). A full group
/// queue makes the publisher wait (back-pressure, never loss); size the storage group's queue so
/// that a slow store does not stall the real-time branch. Messages published to a topic with no
/// subscriber are discarded, as nothing would ever read them.
#[derive(Clone, Default)]
pub struct MemoryBus {
    topics: Arc<Mutex<HashMap<String, TopicState>>>,
    published: Arc<AtomicU64>,
}

impl MemoryBus {
    /// Returns an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes a consumer group to `topic` with a queue of `capacity` messages. Subscribe
    /// before publishing: a group only sees messages published after it joined.
    pub fn subscribe(&self, topic: &str, capacity: usize) -> MemoryConsumer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut topics = self.topics.lock().expect("bus lock poisoned");
        topics
            .entry(topic.to_string())
            .or_insert_with(|| TopicState::new(topic))
            .subscribers
            .push(tx);
        MemoryConsumer {
            rx,
            acked: Arc::new(AtomicI64::new(-1)),
            poll_every: None,
            confirms: None,
        }
    }

    /// Subscribes the group whose acknowledgements confirm publications to `topic`: a
    /// producer's receipt for a message resolves only once this group has acknowledged it (the
    /// stage has durably done its work), and fails if the group goes away first. This is what
    /// "durable" means without a broker: a stage upstream that waits for its receipts (ingest,
    /// the router) then learns that its output is stored, not merely queued. One confirming
    /// group per topic; other groups' acknowledgements confirm nothing.
    pub fn subscribe_confirming(&self, topic: &str, capacity: usize) -> MemoryConsumer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let confirmations = Arc::new(Confirmations::new());
        // One lock for the subscription and the confirmations: no message can be published in
        // between and escape confirmation.
        let mut topics = self.topics.lock().expect("bus lock poisoned");
        let state = topics
            .entry(topic.to_string())
            .or_insert_with(|| TopicState::new(topic));
        assert!(
            state.confirmations.is_none(),
            "topic {topic} already has a confirming group"
        );
        state.subscribers.push(tx);
        state.confirmations = Some(confirmations.clone());
        MemoryConsumer {
            rx,
            acked: Arc::new(AtomicI64::new(-1)),
            poll_every: None,
            confirms: Some(confirmations),
        }
    }

    /// Returns a producer for this bus.
    pub fn producer(&self) -> MemoryProducer {
        MemoryProducer { bus: self.clone() }
    }

    /// Closes `topic`: its consumers receive what is queued, then the end of the stream.
    pub fn close(&self, topic: &str) {
        let mut topics = self.topics.lock().expect("bus lock poisoned");
        if let Some(t) = topics.get_mut(topic) {
            t.subscribers.clear();
        }
    }

    /// Returns how many messages were published on this bus, over all topics.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Publishes to a [`MemoryBus`].
#[derive(Clone)]
pub struct MemoryProducer {
    bus: MemoryBus,
}

/// What [`MemoryProducer::publish`] did.
struct Published {
    /// Messages queued to every group, from the first.
    queued: usize,
    /// Why the message after those was not (a group went away).
    error: Option<BusError>,
    /// Offset of the first message.
    first: i64,
    /// Set on a confirmed topic: resolves once the last queued message is acknowledged.
    receipt: Option<(Arc<Confirmations>, tokio::sync::oneshot::Receiver<()>)>,
}

impl MemoryProducer {
    /// Queues `messages` to every group subscribed to `topic`, in order, under one choice of
    /// offsets. It stops at the first message a group can no longer take.
    async fn publish<'a>(
        &self,
        topic: &str,
        messages: impl ExactSizeIterator<Item = (&'a [u8], Vec<u8>)> + Send,
    ) -> Published {
        let n = messages.len();
        // A confirmed topic orders its publishers (see `TopicState::publishing`); others need
        // no ordering beyond each publisher's own.
        let ordering = {
            let topics = self.bus.topics.lock().expect("bus lock poisoned");
            topics
                .get(topic)
                .filter(|t| t.confirmations.is_some())
                .map(|t| t.publishing.clone())
        };
        let _in_order = match &ordering {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let (first, subscribers, topic_name, confirmations) = {
            let mut topics = self.bus.topics.lock().expect("bus lock poisoned");
            if !topics.contains_key(topic) {
                topics.insert(topic.to_string(), TopicState::new(topic));
            }
            let state = &topics[topic];
            let first = state.next_offset.fetch_add(n as i64, Ordering::Relaxed);
            // A closed topic (no subscribers left) has nobody to confirm: its receipts resolve
            // at once, as the message is discarded anyway.
            let confirmations = state
                .confirmations
                .clone()
                .filter(|_| !state.subscribers.is_empty());
            (
                first,
                state.subscribers.clone(),
                state.name.clone(),
                confirmations,
            )
        };
        let (mut queued, mut error) = (0, None);
        // A message a group can no longer take (it went away, which happens on shutdown) may
        // already be queued to the groups before it, as with `send`.
        'messages: for (key, payload) in messages {
            let delivery = Delivery {
                topic: topic_name.clone(),
                id: DeliveryId {
                    partition: 0,
                    offset: first + queued as i64,
                },
                key: key.to_vec(),
                payload,
            };
            if let Some((last, rest)) = subscribers.split_last() {
                for tx in rest {
                    if tx.send(delivery.clone()).await.is_err() {
                        error = Some(BusError::Closed);
                        break 'messages;
                    }
                }
                if last.send(delivery).await.is_err() {
                    error = Some(BusError::Closed);
                    break;
                }
            }
            queued += 1;
        }
        // Every message tried counts, the refused one too.
        let tried = queued + usize::from(error.is_some());
        self.bus
            .published
            .fetch_add(tried as u64, Ordering::Relaxed);
        // Still under the publishing lock, so receipts are registered in offset order; one
        // receipt covers them all, as an acknowledgement covers everything before it.
        let receipt = confirmations.filter(|_| queued > 0).map(|c| {
            let rx = c.register(first + queued as i64 - 1);
            (c, rx)
        });
        Published {
            queued,
            error,
            first,
            receipt,
        }
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn send(&self, topic: &str, key: &[u8], payload: Vec<u8>) -> Result<Receipt, BusError> {
        let p = self.publish(topic, std::iter::once((key, payload))).await;
        if let Some(e) = p.error {
            return Err(e);
        }
        Ok(match p.receipt {
            Some((_, rx)) => Box::pin(async move { rx.await.map_err(|_| BusError::Closed) }),
            None => Box::pin(futures::future::ready(Ok(()))),
        })
    }

    /// One choice of offsets, one ordering and one receipt for the whole batch, rather than
    /// per message.
    async fn send_batch(&self, topic: &str, batch: &Outgoing) -> Result<BatchReceipt, BusError> {
        let n = batch.len();
        let p = self
            .publish(topic, batch.iter().map(|(k, v)| (k, v.to_vec())))
            .await;
        if p.queued == 0
            && let Some(e) = p.error
        {
            return Err(e);
        }
        let Published {
            queued,
            error,
            first,
            receipt,
        } = p;
        Ok(Box::pin(async move {
            let mut refused = None;
            if let Some((confirmations, rx)) = receipt
                && rx.await.is_err()
            {
                // The group went away: what it acknowledged before is confirmed.
                let confirmed = usize::try_from(confirmations.confirmed() - first + 1)
                    .unwrap_or(0)
                    .min(queued);
                if confirmed < queued {
                    Refused::add(&mut refused, confirmed..queued, BusError::Closed);
                }
            }
            if let Some(error) = error {
                Refused::add(&mut refused, queued..n, error);
            }
            refused.map_or(Ok(()), Err)
        }))
    }

    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// One consumer group's view of a [`MemoryBus`] topic.
pub struct MemoryConsumer {
    rx: mpsc::Receiver<Delivery>,
    acked: Arc<AtomicI64>,
    poll_every: Option<std::time::Duration>,
    confirms: Option<Arc<Confirmations>>,
}

impl Drop for MemoryConsumer {
    /// A confirming group that goes away fails the receipts still waiting for it: whatever it
    /// had not acknowledged is not durable.
    fn drop(&mut self) {
        if let Some(c) = self.confirms.take() {
            c.close();
        }
    }
}

impl MemoryConsumer {
    /// Makes this consumer look for messages every `interval` instead of being woken by each
    /// publish. For a stage that batches anyway (the persister): a publisher on another thread
    /// then never pays a cross-thread wake-up for it, at the cost of up to `interval` delay.
    pub fn polled(mut self, interval: std::time::Duration) -> Self {
        self.poll_every = Some(interval);
        self
    }

    /// Returns the highest acknowledged offset (-1 before the first ack).
    pub fn acked(&self) -> i64 {
        self.acked.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BusError> {
        let Some(interval) = self.poll_every else {
            return Ok(self.rx.recv().await);
        };
        loop {
            match self.rx.try_recv() {
                Ok(d) => {
                    // `try_recv` does not count against tokio's cooperative budget as `recv`
                    // does: without this, a full queue would starve the stage's timers.
                    tokio::task::coop::consume_budget().await;
                    return Ok(Some(d));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => tokio::time::sleep(interval).await,
            }
        }
    }

    fn try_recv(&mut self) -> Result<Option<Delivery>, BusError> {
        Ok(self.rx.try_recv().ok())
    }

    fn ack(&mut self, id: DeliveryId) -> Result<(), BusError> {
        self.acked.fetch_max(id.offset, Ordering::Relaxed);
        if let Some(c) = &self.confirms {
            c.confirm_upto(id.offset);
        }
        Ok(())
    }
}

/// A producer for tests of the code that publishes: it follows a script of failures.
#[cfg(any(test, feature = "test-support"))]
pub mod scripted {
    use super::*;

    /// Refuses to queue the `refuse_at`-th message (counting from 0), fails the delivery of
    /// those whose number is in `fail`, confirms every other one at once, and keeps every
    /// message it queued.
    pub struct ScriptedProducer {
        refuse_at: usize,
        fail: Vec<usize>,
        sent: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    }

    impl ScriptedProducer {
        /// A producer with this script (`usize::MAX`: refuses nothing).
        pub fn new(refuse_at: usize, fail: &[usize]) -> Self {
            Self {
                refuse_at,
                fail: fail.to_vec(),
                sent: Mutex::new(Vec::new()),
            }
        }

        /// Returns the key and payload of every message queued so far, in order.
        pub fn sent(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
            self.sent.lock().expect("lock").clone()
        }

        /// Returns how many messages were queued so far.
        pub fn sent_count(&self) -> usize {
            self.sent.lock().expect("lock").len()
        }
    }

    #[async_trait]
    impl Producer for ScriptedProducer {
        async fn send(&self, _: &str, key: &[u8], payload: Vec<u8>) -> Result<Receipt, BusError> {
            let mut sent = self.sent.lock().expect("lock");
            let i = sent.len();
            if i == self.refuse_at {
                return Err(BusError::Closed);
            }
            sent.push((key.to_vec(), payload));
            let r = if self.fail.contains(&i) {
                Err(BusError::Closed)
            } else {
                Ok(())
            };
            Ok(Box::pin(futures::future::ready(r)))
        }

        async fn flush(&self) -> Result<(), BusError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refuses the first `refuse` sends and fails the delivery of the next `fail`.
    struct Flaky {
        refuse: AtomicU64,
        fail: AtomicU64,
        delivered: AtomicU64,
    }

    #[async_trait]
    impl Producer for Flaky {
        async fn send(&self, _: &str, _: &[u8], _: Vec<u8>) -> Result<Receipt, BusError> {
            if self.refuse.load(Ordering::Relaxed) > 0 {
                self.refuse.fetch_sub(1, Ordering::Relaxed);
                return Err(BusError::Broker(crate::error::Cause::msg("queue full")));
            }
            if self.fail.load(Ordering::Relaxed) > 0 {
                self.fail.fetch_sub(1, Ordering::Relaxed);
                return Ok(Box::pin(futures::future::ready(Err(BusError::Broker(
                    crate::error::Cause::msg("message timed out"),
                )))));
            }
            self.delivered.fetch_add(1, Ordering::Relaxed);
            Ok(Box::pin(futures::future::ready(Ok(()))))
        }
        async fn flush(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_is_sent_in_order_and_its_receipt_names_what_was_not_accepted() {
        let mut batch = Outgoing::default();
        for i in 0..6u8 {
            // Keys and payloads of different lengths, an empty one among them.
            batch.push(&vec![b'k'; usize::from(i % 3)], |b| {
                b.extend(std::iter::repeat_n(i, usize::from(i)))
            });
        }
        assert_eq!(batch.len(), 6);
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..6u8)
            .map(|i| (vec![b'k'; usize::from(i % 3)], vec![i; usize::from(i)]))
            .collect();
        let fake = |refuse_at, fail: &[usize]| scripted::ScriptedProducer::new(refuse_at, fail);

        let p = fake(usize::MAX, &[]);
        p.send_batch("t", &batch).await.unwrap().await.unwrap();
        assert_eq!(p.sent(), expected);

        let p = fake(usize::MAX, &[1, 4]);
        let r = p.send_batch("t", &batch).await.unwrap().await.unwrap_err();
        assert_eq!(r.positions, vec![1, 4]);

        // Refused at the fourth: it and those after it fail, with a delivery failure before.
        let p = fake(3, &[0]);
        let r = p.send_batch("t", &batch).await.unwrap().await.unwrap_err();
        assert_eq!(r.positions, vec![0, 3, 4, 5]);
        assert_eq!(p.sent(), expected[..3]);

        // Refused at the first: an error, and nothing queued.
        let p = fake(0, &[]);
        assert!(p.send_batch("t", &batch).await.is_err());

        batch.clear();
        assert!(batch.is_empty() && batch.iter().next().is_none());
        fake(usize::MAX, &[])
            .send_batch("t", &batch)
            .await
            .unwrap()
            .await
            .expect("an empty batch is accepted");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_or_undelivered_dead_letters_are_sent_again_until_confirmed() {
        let p = Flaky {
            refuse: 5.into(),
            fail: 2.into(),
            delivered: 0.into(),
        };
        let records = (0..4u8).map(|i| (vec![i], vec![i; 10])).collect();
        let stop = crate::shutdown::CancellationToken::new();
        publish_dead_letters(&p, records, "test", &stop)
            .await
            .unwrap();
        assert_eq!(
            p.delivered.load(Ordering::Relaxed),
            4,
            "every one, once delivered"
        );
        // Shutdown ends the retries.
        let p = Flaky {
            refuse: u64::MAX.into(),
            fail: 0.into(),
            delivered: 0.into(),
        };
        stop.cancel();
        let r = send_dead_letter(&p, b"", vec![1], "test", &stop).await;
        assert!(matches!(r, Err(BusError::Closed)));
    }

    #[tokio::test]
    async fn fans_out_to_every_group_in_order_and_ends_on_close() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe(topics::CLEAN, 8);
        let mut b = bus.subscribe(topics::CLEAN, 8);
        let p = bus.producer();
        publish_all(&p, topics::CLEAN, (0..3u8).map(|i| (b"EURUSD", vec![i])))
            .await
            .unwrap();
        bus.close(topics::CLEAN);
        for c in [&mut a, &mut b] {
            let mut got = vec![];
            while let Some(d) = c.recv().await.unwrap() {
                assert_eq!(d.id.offset, i64::from(d.payload[0]));
                c.ack(d.id).unwrap();
                got.push(d.payload[0]);
            }
            assert_eq!(got, vec![0, 1, 2]);
        }
        assert_eq!(a.acked(), 2);
        assert_eq!(bus.published(), 3);
    }

    /// A batch: `recv` waits for the first message, `try_recv` takes those already queued
    /// without waiting and says when there are none; `InFlight::try_next` hands out finished
    /// inputs in input order and stops at the first unfinished one.
    #[tokio::test]
    async fn batches_take_what_is_ready_without_waiting() {
        let bus = MemoryBus::new();
        let mut c = bus.subscribe(topics::CLEAN, 8);
        let p = bus.producer();
        assert!(c.try_recv().unwrap().is_none(), "nothing queued yet");
        publish_all(&p, topics::CLEAN, (0..3u8).map(|i| (b"EURUSD", vec![i])))
            .await
            .unwrap();
        let first = c.recv().await.unwrap().unwrap();
        let mut batch = vec![first.payload[0]];
        while let Some(d) = c.try_recv().unwrap() {
            batch.push(d.payload[0]);
        }
        assert_eq!(batch, vec![0, 1, 2]);
        assert!(c.try_recv().unwrap().is_none());

        let mut f = InFlight::default();
        let id = |offset| DeliveryId {
            partition: 0,
            offset,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        f.push(id(0), vec![]);
        f.push(
            id(1),
            vec![Box::pin(
                async move { rx.await.map_err(|_| BusError::Closed) },
            )],
        );
        f.push(id(2), vec![]);
        assert_eq!(
            f.try_next().map(|(i, r)| (i, r.is_ok())),
            Some((id(0), true))
        );
        assert!(
            f.try_next().is_none(),
            "1 waits for its receipt, and 2 behind it"
        );
        tx.send(()).unwrap();
        assert_eq!(f.try_next().map(|(i, _)| i), Some(id(1)));
        assert_eq!(f.try_next().map(|(i, _)| i), Some(id(2)));
        assert!(f.try_next().is_none() && f.is_empty());
    }

    #[tokio::test]
    async fn a_polled_consumer_gets_every_message_then_the_end() {
        let bus = MemoryBus::new();
        let mut c = bus
            .subscribe(topics::CLEAN, 8)
            .polled(std::time::Duration::from_millis(1));
        let p = bus.producer();
        let publisher = tokio::spawn(async move {
            for i in 0..5u8 {
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                p.send(topics::CLEAN, b"EURUSD", vec![i])
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
        let mut got = vec![];
        while got.len() < 5 {
            got.push(c.recv().await.unwrap().unwrap().payload[0]);
        }
        publisher.await.unwrap();
        bus.close(topics::CLEAN);
        assert!(c.recv().await.unwrap().is_none());
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn receipts_of_a_confirmed_topic_resolve_when_the_confirming_group_acks() {
        use futures::FutureExt;
        let bus = MemoryBus::new();
        let mut store = bus.subscribe_confirming(topics::CLEAN, 8);
        let mut bots = bus.subscribe(topics::CLEAN, 8);
        let p = bus.producer();
        let mut receipts = vec![];
        for i in 0..3u8 {
            receipts.push(p.send(topics::CLEAN, b"EURUSD", vec![i]).await.unwrap());
        }
        // Another group's acknowledgement confirms nothing.
        let d = bots.recv().await.unwrap().unwrap();
        bots.ack(d.id).unwrap();
        assert!((&mut receipts[0]).now_or_never().is_none());
        // The confirming group acknowledges the first two (ack covers everything before).
        store.recv().await.unwrap().unwrap();
        let second = store.recv().await.unwrap().unwrap();
        store.ack(second.id).unwrap();
        let mut receipts = receipts.into_iter();
        for _ in 0..2 {
            let r = receipts.next().unwrap().now_or_never();
            assert!(matches!(r, Some(Ok(()))), "confirmed: {r:?}");
        }
        // The group goes away before acknowledging the third: that receipt fails.
        let mut third = receipts.next().unwrap();
        assert!((&mut third).now_or_never().is_none());
        drop(store);
        assert!(matches!(third.await, Err(BusError::Closed)));
    }

    #[test]
    fn a_confirmation_registered_after_its_ack_resolves_at_once() {
        let c = Confirmations::new();
        c.confirm_upto(5);
        let mut early = c.register(3);
        assert_eq!(
            early.try_recv(),
            Ok(()),
            "acknowledged before it was registered"
        );
        let mut waiting = c.register(7);
        assert!(waiting.try_recv().is_err());
        c.confirm_upto(7);
        assert_eq!(waiting.try_recv(), Ok(()));
        c.close();
        let mut gone = c.register(9);
        assert!(matches!(
            gone.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }

    fn outgoing(payloads: std::ops::Range<u8>) -> Outgoing {
        let mut batch = Outgoing::default();
        for i in payloads {
            batch.push(b"EURUSD", |b| b.push(i));
        }
        batch
    }

    #[tokio::test]
    async fn a_batch_on_a_confirmed_topic_is_confirmed_by_the_ack_of_its_last_message() {
        use futures::FutureExt;
        let bus = MemoryBus::new();
        let mut store = bus.subscribe_confirming(topics::CLEAN, 8);
        let mut bots = bus.subscribe(topics::CLEAN, 8);
        let p = bus.producer();
        let mut first = p.send_batch(topics::CLEAN, &outgoing(0..3)).await.unwrap();
        let second = p.send_batch(topics::CLEAN, &outgoing(3..5)).await.unwrap();
        for (i, group) in [&mut store, &mut bots].into_iter().enumerate() {
            for want in 0..5u8 {
                let d = group.recv().await.unwrap().unwrap();
                assert_eq!(
                    (d.id.offset, d.payload[0]),
                    (i64::from(want), want),
                    "group {i}"
                );
            }
        }
        // Up to the batch's second message: not yet; its last: confirmed.
        store
            .ack(DeliveryId {
                partition: 0,
                offset: 1,
            })
            .unwrap();
        assert!((&mut first).now_or_never().is_none());
        store
            .ack(DeliveryId {
                partition: 0,
                offset: 3,
            })
            .unwrap();
        assert!(matches!(first.await, Ok(())));
        // The group goes away having acknowledged the first of the second batch: the other
        // one is refused, alone.
        drop(store);
        let refused = second.await.unwrap_err();
        assert_eq!(refused.positions, vec![1]);
    }

    #[tokio::test]
    async fn a_batch_whose_first_message_a_group_cannot_take_is_refused_whole() {
        let bus = MemoryBus::new();
        let _store = bus.subscribe_confirming(topics::CLEAN, 2);
        let bots = bus.subscribe(topics::CLEAN, 8);
        let p = bus.producer();
        drop(bots);
        assert!(matches!(
            p.send_batch(topics::CLEAN, &outgoing(0..2)).await,
            Err(BusError::Closed)
        ));
        // A topic that nobody reads any more takes everything, confirmed at once.
        bus.close(topics::CLEAN);
        p.send_batch(topics::CLEAN, &outgoing(0..4))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishers_of_a_confirmed_topic_deliver_in_offset_order() {
        let bus = MemoryBus::new();
        // A queue of one makes every publisher wait in the middle of its send.
        let mut store = bus.subscribe_confirming(topics::DLQ, 1);
        let publishers: Vec<_> = (0..4u8)
            .map(|p| {
                let producer = bus.producer();
                tokio::spawn(async move {
                    let mut receipts = vec![];
                    for i in 0..50u8 {
                        receipts.push(producer.send(topics::DLQ, b"", vec![p, i]).await.unwrap());
                        tokio::task::yield_now().await;
                    }
                    receipts
                })
            })
            .collect();
        let mut last = -1;
        for _ in 0..200 {
            let d = store.recv().await.unwrap().unwrap();
            assert_eq!(d.id.offset, last + 1, "offsets arrive in order");
            last = d.id.offset;
            store.ack(d.id).unwrap();
        }
        for p in publishers {
            for r in p.await.unwrap() {
                r.await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn in_flight_acks_in_input_order() {
        let mut f = InFlight::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow: Receipt = Box::pin(async move {
            rx.await.ok();
            Ok(())
        });
        f.push(
            DeliveryId {
                partition: 0,
                offset: 1,
            },
            vec![slow],
        );
        f.push(
            DeliveryId {
                partition: 0,
                offset: 2,
            },
            vec![Box::pin(futures::future::ready(Ok(())))],
        );
        tx.send(()).unwrap();
        assert_eq!(f.next().await.unwrap().0.offset, 1);
        assert_eq!(f.next().await.unwrap().0.offset, 2);
        assert!(f.is_empty());
    }
}
