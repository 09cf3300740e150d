//! Wilder's average true range.

use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["atr"];

/// TA-Lib's true range of `x` after a bar that closed at `prev_close`:
/// max(high − low, |prev_close − high|, |prev_close − low|).
pub(crate) fn true_range(x: &Input, prev_close: f64) -> f64 {
    let mut greatest = x.high - x.low;
    let v2 = (prev_close - x.high).abs();
    if v2 > greatest {
        greatest = v2;
    }
    let v3 = (prev_close - x.low).abs();
    if v3 > greatest {
        greatest = v3;
    }
    greatest
}

/// Wilder's ATR as TA-Lib computes it: the first true range needs a previous close (so input 0
/// gives none); the first ATR (input `period`) is the mean of the first `period` true ranges,
/// then `atr = (atr * (period − 1) + tr) / period`.
#[derive(Debug, Clone)]
pub struct Atr {
    period: usize,
    prev_close: Option<f64>,
    trs: usize,
    tr_sum: f64,
    atr: Option<f64>,
    out: [f64; 1],
}

impl Atr {
    /// Returns an ATR of `period`.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            prev_close: None,
            trs: 0,
            tr_sum: 0.0,
            atr: None,
            out: [0.0],
        }
    }
}

impl Indicator for Atr {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let prev = self.prev_close.replace(x.close)?;
        let tr = true_range(x, prev);
        let n = self.period as f64;
        let atr = match self.atr {
            Some(a) => {
                let mut a = a * (n - 1.0);
                a += tr;
                a / n
            }
            None => {
                self.trs += 1;
                self.tr_sum += tr;
                if self.trs < self.period {
                    return None;
                }
                self.tr_sum / n
            }
        };
        self.atr = Some(atr);
        self.out[0] = atr;
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.atr.map(|_| &self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
