//! MACD, as TA-Lib computes it.

use super::{Indicator, Input};

pub(crate) const OUTPUTS: &[&str] = &["macd", "signal", "hist"];

/// TA-Lib's MACD: the fast and slow EMAs (`k = 2/(p+1)`) both start at input `slow − 1`, the
/// slow one seeded with the SMA of the first `slow` inputs and the fast one with the SMA of the
/// last `fast` of those (not of the first `fast` inputs); the MACD line is fast − slow; the
/// signal is an EMA of the line seeded with the SMA of its first `signal` values; histogram =
/// line − signal. All three are warm from input `slow + signal − 2` (TA-Lib's lookback). If
/// `fast > slow` they are swapped, as TA-Lib does.
#[derive(Debug, Clone)]
pub struct Macd {
    fast: usize,
    slow: usize,
    signal: usize,
    fast_k: f64,
    slow_k: f64,
    signal_k: f64,
    /// The first `slow` inputs, until the EMAs are seeded.
    seed: Vec<f64>,
    seeded: bool,
    ema_fast: f64,
    ema_slow: f64,
    /// Lines seen for the signal seed, and their sum.
    lines: usize,
    line_sum: f64,
    ema_signal: f64,
    warm: bool,
    out: [f64; 3],
}

impl Macd {
    /// Returns a MACD of the given periods.
    pub fn new(fast: usize, slow: usize, signal: usize) -> Self {
        let (fast, slow) = if slow < fast {
            (slow, fast)
        } else {
            (fast, slow)
        };
        let k = |p: usize| 2.0 / (p + 1) as f64;
        Self {
            fast,
            slow,
            signal,
            fast_k: k(fast),
            slow_k: k(slow),
            signal_k: k(signal),
            seed: Vec::with_capacity(slow),
            seeded: false,
            ema_fast: 0.0,
            ema_slow: 0.0,
            lines: 0,
            line_sum: 0.0,
            ema_signal: 0.0,
            warm: false,
            out: [0.0; 3],
        }
    }
}

impl Indicator for Macd {
    fn update(&mut self, x: &Input) -> Option<&[f64]> {
        let x = x.close;
        if !self.seeded {
            self.seed.push(x);
            if self.seed.len() < self.slow {
                return None;
            }
            // TA-Lib: one pass summing the slow window, the fast sum over its last `fast`.
            let split = self.slow - self.fast;
            let mut slow_sum: f64 = 0.0;
            for v in &self.seed[..split] {
                slow_sum += v;
            }
            let mut fast_sum = 0.0;
            for v in &self.seed[split..] {
                fast_sum += v;
                slow_sum += v;
            }
            self.ema_slow = slow_sum / self.slow as f64;
            self.ema_fast = fast_sum / self.fast as f64;
            self.seeded = true;
            self.seed = Vec::new();
        } else {
            self.ema_fast = (x - self.ema_fast) * self.fast_k + self.ema_fast;
            self.ema_slow = (x - self.ema_slow) * self.slow_k + self.ema_slow;
        }
        let line = self.ema_fast - self.ema_slow;
        if self.lines < self.signal {
            self.lines += 1;
            self.line_sum += line;
            if self.lines < self.signal {
                return None;
            }
            self.ema_signal = self.line_sum / self.signal as f64;
        } else {
            self.ema_signal = (line - self.ema_signal) * self.signal_k + self.ema_signal;
        }
        self.warm = true;
        self.out = [line, self.ema_signal, line - self.ema_signal];
        Some(&self.out)
    }

    fn values(&self) -> Option<&[f64]> {
        self.warm.then_some(&self.out[..])
    }

    fn outputs(&self) -> &'static [&'static str] {
        OUTPUTS
    }
}
