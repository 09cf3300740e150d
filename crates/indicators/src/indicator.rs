//! Incremental technical indicators, O(1) per input, following TA-Lib's conventions (SMA seeds
//! the EMA; RSI uses Wilder smoothing seeded by simple averages). Adding one is one new type
//! implementing [`Indicator`] plus one arm in [`IndicatorSpec::build`].

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// A streaming indicator fed one value at a time.
pub trait Indicator: Send {
    /// Feeds the next input and returns the new value, or `None` during warm-up.
    fn update(&mut self, x: f64) -> Option<f64>;
    /// Returns the current value, or `None` during warm-up.
    fn value(&self) -> Option<f64>;
}

/// The kinds of indicator available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndicatorKind {
    /// Simple moving average.
    Sma,
    /// Exponential moving average.
    Ema,
    /// Wilder's relative strength index.
    Rsi,
}

/// An indicator with its parameters, written `kind(period)`, like `ema(12)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndicatorSpec {
    /// Which indicator.
    pub kind: IndicatorKind,
    /// Its period.
    pub period: usize,
}

/// Why an indicator or rule specification could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid specification {spec:?}: {why}")]
pub struct SpecError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for IndicatorSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let t = s.trim().to_ascii_lowercase();
        let (name, rest) = t
            .split_once('(')
            .ok_or_else(|| err("expected kind(period)"))?;
        let period: usize = rest
            .strip_suffix(')')
            .ok_or_else(|| err("missing ')'"))?
            .trim()
            .parse()
            .map_err(|_| err("period is not a whole number"))?;
        if period == 0 {
            return Err(err("period must be at least 1"));
        }
        let kind = match name.trim() {
            "sma" => IndicatorKind::Sma,
            "ema" => IndicatorKind::Ema,
            "rsi" => IndicatorKind::Rsi,
            other => return Err(err(&format!("unknown indicator {other:?} (sma, ema, rsi)"))),
        };
        Ok(IndicatorSpec { kind, period })
    }
}

impl fmt::Display for IndicatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            IndicatorKind::Sma => "sma",
            IndicatorKind::Ema => "ema",
            IndicatorKind::Rsi => "rsi",
        };
        write!(f, "{k}({})", self.period)
    }
}

impl IndicatorSpec {
    /// Returns a fresh indicator of this specification.
    pub fn build(&self) -> Box<dyn Indicator> {
        match self.kind {
            IndicatorKind::Sma => Box::new(Sma::new(self.period)),
            IndicatorKind::Ema => Box::new(Ema::new(self.period)),
            IndicatorKind::Rsi => Box::new(Rsi::new(self.period)),
        }
    }
}

/// Simple moving average over the last `period` inputs.
#[derive(Debug, Clone)]
pub struct Sma {
    period: usize,
    window: VecDeque<f64>,
    sum: f64,
    since_resum: usize,
}

impl Sma {
    /// Returns an SMA of `period` inputs.
    pub fn new(period: usize) -> Self {
        Self {
            period,
            window: VecDeque::with_capacity(period + 1),
            sum: 0.0,
            since_resum: 0,
        }
    }
}

impl Indicator for Sma {
    fn update(&mut self, x: f64) -> Option<f64> {
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

    fn value(&self) -> Option<f64> {
        (self.window.len() == self.period).then(|| self.sum / self.period as f64)
    }
}

/// Exponential moving average with `k = 2 / (period + 1)`, seeded with the SMA of the first
/// `period` inputs (TA-Lib's default).
#[derive(Debug, Clone)]
pub struct Ema {
    period: usize,
    k: f64,
    seed_sum: f64,
    count: usize,
    value: Option<f64>,
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
        }
    }
}

impl Indicator for Ema {
    fn update(&mut self, x: f64) -> Option<f64> {
        self.count += 1;
        match self.value {
            Some(prev) => self.value = Some(prev + self.k * (x - prev)),
            None => {
                self.seed_sum += x;
                if self.count == self.period {
                    self.value = Some(self.seed_sum / self.period as f64);
                }
            }
        }
        self.value
    }

    fn value(&self) -> Option<f64> {
        self.value
    }
}

/// Wilder's RSI: average gain and loss over `period` changes, first as simple averages, then
/// smoothed with `avg = (avg * (period - 1) + current) / period`.
#[derive(Debug, Clone)]
pub struct Rsi {
    period: usize,
    prev: Option<f64>,
    changes: usize,
    avg_gain: f64,
    avg_loss: f64,
    value: Option<f64>,
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
        }
    }
}

impl Indicator for Rsi {
    fn update(&mut self, x: f64) -> Option<f64> {
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
        // TA-Lib returns 0 when there was no movement at all.
        self.value = Some(if total == 0.0 {
            0.0
        } else {
            100.0 * self.avg_gain / total
        });
        self.value
    }

    fn value(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &str, xs: &[f64]) -> Vec<Option<f64>> {
        let mut ind = spec.parse::<IndicatorSpec>().unwrap().build();
        xs.iter().map(|&x| ind.update(x)).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn sma_hand_computed() {
        let out = run("sma(3)", &[1.0, 2.0, 3.0, 4.0, 10.0]);
        assert_eq!(
            out,
            vec![None, None, Some(2.0), Some(3.0), Some(17.0 / 3.0)]
        );
    }

    #[test]
    fn ema_hand_computed() {
        // k = 2 / (3 + 1) = 0.5; seed = sma(1, 2, 3) = 2; then 0.5*4 + 0.5*2 = 3; 0.5*10 + 0.5*3 = 6.5.
        let out = run("ema(3)", &[1.0, 2.0, 3.0, 4.0, 10.0]);
        assert_eq!(out, vec![None, None, Some(2.0), Some(3.0), Some(6.5)]);
    }

    /// The closing prices of StockCharts' ChartSchool RSI worksheet (the classic Wilder
    /// example).
    const CLOSES: [f64; 33] = [
        44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08, 45.89, 46.03, 45.61,
        46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64, 46.21, 46.25, 45.71, 46.45, 45.78, 45.35,
        44.03, 44.18, 44.22, 44.57, 43.42, 42.66, 43.13,
    ];

    fn assert_matches(spec: &str, warmup: usize, reference: &[f64]) {
        let out = run(spec, &CLOSES);
        assert!(
            out[..warmup].iter().all(Option::is_none),
            "{spec} warm too early"
        );
        for (i, want) in reference.iter().enumerate() {
            let got = out[warmup + i].unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs(),
                "{spec}[{}] = {got}, TA-Lib {want}",
                warmup + i
            );
        }
    }

    /// Reference values computed by TA-Lib 0.8.2 (Python package `ta-lib`, `talib.RSI(c, 14)`)
    /// on `CLOSES`. StockCharts' worksheet prints 70.53, 66.32, ... because it rounds its
    /// intermediate averages; TA-Lib does not.
    #[test]
    fn rsi_matches_talib() {
        let talib = [
            70.46413502109704,
            66.24961855355505,
            66.48094183471265,
            69.34685316290864,
            66.29471265892623,
            57.91502067008556,
            62.88071830996241,
            63.208788718287764,
            56.01158478954756,
            62.33992931089788,
            54.67097137765514,
            50.386815195114224,
            40.019423791313564,
            41.49263540422281,
            41.9024296784581,
            45.499497238680405,
            37.32277831337994,
            33.09048257272338,
            37.788771982057824,
        ];
        assert_matches("rsi(14)", 14, &talib);
        // The published worksheet agrees to its printed precision (within its rounding).
        let published = [
            70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06,
        ];
        for (t, p) in talib.iter().zip(published) {
            assert!((t - p).abs() < 0.1);
        }
    }

    /// `talib.EMA(c, 10)` and `talib.SMA(c, 10)` on `CLOSES` (TA-Lib 0.8.2).
    #[test]
    fn ema_and_sma_match_talib() {
        let ema = [
            44.779,
            44.981,
            45.171727272727274,
            45.251413223140496,
            45.43842900075131,
            45.59144190970562,
            45.665725198850055,
            45.73195698087732,
            45.85523752980872,
            45.92155797893441,
            45.87036561912815,
            45.93211732474121,
            45.98991417478827,
            45.93902068846313,
            46.03192601783347,
            45.98612128731829,
            45.870462871442236,
            45.53583325845274,
            45.289318120552245,
            45.0948966440882,
            44.99946089061762,
            44.7122861832326,
            44.33914324082667,
            44.11929901522182,
        ];
        let sma = [
            44.779,
            44.934000000000005,
            45.128,
            45.274,
            45.541,
            45.736000000000004,
            45.853,
            45.946000000000005,
            46.045,
            46.083000000000006,
            46.039,
            46.071000000000005,
            46.093,
            46.103,
            46.12,
            46.06999999999999,
            46.004999999999995,
            45.80499999999999,
            45.582,
            45.382000000000005,
            45.275000000000006,
            44.99600000000001,
            44.637000000000015,
            44.37900000000001,
        ];
        assert_matches("ema(10)", 9, &ema);
        assert_matches("sma(10)", 9, &sma);
    }

    #[test]
    fn rsi_of_a_flat_series_is_zero_like_talib_and_of_a_rising_one_is_100() {
        assert_eq!(run("rsi(3)", &[5.0; 5])[4], Some(0.0));
        assert_eq!(run("rsi(3)", &[1.0, 2.0, 3.0, 4.0])[3], Some(100.0));
    }

    #[test]
    fn sma_stays_exact_over_many_updates() {
        let mut s = Sma::new(20);
        let mut last = None;
        for i in 0..200_000u32 {
            last = s.update(1.1 + f64::from(i % 97) * 1e-5);
        }
        let want: f64 = (199_980..200_000u32)
            .map(|i| 1.1 + f64::from(i % 97) * 1e-5)
            .sum::<f64>()
            / 20.0;
        assert!(close(last.unwrap(), want, 1e-14));
    }

    #[test]
    fn specs_parse_and_reject() {
        assert_eq!(
            "EMA( 12 )".parse::<IndicatorSpec>().unwrap().to_string(),
            "ema(12)"
        );
        for bad in ["ema", "ema(0)", "ema(x)", "foo(3)", "ema(3"] {
            assert!(bad.parse::<IndicatorSpec>().is_err(), "{bad}");
        }
    }
}
