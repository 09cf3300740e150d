//! Simple moving average.

use super::{Indicator, Input};
use std::collections::VecDeque;

pub(crate) const OUTPUTS: &[&str] = &["sma"];

/// Simple moving average of the close over the last `period` inputs.
#[derive(Debug, Clone)]
pub struct Sma {
    period: usize,
    window: VecDeque<f64>,
    sum: f64,
    since_resum: usize,
    out: [f64; 1],
}

impl Sma {
    /// Returns an SMA of `period` inputs.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            window: VecDeque::with_capacity(period + 1),
            sum: 0.0,
            since_resum: 0,
            out: [0.0],
        }
    }

    /// Feeds one price; returns the average once `period` prices were seen.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        self.window.push_back(x);
        self.sum += x;
        if self.window.len() > self.period {
            self.sum -= self.window.pop_front().unwrap_or(0.0);
        }
        // Re-add the window once per period so rounding error of the running sum never
        // accumulates (amortised O(1)).
        self.since_resum += 1;
        if self.since_resum >= self.period {
            self.sum = self.window.iter().sum();
            self.since_resum = 0;
        }
        self.value()
    }

    /// Returns the current average, or `None` during warm-up.
    pub fn value(&self) -> Option<f64> {
        (self.window.len() == self.period).then(|| self.sum / self.period as f64)
    }
}

impl Indicator for Sma {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        self.out[0] = Sma::update(self, x.close)?;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.value().map(|_| &self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
