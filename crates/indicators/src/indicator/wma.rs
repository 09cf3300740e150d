//! Linearly weighted moving average.

use super::window::Ring;
use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["wma"];

/// Weighted moving average of the close: weights 1 (oldest) to `period` (newest), divided by
/// `period * (period + 1) / 2`. O(1) per input with TA-Lib's recurrence (a running sum and a
/// running weighted sum); both are re-added from the ring once per period.
#[derive(Debug, Clone)]
pub struct Wma {
    period: usize,
    ring: Ring,
    /// Plain sum of the window.
    sum: f64,
    /// Weighted sum of the window.
    wsum: f64,
    since_resum: usize,
    filled: usize,
    warm: bool,
    out: [f64; 1],
}

impl Wma {
    /// Returns a WMA of `period` inputs.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            ring: Ring::new(period),
            sum: 0.0,
            wsum: 0.0,
            since_resum: 0,
            filled: 0,
            warm: false,
            out: [0.0],
        }
    }
}

impl Indicator for Wma {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let x = x.close;
        let n = self.period as f64;
        // Every value's weight drops by one (the oldest leaves with weight 0), the new one
        // enters with weight `period`.
        let filling = !self.ring.is_full();
        match self.ring.push(x) {
            Some(old) => {
                // Every weight drops by one (the oldest leaves with weight 0); the new value
                // enters with weight `period`.
                self.wsum -= self.sum;
                self.sum -= old;
                self.wsum += x * n;
                self.sum += x;
            }
            None => {
                debug_assert!(filling);
                self.filled += 1;
                self.wsum += x * self.filled as f64;
                self.sum += x;
            }
        }
        self.since_resum += 1;
        if self.since_resum >= self.period {
            self.since_resum = 0;
            let (mut s, mut w) = (0.0, 0.0);
            for (i, v) in self.ring.iter().enumerate() {
                s += v;
                w += v * (i + 1) as f64;
            }
            self.sum = s;
            self.wsum = w;
        }
        if !self.ring.is_full() {
            return None;
        }
        self.warm = true;
        let divider = (self.period * (self.period + 1) / 2) as f64;
        self.out[0] = self.wsum / divider;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
