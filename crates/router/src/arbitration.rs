//! Source arbitration per symbol when several sources feed it. `merge` passes every source;
//! `primary-failover` passes one source at a time: the most preferred one that is alive. A
//! source is silent when it sent nothing for `silence_ns`; the timer notices silence even when
//! no tick arrives at all, and a preferred source takes over again as soon as it sends.

use std::collections::HashMap;

/// How several sources of one symbol are combined.
#[derive(Debug, Clone, PartialEq)]
pub enum Arbitration {
    /// Every source passes, each tick tagged with its source.
    Merge,
    /// The first live source of `priority` passes; the others stand by.
    PrimaryFailover {
        /// Sources from most to least preferred. Ticks of sources not listed always pass.
        priority: Vec<String>,
        /// Silence after which a source counts as down.
        silence_ns: i64,
    },
}

/// What arbitration decided for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass; `switched` marks the first tick of a source that just took over.
    Pass {
        /// Whether this tick's source just became the active one.
        switched: bool,
    },
    /// A standby source: not passed.
    Standby,
}

/// A change of active source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The symbol.
    pub symbol: String,
    /// The source that was active (none at the first tick).
    pub from: Option<String>,
    /// The source now active.
    pub to: String,
    /// Why: `silence` (failover) or `recovered` (switch back).
    pub why: &'static str,
}

#[derive(Debug, Default)]
struct SymbolSources {
    active: Option<usize>,
    last_seen: Vec<Option<i64>>,
    announce: bool,
}

/// Per-symbol arbitration state.
#[derive(Debug)]
pub struct Arbiter {
    mode: Arbitration,
    symbols: HashMap<String, SymbolSources>,
}

impl Arbiter {
    /// Returns an arbiter for `mode`.
    pub fn new(mode: Arbitration) -> Self {
        Self {
            mode,
            symbols: HashMap::new(),
        }
    }

    /// Decides whether a tick of `source` for `symbol` at `now_ns` passes; switches are
    /// appended to `switches`.
    pub fn on_tick(
        &mut self,
        symbol: &str,
        source: &str,
        now_ns: i64,
        switches: &mut Vec<Switch>,
    ) -> Verdict {
        let Arbitration::PrimaryFailover {
            priority,
            silence_ns,
        } = &self.mode
        else {
            return Verdict::Pass { switched: false };
        };
        let Some(idx) = priority.iter().position(|p| p == source) else {
            return Verdict::Pass { switched: false };
        };
        if !self.symbols.contains_key(symbol) {
            self.symbols.insert(
                symbol.to_string(),
                SymbolSources {
                    last_seen: vec![None; priority.len()],
                    ..SymbolSources::default()
                },
            );
        }
        let st = self.symbols.get_mut(symbol).expect("inserted above");
        st.last_seen[idx] = Some(now_ns);
        let active_alive = |st: &SymbolSources, a: usize| {
            st.last_seen[a].is_some_and(|t| now_ns - t <= *silence_ns)
        };
        let take_over = match st.active {
            None => true,
            Some(a) if a == idx => false,
            Some(a) => idx < a || !active_alive(st, a),
        };
        if take_over {
            let from = st.active.map(|a| priority[a].clone());
            let why = match st.active {
                Some(a) if idx < a => "recovered",
                Some(_) => "silence",
                None => "first",
            };
            st.active = Some(idx);
            st.announce = false;
            if from.is_some() {
                switches.push(Switch {
                    symbol: symbol.to_string(),
                    from,
                    to: source.to_string(),
                    why,
                });
                return Verdict::Pass { switched: true };
            }
            return Verdict::Pass { switched: false };
        }
        if st.active == Some(idx) {
            let switched = std::mem::take(&mut st.announce);
            Verdict::Pass { switched }
        } else {
            Verdict::Standby
        }
    }

    /// Fails over every symbol whose active source has been silent too long to the most
    /// preferred source still alive; switches are appended to `switches`.
    pub fn on_timer(&mut self, now_ns: i64, switches: &mut Vec<Switch>) {
        let Arbitration::PrimaryFailover {
            priority,
            silence_ns,
        } = &self.mode
        else {
            return;
        };
        for (symbol, st) in &mut self.symbols {
            let Some(a) = st.active else { continue };
            let alive = |i: usize| st.last_seen[i].is_some_and(|t| now_ns - t <= *silence_ns);
            if alive(a) {
                continue;
            }
            if let Some(next) = (0..priority.len()).find(|&i| i != a && alive(i)) {
                st.active = Some(next);
                st.announce = true;
                switches.push(Switch {
                    symbol: symbol.clone(),
                    from: Some(priority[a].clone()),
                    to: priority[next].clone(),
                    why: "silence",
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn arbiter() -> Arbiter {
        Arbiter::new(Arbitration::PrimaryFailover {
            priority: vec!["mt5".into(), "oanda".into()],
            silence_ns: 2 * S,
        })
    }

    #[test]
    fn fails_over_on_silence_and_switches_back() {
        let mut a = arbiter();
        let mut sw = vec![];
        let pass = Verdict::Pass { switched: false };
        assert_eq!(a.on_tick("EURUSD", "mt5", 0, &mut sw), pass);
        assert_eq!(
            a.on_tick("EURUSD", "oanda", S / 2, &mut sw),
            Verdict::Standby
        );
        assert_eq!(a.on_tick("EURUSD", "mt5", S, &mut sw), pass);
        assert_eq!(
            a.on_tick("EURUSD", "oanda", 2 * S, &mut sw),
            Verdict::Standby
        );
        // mt5 goes silent; the timer fails over although no mt5 tick arrives.
        a.on_timer(3 * S + 1, &mut sw);
        assert_eq!(sw.len(), 1);
        assert_eq!((sw[0].to.as_str(), sw[0].why), ("oanda", "silence"));
        assert_eq!(
            a.on_tick("EURUSD", "oanda", 3 * S + 2, &mut sw),
            Verdict::Pass { switched: true }
        );
        assert_eq!(a.on_tick("EURUSD", "oanda", 3 * S + 3, &mut sw), pass);
        // mt5 recovers: immediate switch back.
        assert_eq!(
            a.on_tick("EURUSD", "mt5", 4 * S, &mut sw),
            Verdict::Pass { switched: true }
        );
        assert_eq!(sw.last().unwrap().why, "recovered");
        assert_eq!(
            a.on_tick("EURUSD", "oanda", 4 * S + 1, &mut sw),
            Verdict::Standby
        );
        assert_eq!(sw.len(), 2);
    }

    #[test]
    fn a_standby_tick_takes_over_when_the_active_source_is_silent_before_the_timer() {
        let mut a = arbiter();
        let mut sw = vec![];
        a.on_tick("EURUSD", "mt5", 0, &mut sw);
        assert_eq!(
            a.on_tick("EURUSD", "oanda", 5 * S, &mut sw),
            Verdict::Pass { switched: true }
        );
        assert_eq!(sw[0].why, "silence");
    }

    #[test]
    fn no_live_alternative_keeps_the_active_source() {
        let mut a = arbiter();
        let mut sw = vec![];
        a.on_tick("EURUSD", "mt5", 0, &mut sw);
        a.on_timer(10 * S, &mut sw);
        assert!(sw.is_empty());
        assert_eq!(
            a.on_tick("EURUSD", "mt5", 11 * S, &mut sw),
            Verdict::Pass { switched: false }
        );
    }

    #[test]
    fn merge_and_unlisted_sources_pass() {
        let mut m = Arbiter::new(Arbitration::Merge);
        let mut sw = vec![];
        for src in ["a", "b", "a"] {
            assert_eq!(
                m.on_tick("X", src, 0, &mut sw),
                Verdict::Pass { switched: false }
            );
        }
        let mut a = arbiter();
        a.on_tick("EURUSD", "mt5", 0, &mut sw);
        assert_eq!(
            a.on_tick("EURUSD", "sim", 1, &mut sw),
            Verdict::Pass { switched: false }
        );
    }
}
