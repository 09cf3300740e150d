//! Bollinger Bands.

use super::stddev::ta_sqrt;
use super::window::RollingMoments;
use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["upper", "middle", "lower"];

/// Bollinger Bands as TA-Lib's BBANDS with matype 0: middle = SMA of the close over `period`,
/// upper/lower = middle ± `nbdev` × the population standard deviation of the same window.
#[derive(Debug, Clone)]
pub struct BBands {
    m: RollingMoments,
    nbdev: f64,
    warm: bool,
    out: [f64; 3],
}

impl BBands {
    /// Returns bands over `period` inputs, `nbdev` deviations wide on each side.
    pub fn new(period: usize, nbdev: f64) -> Self {
        Self {
            m: RollingMoments::new(period),
            nbdev,
            warm: false,
            out: [0.0; 3],
        }
    }
}

impl Indicator for BBands {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        if !self.m.push(x.close) {
            return None;
        }
        self.warm = true;
        let mid = self.m.mean();
        let sd = ta_sqrt(self.m.variance());
        let w = if self.nbdev == 1.0 {
            sd
        } else {
            sd * self.nbdev
        };
        self.out = [mid + w, mid, mid - w];
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
