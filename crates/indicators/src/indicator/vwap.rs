//! Volume-weighted average price.

use super::window::Ring;
use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["vwap"];

const DAY_NS: i64 = 86_400_000_000_000;

/// Volume-weighted average of the typical price (high + low + close) / 3 (a tick's mid):
/// Σ price·volume / Σ volume. With `window` 0 (`vwap`), cumulative over the session, which
/// restarts at each UTC midnight (by input time); with `window` N (`vwap(N)`), over the last N
/// inputs (running sums re-added from the ring once per window). Volume is the input's volume:
/// for ticks without traded volume (FX quotes) that is 1 per tick, i.e. tick volume. `None`
/// while the window is filling or its volume is 0.
#[derive(Debug, Clone)]
pub struct Vwap {
    window: usize,
    day: Option<i64>,
    pv: f64,
    vol: f64,
    pvs: Ring,
    vols: Ring,
    since_resum: usize,
    warm: bool,
    out: [f64; 1],
}

impl Vwap {
    /// Returns a VWAP per UTC day (`window` 0) or over the last `window` inputs.
    pub fn new(window: usize) -> Self {
        Self {
            window,
            day: None,
            pv: 0.0,
            vol: 0.0,
            pvs: Ring::new(window),
            vols: Ring::new(window),
            since_resum: 0,
            warm: false,
            out: [0.0],
        }
    }
}

impl Indicator for Vwap {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let p = x.typical();
        let pv = p * x.volume;
        if self.window == 0 {
            let day = x.time_ns.div_euclid(DAY_NS);
            if self.day != Some(day) {
                self.day = Some(day);
                self.pv = 0.0;
                self.vol = 0.0;
            }
            self.pv += pv;
            self.vol += x.volume;
        } else {
            self.pv += pv;
            self.vol += x.volume;
            if let Some(old) = self.pvs.push(pv) {
                self.pv -= old;
            }
            if let Some(old) = self.vols.push(x.volume) {
                self.vol -= old;
            }
            self.since_resum += 1;
            if self.since_resum >= self.window {
                self.since_resum = 0;
                self.pv = self.pvs.iter().sum();
                self.vol = self.vols.iter().sum();
            }
            if !self.pvs.is_full() {
                self.warm = false;
                return None;
            }
        }
        self.warm = self.vol > 0.0;
        if !self.warm {
            return None;
        }
        self.out[0] = self.pv / self.vol;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
