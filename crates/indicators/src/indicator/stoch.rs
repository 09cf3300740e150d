//! Slow stochastic oscillator.

use super::sma::Sma;
use super::window::RollingExtreme;
use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["k", "d"];

/// TA-Lib's STOCH with SMA smoothing: fast %K = 100 × (close − lowest low) / (highest high −
/// lowest low) over `fastk` inputs (0 when the range is 0), slow %K = SMA(`slowk`) of fast %K,
/// %D = SMA(`slowd`) of slow %K. Like TA-Lib, both outputs are warm from input
/// `fastk + slowk + slowd − 3` (slow %K is held back until %D exists). The highest and lowest
/// come from monotonic deques: amortised O(1).
#[derive(Debug, Clone)]
pub struct Stoch {
    hi: RollingExtreme,
    lo: RollingExtreme,
    slow_k: Sma,
    slow_d: Sma,
    warm: bool,
    out: [f64; 2],
}

impl Stoch {
    /// Returns a stochastic of the given periods.
    pub fn new(fastk: usize, slowk: usize, slowd: usize) -> Self {
        Self {
            hi: RollingExtreme::max(fastk),
            lo: RollingExtreme::min(fastk),
            slow_k: Sma::new(slowk),
            slow_d: Sma::new(slowd),
            warm: false,
            out: [0.0; 2],
        }
    }
}

impl Indicator for Stoch {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let highest = self.hi.push(x.high);
        let lowest = self.lo.push(x.low);
        if !self.hi.is_full() {
            return None;
        }
        let diff = (highest - lowest) / 100.0;
        let fast_k = if diff != 0.0 {
            (x.close - lowest) / diff
        } else {
            0.0
        };
        let k = self.slow_k.update(fast_k)?;
        let d = self.slow_d.update(k)?;
        self.warm = true;
        self.out = [k, d];
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
