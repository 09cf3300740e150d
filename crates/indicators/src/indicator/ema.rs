//! Exponential moving average.

use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["ema"];

/// Exponential moving average with `k = 2 / (period + 1)`, seeded with the SMA of the first
/// `period` inputs (TA-Lib's default); `prev + k * (x - prev)` afterwards, as TA-Lib computes it.
#[derive(Debug, Clone)]
pub struct Ema {
    period: usize,
    k: f64,
    seed_sum: f64,
    count: usize,
    value: Option<f64>,
    out: [f64; 1],
}

impl Ema {
    /// Returns an EMA of `period`.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            k: 2.0 / (period as f64 + 1.0),
            seed_sum: 0.0,
            count: 0,
            value: None,
            out: [0.0],
        }
    }

    /// Feeds one price; returns the average once `period` prices were seen.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        match self.value {
            Some(prev) => self.value = Some((x - prev) * self.k + prev),
            None => {
                self.count += 1;
                self.seed_sum += x;
                if self.count == self.period {
                    self.value = Some(self.seed_sum / self.period as f64);
                }
            }
        }
        self.value
    }

    /// Returns the current average, or `None` during warm-up.
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

impl Indicator for Ema {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        self.out[0] = Ema::update(self, x.close)?;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.value.map(|_| &self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
