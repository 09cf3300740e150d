//! The spike filter: a tick whose mid jumps more than a multiple of the recent volatility of its
//! symbol from its source is held; the next tick of the symbol from that source decides: near the
//! held price it confirms the move (the held tick is released), otherwise the held tick is
//! rejected as a spike.
//!
//! Statistics are kept per symbol and source: in `merge` arbitration two feeds of one symbol
//! quote at levels of their own, and one feed's calm spell must not make the other's ordinary
//! prices look like spikes. A run of held ticks that agree with each other (each closer to the
//! previous held price than to the old level) is a new level, not a string of spikes: after
//! [`SpikeConfig::reanchor_after`] of them the filter re-anchors there, releases the held tick
//! and passes the current one, so no price level is rejected forever.
//!
//! The volatility estimate has a floor in price points of the instrument: after a calm spell
//! (unchanged mids) the mean absolute move decays toward zero, and without a floor every
//! ordinary move would then look like a spike, and each tick of the new level would condemn
//! the one before it.

use std::collections::HashMap;

/// Settings of the spike filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeConfig {
    /// A move larger than this multiple of the mean absolute move is suspicious.
    pub multiple: f64,
    /// Moves observed before the filter judges (warm-up).
    pub warmup: u32,
    /// Weight of the newest move in the mean absolute move (EWMA).
    pub alpha: f64,
    /// A held tick not confirmed within this time is rejected.
    pub max_hold_ns: i64,
    /// Floor of the mean absolute move, in price points (units of the tick's last decimal).
    pub floor_points: f64,
    /// Consecutive held ticks that agree with each other after which the filter re-anchors at
    /// the new level (0: never).
    pub reanchor_after: u32,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            multiple: 20.0,
            warmup: 50,
            alpha: 0.02,
            max_hold_ns: 5_000_000_000,
            floor_points: 5.0,
            reanchor_after: 3,
        }
    }
}

/// What the filter decided for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpikeVerdict {
    /// Pass.
    Pass,
    /// Hold until the next tick of the symbol decides.
    Hold,
}

/// What happened to a previously held tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldOutcome {
    /// The move was confirmed: pass the held tick (before the current one).
    Confirmed,
    /// Not confirmed: reject the held tick as a spike.
    Rejected,
    /// Not confirmed by a nearby price, but the last few held ticks agree with each other: the
    /// filter re-anchored at the new level; pass the held tick (before the current one).
    Reanchored,
}

#[derive(Debug, Default)]
struct Vol {
    last_mid: f64,
    mean_abs: f64,
    moves: u32,
    held: Option<(f64, i64)>,
    /// Held ticks in a row that agreed with the one before (the current held tick included).
    run: u32,
}

/// Volatility and held ticks per symbol and source.
#[derive(Debug)]
pub struct SpikeFilter {
    cfg: SpikeConfig,
    /// symbol -> source -> state.
    symbols: HashMap<String, HashMap<String, Vol>>,
}

impl SpikeFilter {
    /// Returns a filter with these settings.
    pub fn new(cfg: SpikeConfig) -> Self {
        Self {
            cfg,
            symbols: HashMap::new(),
        }
    }

    /// Judges a tick with mid `mid` at `now_ns`, without a volatility floor. Returns the outcome
    /// of a previously held tick of the symbol, if there was one, and the verdict on this tick.
    pub fn on_tick(
        &mut self,
        symbol: &str,
        mid: f64,
        now_ns: i64,
    ) -> (Option<HeldOutcome>, SpikeVerdict) {
        self.judge(symbol, "", mid, 0.0, now_ns)
    }

    /// Judges a tick of `symbol` from `source` with mid `mid` at `now_ns`, whose instrument's
    /// price point (the value of one unit of its last decimal, e.g. 0.00001 for EURUSD at 5
    /// decimals) is `point`: the mean absolute move counts as at least
    /// [`SpikeConfig::floor_points`] points. Returns the outcome of a previously held tick of the
    /// symbol from this source, if there was one, and the verdict on this tick.
    pub fn judge(
        &mut self,
        symbol: &str,
        source: &str,
        mid: f64,
        point: f64,
        now_ns: i64,
    ) -> (Option<HeldOutcome>, SpikeVerdict) {
        if !self.symbols.contains_key(symbol) {
            self.symbols.insert(symbol.to_string(), HashMap::new());
        }
        let sources = self.symbols.get_mut(symbol).expect("inserted above");
        if !sources.contains_key(source) {
            sources.insert(source.to_string(), Vol::default());
        }
        let cfg = self.cfg;
        let v = sources.get_mut(source).expect("inserted above");
        let threshold = cfg.multiple * v.mean_abs.max(cfg.floor_points * point);
        let mut outcome = None;
        let mut run = 0;
        if let Some((held_mid, _)) = v.held.take() {
            let agrees = (mid - held_mid).abs() < 0.5 * (mid - v.last_mid).abs();
            if (mid - held_mid).abs() <= threshold {
                // The market really moved: continue from the new level; the jump itself does
                // not enter the volatility estimate.
                v.last_mid = held_mid;
                outcome = Some(HeldOutcome::Confirmed);
            } else if agrees && cfg.reanchor_after > 0 && v.run + 1 >= cfg.reanchor_after {
                // Held ticks in a row that agree with each other: a new, livelier level.
                // Continue from here, with the volatility the new level shows.
                v.mean_abs = v.mean_abs.max((mid - held_mid).abs());
                v.last_mid = mid;
                v.run = 0;
                return (Some(HeldOutcome::Reanchored), SpikeVerdict::Pass);
            } else {
                outcome = Some(HeldOutcome::Rejected);
                run = if agrees { v.run } else { 0 };
            }
        }
        if v.moves == 0 && v.last_mid == 0.0 {
            v.last_mid = mid;
            v.moves = 0;
            return (outcome, SpikeVerdict::Pass);
        }
        let jump = (mid - v.last_mid).abs();
        if v.moves >= cfg.warmup && threshold > 0.0 && jump > threshold {
            v.held = Some((mid, now_ns));
            v.run = run + 1;
            return (outcome, SpikeVerdict::Hold);
        }
        v.run = 0;
        v.mean_abs = if v.moves == 0 {
            jump
        } else {
            cfg.alpha * jump + (1.0 - cfg.alpha) * v.mean_abs
        };
        v.moves = v.moves.saturating_add(1);
        v.last_mid = mid;
        (outcome, SpikeVerdict::Pass)
    }

    /// Returns the (symbol, source) pairs whose held tick waited longer than the hold limit;
    /// those ticks are rejected as unconfirmed spikes.
    pub fn expire(&mut self, now_ns: i64) -> Vec<(String, String)> {
        let max = self.cfg.max_hold_ns;
        let mut out = Vec::new();
        for (symbol, sources) in &mut self.symbols {
            for (source, v) in sources {
                if v.held.is_some_and(|(_, at)| now_ns - at > max) {
                    v.held = None;
                    v.run = 0;
                    out.push((symbol.clone(), source.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed() -> SpikeFilter {
        let mut f = SpikeFilter::new(SpikeConfig {
            multiple: 10.0,
            warmup: 10,
            alpha: 0.1,
            max_hold_ns: 100,
            floor_points: 0.0,
            reanchor_after: 3,
        });
        for i in 0..40 {
            // Moves of 1e-4 back and forth.
            let mid = 1.1 + if i % 2 == 0 { 0.0 } else { 1e-4 };
            assert_eq!(f.on_tick("EURUSD", mid, i), (None, SpikeVerdict::Pass));
        }
        f
    }

    #[test]
    fn a_lone_spike_is_rejected() {
        let mut f = warmed();
        assert_eq!(f.on_tick("EURUSD", 1.2, 50), (None, SpikeVerdict::Hold));
        // Back to the old level: the held tick was a spike.
        assert_eq!(
            f.on_tick("EURUSD", 1.1001, 51),
            (Some(HeldOutcome::Rejected), SpikeVerdict::Pass)
        );
    }

    #[test]
    fn a_confirmed_jump_passes() {
        let mut f = warmed();
        assert_eq!(f.on_tick("EURUSD", 1.2, 50).1, SpikeVerdict::Hold);
        assert_eq!(
            f.on_tick("EURUSD", 1.2001, 51),
            (Some(HeldOutcome::Confirmed), SpikeVerdict::Pass)
        );
        // The new level is the reference now.
        assert_eq!(f.on_tick("EURUSD", 1.2, 52), (None, SpikeVerdict::Pass));
    }

    #[test]
    fn small_moves_pass_and_warmup_never_holds() {
        let mut f = SpikeFilter::new(SpikeConfig {
            warmup: 10,
            ..SpikeConfig::default()
        });
        assert_eq!(f.on_tick("X", 1.0, 0).1, SpikeVerdict::Pass);
        assert_eq!(f.on_tick("X", 5.0, 1).1, SpikeVerdict::Pass, "warm-up");
        let mut w = warmed();
        assert_eq!(
            w.on_tick("EURUSD", 1.1005, 50).1,
            SpikeVerdict::Pass,
            "5 mean moves"
        );
    }

    #[test]
    fn after_a_calm_spell_ordinary_moves_pass_with_the_floor() {
        let cfg = SpikeConfig {
            warmup: 10,
            ..SpikeConfig::default()
        };
        let (mut plain, mut floored) = (SpikeFilter::new(cfg), SpikeFilter::new(cfg));
        let point = 1e-5;
        // A calm spell: 500 unchanged mids after a few 1-point moves.
        for i in 0..520 {
            let mid = if i < 20 && i % 2 == 1 { 1.10001 } else { 1.1 };
            plain.on_tick("EURUSD", mid, i);
            floored.judge("EURUSD", "", mid, point, i);
        }
        // A 3-point move: held without a floor (the mean has decayed toward zero), passed with
        // one (20 x 5 points = 100 points allowed).
        assert_eq!(plain.on_tick("EURUSD", 1.10003, 600).1, SpikeVerdict::Hold);
        assert_eq!(
            floored.judge("EURUSD", "", 1.10003, point, 600).1,
            SpikeVerdict::Pass
        );
        // A 500-point jump is still held, and rejected when the next tick is back.
        assert_eq!(
            floored.judge("EURUSD", "", 1.10503, point, 601).1,
            SpikeVerdict::Hold
        );
        assert_eq!(
            floored.judge("EURUSD", "", 1.10004, point, 602),
            (Some(HeldOutcome::Rejected), SpikeVerdict::Pass)
        );
    }

    #[test]
    fn an_unconfirmed_hold_expires() {
        let mut f = warmed();
        f.on_tick("EURUSD", 1.3, 50);
        assert!(f.expire(100).is_empty());
        assert_eq!(f.expire(151), vec![("EURUSD".to_string(), String::new())]);
        assert_eq!(f.on_tick("EURUSD", 1.1, 152), (None, SpikeVerdict::Pass));
    }

    #[test]
    fn one_sources_calm_spell_cannot_condemn_another_sources_prices() {
        let cfg = SpikeConfig {
            warmup: 10,
            ..SpikeConfig::default()
        };
        let point = 1e-5;
        let mut f = SpikeFilter::new(cfg);
        // Feed A is calm at 1.10000 for a long time (its mean move decays to the floor: 20 x 5
        // points = 100 points allowed); then feed B joins, quoting 150 points higher and moving
        // by 1-3 points, ticks interleaved as `merge` arbitration passes them. With one state
        // per symbol every B price would be a 150-point jump from A's and be rejected.
        for i in 0..1_000i64 {
            assert_eq!(
                f.judge("EURUSD", "feed-a", 1.1, point, i),
                (None, SpikeVerdict::Pass)
            );
        }
        let mut held = 0;
        for i in 1_000..3_000i64 {
            let a = f.judge("EURUSD", "feed-a", 1.1, point, 2 * i);
            let b_mid = 1.1015 + if i % 3 == 0 { 3e-5 } else { 1e-5 };
            let b = f.judge("EURUSD", "feed-b", b_mid, point, 2 * i + 1);
            assert_eq!(a, (None, SpikeVerdict::Pass), "tick {i}");
            held += usize::from(b.1 == SpikeVerdict::Hold);
            assert_ne!(b.0, Some(HeldOutcome::Rejected), "tick {i}");
        }
        assert_eq!(held, 0, "feed B's ordinary prices are never held");
    }

    #[test]
    fn a_genuine_gap_to_a_livelier_level_reanchors_instead_of_being_rejected_forever() {
        let cfg = SpikeConfig {
            warmup: 10,
            reanchor_after: 3,
            ..SpikeConfig::default()
        };
        let point = 1e-5;
        let mut f = SpikeFilter::new(cfg);
        for i in 0..100 {
            let mid = 1.1 + if i % 2 == 0 { 0.0 } else { 2e-5 };
            f.judge("EURUSD", "feed", mid, point, i);
        }
        // A gap of 2,000 points to a level that moves 300 points a tick: each tick is far from
        // the one before (no single confirmation), but they agree with each other.
        let level = [1.12, 1.123, 1.1201, 1.1228, 1.1203, 1.1226];
        let got: Vec<_> = level
            .iter()
            .enumerate()
            .map(|(i, m)| f.judge("EURUSD", "feed", *m, point, 200 + i as i64))
            .collect();
        assert_eq!(
            got[..3],
            [
                (None, SpikeVerdict::Hold),
                (Some(HeldOutcome::Rejected), SpikeVerdict::Hold),
                (Some(HeldOutcome::Reanchored), SpikeVerdict::Pass),
            ]
        );
        // From then on the new level is the reference: its moves pass.
        assert!(
            got[3..].iter().all(|g| *g == (None, SpikeVerdict::Pass)),
            "{got:?}"
        );
        // A lone spike away from the new level is still caught.
        assert_eq!(
            f.judge("EURUSD", "feed", 1.3, point, 300).1,
            SpikeVerdict::Hold
        );
        assert_eq!(
            f.judge("EURUSD", "feed", 1.1224, point, 301),
            (Some(HeldOutcome::Rejected), SpikeVerdict::Pass)
        );
    }
}
