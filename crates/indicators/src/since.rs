//! `Subscribe` with `since_ns`: the stored history of the filter's symbols first, then the live
//! stream, stitched per symbol on the router's `symbol_seq` so that no tick is missing or
//! repeated at the seam.
//!
//! What the history is: the per-tick indicator updates of the stored ticks from `since_ns`,
//! recomputed by a private [`Engine`] with the server's configuration (the stored ticks are
//! the record; the live engine's updates were never stored), merged in event-time order.
//! Each carries its tick's idempotency key and `symbol_seq`, like the live ones, so the seam
//! is exact and a client can check it. Bars, bar-timeframe updates and signals are not
//! replayed (they carry no sequence, and a bar the clock closed just before the call may not be
//! stored yet, so no seam on them could be proven gapless): they are live from the call on.
//!
//! How the seam works. At the call the stream takes a live cursor over the hub's events and
//! notes two positions: the last event published (the call) and the oldest one retained. It
//! then reads the store to its end. The live part starts at the oldest retained event, well
//! before the call, so it overlaps what the store held when it was read (the persister trails
//! the live stream by a batch or so). Per symbol, a live per-tick update whose tick the history
//! already delivered (its idempotency key is among the last history keys, as many as the hub
//! retains events, so the whole overlap) is skipped; the first one after them continues the
//! stream. Should its `symbol_seq` be more than one past the history's last (the store had not
//! caught up), the missing sequence numbers are read from the store again, waiting up to
//! `--history-seam-wait` for the persister; what is still missing then is reported with a `Gap`
//! "history_incomplete" counting exactly the hole. A `symbol_seq` at or below the history's
//! last, on a tick the history did not have, is a numbering that restarted (a router restarted
//! after the symbol was silent longer than its de-duplication window): nothing is missing.
//! Other events (bars, signals) pass from the call on.

use crate::engine::{Engine, EngineConfig};
use crate::history::{TickMerge, store_status, symbol};
use crate::service::{Cursor, Filter, GAP_WINDOW_EXCEEDED, Hub, WireEvent};
use futures::Stream;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;
use tick_core::store::HistoryReader;
use tick_core::{Tick, clock, pb};
use tokio::time::Instant;
use tonic::Status;

use pb::event::Kind;

/// Gap reason: the store holds no tick of the requested symbols before `since_ns`.
pub const GAP_HISTORY_BEFORE_STORE: &str = "history_before_store";
/// Gap reason: ticks at the seam between history and live were not stored in time.
pub const GAP_HISTORY_INCOMPLETE: &str = "history_incomplete";

/// How far before a symbol's last delivered stored tick a seam fill looks for the ticks of a
/// hole: the store is ordered by event time, the hole by the router's sequence, and the two
/// differ only when a source's ticks arrive out of time order.
const FILL_LOOKBACK_NS: i64 = 5_000_000_000;
/// Stored ticks read per page by a seam fill.
const FILL_PAGE: usize = 1_000;
/// Pause between two reads of a seam fill waiting for the persister.
const FILL_RETRY: Duration = Duration::from_millis(50);
/// How far ahead of the server's clock `since_ns` may be.
const FUTURE_SLACK_NS: i64 = 60_000_000_000;

/// The seam of one symbol.
#[derive(Debug, Default)]
struct Seam {
    /// `symbol_seq` of the last tick delivered (stored ticks a router passed, then live
    /// updates): the last, not the highest, so that a numbering that restarted is followed.
    last_seq: Option<u64>,
    /// Latest event time of the stored ticks delivered.
    last_ts: i64,
    /// Whether the symbol's live updates have started.
    live: bool,
}

/// A `Subscribe` stream with `since_ns`.
struct Since {
    hub: Arc<Hub>,
    cursor: Cursor,
    /// The last event published when the subscriber called: bars, signals and bar-timeframe
    /// updates after it are delivered.
    called_at: u64,
    /// The oldest event retained at the call: where the live part starts.
    oldest_at_call: u64,
    reader: Arc<dyn HistoryReader>,
    symbols: Vec<String>,
    /// The stored ticks still to replay; `None` once read to the end.
    history: Option<TickMerge>,
    /// Whether the store was asked yet whether it reaches back to `since`.
    probed: bool,
    engine: Engine,
    filter: Filter,
    since: i64,
    seams: HashMap<String, Seam>,
    /// Hashes of the keys of the last history ticks delivered (at most `recent_cap`, oldest
    /// first in `recent_order`): what the live part may repeat.
    recent: HashSet<u64>,
    recent_order: VecDeque<u64>,
    recent_cap: usize,
    hasher: foldhash::fast::RandomState,
    pending: VecDeque<Result<WireEvent, Status>>,
    seam_wait: Duration,
    done: bool,
}

/// Returns the stream of a `Subscribe` with `since_ns`, or the status refusing it.
pub(crate) fn subscribe(
    hub: &Arc<Hub>,
    reader: Option<Arc<dyn HistoryReader>>,
    engine: &EngineConfig,
    request: &pb::SubscribeRequest,
    seam_wait: Duration,
) -> Result<impl Stream<Item = Result<WireEvent, Status>> + Send + 'static, Status> {
    let since = request.since_ns;
    if !request.resume_token.trim().is_empty() {
        return Err(Status::invalid_argument(
            "since_ns and resume_token exclude each other: resume with the token, or start \
             again from a time",
        ));
    }
    if since > clock::now_ns() + FUTURE_SLACK_NS {
        return Err(Status::invalid_argument(format!(
            "since_ns {since} is in the future"
        )));
    }
    let filter = Filter::from_request(request);
    let probe = pb::Event {
        kind: Some(Kind::Update(pb::IndicatorUpdate {
            timeframe: "tick".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    if !filter.with_any_symbol().matches(&probe) {
        return Err(Status::invalid_argument(
            "since_ns replays per-tick indicator updates, which this filter excludes (kinds \
             without EVENT_KIND_UPDATE, or timeframes without \"tick\"); stored bars are served \
             by GetBars",
        ));
    }
    let mut symbols: Vec<String> = Vec::new();
    for s in filter.symbols() {
        let s = symbol(s)?;
        if !symbols.contains(&s) {
            symbols.push(s);
        }
    }
    if symbols.len() > crate::history::MAX_SYMBOLS {
        return Err(Status::invalid_argument(format!(
            "{} symbols: at most {} with since_ns",
            symbols.len(),
            crate::history::MAX_SYMBOLS
        )));
    }
    if symbols.is_empty() {
        // The router passes only known instruments: every symbol means each of them.
        symbols = tick_core::instrument::INSTRUMENTS
            .iter()
            .map(|i| i.symbol.to_string())
            .collect();
    }
    symbols.sort();
    let reader = reader.ok_or_else(|| Status::failed_precondition(crate::history::NO_STORE))?;
    let engine = Engine::new(engine.clone())
        .map_err(|e| Status::internal(format!("indicator configuration: {e}")))?;
    let oldest_at_call = hub.oldest_retained();
    let (cursor, called_at) = hub.cursor(filter.clone());
    tracing::info!(?symbols, since_ns = since, "subscriber asked for history");
    let state = Since {
        hub: hub.clone(),
        cursor,
        called_at,
        oldest_at_call: oldest_at_call.min(called_at + 1),
        history: Some(TickMerge::new(
            reader.clone(),
            symbols.clone(),
            since,
            i64::MAX,
            FILL_PAGE,
        )),
        reader,
        symbols,
        probed: false,
        engine,
        filter,
        since,
        seams: HashMap::new(),
        recent: HashSet::new(),
        recent_order: VecDeque::new(),
        // The live part replays at most the retained events: the history it can repeat is
        // within as many of the last history ticks.
        recent_cap: hub.resume_window() + FILL_PAGE,
        hasher: foldhash::fast::RandomState::default(),
        pending: VecDeque::new(),
        seam_wait,
        done: false,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    }))
}

fn gap_event(token: String, reason: &str, dropped: u64, history_from_ns: i64) -> WireEvent {
    WireEvent::Own(pb::Event {
        seq: 0,
        ts_sent_ns: clock::now_ns(),
        resume_token: token,
        kind: Some(Kind::Gap(pb::Gap {
            dropped,
            reason: reason.into(),
            history_from_ns,
        })),
        history: false,
    })
}

impl Since {
    fn token(&self, seq: u64) -> String {
        format!("{}:{seq}", self.hub.instance_id())
    }

    /// Returns the next item of the stream, or `None` when it ends.
    async fn next(&mut self) -> Option<Result<WireEvent, Status>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if !self.probed {
                self.probed = true;
                if let Err(e) = self.probe().await {
                    self.fail(e);
                }
                continue;
            }
            if let Some(history) = &mut self.history {
                match history.next_tick().await {
                    Some(Ok(tick)) => self.deliver_stored(tick),
                    Some(Err(e)) => self.fail(e),
                    None => {
                        self.history = None;
                        self.go_live();
                    }
                }
                continue;
            }
            match self.cursor.next().await? {
                Ok(ev) => self.on_live(ev).await,
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            }
        }
    }

    fn fail(&mut self, e: tick_core::store::StoreError) {
        self.pending.push_back(Err(store_status(e)));
        self.done = true;
    }

    /// Queues a `Gap` "history_before_store" when no requested symbol has a stored tick
    /// before `since`.
    async fn probe(&mut self) -> Result<(), tick_core::store::StoreError> {
        let mut first: Option<i64> = None;
        for s in &self.symbols {
            let one = std::slice::from_ref(s);
            if !self
                .reader
                .ticks_between(one, i64::MIN, self.since, None, 1)
                .await?
                .is_empty()
            {
                return Ok(());
            }
            if let Some(t) = self
                .reader
                .ticks_between(one, self.since, i64::MAX, None, 1)
                .await?
                .first()
            {
                first = Some(first.map_or(t.ts_event_ns, |f| f.min(t.ts_event_ns)));
            }
        }
        // Part of the history: not a position of the live sequence, so no token (a client
        // that resumes after its last token must not skip the live events before the call
        // that continue the history).
        self.pending.push_back(Ok(gap_event(
            String::new(),
            GAP_HISTORY_BEFORE_STORE,
            0,
            first.unwrap_or(0),
        )));
        Ok(())
    }

    /// Replays one stored tick: its recomputed update, if the filter takes it.
    fn deliver_stored(&mut self, tick: Tick) {
        let h = self.hasher.hash_one(&tick.key);
        if self.recent.insert(h) {
            self.recent_order.push_back(h);
            if self.recent_order.len() > self.recent_cap
                && let Some(old) = self.recent_order.pop_front()
            {
                self.recent.remove(&old);
            }
        }
        let seam = self.seams.entry(tick.symbol.clone()).or_default();
        if tick.route.ts_route_ns > 0 {
            seam.last_seq = Some(tick.route.symbol_seq);
        }
        seam.last_ts = seam.last_ts.max(tick.ts_event_ns);
        let Some(mut update) = self.engine.on_tick(tick).update else {
            return;
        };
        if let Some(names) = self.engine.value_names("tick") {
            names.fill(&mut update);
        }
        let ev = pb::Event {
            seq: 0,
            ts_sent_ns: clock::now_ns(),
            resume_token: String::new(),
            kind: Some(Kind::Update(update)),
            history: true,
        };
        if self.filter.matches(&ev) {
            self.pending.push_back(Ok(WireEvent::Own(ev)));
        }
    }

    /// Starts the live part at the oldest event retained at the call (see the module doc).
    fn go_live(&mut self) {
        let from = self.hub.rewind(&mut self.cursor, self.oldest_at_call - 1);
        // Events after the call that the hub no longer retains are lost for good; per-tick
        // updates among them come back from the store through the seam (their sequence shows
        // the hole), the others cannot.
        if from > self.called_at + 1 && !self.filter.only_tick_updates() {
            let lost = from - 1 - self.called_at;
            metrics::counter!("tickflow_indicators_resume_lost_total").increment(lost);
            let token = self.token(from - 1);
            self.pending
                .push_back(Ok(gap_event(token, GAP_WINDOW_EXCEEDED, lost, 0)));
        }
    }

    /// Passes a live event on, or skips it, by the rules of the seam.
    async fn on_live(&mut self, ev: WireEvent) {
        let (symbol, seq, ts, key) = match &ev.event().kind {
            Some(Kind::Update(u)) if crate::engine::update_timeframe(u) == crate::engine::TICK => (
                u.symbol.clone(),
                u.symbol_seq,
                u.ts_event_ns,
                self.hasher.hash_one(&u.idempotency_key),
            ),
            Some(Kind::Gap(_)) => {
                self.pending.push_back(Ok(ev));
                return;
            }
            _ => {
                if ev.event().seq > self.called_at {
                    self.pending.push_back(Ok(ev));
                }
                return;
            }
        };
        let seam = self.seams.entry(symbol.clone()).or_default();
        if !seam.live {
            let last = seam.last_seq;
            // The history delivered it already.
            if self.recent.contains(&key) {
                return;
            }
            // Before `since` (retained from before the history's start): not asked for.
            if ts < self.since {
                return;
            }
            match last {
                Some(m) if seq > m + 1 => self.fill(&symbol, seq).await,
                // Next in sequence, or a numbering that restarted: nothing is missing.
                _ => {}
            }
            if self.done {
                return;
            }
            let seam = self.seams.get_mut(&symbol).expect("inserted above");
            seam.live = true;
        }
        let seam = self.seams.get_mut(&symbol).expect("inserted above");
        seam.last_seq = Some(seq);
        self.pending.push_back(Ok(ev));
    }

    /// Delivers from the store the ticks of `symbol` between the last one delivered and the
    /// live update numbered `next`, waiting up to the seam wait for the persister to store
    /// them all; then queues, where each hole is, a `Gap` "history_incomplete" counting the
    /// ticks still missing.
    async fn fill(&mut self, symbol: &str, next: u64) {
        let deadline = Instant::now() + self.seam_wait;
        let one = [symbol.to_string()];
        let (last, from) = {
            let seam = &self.seams[symbol];
            let last = seam.last_seq.expect("a fill follows stored ticks");
            (last, seam.last_ts.saturating_sub(FILL_LOOKBACK_NS))
        };
        loop {
            let mut found: Vec<Tick> = Vec::new();
            let mut after = None;
            loop {
                let page = match self
                    .reader
                    .ticks_between(&one, from, i64::MAX, after, FILL_PAGE)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => return self.fail(e),
                };
                after = page.last().map(|t| (t.ts_event_ns, t.key.clone()));
                let full = page.len() == FILL_PAGE;
                found.extend(page.into_iter().filter(|t| {
                    t.route.ts_route_ns > 0
                        && t.route.symbol_seq > last
                        && t.route.symbol_seq < next
                }));
                if !full {
                    break;
                }
            }
            found.sort_by_key(|t| t.route.symbol_seq);
            found.dedup_by_key(|t| t.route.symbol_seq);
            let now = Instant::now();
            if found.len() as u64 == next - last - 1 || now >= deadline {
                let mut expected = last + 1;
                for tick in found {
                    let seq = tick.route.symbol_seq;
                    if seq > expected {
                        self.hole(symbol, seq - expected);
                    }
                    expected = seq + 1;
                    // One the history delivered already (out of time order) fills its place.
                    if !self.recent.contains(&self.hasher.hash_one(&tick.key)) {
                        self.deliver_stored(tick);
                    }
                }
                if next > expected {
                    self.hole(symbol, next - expected);
                }
                return;
            }
            tokio::time::sleep(FILL_RETRY.min(deadline - now)).await;
        }
    }

    /// Queues a `Gap` "history_incomplete" for `dropped` ticks of `symbol` not stored in time.
    fn hole(&mut self, symbol: &str, dropped: u64) {
        tracing::warn!(
            symbol,
            dropped,
            "history seam: ticks still not stored after the seam wait"
        );
        metrics::counter!("tickflow_indicators_history_seam_missing_total").increment(dropped);
        self.pending.push_back(Ok(gap_event(
            String::new(),
            GAP_HISTORY_INCOMPLETE,
            dropped,
            0,
        )));
    }
}
