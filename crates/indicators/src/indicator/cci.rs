//! Commodity channel index.
//!
//! The mean absolute deviation of the typical price from its mean has no exact O(1) update (the
//! deviations change sign as the mean moves), so, like TA-Lib, CCI keeps the last `period`
//! typical prices in a ring and sums over it on every input: O(period) per input, bounded and
//! allocation-free. Every other indicator is O(1).

use super::window::Ring;
use super::{Indicator, Input, ta_is_zero};

pub(crate) const OUTPUTS: &[&str] = &["cci"];

/// TA-Lib's CCI: typical price tp = (high + low + close) / 3; CCI = (tp − mean) / (0.015 × mean
/// absolute deviation), both over the last `period` typical prices; 0 when either is 0. Sums
/// run over the ring in storage order, as TA-Lib's circular buffer does, so the result is the
/// same to the last bit.
#[derive(Debug, Clone)]
pub struct Cci {
    period: usize,
    ring: Ring,
    warm: bool,
    out: [f64; 1],
}

impl Cci {
    /// Returns a CCI of `period`.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            ring: Ring::new(period),
            warm: false,
            out: [0.0],
        }
    }
}

impl Indicator for Cci {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let tp = x.typical();
        self.ring.push(tp);
        if !self.ring.is_full() {
            return None;
        }
        let n = self.period as f64;
        let mut mean = 0.0;
        for v in self.ring.raw() {
            mean += v;
        }
        mean /= n;
        let mut dev = 0.0;
        for v in self.ring.raw() {
            dev += (v - mean).abs();
        }
        let num = tp - mean;
        self.out[0] = if !ta_is_zero(num) && !ta_is_zero(dev) {
            num / (0.015 * (dev / n))
        } else {
            0.0
        };
        self.warm = true;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
