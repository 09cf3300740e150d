//! Incremental technical indicators following TA-Lib's conventions (EMA seeded by the SMA of
//! its first `period` inputs, Wilder smoothing for RSI/ATR/ADX, population standard deviation),
//! matching the Python `ta-lib` package to 1e-9 relative after its warm-up
//! (`tests/python/test_indicators_talib.py`).
//!
//! Every indicator implements [`Indicator`]: it is fed one [`Input`] at a time (a tick, as its
//! mid with high = low = close, or a bar's OHLC and volume) and costs O(1) per input, except CCI,
//! whose mean absolute deviation is O(period) per input (there is no exact O(1) running mean
//! deviation; see [`cci`]). Running sums (SMA, WMA, standard deviation, VWAP, spread) are
//! re-added from their ring buffer once per window length, so rounding error never accumulates
//! over a long stream (amortised O(1)).
//!
//! Adding an indicator is one new module implementing [`Indicator`] plus one entry in
//! [`REGISTRY`] (its name, parameters, output names and constructor).

use crate::bars::Timeframe;
use std::fmt;
use std::str::FromStr;
use tick_core::{Tick, pb};

mod adx;
mod atr;
mod bbands;
mod cci;
mod ema;
mod macd;
mod rsi;
mod sma;
mod spread;
mod stddev;
mod stoch;
mod vwap;
mod window;
mod wma;

pub use adx::Adx;
pub use atr::Atr;
pub use bbands::BBands;
pub use cci::Cci;
pub use ema::Ema;
pub use macd::Macd;
pub use rsi::Rsi;
pub use sma::Sma;
pub use spread::SpreadStats;
pub use stddev::{StdDev, ZScore};
pub use stoch::Stoch;
pub use vwap::Vwap;
pub use wma::Wma;

/// One input of an indicator: a bar, or a tick seen as a bar whose open, high, low and close
/// are its mid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Input {
    /// Event time (ns since the Unix epoch): a tick's time, a bar's open time. Only VWAP's
    /// session reset reads it.
    pub time_ns: i64,
    /// Open.
    pub open: f64,
    /// High.
    pub high: f64,
    /// Low.
    pub low: f64,
    /// Close (the price single-input indicators follow).
    pub close: f64,
    /// Volume: a tick's traded volume, or 1 (its tick volume) when the source gives none; a
    /// bar's volume, or its tick count when the source gives none.
    pub volume: f64,
    /// Ask − bid: a tick's spread; for a bar, the spread of its closing tick when known, else 0.
    pub spread: f64,
}

impl Input {
    /// An input of one price: open = high = low = close = `price`, volume 1.
    pub fn price(price: f64) -> Self {
        Self {
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 1.0,
            ..Self::default()
        }
    }

    /// A bar's input.
    pub fn bar(time_ns: i64, open: f64, high: f64, low: f64, close: f64, volume: f64) -> Self {
        Self {
            time_ns,
            open,
            high,
            low,
            close,
            volume,
            spread: 0.0,
        }
    }

    /// A tick's input: its mid as every price, its volume (1 when it has none: tick volume)
    /// and its spread.
    pub fn from_tick(t: &Tick) -> Self {
        let mid = t.mid_f64();
        Self {
            time_ns: t.ts_event_ns,
            volume: if t.volume > 0.0 { t.volume } else { 1.0 },
            spread: t.ask_price().to_f64() - t.bid_price().to_f64(),
            ..Self::price(mid)
        }
    }

    /// A closed bar's input (volume: the bar's volume, or its tick count when it has none).
    pub fn from_bar(b: &pb::Bar) -> Self {
        let p = |m: i64| tick_core::Price::new(m, b.price_scale as u8).to_f64();
        let volume = if b.volume > 0.0 {
            b.volume
        } else {
            b.tick_count as f64
        };
        Self::bar(
            b.open_time_ns,
            p(b.open),
            p(b.high),
            p(b.low),
            p(b.close),
            volume,
        )
    }

    /// TA-Lib's typical price, `(high + low + close) / 3`.
    pub fn typical(&self) -> f64 {
        (self.high + self.low + self.close) / 3.0
    }
}

/// A streaming indicator fed one [`Input`] at a time.
pub trait Indicator: Send {
    /// Feeds the next input; returns the new values (one per [`Indicator::outputs`] name), or
    /// `None` while no output is warm. Some of the values may still be warming up: see
    /// [`Indicator::warm_outputs`] (or use [`Indicator::update_into`], which leaves them out).
    fn update(&mut self, x: &Input) -> Option<&[f64]>;
    /// Returns the current values, or `None` while no output is warm (as [`Indicator::update`]).
    fn values(&self) -> Option<&[f64]>;
    /// The names of the outputs, in the order of the values.
    fn outputs(&self) -> &'static [&'static str];
    /// Returns, while the outputs are only partly warm, which of them have a value (one flag
    /// per output); `None` when every value [`Indicator::values`] gives is warm. Outputs warm up
    /// at the input TA-Lib gives each its first value: most indicators' outputs all at once, but
    /// ADX's +DI and −DI (TA-Lib's PLUS_DI and MINUS_DI, lookback `period`) before the ADX
    /// (lookback `2·period − 1`). A value not yet warm is NaN.
    fn warm_outputs(&self) -> Option<&'static [bool]> {
        None
    }
    /// Feeds the next input and writes each output's value into `out` (one slot per output):
    /// `None` for an output still warming up.
    fn update_into(&mut self, x: &Input, out: &mut [Option<f64>]) {
        match self.update(x) {
            Some(vals) => {
                for (c, v) in out.iter_mut().zip(vals) {
                    *c = Some(*v);
                }
            }
            None => {
                out.fill(None);
                return;
            }
        }
        if let Some(warm) = self.warm_outputs() {
            for (c, w) in out.iter_mut().zip(warm) {
                if !w {
                    *c = None;
                }
            }
        }
    }
}

/// TA-Lib's `TA_IS_ZERO` (TA-Lib 0.6+: `|v| < 1e-14`).
pub(crate) fn ta_is_zero(v: f64) -> bool {
    -TA_EPSILON < v && v < TA_EPSILON
}

/// TA-Lib's `TA_EPSILON`.
pub(crate) const TA_EPSILON: f64 = 1e-14;

/// What a parameter of an indicator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A whole number of inputs, at least 1.
    Period,
    /// A positive real number (e.g. a number of standard deviations).
    Positive,
}

/// One indicator in [`REGISTRY`].
pub struct Entry {
    /// Name in specifications, lower case.
    pub name: &'static str,
    /// Parameters, each with its kind and default (`None`: required).
    pub params: &'static [(&'static str, ParamKind, Option<f64>)],
    /// Output names (a single-output indicator's value is named by its specification alone).
    pub outputs: &'static [&'static str],
    /// Builds one from its parameters (all present and valid).
    pub build: fn(&[f64]) -> Box<dyn Indicator>,
    /// One line of documentation.
    pub doc: &'static str,
}

fn us(x: f64) -> usize {
    x as usize
}

const PERIOD: (&str, ParamKind, Option<f64>) = ("period", ParamKind::Period, None);

/// Every indicator a specification can name.
pub static REGISTRY: &[Entry] = &[
    Entry {
        name: "sma",
        params: &[PERIOD],
        outputs: sma::OUTPUTS,
        build: |p| Box::new(Sma::new(us(p[0]))),
        doc: "simple moving average of close",
    },
    Entry {
        name: "ema",
        params: &[PERIOD],
        outputs: ema::OUTPUTS,
        build: |p| Box::new(Ema::new(us(p[0]))),
        doc: "exponential moving average of close, seeded with the SMA of the first period",
    },
    Entry {
        name: "wma",
        params: &[PERIOD],
        outputs: wma::OUTPUTS,
        build: |p| Box::new(Wma::new(us(p[0]))),
        doc: "linearly weighted moving average of close",
    },
    Entry {
        name: "rsi",
        params: &[PERIOD],
        outputs: rsi::OUTPUTS,
        build: |p| Box::new(Rsi::new(us(p[0]))),
        doc: "Wilder's relative strength index of close",
    },
    Entry {
        name: "macd",
        params: &[
            ("fast", ParamKind::Period, Some(12.0)),
            ("slow", ParamKind::Period, Some(26.0)),
            ("signal", ParamKind::Period, Some(9.0)),
        ],
        outputs: macd::OUTPUTS,
        build: |p| Box::new(Macd::new(us(p[0]), us(p[1]), us(p[2]))),
        doc: "MACD line, signal line and histogram (TA-Lib MACD)",
    },
    Entry {
        name: "bbands",
        params: &[
            ("period", ParamKind::Period, Some(20.0)),
            ("nbdev", ParamKind::Positive, Some(2.0)),
        ],
        outputs: bbands::OUTPUTS,
        build: |p| Box::new(BBands::new(us(p[0]), p[1])),
        doc: "Bollinger Bands: SMA ± nbdev population standard deviations (TA-Lib BBANDS, matype 0)",
    },
    Entry {
        name: "atr",
        params: &[("period", ParamKind::Period, Some(14.0))],
        outputs: atr::OUTPUTS,
        build: |p| Box::new(Atr::new(us(p[0]))),
        doc: "Wilder's average true range",
    },
    Entry {
        name: "stoch",
        params: &[
            ("fastk", ParamKind::Period, Some(14.0)),
            ("slowk", ParamKind::Period, Some(3.0)),
            ("slowd", ParamKind::Period, Some(3.0)),
        ],
        outputs: stoch::OUTPUTS,
        build: |p| Box::new(Stoch::new(us(p[0]), us(p[1]), us(p[2]))),
        doc: "slow stochastic %K and %D (TA-Lib STOCH, SMA smoothing)",
    },
    Entry {
        name: "adx",
        params: &[("period", ParamKind::Period, Some(14.0))],
        outputs: adx::OUTPUTS,
        build: |p| Box::new(Adx::new(us(p[0]))),
        doc: "Wilder's average directional index, with +DI and -DI",
    },
    Entry {
        name: "cci",
        params: &[("period", ParamKind::Period, Some(20.0))],
        outputs: cci::OUTPUTS,
        build: |p| Box::new(Cci::new(us(p[0]))),
        doc: "commodity channel index (O(period) per input: mean deviation)",
    },
    Entry {
        name: "stddev",
        params: &[("period", ParamKind::Period, Some(20.0))],
        outputs: stddev::OUTPUTS,
        build: |p| Box::new(StdDev::new(us(p[0]))),
        doc: "rolling population standard deviation of close (TA-Lib STDDEV, nbdev 1)",
    },
    Entry {
        name: "zscore",
        params: &[("period", ParamKind::Period, Some(50.0))],
        outputs: stddev::ZSCORE_OUTPUTS,
        build: |p| Box::new(ZScore::new(us(p[0]))),
        doc: "(close − SMA) / STDDEV over the period (0 when the deviation is 0)",
    },
    Entry {
        name: "vwap",
        params: &[("window", ParamKind::Period, Some(0.0))],
        outputs: vwap::OUTPUTS,
        build: |p| Box::new(Vwap::new(us(p[0]))),
        doc: "volume-weighted average typical price: per UTC day (`vwap`), or over the last N inputs (`vwap(N)`)",
    },
    Entry {
        name: "spread",
        params: &[("window", ParamKind::Period, Some(100.0))],
        outputs: spread::OUTPUTS,
        build: |p| Box::new(SpreadStats::new(us(p[0]))),
        doc: "rolling mean and max of ask − bid",
    },
];

/// An indicator with its parameters, written `kind(p1,p2,...)` like `ema(12)` or
/// `macd(12,26,9)`; trailing parameters with defaults may be left out (`macd` is
/// `macd(12,26,9)`, `vwap` the per-day VWAP). A `@timeframe` suffix feeds it the closed bars of
/// that timeframe instead of ticks: `rsi(14)@1m`, `atr(14)@100t`; `@tick`, like no suffix,
/// means per tick.
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorSpec {
    /// The indicator's name in [`REGISTRY`].
    pub name: &'static str,
    /// Every parameter, defaults filled in.
    pub params: Vec<f64>,
    /// The bars it is fed; `None`: every tick.
    pub timeframe: Option<Timeframe>,
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

impl IndicatorSpec {
    fn entry(&self) -> &'static Entry {
        REGISTRY
            .iter()
            .find(|e| e.name == self.name)
            .expect("a spec names a registered indicator")
    }

    /// Returns a fresh indicator of this specification.
    pub fn build(&self) -> Box<dyn Indicator> {
        (self.entry().build)(&self.params)
    }

    /// The names of its outputs.
    pub fn outputs(&self) -> &'static [&'static str] {
        self.entry().outputs
    }

    /// The name its `output`th value goes by in updates, snapshots and rules: the specification
    /// alone for a single-output indicator (`sma(20)`, `rsi(14)@1m`), else `spec.output`
    /// (`macd(12,26,9).signal`, or with its timeframe last,
    /// `macd(12,26,9).hist@1m` on bars).
    pub fn value_name(&self, output: usize) -> String {
        let outs = self.outputs();
        let mut s = String::new();
        self.write_base(&mut s).expect("writing to a String");
        if outs.len() > 1 {
            s.push('.');
            s.push_str(outs[output]);
        }
        if let Some(tf) = &self.timeframe {
            s.push('@');
            s.push_str(&tf.name);
        }
        s
    }

    /// The timeframe's name, `tick` for a per-tick indicator.
    pub fn timeframe_name(&self) -> &str {
        self.timeframe.as_ref().map_or("tick", |t| t.name.as_str())
    }

    /// Whether `self` and `other` are fed the same input (same bars, or both ticks).
    pub fn same_input(&self, other: &IndicatorSpec) -> bool {
        match (&self.timeframe, &other.timeframe) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_bars(b),
            _ => false,
        }
    }

    /// Writes `kind(params)` without the timeframe.
    fn write_base(&self, f: &mut impl fmt::Write) -> fmt::Result {
        f.write_str(self.name)?;
        // The per-day VWAP (window 0) is written bare.
        if self.name == "vwap" && self.params == [0.0] {
            return Ok(());
        }
        f.write_str("(")?;
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        f.write_str(")")
    }
}

/// Parses the timeframe after `@` in a specification: `tick` (per tick) is `None`.
pub(crate) fn parse_timeframe(spec: &str, tf: &str) -> Result<Option<Timeframe>, SpecError> {
    let tf = tf.trim();
    if tf.eq_ignore_ascii_case("tick") {
        return Ok(None);
    }
    tf.parse().map(Some).map_err(|why| SpecError {
        spec: spec.to_string(),
        why: format!("{why} (after `@`: a timeframe like 1m or 100t, or tick)"),
    })
}

impl FromStr for IndicatorSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let t = s.trim().to_ascii_lowercase();
        let (t, timeframe) = match t.split_once('@') {
            Some((body, tf)) => (body.trim().to_string(), parse_timeframe(s, tf)?),
            None => (t, None),
        };
        let (name, args) = match t.split_once('(') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix(')').ok_or_else(|| err("missing ')'"))?;
                let args: Vec<&str> = if inner.trim().is_empty() {
                    Vec::new()
                } else {
                    inner.split(',').map(str::trim).collect()
                };
                (name.trim(), args)
            }
            None => (t.trim(), Vec::new()),
        };
        let entry = REGISTRY.iter().find(|e| e.name == name).ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
            err(&format!(
                "unknown indicator {name:?} ({})",
                known.join(", ")
            ))
        })?;
        if args.len() > entry.params.len() {
            return Err(err(&format!(
                "{name} takes at most {} parameters",
                entry.params.len()
            )));
        }
        let mut params = Vec::with_capacity(entry.params.len());
        for (i, (pname, kind, default)) in entry.params.iter().enumerate() {
            let v = match args.get(i) {
                Some(a) => {
                    let v: f64 = a
                        .parse()
                        .map_err(|_| err(&format!("{pname} is not a number")))?;
                    match kind {
                        ParamKind::Period if v.fract() != 0.0 || !(1.0..=1e6).contains(&v) => {
                            return Err(err(&format!("{pname} must be a whole number from 1")));
                        }
                        ParamKind::Positive if !(v.is_finite() && v > 0.0) => {
                            return Err(err(&format!("{pname} must be positive")));
                        }
                        _ => v,
                    }
                }
                None => default.ok_or_else(|| err(&format!("expected {name}({pname})")))?,
            };
            params.push(v);
        }
        Ok(IndicatorSpec {
            name: entry.name,
            params,
            timeframe,
        })
    }
}

impl fmt::Display for IndicatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_base(f)?;
        match &self.timeframe {
            Some(tf) => write!(f, "@{tf}"),
            None => Ok(()),
        }
    }
}

/// A comma-separated list of indicators, such as `sma(20),macd(12,26,9),bbands(20,2)`: commas
/// inside parentheses separate parameters, not indicators (the `--indicators` option).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndicatorList(pub Vec<IndicatorSpec>);

impl FromStr for IndicatorList {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut specs = Vec::new();
        let (mut depth, mut start) = (0i32, 0);
        for (i, c) in s.char_indices().chain([(s.len(), ',')]) {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth <= 0 => {
                    let item = s[start..i].trim();
                    if !item.is_empty() {
                        specs.push(item.parse()?);
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
        Ok(IndicatorList(specs))
    }
}

impl fmt::Display for IndicatorList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
