//! The router's pure core: decides, for each tick, whether it is fit for the bots and storage,
//! and why not when it is not. Normalises the symbol and price scale, validates, drops
//! duplicates, arbitrates between sources, holds suspected spikes, and numbers the clean ticks
//! of each symbol. No I/O and no clock of its own: the caller passes the time.

use crate::arbitration::{Arbiter, Arbitration, Switch, Verdict};
use crate::dedup::{Dedup, Seen};
use crate::spike::{HeldOutcome, SpikeConfig, SpikeFilter, SpikeVerdict};
use crate::symbols::SymbolMap;
use std::collections::HashMap;
use tick_core::tick::{ROUTE_AFTER_SILENCE, ROUTE_SOURCE_SWITCH};
use tick_core::{Price, Tick};

/// Why a tick was rejected; the code is stable and used in dead letters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The payload could not be decoded as a tick.
    MalformedPayload,
    /// The symbol is neither a known instrument nor an alias of one.
    UnknownSymbol,
    /// A price has more decimal places than its instrument.
    BadPrecision,
    /// Bid or ask is zero or negative.
    NonPositivePrice,
    /// A size or volume is NaN or infinite.
    NonFiniteValue,
    /// Ask below bid.
    CrossedQuote,
    /// Spread wider than the instrument's limit.
    SpreadTooWide,
    /// No event time.
    MissingEventTime,
    /// Event time too far ahead of now (live sources).
    EventTimeInFuture,
    /// Event time too far behind now (live sources; replays are exempt).
    EventTimeTooOld,
    /// A jump the next tick did not confirm.
    Spike,
}

impl RejectReason {
    /// Every reason, for metrics and tests.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::MalformedPayload,
        RejectReason::UnknownSymbol,
        RejectReason::BadPrecision,
        RejectReason::NonPositivePrice,
        RejectReason::NonFiniteValue,
        RejectReason::CrossedQuote,
        RejectReason::SpreadTooWide,
        RejectReason::MissingEventTime,
        RejectReason::EventTimeInFuture,
        RejectReason::EventTimeTooOld,
        RejectReason::Spike,
    ];

    /// Returns the stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::MalformedPayload => "malformed_payload",
            RejectReason::UnknownSymbol => "unknown_symbol",
            RejectReason::BadPrecision => "bad_precision",
            RejectReason::NonPositivePrice => "non_positive_price",
            RejectReason::NonFiniteValue => "non_finite_value",
            RejectReason::CrossedQuote => "crossed_quote",
            RejectReason::SpreadTooWide => "spread_too_wide",
            RejectReason::MissingEventTime => "missing_event_time",
            RejectReason::EventTimeInFuture => "event_time_in_future",
            RejectReason::EventTimeTooOld => "event_time_too_old",
            RejectReason::Spike => "spike",
        }
    }

    /// Returns the position of the reason in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejected tick with its reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The reason code.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

/// Identifies a held tick until its fate is decided.
pub type HoldId = u64;

/// One decision of the router. Each input gets exactly one decision with `held: None` (or a
/// `Hold`); decisions with `held: Some(id)` settle a tick held earlier.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish to `ticks.clean`.
    Clean {
        /// The tick, normalised and stamped.
        tick: Tick,
        /// The hold it settles, if it was held.
        held: Option<HoldId>,
    },
    /// Publish to `ticks.dlq`.
    Reject {
        /// Why.
        reject: Reject,
        /// The hold it settles, if it was held.
        held: Option<HoldId>,
    },
    /// Already let through (a resend or replay): dropped, counted.
    Duplicate,
    /// From a standby source under primary-failover: dropped, counted.
    Standby,
    /// Held until the next tick of its symbol confirms or refutes the jump.
    Hold(HoldId),
}

/// Rules of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How far in the future a live tick's event time may be, in ns (clock skew allowance).
    pub max_future_ns: i64,
    /// How far in the past a live tick's event time may be, in ns.
    pub max_past_ns: i64,
    /// Symbol aliases and instruments.
    pub symbols: SymbolMap,
    /// How several sources of one symbol are combined.
    pub arbitration: Arbitration,
    /// The spike filter (none: off).
    pub spike: Option<SpikeConfig>,
    /// How long (event time) keys are remembered for de-duplication, at most.
    pub dedup_window_ns: i64,
    /// How many keys are remembered per (source, symbol) stream, at most (see [`crate::dedup`]
    /// for the resend horizon this gives).
    pub dedup_keys: usize,
    /// A pause in a symbol's clean ticks longer than this marks the next tick AFTER_SILENCE.
    pub silence_ns: i64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_future_ns: 5_000_000_000,
            max_past_ns: 24 * 3600 * 1_000_000_000,
            symbols: SymbolMap::with_defaults(),
            arbitration: Arbitration::Merge,
            spike: Some(SpikeConfig::default()),
            dedup_window_ns: 15 * 60 * 1_000_000_000,
            dedup_keys: crate::dedup::DEFAULT_MAX_KEYS,
            silence_ns: 60 * 1_000_000_000,
        }
    }
}

#[derive(Debug, Default)]
struct SeqState {
    next: u64,
    last_event_ns: Option<i64>,
}

/// The router's decision logic.
pub struct Router {
    cfg: RouterConfig,
    dedup: Dedup,
    arbiter: Arbiter,
    spike: Option<SpikeFilter>,
    /// Held ticks by (symbol, source): at most one per feed of a symbol.
    held: HashMap<(String, String), (HoldId, Tick)>,
    next_hold: HoldId,
    seq: HashMap<String, SeqState>,
    switches: Vec<Switch>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new(RouterConfig::default())
    }
}

fn reject(reason: RejectReason, detail: String) -> Option<Reject> {
    Some(Reject { reason, detail })
}

impl Router {
    /// Returns a router with these rules.
    pub fn new(cfg: RouterConfig) -> Self {
        Self {
            dedup: Dedup::new(cfg.dedup_window_ns, cfg.dedup_keys),
            arbiter: Arbiter::new(cfg.arbitration.clone()),
            spike: cfg.spike.map(SpikeFilter::new),
            held: HashMap::new(),
            next_hold: 1,
            seq: HashMap::new(),
            switches: Vec::new(),
            cfg,
        }
    }

    /// Decides the fate of `tick` at time `now_ns`, appending decisions to `out`.
    pub fn on_tick(&mut self, mut tick: Tick, now_ns: i64, out: &mut Vec<Decision>) {
        if let Some(r) = self
            .normalise(&mut tick)
            .or_else(|| self.validate(&tick, now_ns))
        {
            out.push(Decision::Reject {
                reject: r,
                held: None,
            });
            return;
        }
        if self
            .dedup
            .check(&tick.source, &tick.symbol, &tick.key, tick.ts_event_ns)
            == Seen::Duplicate
            || (!self.held.is_empty() && self.held.values().any(|(_, h)| h.key == tick.key))
        {
            out.push(Decision::Duplicate);
            return;
        }
        let switched =
            match self
                .arbiter
                .on_tick(&tick.symbol, &tick.source, now_ns, &mut self.switches)
            {
                Verdict::Standby => {
                    out.push(Decision::Standby);
                    return;
                }
                Verdict::Pass { switched } => switched,
            };
        if let Some(f) = &mut self.spike {
            let point = 10f64.powi(-i32::from(tick.scale));
            let (outcome, verdict) =
                f.judge(&tick.symbol, &tick.source, tick.mid_f64(), point, now_ns);
            if let Some(outcome) = outcome
                && let Some((id, held)) = self
                    .held
                    .remove(&(tick.symbol.clone(), tick.source.clone()))
            {
                match outcome {
                    HeldOutcome::Confirmed | HeldOutcome::Reanchored => {
                        self.emit_clean(held, Some(id), false, now_ns, out)
                    }
                    HeldOutcome::Rejected => out.push(Decision::Reject {
                        reject: Reject {
                            reason: RejectReason::Spike,
                            detail: format!(
                                "jump to bid {} not confirmed by the next tick (bid {})",
                                held.bid_price(),
                                tick.bid_price()
                            ),
                        },
                        held: Some(id),
                    }),
                }
            }
            if verdict == SpikeVerdict::Hold {
                let id = self.next_hold;
                self.next_hold += 1;
                self.held
                    .insert((tick.symbol.clone(), tick.source.clone()), (id, tick));
                out.push(Decision::Hold(id));
                return;
            }
        }
        self.emit_clean(tick, None, switched, now_ns, out);
    }

    /// Advances timers: fails over silent sources and rejects holds that waited too long.
    pub fn on_timer(&mut self, now_ns: i64, out: &mut Vec<Decision>) {
        self.arbiter.on_timer(now_ns, &mut self.switches);
        if let Some(f) = &mut self.spike {
            for key in f.expire(now_ns) {
                if let Some((id, held)) = self.held.remove(&key) {
                    out.push(Decision::Reject {
                        reject: Reject {
                            reason: RejectReason::Spike,
                            detail: format!(
                                "jump to bid {} not confirmed in time",
                                held.bid_price()
                            ),
                        },
                        held: Some(id),
                    });
                }
            }
        }
    }

    /// Learns a tick already in `ticks.clean` (read back on start or from another router
    /// instance): its key is a duplicate from now on and the symbol's numbering continues
    /// after it.
    pub fn remember(&mut self, tick: &Tick) {
        self.dedup
            .insert(&tick.source, &tick.symbol, &tick.key, tick.ts_event_ns);
        let st = self.seq.entry(tick.symbol.clone()).or_default();
        st.next = st.next.max(tick.route.symbol_seq + 1);
        st.last_event_ns = Some(
            st.last_event_ns
                .map_or(tick.ts_event_ns, |l| l.max(tick.ts_event_ns)),
        );
    }

    /// Continues the numbering of each symbol after the last `symbol_seq` stored for it (an
    /// embedded router reads them from its store on start, as a distributed one reads
    /// `ticks.clean` back), so sequence numbers never restart under stored history.
    pub fn continue_sequences(&mut self, last: impl IntoIterator<Item = (String, u64)>) {
        for (symbol, seq) in last {
            let st = self.seq.entry(symbol).or_default();
            st.next = st.next.max(seq + 1);
        }
    }

    /// Returns the de-duplication state's size: keys held, (source, symbol) streams, and ticks
    /// found older than their stream's horizon so far (passed unchecked).
    pub fn dedup_stats(&self) -> (usize, usize, u64) {
        (
            self.dedup.len(),
            self.dedup.streams(),
            self.dedup.unchecked(),
        )
    }

    /// Returns whether a tick is held by the spike filter.
    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Returns and forgets the source switches made since the last call.
    pub fn take_switches(&mut self) -> Vec<Switch> {
        std::mem::take(&mut self.switches)
    }

    fn emit_clean(
        &mut self,
        mut tick: Tick,
        held: Option<HoldId>,
        switched: bool,
        now_ns: i64,
        out: &mut Vec<Decision>,
    ) {
        self.dedup
            .insert(&tick.source, &tick.symbol, &tick.key, tick.ts_event_ns);
        if !self.seq.contains_key(&tick.symbol) {
            self.seq.insert(tick.symbol.clone(), SeqState::default());
        }
        let st = self.seq.get_mut(&tick.symbol).expect("inserted above");
        let mut flags = if switched { ROUTE_SOURCE_SWITCH } else { 0 };
        let gap = st.last_event_ns.map_or(0, |l| tick.ts_event_ns - l);
        if gap > self.cfg.silence_ns {
            flags |= ROUTE_AFTER_SILENCE;
        }
        tick.route.ts_route_ns = now_ns;
        tick.route.symbol_seq = st.next;
        tick.route.flags = flags;
        tick.route.gap_ns = if flags != 0 { gap.max(0) } else { 0 };
        st.next += 1;
        st.last_event_ns = Some(
            st.last_event_ns
                .map_or(tick.ts_event_ns, |l| l.max(tick.ts_event_ns)),
        );
        out.push(Decision::Clean { tick, held });
    }

    fn normalise(&self, t: &mut Tick) -> Option<Reject> {
        let Some((canonical, rule)) = self.cfg.symbols.resolve(&t.symbol) else {
            return reject(
                RejectReason::UnknownSymbol,
                format!("unknown symbol {:?}", t.symbol),
            );
        };
        if canonical != t.symbol {
            t.symbol = canonical.to_string();
        }
        if t.scale != rule.scale {
            let to = |m: i64| {
                Price::new(m, t.scale)
                    .rescale(rule.scale)
                    .map(|p| p.mantissa)
            };
            match (to(t.bid), to(t.ask), t.last.map(to)) {
                (Some(b), Some(a), None) => (t.bid, t.ask) = (b, a),
                (Some(b), Some(a), Some(Some(l))) => (t.bid, t.ask, t.last) = (b, a, Some(l)),
                _ => {
                    return reject(
                        RejectReason::BadPrecision,
                        format!(
                            "bid {} ask {} do not fit {} decimal places of {}",
                            t.bid_price(),
                            t.ask_price(),
                            rule.scale,
                            t.symbol
                        ),
                    );
                }
            }
            t.scale = rule.scale;
        }
        None
    }

    fn validate(&self, t: &Tick, now_ns: i64) -> Option<Reject> {
        if t.bid <= 0 || t.ask <= 0 {
            return reject(
                RejectReason::NonPositivePrice,
                format!("bid {} ask {}", t.bid_price(), t.ask_price()),
            );
        }
        if !(t.bid_size.is_finite() && t.ask_size.is_finite() && t.volume.is_finite()) {
            return reject(
                RejectReason::NonFiniteValue,
                format!(
                    "bid_size {} ask_size {} volume {}",
                    t.bid_size, t.ask_size, t.volume
                ),
            );
        }
        if t.ask < t.bid {
            return reject(
                RejectReason::CrossedQuote,
                format!("ask {} below bid {}", t.ask_price(), t.bid_price()),
            );
        }
        if let Some((_, rule)) = self.cfg.symbols.resolve(&t.symbol)
            && let Some(max) = rule.max_spread
            && t.ask - t.bid > max
        {
            return reject(
                RejectReason::SpreadTooWide,
                format!("spread {} points above the limit of {max}", t.ask - t.bid),
            );
        }
        if t.ts_event_ns <= 0 {
            return reject(
                RejectReason::MissingEventTime,
                format!("event time {}", t.ts_event_ns),
            );
        }
        // Nothing, not even a replay, may come from the future: one such tick would push the
        // de-duplication window ahead and make it forget every real key.
        let ahead = t.ts_event_ns.saturating_sub(now_ns);
        if ahead > self.cfg.max_future_ns {
            return reject(
                RejectReason::EventTimeInFuture,
                format!("event time {} ms in the future", ahead / 1_000_000),
            );
        }
        if !t.replay {
            let behind = now_ns.saturating_sub(t.ts_event_ns);
            if behind > self.cfg.max_past_ns {
                return reject(
                    RejectReason::EventTimeTooOld,
                    format!(
                        "event time {} s in the past (not flagged as a replay)",
                        behind / 1_000_000_000
                    ),
                );
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::InstrumentRule;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn tick() -> Tick {
        Tick {
            symbol: "EURUSD".into(),
            source: "sim".into(),
            ts_event_ns: NOW - 1_000_000,
            ts_recv_ns: NOW - 500_000,
            scale: 5,
            bid: 110235,
            ask: 110237,
            last: None,
            bid_size: 1.0,
            ask_size: 1.0,
            volume: 0.0,
            flags: 0,
            key: "sim|EURUSD|1|0".into(),
            route: Default::default(),
            replay: false,
        }
    }

    fn one(r: &mut Router, t: Tick, now: i64) -> Decision {
        let mut out = vec![];
        r.on_tick(t, now, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        out.pop().unwrap()
    }

    #[test]
    fn every_rule_and_reason() {
        use RejectReason::*;
        let hour = 3600 * S;
        let cases: Vec<(&str, Tick, Option<RejectReason>)> = vec![
            ("valid quote", tick(), None),
            (
                "locked quote (ask == bid) passes",
                Tick {
                    ask: 110235,
                    ..tick()
                },
                None,
            ),
            (
                "unknown symbol",
                Tick {
                    symbol: "FOOBAR".into(),
                    ..tick()
                },
                Some(UnknownSymbol),
            ),
            (
                "broker alias is normalised",
                Tick {
                    symbol: "EUR_USD".into(),
                    ..tick()
                },
                None,
            ),
            (
                "more decimals than the instrument",
                Tick {
                    scale: 6,
                    bid: 1102351,
                    ask: 1102371,
                    ..tick()
                },
                Some(BadPrecision),
            ),
            (
                "fewer decimals are rescaled",
                Tick {
                    scale: 4,
                    bid: 11023,
                    ask: 11024,
                    ..tick()
                },
                None,
            ),
            (
                "zero bid",
                Tick { bid: 0, ..tick() },
                Some(NonPositivePrice),
            ),
            (
                "negative ask",
                Tick { ask: -1, ..tick() },
                Some(NonPositivePrice),
            ),
            (
                "nan size",
                Tick {
                    bid_size: f64::NAN,
                    ..tick()
                },
                Some(NonFiniteValue),
            ),
            (
                "inf volume",
                Tick {
                    volume: f64::INFINITY,
                    ..tick()
                },
                Some(NonFiniteValue),
            ),
            (
                "crossed",
                Tick {
                    ask: 110234,
                    ..tick()
                },
                Some(CrossedQuote),
            ),
            (
                "spread above 25x typical (8 points)",
                Tick {
                    ask: 110235 + 201,
                    ..tick()
                },
                Some(SpreadTooWide),
            ),
            (
                "spread at the limit passes",
                Tick {
                    ask: 110235 + 200,
                    ..tick()
                },
                None,
            ),
            (
                "no event time",
                Tick {
                    ts_event_ns: 0,
                    ..tick()
                },
                Some(MissingEventTime),
            ),
            (
                "6 s in the future",
                Tick {
                    ts_event_ns: NOW + 6 * S,
                    ..tick()
                },
                Some(EventTimeInFuture),
            ),
            (
                "4 s in the future passes",
                Tick {
                    ts_event_ns: NOW + 4 * S,
                    ..tick()
                },
                None,
            ),
            (
                "2 days old live",
                Tick {
                    ts_event_ns: NOW - 48 * hour,
                    ..tick()
                },
                Some(EventTimeTooOld),
            ),
            (
                "2 days old replay passes",
                Tick {
                    ts_event_ns: NOW - 48 * hour,
                    replay: true,
                    ..tick()
                },
                None,
            ),
            (
                "a replay from the future",
                Tick {
                    ts_event_ns: NOW + hour,
                    replay: true,
                    ..tick()
                },
                Some(EventTimeInFuture),
            ),
            (
                "replay still needs a time",
                Tick {
                    ts_event_ns: 0,
                    replay: true,
                    ..tick()
                },
                Some(MissingEventTime),
            ),
        ];
        for (i, (name, mut t, want)) in cases.into_iter().enumerate() {
            t.key = format!("k{i}");
            let mut r = Router::default();
            match (one(&mut r, t, NOW), want) {
                (Decision::Clean { tick, held: None }, None) => {
                    assert_eq!(tick.route.ts_route_ns, NOW, "{name}");
                    assert_eq!((tick.symbol.as_str(), tick.scale), ("EURUSD", 5), "{name}");
                }
                (Decision::Reject { reject, held: None }, Some(w)) => {
                    assert_eq!(reject.reason, w, "{name}");
                    assert!(!reject.detail.is_empty(), "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn rescaling_is_exact() {
        let mut r = Router::default();
        let Decision::Clean { tick: t, .. } = one(
            &mut r,
            Tick {
                scale: 4,
                bid: 11023,
                ask: 11024,
                last: Some(11023),
                ..tick()
            },
            NOW,
        ) else {
            panic!()
        };
        assert_eq!(
            (t.bid, t.ask, t.last, t.scale),
            (110230, 110240, Some(110230), 5)
        );
    }

    #[test]
    fn duplicates_are_dropped_even_after_a_restart_that_remembers_the_clean_tail() {
        let mut r = Router::default();
        let Decision::Clean { tick: first, .. } = one(&mut r, tick(), NOW) else {
            panic!()
        };
        assert_eq!(one(&mut r, tick(), NOW), Decision::Duplicate);
        // A new router that read the clean topic back continues numbering and deduplication.
        let mut restarted = Router::default();
        restarted.remember(&first);
        assert_eq!(one(&mut restarted, tick(), NOW), Decision::Duplicate);
        let next = Tick {
            key: "k2".into(),
            ts_event_ns: NOW,
            ..tick()
        };
        let Decision::Clean { tick: t, .. } = one(&mut restarted, next, NOW) else {
            panic!()
        };
        assert_eq!(t.route.symbol_seq, first.route.symbol_seq + 1);
    }

    #[test]
    fn sequence_numbers_are_contiguous_per_symbol_and_silence_is_marked() {
        let mut r = Router::default();
        let mut seqs = HashMap::new();
        for (i, (sym, dt)) in [("EURUSD", 0), ("USDJPY", 1), ("EURUSD", 2), ("EURUSD", 120)]
            .iter()
            .enumerate()
        {
            let (bid, ask, scale) = if *sym == "USDJPY" {
                (149500, 149510, 3)
            } else {
                (110235, 110237, 5)
            };
            let t = Tick {
                symbol: sym.to_string(),
                key: format!("k{i}"),
                ts_event_ns: NOW - 200 * S + dt * S,
                bid,
                ask,
                scale,
                ..tick()
            };
            let Decision::Clean { tick, .. } = one(&mut r, t, NOW) else {
                panic!()
            };
            seqs.entry(sym.to_string()).or_insert_with(Vec::new).push((
                tick.route.symbol_seq,
                tick.route.flags,
                tick.route.gap_ns,
            ));
        }
        assert_eq!(
            seqs["EURUSD"],
            vec![(0, 0, 0), (1, 0, 0), (2, ROUTE_AFTER_SILENCE, 118 * S)]
        );
        assert_eq!(seqs["USDJPY"], vec![(0, 0, 0)]);
    }

    #[test]
    fn failover_marks_the_switch_and_standby_ticks_are_dropped() {
        let mut r = Router::new(RouterConfig {
            arbitration: Arbitration::PrimaryFailover {
                priority: vec!["mt5".into(), "oanda".into()],
                silence_ns: 2 * S,
            },
            ..RouterConfig::default()
        });
        let t = |src: &str, i: i64| Tick {
            source: src.into(),
            key: format!("{src}{i}"),
            ts_event_ns: NOW + i * S / 2,
            ..tick()
        };
        assert!(matches!(
            one(&mut r, t("mt5", 0), NOW),
            Decision::Clean { .. }
        ));
        assert_eq!(
            one(&mut r, t("oanda", 3), NOW + 3 * S / 2),
            Decision::Standby
        );
        let mut out = vec![];
        r.on_timer(NOW + 3 * S, &mut out);
        assert_eq!(r.take_switches().len(), 1);
        let Decision::Clean { tick, .. } = one(&mut r, t("oanda", 6), NOW + 3 * S) else {
            panic!()
        };
        assert_eq!(tick.route.flags & ROUTE_SOURCE_SWITCH, ROUTE_SOURCE_SWITCH);
        assert_eq!(tick.source, "oanda");
    }

    #[test]
    fn in_merge_a_second_feed_at_its_own_level_is_never_condemned_by_the_first() {
        // Default settings: merge arbitration, the default spike filter.
        let mut r = Router::new(RouterConfig {
            spike: Some(SpikeConfig::default()),
            ..RouterConfig::default()
        });
        let mut out = vec![];
        let feed = |source: &str, i: i64, bid: i64| Tick {
            key: format!("{source}-{i}"),
            source: source.into(),
            ts_event_ns: NOW - S + i * 1_000,
            bid,
            ask: bid + 3,
            ..tick()
        };
        // A calm spell of feed A, then feed B 150 points higher, interleaved.
        for i in 0..500 {
            r.on_tick(feed("a", i, 110_230), NOW, &mut out);
        }
        for i in 500..1_500 {
            r.on_tick(feed("a", i, 110_230), NOW, &mut out);
            r.on_tick(feed("b", i, 110_380 + i % 3), NOW, &mut out);
        }
        let clean = out
            .iter()
            .filter(|d| matches!(d, Decision::Clean { .. }))
            .count();
        assert_eq!(clean, 2_500, "every price of both feeds is clean");
        assert_eq!(out.len(), 2_500, "nothing held or rejected");
    }

    #[test]
    fn a_spike_is_held_then_rejected_and_a_confirmed_jump_is_released_in_order() {
        let mut r = Router::new(RouterConfig {
            spike: Some(SpikeConfig {
                multiple: 10.0,
                warmup: 10,
                alpha: 0.1,
                max_hold_ns: 5 * S,
                floor_points: 5.0,
                reanchor_after: 3,
            }),
            ..RouterConfig::default()
        });
        let mut out = vec![];
        for i in 0..30 {
            let t = Tick {
                key: format!("w{i}"),
                bid: 110230 + (i % 2),
                ask: 110233 + (i % 2),
                ..tick()
            };
            r.on_tick(t, NOW, &mut out);
        }
        assert_eq!(out.len(), 30);
        out.clear();
        let spike = Tick {
            key: "spike".into(),
            bid: 111230,
            ask: 111233,
            ..tick()
        };
        r.on_tick(spike, NOW, &mut out);
        assert_eq!(out, vec![Decision::Hold(1)]);
        out.clear();
        r.on_tick(
            Tick {
                key: "back".into(),
                bid: 110231,
                ask: 110234,
                ..tick()
            },
            NOW,
            &mut out,
        );
        assert!(
            matches!(&out[0], Decision::Reject { reject, held: Some(1) } if reject.reason == RejectReason::Spike)
        );
        assert!(matches!(&out[1], Decision::Clean { held: None, .. }));
        out.clear();
        // A jump the next tick confirms is released, before the confirming tick.
        r.on_tick(
            Tick {
                key: "jump".into(),
                bid: 111230,
                ask: 111233,
                ..tick()
            },
            NOW,
            &mut out,
        );
        r.on_tick(
            Tick {
                key: "confirm".into(),
                bid: 111231,
                ask: 111234,
                ..tick()
            },
            NOW,
            &mut out,
        );
        assert!(matches!(&out[0], Decision::Hold(2)));
        assert!(matches!(&out[1], Decision::Clean { held: Some(2), tick } if tick.key == "jump"));
        assert!(matches!(&out[2], Decision::Clean { held: None, tick } if tick.key == "confirm"));
        // An unconfirmed hold expires on the timer.
        out.clear();
        r.on_tick(
            Tick {
                key: "lonely".into(),
                bid: 101230,
                ask: 101233,
                ..tick()
            },
            NOW,
            &mut out,
        );
        r.on_timer(NOW + 6 * S, &mut out);
        assert!(
            matches!(&out[1], Decision::Reject { reject, held: Some(3) } if reject.reason == RejectReason::Spike)
        );
    }

    #[test]
    fn custom_instruments_and_aliases() {
        let mut symbols = SymbolMap::default();
        symbols.set_instrument(
            "GER40",
            InstrumentRule {
                scale: 1,
                max_spread: Some(30),
            },
        );
        symbols.alias("DE40", "GER40");
        let mut r = Router::new(RouterConfig {
            symbols,
            ..RouterConfig::default()
        });
        let t = Tick {
            symbol: "DE40.cash".into(),
            scale: 1,
            bid: 160000,
            ask: 160010,
            ..tick()
        };
        let Decision::Clean { tick: ger, .. } = one(&mut r, t, NOW) else {
            panic!()
        };
        assert_eq!(ger.symbol, "GER40");
        assert!(
            matches!(one(&mut r, Tick { key: "x".into(), ..tick() }, NOW), Decision::Reject { reject, .. } if reject.reason == RejectReason::UnknownSymbol)
        );
    }

    #[test]
    fn reason_codes_are_distinct_snake_case_and_indexed() {
        let codes: std::collections::HashSet<_> =
            RejectReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), RejectReason::ALL.len());
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
