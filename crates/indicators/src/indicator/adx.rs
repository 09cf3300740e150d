//! Wilder's average directional index.

use super::atr::true_range;
use super::{Indicator, Input, ta_is_zero};

pub(crate) const OUTPUTS: &[&str] = &["adx", "plus_di", "minus_di"];

/// Wilder's ADX exactly as TA-Lib's ADX computes it: +DM/−DM and TR summed over the first
/// `period − 1` changes, then smoothed `s = s − s/period + today`; DX = 100 |−DI − +DI| /
/// (−DI + +DI); the first ADX (input `2·period − 1`) is the mean of the first `period` DX, then
/// `adx = (adx (period − 1) + dx) / period`. +DI and −DI (100 · smoothed DM / smoothed TR, 0
/// when the smoothed TR is 0) are given alongside and warm up on their own, as TA-Lib's
/// PLUS_DI and MINUS_DI do: from input `period`, before the ADX (see
/// [`Indicator::warm_outputs`]).
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
    /// +DI and −DI have values (from input `period`).
    di_warm: bool,
    /// The ADX has a value too (from input `2·period − 1`).
    adx_warm: bool,
    out: [f64; 3],
}

/// While only +DI and −DI are warm.
const DI_ONLY: &[bool] = &[false, true, true];

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
            di_warm: false,
            adx_warm: false,
            out: [f64::NAN; 3],
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
        self.di_warm = true;
        self.out[1] = plus_di;
        self.out[2] = minus_di;
        // Inputs period ..= 2·period − 1: the first `period` DX are summed; until then the ADX
        // has no value (NaN, and `warm_outputs` says so).
        if self.seen <= 2 * self.period {
            if let Some(dx) = dx {
                self.sum_dx += dx;
            }
            if self.seen < 2 * self.period {
                return Some(&self.out);
            }
            self.adx = self.sum_dx / n;
            self.adx_warm = true;
        } else if let Some(dx) = dx {
            self.adx = (self.adx * (n - 1.0) + dx) / n;
        }
        self.out[0] = self.adx;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.di_warm.then_some(&self.out[..])
    }

    fn warm_outputs(&self) -> Option<&'static [bool]> {
        (self.di_warm && !self.adx_warm).then_some(DI_ONLY)
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
