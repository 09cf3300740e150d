//! The indicators stage's pure core: per symbol, it feeds every tick to the configured
//! indicators, bar builders and signal rules and returns what changed. No I/O and no clock of
//! its own: the adapter passes ticks and the time.

use crate::bars::{BarBuilder, PriceSide, Timeframe};
use crate::indicator::{Indicator, IndicatorSpec, SpecError};
use crate::rules::{Operand, Rule};
use std::collections::HashMap;
use tick_core::{Tick, pb};

/// What the engine computes.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Indicators computed per tick on the mid price.
    pub indicators: Vec<IndicatorSpec>,
    /// Signal rules; indicators they name are added to the set if missing.
    pub rules: Vec<Rule>,
    /// Bar timeframes.
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

/// Everything one tick changed.
#[derive(Debug, Default)]
pub struct Updates {
    /// The per-tick indicator update.
    pub update: Option<pb::IndicatorUpdate>,
    /// Bars this tick closed.
    pub bars: Vec<pb::Bar>,
    /// Signals this tick fired.
    pub signals: Vec<pb::Signal>,
}

struct CompiledRule {
    rule: Rule,
    lhs: usize,
    rhs: Option<usize>,
    konst: f64,
}

struct SymbolState {
    indicators: Vec<Box<dyn Indicator>>,
    prev: Vec<Option<f64>>,
    bars: Vec<BarBuilder>,
    last_bars: Vec<Option<pb::Bar>>,
    last_tick: Option<Tick>,
    dirty: bool,
}

/// Per-symbol indicators, bars and signals.
pub struct Engine {
    specs: Vec<IndicatorSpec>,
    names: Vec<String>,
    rules: Vec<CompiledRule>,
    cfg: EngineConfig,
    symbols: HashMap<String, SymbolState>,
}

impl Engine {
    /// Returns an engine for `cfg`.
    pub fn new(cfg: EngineConfig) -> Result<Self, SpecError> {
        let mut specs = cfg.indicators.clone();
        let index = |s: &IndicatorSpec, specs: &mut Vec<IndicatorSpec>| {
            specs.iter().position(|x| x == s).unwrap_or_else(|| {
                specs.push(s.clone());
                specs.len() - 1
            })
        };
        let mut rules = Vec::new();
        for r in &cfg.rules {
            let lhs = index(&r.lhs, &mut specs);
            let (rhs, konst) = match &r.rhs {
                Operand::Indicator(i) => (Some(index(i, &mut specs)), 0.0),
                Operand::Const(c) => (None, *c),
            };
            rules.push(CompiledRule {
                rule: r.clone(),
                lhs,
                rhs,
                konst,
            });
        }
        let names = specs.iter().map(ToString::to_string).collect();
        Ok(Self {
            specs,
            names,
            rules,
            cfg,
            symbols: HashMap::new(),
        })
    }

    fn state(&mut self, symbol: &str) -> &mut SymbolState {
        if !self.symbols.contains_key(symbol) {
            let st = SymbolState {
                indicators: self.specs.iter().map(IndicatorSpec::build).collect(),
                prev: vec![None; self.specs.len()],
                bars: self
                    .cfg
                    .timeframes
                    .iter()
                    .map(|tf| BarBuilder::new(tf.clone(), self.cfg.bar_side))
                    .collect(),
                last_bars: vec![None; self.cfg.timeframes.len()],
                last_tick: None,
                dirty: false,
            };
            self.symbols.insert(symbol.to_string(), st);
        }
        self.symbols.get_mut(symbol).expect("inserted above")
    }

    /// Feeds one tick and returns the update, closed bars and fired signals it caused.
    pub fn on_tick(&mut self, tick: Tick) -> Updates {
        let names = std::mem::take(&mut self.names);
        let rules = std::mem::take(&mut self.rules);
        let st = self.state(&tick.symbol);
        let mid = tick.mid_f64();
        let mut out = Updates::default();

        for (i, b) in st.bars.iter_mut().enumerate() {
            if let Some(bar) = b.on_tick(&tick) {
                st.last_bars[i] = Some(bar.clone());
                out.bars.push(bar);
            }
        }
        let prev = std::mem::take(&mut st.prev);
        let cur: Vec<Option<f64>> = st.indicators.iter_mut().map(|i| i.update(mid)).collect();
        let values: Vec<pb::IndicatorValue> = names
            .iter()
            .zip(&cur)
            .map(|(name, v)| pb::IndicatorValue {
                name: name.clone(),
                value: v.unwrap_or(0.0),
                warm: v.is_some(),
            })
            .collect();
        for r in &rules {
            let side = |vals: &[Option<f64>]| -> Option<(f64, f64)> {
                let l = vals[r.lhs]?;
                let rv = match r.rhs {
                    Some(j) => vals[j]?,
                    None => r.konst,
                };
                Some((l, rv))
            };
            let Some(now) = side(&cur) else { continue };
            if r.rule.fires(side(&prev), now) {
                let mut involved = vec![values[r.lhs].clone()];
                if let Some(j) = r.rhs {
                    involved.push(values[j].clone());
                }
                out.signals.push(pb::Signal {
                    symbol: tick.symbol.clone(),
                    rule_id: r.rule.id.clone(),
                    direction: r.rule.direction(),
                    values: involved,
                    ts_event_ns: tick.ts_event_ns,
                    ts_recv_ns: tick.ts_recv_ns,
                });
            }
        }
        st.prev = cur;
        let update = pb::IndicatorUpdate {
            symbol: tick.symbol.clone(),
            timeframe: "tick".into(),
            ts_event_ns: tick.ts_event_ns,
            ts_recv_ns: tick.ts_recv_ns,
            price: mid,
            values,
        };
        st.last_tick = Some(tick);
        st.dirty = true;
        out.update = Some(update);
        self.names = names;
        self.rules = rules;
        out
    }

    /// Closes every live bar whose interval ended before `now_ns` (less the grace period).
    pub fn on_clock(&mut self, now_ns: i64) -> Vec<pb::Bar> {
        let grace = self.cfg.bar_grace_ns;
        let mut closed = Vec::new();
        for st in self.symbols.values_mut() {
            for (i, b) in st.bars.iter_mut().enumerate() {
                if let Some(bar) = b.on_clock(now_ns, grace) {
                    st.last_bars[i] = Some(bar.clone());
                    closed.push(bar);
                }
            }
        }
        closed
    }

    /// Returns the current state of `symbol`, if it has seen a tick.
    pub fn snapshot(&self, symbol: &str) -> Option<pb::Snapshot> {
        let st = self.symbols.get(symbol)?;
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
                values: self
                    .names
                    .iter()
                    .zip(&st.prev)
                    .map(|(name, v)| pb::IndicatorValue {
                        name: name.clone(),
                        value: v.unwrap_or(0.0),
                        warm: v.is_some(),
                    })
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

    /// Returns the names of the indicators computed, in update order.
    pub fn indicator_names(&self) -> &[String] {
        &self.names
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
    fn bars_close_on_tick_and_on_clock() {
        let mut e = Engine::new(cfg(&["sma(2)"], &[])).unwrap();
        // Ticks every 100 ms: the 11th starts the second 1s bar.
        let closed: usize = (0..11)
            .map(|i| e.on_tick(tick("EURUSD", i, 100_000)).bars.len())
            .sum();
        assert_eq!(closed, 1);
        let t = tick("EURUSD", 10, 0).ts_event_ns;
        let bars = e.on_clock(t + 2_000_000_000);
        assert_eq!(bars.len(), 1, "the open 1s bar; the 1m bar is still open");
        assert_eq!(e.snapshot("EURUSD").unwrap().bars.len(), 1);
    }
}
