//! Spread statistics.

use super::window::{RollingExtreme, RollingMoments};
use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["mean", "max"];

/// Mean and maximum of the spread (ask − bid) over the last `window` inputs (a bar's spread is
/// that of its closing tick when known, else 0). O(1): running sums and a monotonic deque.
#[derive(Debug, Clone)]
pub struct SpreadStats {
    m: RollingMoments,
    max: RollingExtreme,
    warm: bool,
    out: [f64; 2],
}

impl SpreadStats {
    /// Returns spread statistics over `window` inputs.
    pub fn new(window: usize) -> Self {
        Self {
            m: RollingMoments::new(window),
            max: RollingExtreme::max(window),
            warm: false,
            out: [0.0; 2],
        }
    }
}

impl Indicator for SpreadStats {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let full = self.m.push(x.spread);
        let max = self.max.push(x.spread);
        if !full {
            return None;
        }
        self.warm = true;
        self.out = [self.m.mean(), max];
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
