//! The gRPC `SignalService` bots subscribe to, plus health and reflection services.
//!
//! Events fan out through a broadcast ring: publishing never waits for a subscriber. Each
//! subscriber reads at its own pace; one that falls more than the ring's capacity
//! (`--subscriber-queue`) behind is handled by the slow-subscriber policy: it loses the oldest
//! events and receives a `Gap` event where the loss ends, counting the lost events its filter
//! matches, whose token is the position just before them: resubscribing from it replays them
//! while they are retained (drop-oldest); or its stream ends with `RESOURCE_EXHAUSTED`
//! (disconnect). Either way a stalled bot never slows the pipeline or other bots.
//!
//! Next to the broadcast ring the hub retains the last `--resume-window` events. Every event a
//! subscriber receives carries a resume token (`<instance>:<seq>`, the instance id being drawn
//! at start); a subscriber that comes back with its last token first receives the retained
//! events after it that match its filter, then live ones, without duplicate or gap: the
//! broadcast receiver is taken under the same lock as the retained ring is read, so the replay
//! ends exactly where the live stream begins.

use futures::{Stream, StreamExt};
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tick_core::shutdown::CancellationToken;
use tick_core::store::HistoryReader;
use tick_core::{clock, pb};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status};

use pb::event::Kind;
use pb::signal_service_server::{SignalService, SignalServiceServer};

/// A snapshot request sent to the task that owns the engine.
pub type SnapshotQuery = (String, oneshot::Sender<Option<pb::Snapshot>>);

/// Gap reason: the subscriber fell more than its queue behind and lost the oldest events.
pub const GAP_QUEUE_FULL: &str = "subscriber_queue_full";
/// Gap reason: the resume token is older than the retained window; `dropped` events are lost.
pub const GAP_WINDOW_EXCEEDED: &str = "resume_window_exceeded";
/// Gap reason: the resume token names another server instance (or an earlier process).
pub const GAP_FOREIGN_TOKEN: &str = "resume_token_from_another_instance";
/// Gap reason: the resume token is malformed or names a position this instance never reached.
pub const GAP_INVALID_TOKEN: &str = "resume_token_invalid";

/// What happens to a subscriber that falls more than its queue behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SlowSubscriber {
    /// It loses the oldest events and receives a `Gap` event with their count.
    #[default]
    DropOldest,
    /// Its stream ends with `RESOURCE_EXHAUSTED`; it may reconnect with its last resume token.
    Disconnect,
}

/// How a [`Hub`] serves its subscribers.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Events a subscriber may fall behind before the slow-subscriber policy applies.
    pub queue: usize,
    /// Events retained for subscribers that resume with a token (0: none).
    pub resume_window: usize,
    /// The slow-subscriber policy.
    pub slow_subscriber: SlowSubscriber,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            queue: 8192,
            resume_window: 100_000,
            slow_subscriber: SlowSubscriber::DropOldest,
        }
    }
}

/// An event as published: the message (for filters and in-process readers) and its protobuf
/// encoding, made once, by the first subscriber task that sends it (off the thread that
/// publishes), and shared by every subscriber (`seq` and `resume_token` set; a subscriber's
/// `ts_sent_ns` is appended to the bytes as it is sent, see [`WireEvent`]).
#[derive(Debug)]
pub struct Published {
    /// The event, `ts_sent_ns` 0 (an indicator update's values without their names when
    /// `names` is given).
    pub event: pb::Event,
    /// The names of an update's values, written into the encoding (see
    /// [`crate::engine::ValueNames`]).
    pub names: Option<Arc<crate::engine::ValueNames>>,
    bytes: std::sync::OnceLock<bytes::Bytes>,
}

impl Published {
    /// Returns `event` (with the names of its update's values in `names`) as published.
    pub fn new(event: pb::Event, names: Option<Arc<crate::engine::ValueNames>>) -> Self {
        Self {
            event,
            names,
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// Returns the event encoded (names included), encoding it on the first call.
    pub fn bytes(&self) -> &bytes::Bytes {
        self.bytes
            .get_or_init(|| match (&self.names, &self.event.kind) {
                (Some(names), Some(Kind::Update(u))) => encode_named(&self.event, u, names).into(),
                _ => prost::Message::encode_to_vec(&self.event).into(),
            })
    }

    /// Returns the event as sent, names included.
    fn to_event(&self) -> pb::Event {
        let mut e = self.event.clone();
        if let (Some(names), Some(Kind::Update(u))) = (&self.names, &mut e.kind) {
            names.fill(u);
        }
        e
    }
}

/// Encodes `event`, whose update `update` has values without names, writing each value's
/// name from `names` (each name encoded once, at start): the bytes prost gives for the event
/// with its names filled in. The fields are destructured exhaustively, so a field added to
/// the messages fails to compile here until it is encoded.
fn encode_named(
    event: &pb::Event,
    update: &pb::IndicatorUpdate,
    names: &crate::engine::ValueNames,
) -> Vec<u8> {
    use prost::encoding::{WireType, double, encode_key, encode_varint, int64, uint64};
    let pb::Event {
        seq,
        ts_sent_ns,
        resume_token,
        history,
        kind: _,
    } = event;
    let pb::IndicatorUpdate {
        symbol,
        timeframe: _,
        ts_event_ns,
        ts_recv_ns,
        price,
        values,
        idempotency_key,
        symbol_seq,
        ts_route_ns,
        ts_engine_ns,
    } = update;
    // Proto3: a field with its default value is not written (as prost does).
    fn put_str(tag: u32, v: &str, buf: &mut Vec<u8>) {
        if !v.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(v.len() as u64, buf);
            buf.extend_from_slice(v.as_bytes());
        }
    }
    fn put_i64(tag: u32, v: &i64, buf: &mut Vec<u8>) {
        if *v != 0 {
            int64::encode(tag, v, buf);
        }
    }
    fn put_u64(tag: u32, v: &u64, buf: &mut Vec<u8>) {
        if *v != 0 {
            uint64::encode(tag, v, buf);
        }
    }
    // A value's own name if it has one, else its name from `names`.
    let name = |i: usize, v: &pb::IndicatorValue| -> Option<&[u8]> {
        match names.encoded.get(i) {
            Some(n) if v.name.is_empty() => Some(n),
            _ => None,
        }
    };
    let mut update_buf = Vec::with_capacity(96 + values.len() * 32);
    put_str(1, symbol, &mut update_buf);
    // The engine's per-tick updates come without it (see `ValueNames`).
    put_str(2, crate::engine::update_timeframe(update), &mut update_buf);
    put_i64(3, ts_event_ns, &mut update_buf);
    put_i64(4, ts_recv_ns, &mut update_buf);
    if *price != 0.0 {
        double::encode(5, price, &mut update_buf);
    }
    let mut value_buf = Vec::with_capacity(48);
    for (i, v) in values.iter().enumerate() {
        value_buf.clear();
        match name(i, v) {
            Some(n) => value_buf.extend_from_slice(n),
            None => put_str(1, &v.name, &mut value_buf),
        }
        if v.value != 0.0 {
            double::encode(2, &v.value, &mut value_buf);
        }
        if v.warm {
            prost::encoding::bool::encode(3, &v.warm, &mut value_buf);
        }
        encode_key(6, WireType::LengthDelimited, &mut update_buf);
        encode_varint(value_buf.len() as u64, &mut update_buf);
        update_buf.extend_from_slice(&value_buf);
    }
    put_str(7, idempotency_key, &mut update_buf);
    put_u64(8, symbol_seq, &mut update_buf);
    put_i64(9, ts_route_ns, &mut update_buf);
    put_i64(10, ts_engine_ns, &mut update_buf);
    let mut buf = Vec::with_capacity(update_buf.len() + resume_token.len() + 24);
    put_u64(1, seq, &mut buf);
    put_i64(2, ts_sent_ns, &mut buf);
    put_str(3, resume_token, &mut buf);
    if *history {
        prost::encoding::bool::encode(4, history, &mut buf);
    }
    encode_key(10, WireType::LengthDelimited, &mut buf);
    encode_varint(update_buf.len() as u64, &mut buf);
    buf.extend_from_slice(&update_buf);
    buf
}

/// An event on its way to one subscriber: a published event whose shared bytes go out as they
/// are, followed by the subscriber's own `ts_sent_ns` (protobuf lets a field come after those
/// of higher numbers), or an event of this subscriber only (a gap, stored history).
#[derive(Debug, Clone)]
pub enum WireEvent {
    /// A published event, stamped with the time it was put on this stream.
    Shared(Arc<Published>, i64),
    /// An event for this subscriber only.
    Own(pb::Event),
}

impl Default for WireEvent {
    fn default() -> Self {
        WireEvent::Own(pb::Event::default())
    }
}

impl WireEvent {
    /// Returns the event (`ts_sent_ns` aside).
    pub fn event(&self) -> &pb::Event {
        match self {
            WireEvent::Shared(p, _) => &p.event,
            WireEvent::Own(e) => e,
        }
    }

    /// Returns the event as a message of its own, `ts_sent_ns` set (for in-process readers).
    pub fn into_event(self) -> pb::Event {
        match self {
            WireEvent::Shared(p, ts) => pb::Event {
                ts_sent_ns: ts,
                ..p.to_event()
            },
            WireEvent::Own(e) => e,
        }
    }
}

/// `Event.ts_sent_ns`'s field number.
const TS_SENT_FIELD: u32 = 2;

impl prost::Message for WireEvent {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        match self {
            WireEvent::Shared(p, ts) => {
                buf.put_slice(p.bytes());
                if *ts != 0 {
                    prost::encoding::int64::encode(TS_SENT_FIELD, ts, buf);
                }
            }
            WireEvent::Own(e) => e.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only servers encode it; decoding (for completeness) builds an event of its own.
        if let WireEvent::Shared(..) = self {
            *self = WireEvent::Own(std::mem::take(self).into_event());
        }
        match self {
            WireEvent::Own(e) => e.merge_field(tag, wire_type, buf, ctx),
            WireEvent::Shared(..) => unreachable!("replaced above"),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            WireEvent::Shared(p, ts) => {
                p.bytes().len()
                    + if *ts != 0 {
                        prost::encoding::int64::encoded_len(TS_SENT_FIELD, ts)
                    } else {
                        0
                    }
            }
            WireEvent::Own(e) => e.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = WireEvent::default();
    }
}

/// The retained events, newest last, and the sequence number of the last event published.
struct Retained {
    events: VecDeque<Arc<Published>>,
    head: u64,
    /// Events retained and not yet sent to the live receivers, oldest first: empty unless
    /// sending is deferred ([`Hub::defer`]).
    unsent: Vec<Arc<Published>>,
    /// Open [`Deferred`] guards.
    deferring: usize,
}

impl Retained {
    /// Returns the sequence number of the oldest retained event (`head + 1` when none is).
    fn oldest(&self) -> u64 {
        self.events.front().map_or(self.head + 1, |e| e.event.seq)
    }
}

/// Sending deferred by [`Hub::defer`], until dropped.
pub struct Deferred<'a>(&'a Hub);

impl Drop for Deferred<'_> {
    fn drop(&mut self) {
        let mut r = lock(&self.0.retained);
        r.deferring -= 1;
        if r.deferring == 0 {
            self.0.send_unsent(&mut r);
        }
    }
}

/// The fan-out point between the engine and every subscriber.
pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    retained: Arc<Mutex<Retained>>,
    window: usize,
    policy: SlowSubscriber,
    queue: usize,
    instance: Arc<str>,
    subscribers: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    closed: CancellationToken,
}

fn lock(m: &Mutex<Retained>) -> MutexGuard<'_, Retained> {
    // Nothing that holds the lock can leave the ring inconsistent: a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Returns a hub whose subscribers may fall `capacity` events behind before losing any,
    /// with the default resume window and the drop-oldest policy.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_options(HubOptions {
            queue: capacity,
            ..HubOptions::default()
        })
    }

    /// Returns a hub serving subscribers as `options` say.
    pub fn with_options(options: HubOptions) -> Arc<Self> {
        let (tx, _) = broadcast::channel(options.queue.max(1));
        // 64 random bits (std's hasher keys are drawn from the OS) name this process's stream.
        let instance = format!(
            "{:016x}",
            std::collections::hash_map::RandomState::new().hash_one(clock::now_ns())
        );
        Arc::new(Self {
            tx,
            retained: Arc::new(Mutex::new(Retained {
                events: VecDeque::with_capacity(options.resume_window.min(1 << 16)),
                head: 0,
                unsent: Vec::new(),
                deferring: 0,
            })),
            window: options.resume_window,
            policy: options.slow_subscriber,
            queue: options.queue.max(1),
            instance: instance.into(),
            subscribers: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            closed: CancellationToken::new(),
        })
    }

    /// Returns the id of this hub's event stream, the first part of its resume tokens.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// Returns the sequence number of the last event published (0: none yet).
    pub fn last_seq(&self) -> u64 {
        lock(&self.retained).head
    }

    /// Sends an event to every current subscriber and retains it for resumes; never waits
    /// (beyond a short lock shared with other publishers and with resuming subscribers).
    pub fn publish(&self, kind: Kind) {
        let mut r = lock(&self.retained);
        r.head += 1;
        let event = pb::Event {
            seq: r.head,
            ts_sent_ns: 0,
            resume_token: format!("{}:{}", self.instance, r.head),
            kind: Some(kind),
            history: false,
        };
        // Encoded once, by the first subscriber task that sends it.
        self.push(r, Arc::new(Published::new(event, None)));
    }

    /// Publishes an indicator update of the engine, whose values come without their names:
    /// `names` gives them (see [`crate::engine::ValueNames`]), written into the encoding from
    /// their encoded form, so no name is copied per update.
    pub fn publish_update(
        &self,
        update: pb::IndicatorUpdate,
        names: Arc<crate::engine::ValueNames>,
    ) {
        let r = lock(&self.retained);
        let seq = r.head + 1;
        let event = pb::Event {
            seq,
            ts_sent_ns: 0,
            resume_token: format!("{}:{seq}", self.instance),
            kind: Some(Kind::Update(update)),
            history: false,
        };
        self.push(r, Arc::new(Published::new(event, Some(names))));
    }

    /// Appends `ev`, the event after the last one (`r.head + 1`), to the retained ring and
    /// sends it to every subscriber; the lock `r` is held throughout.
    fn push(&self, mut r: MutexGuard<'_, Retained>, ev: Arc<Published>) {
        r.head = ev.event.seq;
        let evicted = if self.window > 0 {
            let old = (r.events.len() >= self.window).then(|| r.events.pop_front());
            r.events.push_back(ev.clone());
            old.flatten()
        } else {
            None
        };
        r.unsent.push(ev);
        // Deferred, unless that would make a burst that alone fills a subscriber's queue.
        if r.deferring == 0 || r.unsent.len() >= self.queue.div_ceil(2) {
            self.send_unsent(&mut r);
        }
        drop(r);
        // The evicted event may be the last reference: free it outside the lock.
        drop(evicted);
    }

    /// Sends the events published and not yet sent to the live subscribers, in order (no
    /// subscriber is not an error: an event simply has no reader).
    fn send_unsent(&self, r: &mut Retained) {
        for ev in r.unsent.drain(..) {
            let _ = self.tx.send(ev);
        }
    }

    /// Holds back sending to live subscribers until the guard is dropped, then sends what was
    /// published meanwhile, in order: one wake-up of each subscriber's task for a batch of
    /// events rather than one per event (a burst of half a subscriber queue goes at once).
    /// Events are retained (and sequenced) at once, so a subscriber that resumes meanwhile
    /// misses nothing and gets nothing twice.
    pub fn defer(&self) -> Deferred<'_> {
        lock(&self.retained).deferring += 1;
        Deferred(self)
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

    /// Returns a live stream of the events matching `filter`, with gap events where some were
    /// lost; under the disconnect policy it simply ends where the subscriber fell behind.
    pub fn subscribe(&self, filter: Filter) -> impl Stream<Item = pb::Event> + Send + 'static {
        self.subscribe_from(filter, "")
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()))
    }

    /// Returns a cursor over the events matching `filter` published from now on, and the
    /// sequence number of the last event published before it (its position).
    pub(crate) fn cursor(&self, filter: Filter) -> (Cursor, u64) {
        let (rx, head) = {
            let r = lock(&self.retained);
            // Taken under the lock: the receiver gets exactly the events after `head`.
            (self.tx.subscribe(), r.head)
        };
        let cursor = Cursor {
            filter,
            rx,
            retained: self.retained.clone(),
            instance: self.instance.clone(),
            policy: self.policy,
            queue: self.queue,
            dropped: self.dropped.clone(),
            pending: VecDeque::new(),
            replay_next: head + 1,
            replay_end: head,
            last: head,
            lagged: 0,
            done: false,
            _guard: SubscriberGuard::new(self.subscribers.clone()),
        };
        (cursor, head)
    }

    /// Points `cursor` (which has not been read yet) at the retained events after `after` then
    /// the live ones, with a fresh live receiver (the old one may have lagged while the cursor
    /// was not read); events after `after` no longer retained are skipped. Returns the
    /// sequence number of the first event it replays (or of the next live one).
    pub(crate) fn rewind(&self, cursor: &mut Cursor, after: u64) -> u64 {
        let r = lock(&self.retained);
        let from = (after + 1).max(r.oldest());
        cursor.rx = self.tx.subscribe();
        cursor.replay_next = from;
        cursor.replay_end = r.head;
        cursor.last = from - 1;
        cursor.lagged = 0;
        from
    }

    /// Returns how many events the hub retains for resumes (`--resume-window`).
    pub(crate) fn resume_window(&self) -> usize {
        self.window
    }

    /// Returns the sequence number of the oldest retained event (the next one when none is).
    pub(crate) fn oldest_retained(&self) -> u64 {
        lock(&self.retained).oldest()
    }

    /// Returns the stream of the events matching `filter` after the position `resume_token`
    /// names (live from now on when it is empty): first the retained events after it, then
    /// live ones. An error item (`RESOURCE_EXHAUSTED`, disconnect policy) ends the stream.
    pub fn subscribe_from(
        &self,
        filter: Filter,
        resume_token: &str,
    ) -> impl Stream<Item = Result<pb::Event, Status>> + Send + 'static {
        self.subscribe_wire(filter, resume_token)
            .map(|r| r.map(WireEvent::into_event))
    }

    /// [`Self::subscribe_from`] as the gRPC server sends it: shared encodings of published
    /// events, each stamped for this subscriber.
    pub fn subscribe_wire(
        &self,
        filter: Filter,
        resume_token: &str,
    ) -> impl Stream<Item = Result<WireEvent, Status>> + Send + 'static {
        let (mut cursor, head) = self.cursor(filter);
        let token = resume_token.trim();
        if !token.is_empty() {
            match parse_token(token) {
                Some((instance, _)) if instance != &*self.instance => {
                    cursor.gap(0, GAP_FOREIGN_TOKEN);
                }
                Some((_, seq)) if seq <= head => {
                    cursor.last = seq;
                    cursor.replay_next = seq + 1;
                }
                _ => cursor.gap(0, GAP_INVALID_TOKEN),
            }
        }
        futures::stream::unfold(cursor, |mut c| async move {
            let item = c.next().await?;
            Some((item, c))
        })
        .take_until(self.closed.clone().cancelled_owned())
    }
}

/// Returns the instance and sequence number a resume token names.
fn parse_token(token: &str) -> Option<(&str, u64)> {
    let (instance, seq) = token.rsplit_once(':')?;
    Some((instance, seq.parse().ok()?))
}

/// Events copied from the retained ring per lock while a resumed subscriber catches up.
const REPLAY_CHUNK: usize = 1024;

/// One subscriber's position: what it still has to replay, its live receiver, and the events
/// ready to go out.
pub(crate) struct Cursor {
    filter: Filter,
    rx: broadcast::Receiver<Arc<Published>>,
    retained: Arc<Mutex<Retained>>,
    instance: Arc<str>,
    policy: SlowSubscriber,
    queue: usize,
    dropped: Arc<AtomicU64>,
    /// Events ready to be sent, already filtered and stamped.
    pending: VecDeque<WireEvent>,
    /// Next retained event to replay, up to `replay_end` (the last event published before the
    /// live receiver was taken).
    replay_next: u64,
    replay_end: u64,
    /// Sequence number of the last event this stream went past (sent or filtered out).
    last: u64,
    /// Events the live receiver lost since `last` and not yet reported (drop-oldest policy):
    /// reported, counted by the filter, when the next event shows where the loss ends.
    lagged: u64,
    done: bool,
    _guard: SubscriberGuard,
}

impl Cursor {
    fn token(&self, seq: u64) -> String {
        format!("{}:{seq}", self.instance)
    }

    /// Queues a gap event; its token is the current position.
    fn gap(&mut self, dropped: u64, reason: &str) {
        self.pending.push_back(WireEvent::Own(pb::Event {
            seq: 0,
            ts_sent_ns: clock::now_ns(),
            resume_token: self.token(self.last),
            kind: Some(Kind::Gap(pb::Gap {
                dropped,
                reason: reason.into(),
                history_from_ns: 0,
            })),
            history: false,
        }));
    }

    /// Returns the event to send if `ev` is new to this stream and passes its filter.
    fn accept(&mut self, ev: &Arc<Published>) -> Option<WireEvent> {
        if ev.event.seq <= self.last {
            return None;
        }
        self.last = ev.event.seq;
        if !self.filter.matches(&ev.event) {
            return None;
        }
        Some(WireEvent::Shared(ev.clone(), clock::now_ns()))
    }

    /// Returns how many events with sequence numbers in `from..=to` this subscriber's filter
    /// matches, looked up in the retained ring; an event no longer retained counts (what it
    /// was cannot be known).
    fn matching(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        let r = lock(&self.retained);
        let oldest = r.oldest();
        let mut n = oldest.saturating_sub(from).min(to + 1 - from);
        let start = from.max(oldest);
        if start <= to {
            let first = (start - oldest) as usize;
            n += r
                .events
                .range(first.min(r.events.len())..)
                .take_while(|e| e.event.seq <= to)
                .filter(|e| self.filter.matches(&e.event))
                .count() as u64;
        }
        n
    }

    /// Reports the events lost before the live event `next` (if any), as many as the filter
    /// matches: a gap event whose token is the position before them.
    fn report_lag(&mut self, next: u64) {
        if std::mem::take(&mut self.lagged) == 0 {
            return;
        }
        let matched = self.matching(self.last + 1, next.saturating_sub(1));
        if matched > 0 {
            self.gap(matched, GAP_QUEUE_FULL);
        }
    }

    /// Copies the next chunk of retained events to replay into `pending`.
    fn replay_chunk(&mut self) {
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        let lost = {
            let r = lock(&self.retained);
            let oldest = r.oldest();
            let lost = oldest.saturating_sub(self.replay_next);
            let from = self.replay_next.max(oldest);
            let start = (from - oldest) as usize;
            chunk.extend(
                r.events
                    .range(start.min(r.events.len())..)
                    .take_while(|e| e.event.seq <= self.replay_end)
                    .take(REPLAY_CHUNK)
                    .cloned(),
            );
            lost.min(self.replay_end + 1 - self.replay_next)
        };
        if lost > 0 {
            // Older than the window (or evicted while this subscriber caught up): these events
            // are gone for good, so the gap's token is the position after them.
            self.last = self.replay_next + lost - 1;
            self.replay_next += lost;
            metrics::counter!("tickflow_indicators_resume_lost_total").increment(lost);
            self.gap(lost, GAP_WINDOW_EXCEEDED);
        }
        match chunk.last() {
            Some(e) => self.replay_next = e.event.seq + 1,
            None => self.replay_next = self.replay_end + 1,
        }
        for ev in &chunk {
            if let Some(out) = self.accept(ev) {
                self.pending.push_back(out);
            }
        }
    }

    /// Returns the next item of the stream, or `None` when it ends.
    pub(crate) async fn next(&mut self) -> Option<Result<WireEvent, Status>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if self.replay_next <= self.replay_end {
                self.replay_chunk();
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    self.report_lag(ev.event.seq);
                    if let Some(out) = self.accept(&ev) {
                        self.pending.push_back(out);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("tickflow_indicators_events_dropped_total").increment(n);
                    match self.policy {
                        SlowSubscriber::DropOldest => {
                            // Reported with the next event (see `report_lag`); the gap's token
                            // stays before the lost events: resuming from it replays them if
                            // they are still retained.
                            self.lagged += n;
                        }
                        SlowSubscriber::Disconnect => {
                            self.done = true;
                            metrics::counter!("tickflow_indicators_subscribers_disconnected_total")
                                .increment(1);
                            return Some(Err(Status::resource_exhausted(format!(
                                "subscriber fell more than {} events behind and was disconnected; \
                                 resubscribe with the resume token of the last event received ({})",
                                self.queue,
                                self.token(self.last)
                            ))));
                        }
                    }
                }
                Err(RecvError::Closed) => {
                    // The hub closed: report a loss not yet reported, up to its last event.
                    let head = lock(&self.retained).head;
                    self.report_lag(head + 1);
                    self.done = true;
                }
            }
        }
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

    /// Returns the filter without its symbols: the same kinds and timeframes of every symbol.
    pub(crate) fn with_any_symbol(&self) -> Filter {
        Filter {
            symbols: HashSet::new(),
            ..self.clone()
        }
    }

    /// Returns whether the filter takes per-tick indicator updates and nothing else.
    pub(crate) fn only_tick_updates(&self) -> bool {
        self.kinds.len() == 1
            && self.kinds.contains(&(pb::EventKind::Update as i32))
            && self.timeframes.len() == 1
            && self.timeframes.contains("tick")
    }

    /// Returns the symbols the filter names (empty: every symbol).
    pub fn symbols(&self) -> &HashSet<String> {
        &self.symbols
    }

    /// Returns whether `ev` passes the filter.
    pub fn matches(&self, ev: &pb::Event) -> bool {
        let (kind, symbol, tf) = match &ev.kind {
            Some(Kind::Update(u)) => (
                pb::EventKind::Update,
                &u.symbol,
                crate::engine::update_timeframe(u),
            ),
            Some(Kind::Bar(b)) => (pb::EventKind::Bar, &b.symbol, b.timeframe.as_str()),
            Some(Kind::Signal(s)) => (pb::EventKind::Signal, &s.symbol, s.timeframe.as_str()),
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
    history: Option<Arc<dyn HistoryReader>>,
    /// The indicator configuration the history of a `Subscribe` with `since_ns` is
    /// recomputed with (the server's).
    engine: crate::engine::EngineConfig,
    seam_wait: std::time::Duration,
}

/// How long, by default, a `Subscribe` with `since_ns` waits at the seam for the persister to
/// store the ticks between the history read and the live stream.
pub const DEFAULT_SEAM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Service {
    /// Returns the service over `hub`, answering snapshots through `snapshots`; without a
    /// store, `GetHistory` and `GetBars` answer FAILED_PRECONDITION (see [`Self::with_history`]).
    pub fn new(hub: Arc<Hub>, snapshots: mpsc::Sender<SnapshotQuery>) -> Self {
        Self {
            hub,
            snapshots,
            history: None,
            engine: crate::engine::EngineConfig::default(),
            seam_wait: DEFAULT_SEAM_WAIT,
        }
    }

    /// Returns the service recomputing the history of a `Subscribe` with `since_ns` with
    /// `engine` (the configuration of the engine that feeds the hub) and waiting up to
    /// `seam_wait` at the seam for the persister (see [`crate::since`]).
    pub fn with_engine(
        mut self,
        engine: crate::engine::EngineConfig,
        seam_wait: std::time::Duration,
    ) -> Self {
        self.engine = engine;
        self.seam_wait = seam_wait;
        self
    }

    /// Returns the service serving `GetHistory` and `GetBars` from `reader` (the store the
    /// pipeline writes to).
    pub fn with_history(mut self, reader: Arc<dyn HistoryReader>) -> Self {
        self.history = Some(reader);
        self
    }
}

impl Service {
    /// Answers a `Subscribe`: the stream of the events the request asks for, as the server
    /// sends them (published events' shared encodings, see [`WireEvent`]).
    pub fn subscribe_wire(&self, r: &pb::SubscribeRequest) -> Result<WireStream, Status> {
        let filter = Filter::from_request(r);
        tracing::info!(
            symbols = ?r.symbols,
            kinds = ?r.kinds,
            timeframes = ?r.timeframes,
            resume_token = %r.resume_token,
            since_ns = r.since_ns,
            "subscriber joined"
        );
        if r.since_ns != 0 {
            let stream = crate::since::subscribe(
                &self.hub,
                self.history.clone(),
                &self.engine,
                r,
                self.seam_wait,
            )?;
            return Ok(Box::pin(
                stream.take_until(self.hub.closed.clone().cancelled_owned()),
            ));
        }
        Ok(Box::pin(self.hub.subscribe_wire(filter, &r.resume_token)))
    }
}

/// A `Subscribe` stream as the server sends it.
pub type WireStream = Pin<Box<dyn Stream<Item = Result<WireEvent, Status>> + Send + 'static>>;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SignalService for Service {
    type SubscribeStream = EventStream;
    type GetHistoryStream = crate::history::TickChunks;
    type GetBarsStream = crate::history::BarChunks;

    async fn get_history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<Self::GetHistoryStream>, Status> {
        crate::history::ticks(self.history.clone(), request.into_inner()).map(Response::new)
    }

    async fn get_bars(
        &self,
        request: Request<pb::BarsRequest>,
    ) -> Result<Response<Self::GetBarsStream>, Status> {
        crate::history::bars(self.history.clone(), request.into_inner()).map(Response::new)
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // The gRPC server routes Subscribe to `subscribe_wire` (see `SignalRoutes`); this is
        // the same stream as messages of their own, for callers of the trait.
        let stream = self.subscribe_wire(request.get_ref())?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(WireEvent::into_event)),
        )))
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

/// `SignalService` as served: `Subscribe` answered with [`WireEvent`]s (the shared encoding of
/// each published event, so an event is encoded once whatever the number of subscribers), the
/// other methods by the generated server. Same wire format, so every client sees one service.
#[derive(Clone)]
struct SignalRoutes {
    subscribe: SubscribeFn,
    /// The other methods; `None`: they answer UNIMPLEMENTED (a server of subscriptions only).
    generated: Option<SignalServiceServer<Service>>,
}

/// What answers a `Subscribe`.
pub type SubscribeFn =
    Arc<dyn Fn(&pb::SubscribeRequest) -> Result<WireStream, Status> + Send + Sync>;

impl SignalRoutes {
    fn new(service: Service) -> Self {
        let service = Arc::new(service);
        let generated = Some(SignalServiceServer::from_arc(service.clone()));
        Self {
            subscribe: Arc::new(move |r| service.subscribe_wire(r)),
            generated,
        }
    }
}

impl tonic::server::NamedService for SignalRoutes {
    const NAME: &'static str = pb::signal_service_server::SERVICE_NAME;
}

/// `Subscribe` of [`SignalRoutes`].
struct SubscribeRoute(SubscribeFn);

impl tonic::server::ServerStreamingService<pb::SubscribeRequest> for SubscribeRoute {
    type Response = WireEvent;
    type ResponseStream = WireStream;
    type Future = tonic::codegen::BoxFuture<Response<WireStream>, Status>;

    fn call(&mut self, request: Request<pb::SubscribeRequest>) -> Self::Future {
        let answer = (self.0)(request.get_ref()).map(Response::new);
        Box::pin(async move { answer })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for SignalRoutes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() != "/tickflow.v1.SignalService/Subscribe" {
            return match &mut self.generated {
                Some(generated) => generated.call(req),
                None => {
                    Box::pin(async { Ok(Status::unimplemented("subscriptions only").into_http()) })
                }
            };
        }
        let route = SubscribeRoute(self.subscribe.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<WireEvent, pb::SubscribeRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .server_streaming(route, req)
                .await)
        })
    }
}

/// Transport options of the gRPC server.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// When set, every `SignalService` call (`Subscribe`, `GetSnapshot`, `GetHistory`,
    /// `GetBars`) requires the metadata `authorization: Bearer <token>` (health and reflection
    /// stay open).
    pub auth_token: Option<String>,
    /// PEM certificate chain and private key: serve TLS instead of plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Returns whether two byte strings are equal, in time independent of where they differ
/// (`subtle`'s constant-time comparison).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Returns whether an `authorization` value presents `token` with the Bearer scheme. The
/// scheme is case-insensitive and may be followed by several spaces (RFC 7235); the token is
/// compared in constant time.
fn bearer_matches(value: &[u8], token: &[u8]) -> bool {
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, rest) = value.split_at(space);
    let credentials = rest.trim_ascii();
    scheme.eq_ignore_ascii_case(b"bearer") && constant_time_eq(credentials, token)
}

/// Returns the interceptor that checks the bearer token, if one is required.
fn authorize(
    token: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    let expected: Option<Arc<str>> = token.map(Arc::from);
    move |req: Request<()>| {
        let Some(expected) = &expected else {
            return Ok(req);
        };
        match req.metadata().get("authorization").map(|v| v.as_bytes()) {
            Some(got) if bearer_matches(got, expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing metadata `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Serves `SignalService`, gRPC health and reflection on `listener` (plaintext, no auth) until
/// `shutdown` fires and every stream has ended.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, service, ServeOptions::default(), shutdown).await
}

/// Serves `SignalService`, gRPC health and reflection on `listener` with `options` (bearer
/// token, TLS) until `shutdown` fires and every stream has ended.
pub async fn serve_with(
    listener: TcpListener,
    service: Service,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_routes(listener, SignalRoutes::new(service), options, shutdown).await
}

/// Serves `Subscribe` alone, answered by `subscribe`, with the transport of [`serve_with`]
/// (the other `SignalService` methods answer UNIMPLEMENTED): the bare-server floor of the
/// benchmarks, which streams pre-encoded events without the pipeline's hub.
pub async fn serve_subscriptions(
    listener: TcpListener,
    subscribe: SubscribeFn,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = SignalRoutes {
        subscribe,
        generated: None,
    };
    serve_routes(listener, routes, ServeOptions::default(), shutdown).await
}

async fn serve_routes(
    listener: TcpListener,
    routes: SignalRoutes,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SignalServiceServer<Service>>().await;
    // Reflection in both versions clients speak (grpcio-reflection, older grpcurl and GUI
    // clients ask v1alpha), listing the health service next to SignalService.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    // Nagle's algorithm would hold small event frames back until the client's delayed ACK
    // (tens of ms at low rates); `Server::tcp_nodelay` only covers listeners tonic binds itself.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    });
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some((cert, key)) = &options.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let auth = authorize(options.auth_token.filter(|t| !t.is_empty()));
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            routes, auth,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// A running gRPC server (SignalService, health, reflection): how both modes serve bots.
pub struct GrpcServer {
    /// The address it is bound to.
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GrpcServer {
    /// Binds `addr` and serves `service` (see [`Service::new`]) with `options` (token, TLS).
    pub async fn start(
        addr: std::net::SocketAddr,
        options: ServeOptions,
        service: Service,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr} for gRPC"))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            tls = options.tls.is_some(),
            auth = options.auth_token.is_some(),
            history = service.history.is_some(),
            "gRPC SignalService listening"
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, service, options, stop.clone()));
        Ok(Self { addr, stop, task })
    }

    /// Returns a token that stops the server when cancelled (for teardown on an early return).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops serving once every open stream has ended (the hub closes them) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| anyhow::anyhow!("gRPC server panicked: {e}"))?
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("bearer s3cret", true),
            ("BEARER s3cret", true),
            ("Bearer   s3cret", true),
            ("Bearer S3CRET", false),
            ("Bearer s3cret2", false),
            ("Basic s3cret", false),
            ("Bearers3cret", false),
            ("s3cret", false),
            ("", false),
        ] {
            assert_eq!(bearer_matches(value.as_bytes(), b"s3cret"), ok, "{value:?}");
        }
    }

    #[test]
    fn the_interceptor_answers_unauthenticated_without_the_token() {
        let mut check = authorize(Some("s3cret".into()));
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
            r
        };
        assert!(check(with("bearer s3cret")).is_ok());
        let e = check(with("Bearer nope")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = check(Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut open = authorize(None);
        assert!(open(Request::new(())).is_ok());
    }
}

#[cfg(test)]
mod gap_tests {
    use super::*;

    fn update(symbol: &str) -> Kind {
        Kind::Update(pb::IndicatorUpdate {
            symbol: symbol.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn an_update_published_without_names_is_sent_with_them() {
        use crate::engine::{Engine, EngineConfig};
        use prost::Message;
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        let hub = Hub::new(64);
        let mut sub = Box::pin(hub.subscribe_wire(Filter::default(), ""));
        let names = engine.value_names("tick").unwrap().clone();
        for i in 0..30 {
            let tick = tick_core::testenv::tick("sim", "EURUSD", 1_000 + i, 110_000 + i % 7);
            let mut u = engine.on_tick(tick).update.unwrap();
            assert!(
                u.values.iter().all(|v| v.name.is_empty()),
                "the engine sends no names"
            );
            assert_eq!(u.timeframe, "", "nor the per-tick timeframe");
            if i == 29 {
                // A value that has a name of its own keeps it.
                u.values[0].name = "own".into();
            }
            hub.publish_update(u, names.clone());
            let out = sub.next().await.unwrap().unwrap();
            let decoded = pb::Event::decode(out.encode_to_vec().as_slice()).unwrap();
            assert_eq!(
                decoded,
                out.clone().into_event(),
                "the bytes are the event's"
            );
            let Some(Kind::Update(d)) = &decoded.kind else {
                panic!("an update")
            };
            let got: Vec<&str> = d.values.iter().map(|v| v.name.as_str()).collect();
            let mut want: Vec<&str> = names.names.iter().map(String::as_str).collect();
            if i == 29 {
                want[0] = "own";
            }
            assert_eq!(got, want);
            assert_eq!(
                d.timeframe, "tick",
                "the timeframe is written from the names"
            );
            assert_eq!(
                d.values[0].warm,
                i >= 19,
                "sma(20) is warm from its 20th input: {i}"
            );
            assert_eq!(
                decoded.resume_token,
                format!("{}:{}", hub.instance_id(), i + 1)
            );
        }
    }

    #[test]
    fn a_filter_takes_an_update_without_timeframe_as_a_per_tick_one() {
        let filter = |tf: &str| {
            Filter::from_request(&pb::SubscribeRequest {
                timeframes: vec![tf.into()],
                ..Default::default()
            })
        };
        let ev = pb::Event {
            kind: Some(update("EURUSD")),
            ..Default::default()
        };
        assert!(filter("tick").matches(&ev));
        assert!(!filter("1s").matches(&ev));
    }

    #[tokio::test]
    async fn deferred_events_reach_live_and_resuming_subscribers_once_in_order() {
        use futures::FutureExt;
        let hub = Hub::new(64);
        let mut live = Box::pin(hub.subscribe(Filter::default()));
        hub.publish(update("EURUSD"));
        let first = live.next().await.unwrap();
        let deferred = hub.defer();
        let nested = hub.defer();
        for _ in 0..3 {
            hub.publish(update("EURUSD"));
        }
        assert_eq!(hub.last_seq(), 4, "sequenced at once");
        assert!(live.next().now_or_never().is_none(), "held back");
        // A subscriber resuming meanwhile replays them from the retained ring.
        let mut resumed = Box::pin(hub.subscribe_from(Filter::default(), &first.resume_token));
        drop(nested);
        assert!(
            live.next().now_or_never().is_none(),
            "held until the last guard"
        );
        drop(deferred);
        hub.publish(update("EURUSD"));
        for seq in 2..=5 {
            assert_eq!(live.next().await.unwrap().seq, seq);
            assert_eq!(resumed.next().await.unwrap().unwrap().seq, seq);
        }
        assert!(live.next().now_or_never().is_none());
        assert!(resumed.next().now_or_never().is_none(), "no event twice");
    }

    #[tokio::test]
    async fn every_subscriber_sends_the_one_encoding_of_an_event_stamped_for_itself() {
        use prost::Message;
        let hub = Hub::new(16);
        let mut a = Box::pin(hub.subscribe_wire(Filter::default(), ""));
        let mut b = Box::pin(hub.subscribe_wire(Filter::default(), ""));
        hub.publish(update("EURUSD"));
        let x = a.next().await.unwrap().unwrap();
        let y = b.next().await.unwrap().unwrap();
        let (WireEvent::Shared(p, tx), WireEvent::Shared(q, _)) = (&x, &y) else {
            panic!("published events are shared: {x:?} {y:?}");
        };
        assert!(Arc::ptr_eq(p, q), "one encoding for both subscribers");
        // What goes on the wire is a valid Event: the shared bytes, then this stream's stamp.
        let wire = x.encode_to_vec();
        assert_eq!(wire.len(), x.encoded_len());
        let decoded = pb::Event::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded, x.clone().into_event());
        assert_eq!(decoded.ts_sent_ns, *tx);
        assert!(*tx > 0);
        assert_eq!(decoded.seq, 1);
        assert_eq!(decoded.resume_token, format!("{}:1", hub.instance_id()));
        assert_eq!(decoded.kind, Some(update("EURUSD")));
    }

    #[tokio::test]
    async fn a_gap_counts_only_the_lost_events_the_filter_matches() {
        let hub = Hub::with_options(HubOptions {
            queue: 16,
            resume_window: 10_000,
            slow_subscriber: SlowSubscriber::DropOldest,
        });
        let filter = Filter {
            symbols: ["EURUSD".to_string()].into(),
            ..Filter::default()
        };
        let mut stream = Box::pin(hub.subscribe(filter));
        // 1,000 events, every third one EURUSD, published while the subscriber reads nothing.
        let symbol = |seq: u64| if seq % 3 == 0 { "EURUSD" } else { "GBPUSD" };
        for seq in 1..=1000u64 {
            hub.publish(update(symbol(seq)));
        }
        let (mut dropped, mut delivered, mut gap_at) = (0, 0, None);
        while let Some(ev) = stream.next().await {
            match &ev.kind {
                Some(Kind::Gap(g)) => {
                    assert_eq!(g.reason, GAP_QUEUE_FULL);
                    dropped += g.dropped;
                    gap_at = parse_token(&ev.resume_token).map(|(_, s)| s);
                }
                Some(Kind::Update(u)) => {
                    assert_eq!(u.symbol, "EURUSD");
                    delivered += 1;
                    // The loss ends where delivery resumes: the gap counted exactly the
                    // EURUSD events between its token and this event.
                    if delivered == 1 {
                        let from = gap_at.expect("a gap before the first event") + 1;
                        let lost = (from..ev.seq).filter(|s| symbol(*s) == "EURUSD").count();
                        assert_eq!(dropped, lost as u64);
                    }
                    if ev.seq == 999 {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(dropped > 300, "most were lost: {dropped}");
        assert_eq!(
            dropped + delivered,
            333,
            "every EURUSD event delivered or counted"
        );
        assert!(hub.dropped() > dropped, "the hub counts every lost event");
    }

    /// Reads `stream` until an event with a sequence number of at least `until`; returns the
    /// items read, that one included.
    async fn read_to(
        stream: &mut (impl Stream<Item = Result<pb::Event, Status>> + Unpin),
        until: u64,
    ) -> Vec<pb::Event> {
        let mut out = Vec::new();
        loop {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("no error");
            let done = ev.seq >= until;
            out.push(ev);
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn resuming_from_a_gap_replays_exactly_the_lost_events_the_filter_matches() {
        let hub = Hub::with_options(HubOptions {
            queue: 16,
            resume_window: 10_000,
            slow_subscriber: SlowSubscriber::DropOldest,
        });
        let filter = Filter {
            symbols: ["EURUSD".to_string()].into(),
            ..Filter::default()
        };
        let symbol = |seq: u64| if seq % 3 == 0 { "EURUSD" } else { "GBPUSD" };
        let mut stream = Box::pin(hub.subscribe_from(filter.clone(), ""));
        // Two losses: 500 events published while the subscriber reads nothing, it reads them
        // out, then 500 more.
        let mut events = Vec::new();
        for round in 0..2u64 {
            for seq in round * 500 + 1..=round * 500 + 500 {
                hub.publish(update(symbol(seq)));
            }
            // Up to the round's last EURUSD event, which is never lost (the newest are kept).
            events.extend(read_to(&mut stream, (round * 500 + 500) / 3 * 3).await);
        }
        // Each gap: its position, its count and the first event delivered after it.
        let mut gaps = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            if let Some(Kind::Gap(g)) = &ev.kind {
                assert_eq!(g.reason, GAP_QUEUE_FULL);
                assert_eq!(ev.seq, 0);
                let next = events[i + 1..]
                    .iter()
                    .find(|e| !matches!(e.kind, Some(Kind::Gap(_))))
                    .expect("an event after the gap")
                    .seq;
                gaps.push((ev.resume_token.clone(), g.dropped, next));
            }
        }
        assert_eq!(gaps.len(), 2, "one gap per loss");
        for (token, dropped, next) in gaps {
            let (instance, at) = parse_token(&token).expect("a gap carries a token");
            assert_eq!(instance, hub.instance_id());
            let lost: Vec<u64> = (at + 1..next).filter(|s| symbol(*s) == "EURUSD").collect();
            assert_eq!(dropped, lost.len() as u64, "the gap counts what it lost");
            // Resubscribing from the gap's position: first exactly the lost EURUSD events, then
            // the one this stream went on with, and nothing more than the filter lets through.
            let mut again = Box::pin(hub.subscribe_from(filter.clone(), &token));
            let replayed = read_to(&mut again, next).await;
            let (last, replayed) = replayed.split_last().unwrap();
            assert_eq!(last.seq, next);
            assert_eq!(replayed.iter().map(|e| e.seq).collect::<Vec<_>>(), lost);
            for ev in replayed {
                assert_eq!(token_seq(&ev.resume_token), ev.seq);
                assert!(matches!(&ev.kind, Some(Kind::Update(u)) if u.symbol == "EURUSD"));
            }
        }
    }

    fn token_seq(token: &str) -> u64 {
        parse_token(token).expect("a token").1
    }
}
