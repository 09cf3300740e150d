//! Rolling population standard deviation and z-score.

use super::window::RollingMoments;
use super::{Indicator, Input, TA_EPSILON};

pub(crate) const OUTPUTS: &[&str] = &["stddev"];
pub(crate) const ZSCORE_OUTPUTS: &[&str] = &["zscore"];

/// Population standard deviation of the close over the last `period` inputs (TA-Lib STDDEV with
/// nbdev 1). Like TA-Lib, a variance below `TA_EPSILON` (1e-14) gives 0.
#[derive(Debug, Clone)]
pub struct StdDev {
    m: RollingMoments,
    warm: bool,
    out: [f64; 1],
}

/// TA-Lib's `sqrt` of a variance: 0 when `TA_IS_ZERO_OR_NEG`.
pub(crate) fn ta_sqrt(var: f64) -> f64 {
    if var < TA_EPSILON { 0.0 } else { var.sqrt() }
}

impl StdDev {
    /// Returns the standard deviation over `period` inputs.
    pub fn new(period: usize) -> Self {
        Self {
            m: RollingMoments::new(period),
            warm: false,
            out: [0.0],
        }
    }
}

impl Indicator for StdDev {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        if !self.m.push(x.close) {
            return None;
        }
        self.warm = true;
        self.out[0] = ta_sqrt(self.m.variance());
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}

/// `(close − mean) / stddev` over the last `period` inputs (population standard deviation, the
/// window including the current input); 0 when the deviation is 0 (a variance below 1e-14, as
/// [`StdDev`]). No TA-Lib equivalent: the reference test compares it with numpy.
#[derive(Debug, Clone)]
pub struct ZScore {
    m: RollingMoments,
    warm: bool,
    out: [f64; 1],
}

impl ZScore {
    /// Returns the z-score over `period` inputs.
    pub fn new(period: usize) -> Self {
        Self {
            m: RollingMoments::new(period),
            warm: false,
            out: [0.0],
        }
    }
}

impl Indicator for ZScore {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        if !self.m.push(x.close) {
            return None;
        }
        self.warm = true;
        let sd = ta_sqrt(self.m.variance());
        self.out[0] = if sd == 0.0 {
            0.0
        } else {
            (x.close - self.m.mean()) / sd
        };
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        ZSCORE_OUTPUTS
    }
}
