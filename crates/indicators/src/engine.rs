//! The indicators stage's pure core: per symbol, it feeds every tick to the configured
//! indicators, bar builders and signal rules and returns what changed. No I/O and no clock of
//! its own: the adapter passes ticks and the time.
//!
//! Indicators and rules are grouped by input: ticks (`rsi(14)`, `zscore(50)@tick`), or the
//! closed bars of one timeframe (`rsi(14)@1m`, `atr(14)@100t`). Each symbol has its own
//! instances per group. A bar-fed group is updated when one of its bars closes, by a tick (in
//! [`Engine::on_tick`]) or by the clock (in [`Engine::on_clock`]); that yields an
//! `IndicatorUpdate` with the bar's timeframe, its close time as event time and the bar's
//! close as price, and evaluates the group's rules. The `ts_recv_ns` of what a closed bar
//! causes is that of the tick that closed it; for a bar the clock closed, that of the bar's
//! last tick (the latest tick that went into what the bot receives). A timeframe an indicator
//! names is added to the bar timeframes if missing. The per-tick path of a configuration
//! without bar-fed indicators does exactly what it did without them.

use crate::bars::{BarBuilder, PriceSide, Timeframe};
use crate::indicator::{Indicator, IndicatorSpec, Input, SpecError};
use crate::rules::{Operand, Rule, ValueRef};
use std::collections::HashMap;
use std::sync::Arc;
use tick_core::{Tick, pb};

/// The timeframe of the per-tick group's updates and signals (`IndicatorUpdate.timeframe`).
pub const TICK: &str = "tick";

/// The timeframe of an indicator update as the engine gives it: an empty one is [`TICK`] (see
/// [`ValueNames`]).
pub fn update_timeframe(update: &pb::IndicatorUpdate) -> &str {
    if update.timeframe.is_empty() {
        TICK
    } else {
        &update.timeframe
    }
}

/// What the engine computes.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Indicators: per tick (input: the mid price, tick volume and spread), or with a
    /// `@timeframe` per closed bar of that timeframe (input: the bar's OHLC and volume).
    pub indicators: Vec<IndicatorSpec>,
    /// Signal rules; indicators they name are added to the set if missing.
    pub rules: Vec<Rule>,
    /// Bar timeframes (those bar-fed indicators name are added if missing).
    pub timeframes: Vec<Timeframe>,
    /// Price bars follow.
    pub bar_side: PriceSide,
    /// How long after its end a live bar waits for late ticks before the clock closes it.
    pub bar_grace_ns: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let p = |s: &str| s.parse().expect("valid default");
        Self {
            indicators: ["sma(20)", "ema(12)", "ema(26)", "rsi(14)"].map(p).to_vec(),
            rules: [
                "rsi(14) crosses_below 30",
                "rsi(14) crosses_above 70",
                "ema(12) crosses_above ema(26)",
                "ema(12) crosses_below ema(26)",
            ]
            .map(|r| r.parse().expect("valid default rule"))
            .to_vec(),
            timeframes: ["1s", "1m"].map(|t| t.parse().expect("valid")).to_vec(),
            bar_side: PriceSide::Bid,
            bar_grace_ns: 100_000_000,
        }
    }
}

/// Everything one tick (or one clock step) changed.
#[derive(Debug, Default)]
pub struct Updates {
    /// The per-tick indicator update (none for a clock step). Its values carry no names and its
    /// `timeframe` is empty (it is `tick`): see [`ValueNames`] ([`Engine::value_names`]).
    pub update: Option<pb::IndicatorUpdate>,
    /// The updates of bar-fed indicators, one per closed bar of a timeframe they follow
    /// (`timeframe` = the bar's).
    pub bar_updates: Vec<pb::IndicatorUpdate>,
    /// Bars closed.
    pub bars: Vec<pb::Bar>,
    /// Signals fired: those of bar rules first (in bar order), then those of tick rules.
    pub signals: Vec<pb::Signal>,
}

struct CompiledRule {
    rule: Rule,
    lhs: usize,
    rhs: Option<usize>,
    konst: f64,
}

impl CompiledRule {
    /// The values of both sides among `vals` (a group's outputs), if both are warm.
    #[inline]
    fn sides(&self, vals: &[Option<f64>]) -> Option<(f64, f64)> {
        let l = vals[self.lhs]?;
        let r = match self.rhs {
            Some(j) => vals[j]?,
            None => self.konst,
        };
        Some((l, r))
    }
}

/// The names of the values of one group's updates, in value order, shared by all of them: an
/// update's `IndicatorValue`s leave the engine without their names (no string is allocated per
/// input), and the hub writes them from here, each encoded once, when it encodes the update.
/// The per-tick updates also leave without their `timeframe` (empty), which is this table's
/// `timeframe`, `tick`.
#[derive(Debug, Default)]
pub struct ValueNames {
    /// `IndicatorUpdate.timeframe` of the updates: `tick`, or the bars' timeframe.
    pub timeframe: String,
    /// The names (`sma(20)`, `macd(12,26,9).signal@1m`).
    pub names: Vec<String>,
    /// Each name as the encoded `IndicatorValue.name` field (key, length, UTF-8).
    pub encoded: Vec<Vec<u8>>,
}

impl ValueNames {
    fn new(timeframe: &str, names: &[String]) -> Self {
        Self {
            timeframe: timeframe.to_string(),
            names: names.to_vec(),
            encoded: names
                .iter()
                .map(|n| {
                    let mut b = Vec::with_capacity(n.len() + 2);
                    prost::encoding::string::encode(1, n, &mut b);
                    b
                })
                .collect(),
        }
    }

    /// Gives the values of `update` (one of these updates) their names, and the update its
    /// timeframe if it has none.
    pub fn fill(&self, update: &mut pb::IndicatorUpdate) {
        if update.timeframe.is_empty() {
            update.timeframe.clone_from(&self.timeframe);
        }
        for (v, n) in update.values.iter_mut().zip(&self.names) {
            if v.name.is_empty() {
                v.name.clone_from(n);
            }
        }
    }
}

/// The indicators and rules fed one input: ticks, or the closed bars of one timeframe.
struct Group {
    /// `tick`, or the bars' timeframe (`Signal.timeframe`).
    label: String,
    /// `IndicatorUpdate.timeframe` as the group's updates leave the engine: empty for the
    /// per-tick group (no string per tick: [`ValueNames`] gives it), else `label`.
    update_label: String,
    specs: Vec<IndicatorSpec>,
    /// Value names, one per output of each indicator (`sma(20)`, `macd(12,26,9).signal@1m`).
    names: Vec<String>,
    /// Index in `names` of each indicator's first output.
    offsets: Vec<usize>,
    /// Per indicator, the range of its outputs in `names` (from `offsets`; asked of each
    /// indicator once, not per input).
    outputs: Vec<std::ops::Range<usize>>,
    rules: Vec<CompiledRule>,
    /// `names`, shared with whoever encodes this group's updates.
    table: Arc<ValueNames>,
}

impl Group {
    fn new(label: String) -> Self {
        Self {
            update_label: if label == TICK {
                String::new()
            } else {
                label.clone()
            },
            label,
            specs: Vec::new(),
            names: Vec::new(),
            offsets: Vec::new(),
            outputs: Vec::new(),
            rules: Vec::new(),
            table: Arc::default(),
        }
    }

    fn index(&mut self, s: &IndicatorSpec) -> usize {
        self.specs.iter().position(|x| x == s).unwrap_or_else(|| {
            self.specs.push(s.clone());
            self.specs.len() - 1
        })
    }

    fn series(&self) -> Series {
        Series {
            indicators: self.specs.iter().map(IndicatorSpec::build).collect(),
            prev: vec![None; self.names.len()],
            cur: vec![None; self.names.len()],
        }
    }

    /// Feeds `input` to a symbol's instances, evaluates the rules and returns the update (which
    /// takes `symbol`).
    fn feed(
        &self,
        s: &mut Series,
        input: &Input,
        symbol: String,
        times: (i64, i64),
        signals: &mut Vec<pb::Signal>,
    ) -> pb::IndicatorUpdate {
        let mut update = pb::IndicatorUpdate::default();
        self.feed_into(s, input, symbol, times, signals, &mut update);
        update
    }

    /// [`Self::feed`], writing the update into `update` (a default one): the per-tick path
    /// fills it where it is returned, instead of moving it there.
    fn feed_into(
        &self,
        s: &mut Series,
        input: &Input,
        symbol: String,
        (ts_event_ns, ts_recv_ns): (i64, i64),
        signals: &mut Vec<pb::Signal>,
        update: &mut pb::IndicatorUpdate,
    ) {
        let mut cur = std::mem::take(&mut s.cur);
        for (ind, at) in s.indicators.iter_mut().zip(&self.outputs) {
            ind.update_into(input, &mut cur[at.clone()]);
        }
        let prev = std::mem::take(&mut s.prev);
        // Without names: see `ValueNames`.
        let values: Vec<pb::IndicatorValue> = cur
            .iter()
            .map(|v| pb::IndicatorValue {
                name: String::new(),
                value: v.unwrap_or(0.0),
                warm: v.is_some(),
            })
            .collect();
        for r in &self.rules {
            let Some(now) = r.sides(&cur) else { continue };
            if r.rule.fires(r.sides(&prev), now) {
                let named = |i: usize| pb::IndicatorValue {
                    name: self.names[i].clone(),
                    ..values[i].clone()
                };
                // Sized once: one value, or two when the right side is an indicator.
                let mut involved = Vec::with_capacity(1 + usize::from(r.rhs.is_some()));
                involved.push(named(r.lhs));
                if let Some(j) = r.rhs {
                    involved.push(named(j));
                }
                signals.push(pb::Signal {
                    symbol: symbol.clone(),
                    rule_id: r.rule.id.clone(),
                    direction: r.rule.direction(),
                    values: involved,
                    timeframe: self.label.clone(),
                    ts_event_ns,
                    ts_recv_ns,
                });
            }
        }
        s.prev = cur;
        s.cur = prev;
        update.symbol = symbol;
        update.timeframe.clone_from(&self.update_label);
        update.ts_event_ns = ts_event_ns;
        update.ts_recv_ns = ts_recv_ns;
        update.price = input.close;
        update.values = values;
    }
}

/// Keeps `tick`, whose symbol and key went into its update, as its symbol's last tick: its
/// fields are written over those of the tick it replaces, in place, with `key` copied into
/// that tick's key buffer (the slot is the symbol's, so its symbol is already `symbol`). No
/// string is allocated per tick, the replaced tick frees only its source, and the tick is not
/// moved whole.
fn keep_last(slot: &mut Option<Tick>, tick: &mut Tick, symbol: &str, key: &str) {
    let Some(old) = slot.as_mut() else {
        // The symbol's first tick (its symbol and key were taken: empty).
        *slot = Some(Tick {
            symbol: symbol.to_owned(),
            key: key.to_owned(),
            ..tick.clone()
        });
        return;
    };
    // Exhaustive, so a field added to `Tick` fails to compile here until it is kept.
    let Tick {
        symbol: _,
        source,
        ts_event_ns,
        ts_recv_ns,
        scale,
        bid,
        ask,
        last,
        bid_size,
        ask_size,
        volume,
        flags,
        key: _,
        route,
        replay,
    } = tick;
    old.source = std::mem::take(source);
    old.ts_event_ns = *ts_event_ns;
    old.ts_recv_ns = *ts_recv_ns;
    old.scale = *scale;
    old.bid = *bid;
    old.ask = *ask;
    old.last = *last;
    old.bid_size = *bid_size;
    old.ask_size = *ask_size;
    old.volume = *volume;
    old.flags = *flags;
    old.route = *route;
    old.replay = *replay;
    old.key.clear();
    old.key.push_str(key);
}

/// Keeps a copy of `bar` as its timeframe's last closed bar, written over the one it replaces
/// (the same symbol, timeframe and side): its strings are copied into that bar's buffers, not
/// allocated.
fn keep_bar(slot: &mut Option<pb::Bar>, bar: &pb::Bar) {
    let Some(old) = slot.as_mut() else {
        *slot = Some(bar.clone());
        return;
    };
    // Exhaustive, so a field added to `Bar` fails to compile here until it is kept.
    let pb::Bar {
        symbol,
        timeframe,
        price_side,
        open_time_ns,
        close_time_ns,
        price_scale,
        open,
        high,
        low,
        close,
        tick_count,
        volume,
        ts_recv_ns,
        flags,
    } = bar;
    old.symbol.clone_from(symbol);
    old.timeframe.clone_from(timeframe);
    old.price_side.clone_from(price_side);
    old.open_time_ns = *open_time_ns;
    old.close_time_ns = *close_time_ns;
    old.price_scale = *price_scale;
    old.open = *open;
    old.high = *high;
    old.low = *low;
    old.close = *close;
    old.tick_count = *tick_count;
    old.volume = *volume;
    old.ts_recv_ns = *ts_recv_ns;
    old.flags = *flags;
}

fn values(names: &[String], vals: &[Option<f64>]) -> Vec<pb::IndicatorValue> {
    names
        .iter()
        .zip(vals)
        .map(|(name, v)| pb::IndicatorValue {
            name: name.clone(),
            value: v.unwrap_or(0.0),
            warm: v.is_some(),
        })
        .collect()
}

/// One symbol's instances of one group's indicators.
struct Series {
    indicators: Vec<Box<dyn Indicator>>,
    /// Every output of every indicator after the previous input (flattened, in `names` order).
    prev: Vec<Option<f64>>,
    /// The same after this input (a buffer kept between inputs).
    cur: Vec<Option<f64>>,
}

struct SymbolState {
    /// One per group; `[0]` per tick.
    series: Vec<Series>,
    bars: Vec<BarBuilder>,
    last_bars: Vec<Option<pb::Bar>>,
    last_tick: Option<Tick>,
    dirty: bool,
}

/// Per-symbol indicators, bars and signals.
pub struct Engine {
    /// `[0]`: the per-tick group; then one per timeframe bar-fed indicators follow.
    groups: Vec<Group>,
    /// The bar timeframes (configured, then those indicators name).
    timeframes: Vec<Timeframe>,
    /// Per timeframe, the group its closed bars feed.
    bar_group: Vec<Option<usize>>,
    cfg: EngineConfig,
    /// Symbol -> position in `symbols`; foldhash, not SipHash: symbols are not attacker-chosen
    /// here (the router admits only known instruments) and the lookup runs on every tick.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    /// In the order the symbols were first seen, so a clock step's output is deterministic.
    symbols: Vec<(String, SymbolState)>,
}

impl Engine {
    /// Returns an engine for `cfg`; fails on a rule whose sides are on different timeframes.
    pub fn new(cfg: EngineConfig) -> Result<Self, SpecError> {
        for r in &cfg.rules {
            r.check().map_err(|why| SpecError {
                spec: r.id.clone(),
                why,
            })?;
        }
        let mut timeframes = cfg.timeframes.clone();
        let mut bar_group: Vec<Option<usize>> = vec![None; timeframes.len()];
        let mut groups = vec![Group::new(TICK.into())];
        // The group of a spec, with its timeframe renamed after the bars it follows.
        let mut place = |s: &IndicatorSpec, groups: &mut Vec<Group>| -> (usize, usize) {
            let mut s = s.clone();
            let g = match &s.timeframe {
                None => 0,
                Some(tf) => {
                    let b = match timeframes.iter().position(|t| t.same_bars(tf)) {
                        Some(b) => b,
                        None => {
                            timeframes.push(tf.clone());
                            bar_group.push(None);
                            timeframes.len() - 1
                        }
                    };
                    s.timeframe = Some(timeframes[b].clone());
                    *bar_group[b].get_or_insert_with(|| {
                        groups.push(Group::new(timeframes[b].name.clone()));
                        groups.len() - 1
                    })
                }
            };
            (g, groups[g].index(&s))
        };
        for s in &cfg.indicators {
            place(s, &mut groups);
        }
        // (group, (indicator, output) of each side) of each rule.
        let mut refs = Vec::new();
        for r in &cfg.rules {
            let mut side = |v: &ValueRef| {
                let (g, i) = place(&v.spec, &mut groups);
                (g, (i, v.output))
            };
            let (g, lhs) = side(&r.lhs);
            let rhs = match &r.rhs {
                Operand::Indicator(v) => Some(side(v).1),
                Operand::Const(_) => None,
            };
            refs.push((g, lhs, rhs));
        }
        for g in &mut groups {
            for s in &g.specs {
                let at = g.names.len();
                g.offsets.push(at);
                g.outputs.push(at..at + s.outputs().len());
                g.names
                    .extend((0..s.outputs().len()).map(|o| s.value_name(o)));
            }
            g.table = Arc::new(ValueNames::new(&g.label, &g.names));
        }
        for (r, (g, lhs, rhs)) in cfg.rules.iter().zip(refs) {
            let group = &mut groups[g];
            let slot = |(i, o): (usize, usize)| group.offsets[i] + o;
            let compiled = CompiledRule {
                rule: r.clone(),
                lhs: slot(lhs),
                rhs: rhs.map(slot),
                konst: match r.rhs {
                    Operand::Const(c) => c,
                    Operand::Indicator(_) => 0.0,
                },
            };
            group.rules.push(compiled);
        }
        Ok(Self {
            groups,
            timeframes,
            bar_group,
            cfg,
            index: HashMap::default(),
            symbols: Vec::new(),
        })
    }

    fn state_index(&mut self, symbol: &str) -> usize {
        if let Some(&i) = self.index.get(symbol) {
            return i;
        }
        let st = SymbolState {
            series: self.groups.iter().map(Group::series).collect(),
            bars: self
                .timeframes
                .iter()
                .map(|tf| BarBuilder::new(tf.clone(), self.cfg.bar_side))
                .collect(),
            last_bars: vec![None; self.timeframes.len()],
            last_tick: None,
            dirty: false,
        };
        self.symbols.push((symbol.to_string(), st));
        self.index
            .insert(symbol.to_string(), self.symbols.len() - 1);
        self.symbols.len() - 1
    }

    /// Feeds one tick and returns the update, closed bars (and the updates of the indicators
    /// they feed) and fired signals it caused.
    pub fn on_tick(&mut self, mut tick: Tick) -> Updates {
        let i = self.state_index(&tick.symbol);
        let st = &mut self.symbols[i].1;
        let mut out = Updates::default();
        for (b, builder) in st.bars.iter_mut().enumerate() {
            if let Some(bar) = builder.on_tick(&tick) {
                if let Some(g) = self.bar_group[b] {
                    let input = bar_input(&bar, builder);
                    let times = (bar.close_time_ns, tick.ts_recv_ns);
                    let u = self.groups[g].feed(
                        &mut st.series[g],
                        &input,
                        tick.symbol.clone(),
                        times,
                        &mut out.signals,
                    );
                    out.bar_updates.push(u);
                }
                keep_bar(&mut st.last_bars[b], &bar);
                out.bars.push(bar);
            }
        }
        let input = Input::from_tick(&tick);
        let times = (tick.ts_event_ns, tick.ts_recv_ns);
        // The update takes the tick's symbol and key; the tick kept as the symbol's last gets
        // them back in the buffers of the one it replaces (see `keep_last`).
        let update = out.update.insert(pb::IndicatorUpdate::default());
        self.groups[0].feed_into(
            &mut st.series[0],
            &input,
            std::mem::take(&mut tick.symbol),
            times,
            &mut out.signals,
            update,
        );
        update.idempotency_key = std::mem::take(&mut tick.key);
        update.symbol_seq = tick.route.symbol_seq;
        update.ts_route_ns = tick.route.ts_route_ns;
        keep_last(
            &mut st.last_tick,
            &mut tick,
            &update.symbol,
            &update.idempotency_key,
        );
        st.dirty = true;
        out
    }

    /// Closes every live bar whose interval ended before `now_ns` (less the grace period), and
    /// feeds them to the indicators of their timeframe: returns the bars, those indicators'
    /// updates and the signals of their rules (`update` is `None`). Symbols come in the order
    /// they were first seen, bars in timeframe order.
    pub fn on_clock(&mut self, now_ns: i64) -> Updates {
        let grace = self.cfg.bar_grace_ns;
        let mut out = Updates::default();
        for (symbol, st) in &mut self.symbols {
            for (b, builder) in st.bars.iter_mut().enumerate() {
                let Some(bar) = builder.on_clock(now_ns, grace) else {
                    continue;
                };
                if let Some(g) = self.bar_group[b] {
                    let input = bar_input(&bar, builder);
                    let times = (bar.close_time_ns, builder.closed_last_tick().0);
                    let u = self.groups[g].feed(
                        &mut st.series[g],
                        &input,
                        symbol.clone(),
                        times,
                        &mut out.signals,
                    );
                    out.bar_updates.push(u);
                }
                keep_bar(&mut st.last_bars[b], &bar);
                st.dirty = true;
                out.bars.push(bar);
            }
        }
        out
    }

    /// Returns the current state of `symbol`, if it has seen a tick. `latest` holds the
    /// per-tick values, then those of the bar-fed indicators (named with their timeframe,
    /// `rsi(14)@1m`) as of their last closed bar.
    pub fn snapshot(&self, symbol: &str) -> Option<pb::Snapshot> {
        let st = &self.symbols[*self.index.get(symbol)?].1;
        Some(pb::Snapshot {
            symbol: symbol.to_string(),
            last_tick: st.last_tick.as_ref().map(pb::Tick::from),
            // Derived from the last tick and the indicators' current values, so the hot path
            // never keeps a copy of every update.
            latest: st.last_tick.as_ref().map(|t| pb::IndicatorUpdate {
                symbol: t.symbol.clone(),
                timeframe: "tick".into(),
                ts_event_ns: t.ts_event_ns,
                ts_recv_ns: t.ts_recv_ns,
                price: t.mid_f64(),
                idempotency_key: t.key.clone(),
                symbol_seq: t.route.symbol_seq,
                ts_route_ns: t.route.ts_route_ns,
                ts_engine_ns: 0,
                values: self
                    .groups
                    .iter()
                    .zip(&st.series)
                    .flat_map(|(g, s)| values(&g.names, &s.prev))
                    .collect(),
            }),
            bars: st.last_bars.iter().flatten().cloned().collect(),
        })
    }

    /// Returns the snapshots of the symbols that changed since the last call.
    pub fn take_changed_snapshots(&mut self) -> Vec<pb::Snapshot> {
        let changed: Vec<String> = self
            .symbols
            .iter_mut()
            .filter_map(|(s, st)| std::mem::take(&mut st.dirty).then(|| s.clone()))
            .collect();
        changed.iter().filter_map(|s| self.snapshot(s)).collect()
    }

    /// Returns the names of the values computed per tick, in update order: one per indicator
    /// output (`sma(20)`, `macd(12,26,9).macd`, `macd(12,26,9).signal`, ...).
    pub fn indicator_names(&self) -> &[String] {
        &self.groups[0].names
    }

    /// Returns the names of the values computed per bar of `timeframe` (`rsi(14)@1m`), in
    /// update order; empty when no indicator follows it.
    pub fn bar_indicator_names(&self, timeframe: &str) -> &[String] {
        self.groups[1..]
            .iter()
            .find(|g| g.label == timeframe)
            .map_or(&[], |g| &g.names)
    }

    /// Returns the names of the values of every group's updates ("tick" first).
    pub fn value_name_tables(&self) -> Vec<Arc<ValueNames>> {
        self.groups.iter().map(|g| g.table.clone()).collect()
    }

    /// Returns the names of the values of the updates of `timeframe` ("tick" or a bar
    /// timeframe), which the engine's updates carry without (see [`ValueNames`]). An update's
    /// own `timeframe` may be given as it is: empty is the per-tick group's.
    pub fn value_names(&self, timeframe: &str) -> Option<&Arc<ValueNames>> {
        self.groups
            .iter()
            .find(|g| g.update_label == timeframe || g.label == timeframe)
            .map(|g| &g.table)
    }

    /// The bar timeframes built: the configured ones, then those bar-fed indicators added.
    pub fn timeframes(&self) -> &[Timeframe] {
        &self.timeframes
    }
}

/// A closed bar as an indicator input, with the spread of its last tick.
fn bar_input(bar: &pb::Bar, builder: &BarBuilder) -> Input {
    let (_, spread) = builder.closed_last_tick();
    Input {
        spread,
        ..Input::from_bar(bar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(symbol: &str, i: i64, bid: i64) -> Tick {
        Tick {
            symbol: symbol.into(),
            source: "sim".into(),
            ts_event_ns: 1_000_000_000_000 + i * 100_000_000,
            ts_recv_ns: 1_000_000_000_000 + i * 100_000_000 + 7,
            scale: 5,
            bid,
            ask: bid,
            last: None,
            bid_size: 0.0,
            ask_size: 0.0,
            volume: 0.0,
            flags: 0,
            key: format!("k{i}"),
            route: Default::default(),
            replay: false,
        }
    }

    fn cfg(ind: &[&str], rules: &[&str]) -> EngineConfig {
        EngineConfig {
            indicators: ind.iter().map(|s| s.parse().unwrap()).collect(),
            rules: rules.iter().map(|s| s.parse().unwrap()).collect(),
            ..EngineConfig::default()
        }
    }

    #[test]
    fn computes_per_symbol_and_carries_receipt_time() {
        let mut e = Engine::new(cfg(&["sma(2)"], &[])).unwrap();
        e.on_tick(tick("EURUSD", 0, 100_000));
        e.on_tick(tick("GBPUSD", 1, 200_000));
        let u = e.on_tick(tick("EURUSD", 2, 100_002)).update.unwrap();
        assert_eq!(u.symbol, "EURUSD");
        assert_eq!(u.ts_recv_ns, tick("EURUSD", 2, 0).ts_recv_ns);
        assert!(u.values[0].warm);
        assert!((u.values[0].value - 1.00001).abs() < 1e-12);
        let g = e.snapshot("GBPUSD").unwrap();
        assert!(!g.latest.unwrap().values[0].warm);
        assert!(e.snapshot("USDJPY").is_none());
    }

    #[test]
    fn the_update_and_the_snapshot_keep_the_symbol_and_key_of_each_tick() {
        let mut e = Engine::new(cfg(&["sma(2)"], &[])).unwrap();
        // Keys of different lengths, so a reused buffer must shrink and grow.
        for (i, key) in [
            (0, "a-long-first-key"),
            (1, "k"),
            (2, "a-longer-third-key!"),
        ] {
            let mut t = tick("EURUSD", i, 100_000 + i);
            t.key = key.into();
            let want = pb::Tick::from(&t);
            let u = e.on_tick(t).update.unwrap();
            assert_eq!(
                (u.symbol.as_str(), u.idempotency_key.as_str()),
                ("EURUSD", key)
            );
            let snap = e.snapshot("EURUSD").unwrap();
            assert_eq!(snap.last_tick.unwrap(), want, "the last tick, whole");
            let latest = snap.latest.unwrap();
            assert_eq!(
                (latest.symbol.as_str(), latest.idempotency_key.as_str()),
                ("EURUSD", key)
            );
        }
        e.on_tick(tick("GBPUSD", 3, 200_000));
        assert_eq!(
            e.snapshot("GBPUSD").unwrap().last_tick.unwrap().symbol,
            "GBPUSD"
        );
        let eur = e.snapshot("EURUSD").unwrap().latest.unwrap();
        assert_eq!(eur.idempotency_key, "a-longer-third-key!");
    }

    #[test]
    fn rule_indicators_are_added_and_signals_fire_once() {
        let mut e = Engine::new(cfg(&[], &["sma(1) crosses_above sma(3)"])).unwrap();
        assert_eq!(e.indicator_names(), ["sma(1)", "sma(3)"]);
        let prices = [100, 100, 100, 90, 90, 120, 130, 140];
        let fired: Vec<usize> = prices
            .iter()
            .enumerate()
            .filter(|(i, p)| !e.on_tick(tick("EURUSD", *i as i64, **p)).signals.is_empty())
            .map(|(i, _)| i)
            .collect();
        // sma(3) at i=5 is (90+90+120)/3 = 100 < 120: the cross happens there, only there.
        assert_eq!(fired, vec![5]);
    }

    #[test]
    fn multi_output_indicators_are_named_per_output_and_usable_in_rules() {
        let mut e = Engine::new(cfg(
            &["sma(2)", "macd(2,3,2)"],
            &[
                "macd(2,3,2).hist crosses_above 0",
                "sma(1) > bbands(3,1).upper",
            ],
        ))
        .unwrap();
        assert_eq!(
            e.indicator_names(),
            [
                "sma(2)",
                "macd(2,3,2).macd",
                "macd(2,3,2).signal",
                "macd(2,3,2).hist",
                "sma(1)",
                "bbands(3,1).upper",
                "bbands(3,1).middle",
                "bbands(3,1).lower",
            ]
        );
        let prices = [100, 100, 100, 100, 90, 90, 90, 120, 120];
        let mut fired = Vec::new();
        for (i, p) in prices.iter().enumerate() {
            let u = e.on_tick(tick("EURUSD", i as i64, *p));
            let vals = &u.update.as_ref().unwrap().values;
            assert_eq!(vals.len(), 8);
            // MACD is warm from input slow + signal - 2 = 3, all three outputs at once.
            assert_eq!(vals[1].warm, i >= 3, "{i}");
            assert_eq!(vals[3].warm, i >= 3, "{i}");
            if vals[3].warm {
                assert!((vals[3].value - (vals[1].value - vals[2].value)).abs() < 1e-15);
            }
            fired.extend(
                u.signals
                    .iter()
                    .map(|s| (i, s.rule_id.clone(), s.values.len())),
            );
        }
        // The histogram (TA-Lib: nan, nan, nan, 0, -0.56, -0.09, 0.14, 1.84, 0.41) turns
        // positive while the price stays flat after the drop; the jump to 120 lifts the price
        // above the upper band.
        assert!(fired.contains(&(6, "macd(2,3,2).hist crosses_above 0".into(), 1)));
        assert!(fired.contains(&(7, "sma(1) > bbands(3,1).upper".into(), 2)));
        let snap = e.snapshot("EURUSD").unwrap().latest.unwrap();
        assert_eq!(snap.values[2].name, "macd(2,3,2).signal");
    }

    #[test]
    fn adx_outputs_are_warm_and_usable_in_rules_each_from_its_own_warm_up() {
        let mut e = Engine::new(cfg(
            &["adx(3)"],
            &["adx(3).plus_di > 50", "adx(3).adx > 50", "adx(3) < 50"],
        ))
        .unwrap();
        assert_eq!(
            e.indicator_names(),
            ["adx(3).adx", "adx(3).plus_di", "adx(3).minus_di"]
        );
        // A steady rise: +DI = 100 and -DI = 0 from input 3 (TA-Lib's PLUS_DI/MINUS_DI
        // lookback), the ADX = 100 from input 5 (ADX's lookback 2 * 3 - 1).
        let mut fired = Vec::new();
        for i in 0..8 {
            let u = e.on_tick(tick("EURUSD", i, 100_000 + 10 * i));
            let vals = &u.update.as_ref().unwrap().values;
            let warm: Vec<bool> = vals.iter().map(|v| v.warm).collect();
            assert_eq!(warm, [i >= 5, i >= 3, i >= 3], "{i}");
            if i >= 3 {
                assert!((vals[1].value - 100.0).abs() < 1e-9 && vals[2].value == 0.0);
            }
            if i < 5 {
                assert_eq!(vals[0].value, 0.0, "a cold value reads 0 on the wire");
            }
            fired.extend(u.signals.iter().map(|s| (i, s.rule_id.clone())));
        }
        // A rule on the ADX waits for the ADX, not for +DI/-DI (`adx(3) < 50` never fires).
        assert_eq!(
            fired,
            [
                (3, "adx(3).plus_di > 50".to_string()),
                (5, "adx(3).adx > 50".to_string())
            ]
        );
        let snap = e.snapshot("EURUSD").unwrap().latest.unwrap();
        assert!(snap.values.iter().all(|v| v.warm));
    }

    #[test]
    fn bars_close_on_tick_and_on_clock() {
        let mut e = Engine::new(cfg(&["sma(2)"], &[])).unwrap();
        // Ticks every 100 ms: the 11th starts the second 1s bar.
        let closed: usize = (0..11)
            .map(|i| e.on_tick(tick("EURUSD", i, 100_000)).bars.len())
            .sum();
        assert_eq!(closed, 1);
        let t = tick("EURUSD", 10, 0).ts_event_ns;
        let closed = e.on_clock(t + 2_000_000_000);
        assert_eq!(
            closed.bars.len(),
            1,
            "the open 1s bar; the 1m bar is still open"
        );
        assert!(closed.update.is_none() && closed.bar_updates.is_empty());
        assert_eq!(e.snapshot("EURUSD").unwrap().bars.len(), 1);
    }

    const S: i64 = 1_000_000_000;

    /// Seconds 0 and 1 at 100, second 2 at 110: `sma(1)@1s` crosses above `sma(2)@1s` when
    /// the bar of second 2 closes.
    fn cross_prices(i: i64) -> i64 {
        if i < 20 { 100_000 } else { 110_000 }
    }

    #[test]
    fn a_timeframe_rule_fires_when_a_tick_closes_its_bar() {
        let rule = "sma(1)@1s crosses_above sma(2)@1s";
        let mut e = Engine::new(cfg(&["rsi(3)@1s"], &[rule])).unwrap();
        assert_eq!(
            e.bar_indicator_names("1s"),
            ["rsi(3)@1s", "sma(1)@1s", "sma(2)@1s"]
        );
        assert!(e.indicator_names().is_empty());
        let mut fired = Vec::new();
        let mut bar_updates = 0;
        for i in 0..35 {
            let u = e.on_tick(tick("EURUSD", i, cross_prices(i)));
            // Tick rules only would fire here; no per-tick indicator is configured.
            assert!(u.update.unwrap().values.is_empty());
            for b in &u.bar_updates {
                assert_eq!((b.timeframe.as_str(), b.values.len()), ("1s", 3));
                assert_eq!(b.ts_event_ns, u.bars[0].close_time_ns);
                bar_updates += 1;
            }
            fired.extend(u.signals.into_iter().map(|s| (i, s)));
        }
        // Bars of seconds 0, 1 and 2 closed by ticks 10, 20 and 30.
        assert_eq!(bar_updates, 3);
        assert_eq!(fired.len(), 1);
        let (i, s) = &fired[0];
        assert_eq!(*i, 30, "the tick that closed the bar of second 2");
        assert_eq!(s.rule_id, rule);
        assert_eq!(
            s.ts_event_ns,
            tick("EURUSD", 30, 0).ts_event_ns,
            "its close time"
        );
        assert_eq!(s.ts_recv_ns, tick("EURUSD", 30, 0).ts_recv_ns);
        assert_eq!(s.values[0].name, "sma(1)@1s");
        assert!((s.values[0].value - 1.1).abs() < 1e-12);
        assert!((s.values[1].value - 1.05).abs() < 1e-12);
        // The snapshot holds the per-bar values, named with their timeframe.
        let snap = e.snapshot("EURUSD").unwrap().latest.unwrap();
        let names: Vec<&str> = snap.values.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["rsi(3)@1s", "sma(1)@1s", "sma(2)@1s"]);
        assert!(snap.values[1].warm);
    }

    #[test]
    fn a_timeframe_rule_fires_when_the_clock_closes_its_bar() {
        let rule = "sma(1)@1s crosses_above sma(2)@1s";
        let mut e = Engine::new(cfg(&["sma(2)"], &[rule])).unwrap();
        for i in 0..30 {
            let u = e.on_tick(tick("EURUSD", i, cross_prices(i)));
            assert!(u.signals.is_empty());
        }
        let last = tick("EURUSD", 29, 0);
        let end_of_second_2 = tick("EURUSD", 30, 0).ts_event_ns;
        // Not before the grace period is over.
        assert!(e.on_clock(end_of_second_2 + 50_000_000).bars.is_empty());
        let c = e.on_clock(end_of_second_2 + 100_000_000);
        assert!(c.update.is_none());
        assert_eq!(c.bars.len(), 1);
        assert_eq!(c.bar_updates.len(), 1);
        assert_eq!(c.bar_updates[0].timeframe, "1s");
        assert_eq!(c.bar_updates[0].ts_recv_ns, last.ts_recv_ns);
        assert_eq!(c.signals.len(), 1);
        let s = &c.signals[0];
        assert_eq!(s.ts_event_ns, end_of_second_2, "the bar's close time");
        assert_eq!(
            s.ts_recv_ns, last.ts_recv_ns,
            "the ts_recv_ns of the bar's last tick"
        );
        // The next tick does not close (or feed) that bar again.
        let u = e.on_tick(tick("EURUSD", 30, 110_000));
        assert!(u.bars.is_empty() && u.bar_updates.is_empty() && u.signals.is_empty());
    }

    #[test]
    fn rules_need_both_sides_on_one_timeframe() {
        let err = "ema(12)@1m crosses_above ema(26)"
            .parse::<Rule>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("both sides of a rule must be on the same timeframe"),
            "{err}"
        );
        assert!(err.to_string().contains("ema(26) on tick"), "{err}");
        // Also when a rule is put together in code.
        let mut r: Rule = "ema(12)@1m crosses_above ema(26)@1m".parse().unwrap();
        r.rhs = Operand::Indicator("ema(26)@5m".parse().unwrap());
        let err = Engine::new(EngineConfig {
            rules: vec![r],
            ..EngineConfig::default()
        })
        .err()
        .expect("refused");
        assert!(
            err.why.contains("ema(12)@1m is on 1m, ema(26)@5m on 5m"),
            "{err}"
        );
        // One length under two names is one timeframe.
        assert!("sma(2)@60s crosses_above sma(3)@1m".parse::<Rule>().is_ok());
    }

    #[test]
    fn timeframes_indicators_name_are_added_and_named_after_their_bars() {
        let mut e = Engine::new(cfg(
            &["sma(2)", "sma(2)@60s", "atr(2)@3t"],
            &["zscore(5)@tick > 3", "macd(2,3,2).hist@1m crosses_above 0"],
        ))
        .unwrap();
        let tfs: Vec<&str> = e.timeframes().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(tfs, ["1s", "1m", "3t"]);
        assert_eq!(e.indicator_names(), ["sma(2)", "zscore(5)"]);
        assert_eq!(
            e.bar_indicator_names("1m"),
            [
                "sma(2)@1m",
                "macd(2,3,2).macd@1m",
                "macd(2,3,2).signal@1m",
                "macd(2,3,2).hist@1m"
            ]
        );
        let mut per_tf = std::collections::BTreeMap::new();
        for i in 0..9 {
            let u = e.on_tick(tick("EURUSD", i, 100_000 + i));
            for b in u.bar_updates {
                *per_tf.entry(b.timeframe).or_insert(0) += 1;
            }
        }
        // 3-tick bars close on ticks 2, 5 and 8; no second or minute has closed with a
        // bar-fed indicator on it (1s feeds none).
        assert_eq!(
            per_tf.into_iter().collect::<Vec<_>>(),
            [("3t".to_string(), 3)]
        );
    }

    #[test]
    fn the_default_configuration_has_no_bar_updates() {
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        for i in 0..25 {
            let u = e.on_tick(tick("EURUSD", i, 100_000 + i % 7));
            assert!(u.bar_updates.is_empty());
        }
        assert!(e.on_clock(i64::MAX / 2).bar_updates.is_empty());
    }

    #[test]
    fn same_ticks_give_same_signals() {
        let run = || {
            let mut e = Engine::new(cfg(
                &["sma(5)"],
                &[
                    "sma(1)@1s crosses_above sma(3)@1s",
                    "sma(1)@1s crosses_below sma(3)@1s",
                    "zscore(5)@tick > 1",
                    "ema(2)@3t crosses_above ema(4)@3t",
                ],
            ))
            .unwrap();
            let mut rng: u64 = 42;
            let mut out = Vec::new();
            let mut px = [100_000i64; 3];
            for i in 0..3_000 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let s = (rng >> 33) as usize % 3;
                px[s] += ((rng >> 40) % 21) as i64 - 10;
                let mut t = tick(["EURUSD", "GBPUSD", "USDJPY"][s], i, px[s]);
                // Holes in the feed, so the clock closes bars too.
                if (i / 200) % 3 == 2 {
                    t.ts_event_ns += 5 * S;
                }
                let u = e.on_tick(t);
                out.push(format!("{:?}{:?}{:?}", u.signals, u.bar_updates, u.bars));
                if i % 7 == 0 {
                    let c = e.on_clock(tick("EURUSD", i, 0).ts_event_ns + S);
                    out.push(format!("{:?}{:?}{:?}", c.signals, c.bar_updates, c.bars));
                }
            }
            out
        };
        let (a, b) = (run(), run());
        assert!(a.iter().filter(|s| s.contains("rule_id")).count() > 10);
        assert_eq!(a, b);
    }
}
