//! Wilder's relative strength index.

use super::{Indicator, Input, ta_is_zero};

pub(crate) const OUTPUTS: &[&str] = &["rsi"];

/// Wilder's RSI: average gain and loss over `period` changes, first as simple averages, then
/// smoothed with `avg = (avg * (period - 1) + current) / period`; 0 when there was no movement
/// (TA-Lib's `TA_IS_ZERO` of the sum of the averages).
#[derive(Debug, Clone)]
pub struct Rsi {
    period: usize,
    prev: Option<f64>,
    changes: usize,
    avg_gain: f64,
    avg_loss: f64,
    value: Option<f64>,
    out: [f64; 1],
}

impl Rsi {
    /// Returns an RSI of `period`.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            prev: None,
            changes: 0,
            avg_gain: 0.0,
            avg_loss: 0.0,
            value: None,
            out: [0.0],
        }
    }

    /// Feeds one price; returns the RSI once `period` changes were seen.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        let prev = self.prev.replace(x)?;
        let change = x - prev;
        let (gain, loss) = (change.max(0.0), (-change).max(0.0));
        let n = self.period as f64;
        self.changes += 1;
        if self.changes <= self.period {
            self.avg_gain += gain / n;
            self.avg_loss += loss / n;
            if self.changes < self.period {
                return None;
            }
        } else {
            self.avg_gain = (self.avg_gain * (n - 1.0) + gain) / n;
            self.avg_loss = (self.avg_loss * (n - 1.0) + loss) / n;
        }
        let total = self.avg_gain + self.avg_loss;
        self.value = Some(if ta_is_zero(total) {
            0.0
        } else {
            100.0 * (self.avg_gain / total)
        });
        self.value
    }

    /// Returns the current RSI, or `None` during warm-up.
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

impl Indicator for Rsi {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        self.out[0] = Rsi::update(self, x.close)?;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.value.map(|_| &self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
