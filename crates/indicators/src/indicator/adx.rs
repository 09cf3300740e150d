//! Wilder's average directional index.

use super::atr::true_range;
use super::{Indicator, Input, ta_is_zero};

pub(crate) const OUTPUTS: &[&str] = &["adx", "plus_di", "minus_di"];

/// Wilder's ADX exactly as TA-Lib's ADX computes it: +DM/−DM and TR summed over the first
/// `period − 1` changes, then smoothed `s = s − s/period + today`; DX = 100 |−DI − +DI| /
/// (−DI + +DI); the first ADX (input `2·period − 1`) is the mean of the first `period` DX, then
/// `adx = (adx (period − 1) + dx) / period`. +DI and −DI (100 · smoothed DM / smoothed TR, 0
/// when the smoothed TR is 0) are given alongside, warm with the ADX.
#[derive(Debug, Clone)]
pub struct Adx {
    period: usize,
    seen: usize,
    prev_high: f64,
    prev_low: f64,
    prev_close: f64,
    plus_dm: f64,
    minus_dm: f64,
    tr: f64,
    sum_dx: f64,
    adx: f64,
    warm: bool,
    out: [f64; 3],
}

impl Adx {
    /// Returns an ADX of `period`.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            seen: 0,
            prev_high: 0.0,
            prev_low: 0.0,
            prev_close: 0.0,
            plus_dm: 0.0,
            minus_dm: 0.0,
            tr: 0.0,
            sum_dx: 0.0,
            adx: 0.0,
            warm: false,
            out: [0.0; 3],
        }
    }
}

impl Indicator for Adx {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let n = self.period as f64;
        self.seen += 1;
        if self.seen == 1 {
            self.prev_high = x.high;
            self.prev_low = x.low;
            self.prev_close = x.close;
            return None;
        }
        let diff_p = x.high - self.prev_high;
        let diff_m = self.prev_low - x.low;
        self.prev_high = x.high;
        self.prev_low = x.low;
        let tr = true_range(x, self.prev_close);
        self.prev_close = x.close;
        // Changes 1 ..= period − 1: plain sums.
        let summing = self.seen < self.period + 1;
        if !summing {
            self.minus_dm -= self.minus_dm / n;
            self.plus_dm -= self.plus_dm / n;
        }
        if diff_m > 0.0 && diff_p < diff_m {
            self.minus_dm += diff_m;
        } else if diff_p > 0.0 && diff_p > diff_m {
            self.plus_dm += diff_p;
        }
        if summing {
            self.tr += tr;
            return None;
        }
        self.tr = self.tr - self.tr / n + tr;
        let mut dx = None;
        let (mut plus_di, mut minus_di) = (0.0, 0.0);
        if !ta_is_zero(self.tr) {
            minus_di = 100.0 * (self.minus_dm / self.tr);
            plus_di = 100.0 * (self.plus_dm / self.tr);
            let sum = minus_di + plus_di;
            if !ta_is_zero(sum) {
                dx = Some(100.0 * ((minus_di - plus_di).abs() / sum));
            }
        }
        // Inputs period ..= 2·period − 1: the first `period` DX are summed.
        if self.seen <= 2 * self.period {
            if let Some(dx) = dx {
                self.sum_dx += dx;
            }
            if self.seen < 2 * self.period {
                return None;
            }
            self.adx = self.sum_dx / n;
        } else if let Some(dx) = dx {
            self.adx = (self.adx * (n - 1.0) + dx) / n;
        }
        self.warm = true;
        self.out = [self.adx, plus_di, minus_di];
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
