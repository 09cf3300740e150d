//! The spike filter: a tick whose mid jumps more than a multiple of the symbol's recent
//! volatility is held; the next tick of the symbol decides: near the held price it confirms the
//! move (the held tick is released), otherwise the held tick is rejected as a spike.
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
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            multiple: 20.0,
            warmup: 50,
            alpha: 0.02,
            max_hold_ns: 5_000_000_000,
            floor_points: 5.0,
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
}

#[derive(Debug, Default)]
struct Vol {
    last_mid: f64,
    mean_abs: f64,
    moves: u32,
    held: Option<(f64, i64)>,
}

/// Per-symbol volatility and held ticks.
#[derive(Debug)]
pub struct SpikeFilter {
    cfg: SpikeConfig,
    symbols: HashMap<String, Vol>,
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
        self.judge(symbol, mid, 0.0, now_ns)
    }

    /// Judges a tick with mid `mid` at `now_ns`, whose instrument's price point (the value of
    /// one unit of its last decimal, e.g. 0.00001 for EURUSD at 5 decimals) is `point`: the
    /// mean absolute move counts as at least [`SpikeConfig::floor_points`] points. Returns the
    /// outcome of a previously held tick of the symbol, if there was one, and the verdict on
    /// this tick.
    pub fn judge(
        &mut self,
        symbol: &str,
        mid: f64,
        point: f64,
        now_ns: i64,
    ) -> (Option<HeldOutcome>, SpikeVerdict) {
        if !self.symbols.contains_key(symbol) {
            self.symbols.insert(symbol.to_string(), Vol::default());
        }
        let cfg = self.cfg;
        let v = self.symbols.get_mut(symbol).expect("inserted above");
        let threshold = cfg.multiple * v.mean_abs.max(cfg.floor_points * point);
        let mut outcome = None;
        if let Some((held_mid, _)) = v.held.take() {
            if (mid - held_mid).abs() <= threshold {
                // The market really moved: continue from the new level; the jump itself does
                // not enter the volatility estimate.
                v.last_mid = held_mid;
                outcome = Some(HeldOutcome::Confirmed);
            } else {
                outcome = Some(HeldOutcome::Rejected);
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
            return (outcome, SpikeVerdict::Hold);
        }
        v.mean_abs = if v.moves == 0 {
            jump
        } else {
            cfg.alpha * jump + (1.0 - cfg.alpha) * v.mean_abs
        };
        v.moves = v.moves.saturating_add(1);
        v.last_mid = mid;
        (outcome, SpikeVerdict::Pass)
    }

    /// Returns the symbols whose held tick waited longer than the hold limit; those ticks are
    /// rejected as unconfirmed spikes.
    pub fn expire(&mut self, now_ns: i64) -> Vec<String> {
        let max = self.cfg.max_hold_ns;
        let mut out = Vec::new();
        for (s, v) in &mut self.symbols {
            if v.held.is_some_and(|(_, at)| now_ns - at > max) {
                v.held = None;
                out.push(s.clone());
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
            floored.judge("EURUSD", mid, point, i);
        }
        // A 3-point move: held without a floor (the mean has decayed toward zero), passed with
        // one (20 x 5 points = 100 points allowed).
        assert_eq!(plain.on_tick("EURUSD", 1.10003, 600).1, SpikeVerdict::Hold);
        assert_eq!(
            floored.judge("EURUSD", 1.10003, point, 600).1,
            SpikeVerdict::Pass
        );
        // A 500-point jump is still held, and rejected when the next tick is back.
        assert_eq!(
            floored.judge("EURUSD", 1.10503, point, 601).1,
            SpikeVerdict::Hold
        );
        assert_eq!(
            floored.judge("EURUSD", 1.10004, point, 602),
            (Some(HeldOutcome::Rejected), SpikeVerdict::Pass)
        );
    }

    #[test]
    fn an_unconfirmed_hold_expires() {
        let mut f = warmed();
        f.on_tick("EURUSD", 1.3, 50);
        assert!(f.expire(100).is_empty());
        assert_eq!(f.expire(151), vec!["EURUSD".to_string()]);
        assert_eq!(f.on_tick("EURUSD", 1.1, 152), (None, SpikeVerdict::Pass));
    }
}
