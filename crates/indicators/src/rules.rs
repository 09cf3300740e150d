//! Signal rules written as text, such as `rsi(14) crosses_below 30`,
//! `ema(12) crosses_above ema(26)` or `macd(12,26,9).hist crosses_above 0`, evaluated on each new
//! set of indicator values. A rule fires on the input where its condition becomes true, not on
//! every input while it stays true.
//!
//! Indicators may name a timeframe: `rsi(14)@1m crosses_below 30`,
//! `ema(12)@1m crosses_above ema(26)@1m`, `macd(12,26,9).hist@1m crosses_above 0`,
//! `zscore(50)@tick > 3` (`@tick`, like no suffix, is per tick). Both sides of a rule must be on
//! the same timeframe; the rule is evaluated when that timeframe's input arrives: each tick, or
//! each close of one of its bars.

use crate::bars::Timeframe;
use crate::indicator::{IndicatorSpec, SpecError, parse_timeframe};
use std::fmt;
use std::str::FromStr;

/// One value of an indicator: `sma(20)`, or one output of a multi-output indicator,
/// `macd(12,26,9).hist` (a multi-output indicator named alone means its first output).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueRef {
    /// The indicator.
    pub spec: IndicatorSpec,
    /// Which of its outputs.
    pub output: usize,
}

impl FromStr for ValueRef {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The timeframe goes last (`macd(12,26,9).hist@1m`), or right after the specification
        // (`macd(12,26,9)@1m.hist`).
        let (t, timeframe) = match s.trim().split_once('@') {
            Some((body, rest)) => {
                let (tf, output) = match rest.find('.') {
                    Some(i) => rest.split_at(i),
                    None => (rest, ""),
                };
                (format!("{body}{output}"), parse_timeframe(s, tf)?)
            }
            None => (s.trim().to_string(), None),
        };
        let t = t.trim();
        let (spec, output) = match t.rfind(')') {
            Some(i) => (&t[..=i], t[i + 1..].trim()),
            None => match t.split_once('.') {
                Some((spec, out)) => (spec, out),
                None => (t, ""),
            },
        };
        let mut spec: IndicatorSpec = spec.parse()?;
        spec.timeframe = timeframe;
        let output = match output.strip_prefix('.').unwrap_or(output) {
            "" if output.is_empty() => 0,
            name => {
                let name = name.trim().to_ascii_lowercase();
                spec.outputs()
                    .iter()
                    .position(|o| *o == name)
                    .ok_or_else(|| SpecError {
                        spec: s.to_string(),
                        why: format!(
                            "{spec} has no output {name:?} ({})",
                            spec.outputs().join(", ")
                        ),
                    })?
            }
        };
        Ok(ValueRef { spec, output })
    }
}

impl fmt::Display for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec.value_name(self.output))
    }
}

/// How the two sides of a rule are compared: one entry of [`OPS`].
pub type Op = &'static OpDef;

/// Both sides of a rule, `(left, right)`.
pub type Sides = (f64, f64);

/// A comparison operator of signal rules.
#[derive(Debug)]
pub struct OpDef {
    /// How rules spell it.
    pub name: &'static str,
    /// +1 for an upward signal, -1 for a downward one.
    pub direction: i32,
    /// Whether a rule fires, given both sides' previous values (none on the first evaluation)
    /// and their current values `(left, right)`.
    pub fires: fn(Option<Sides>, Sides) -> bool,
}

impl PartialEq for OpDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The rule operators: adding one is one entry here.
pub static OPS: &[OpDef] = &[
    // The left side moved from at or below the right side to above it.
    OpDef {
        name: "crosses_above",
        direction: 1,
        fires: |prev, (l, r)| prev.is_some_and(|(pl, pr)| pl <= pr) && l > r,
    },
    // The left side moved from at or above the right side to below it.
    OpDef {
        name: "crosses_below",
        direction: -1,
        fires: |prev, (l, r)| prev.is_some_and(|(pl, pr)| pl >= pr) && l < r,
    },
    // The left side became greater than the right side.
    OpDef {
        name: ">",
        direction: 1,
        fires: |prev, (l, r)| l > r && !prev.is_some_and(|(pl, pr)| pl > pr),
    },
    // The left side became less than the right side.
    OpDef {
        name: "<",
        direction: -1,
        fires: |prev, (l, r)| l < r && !prev.is_some_and(|(pl, pr)| pl < pr),
    },
];

/// The right-hand side of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A value of another indicator.
    Indicator(ValueRef),
    /// A constant.
    Const(f64),
}

/// A parsed signal rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule as written (canonical form), used as the signal's rule id.
    pub id: String,
    /// The indicator value on the left.
    pub lhs: ValueRef,
    /// The comparison.
    pub op: Op,
    /// What it is compared with.
    pub rhs: Operand,
}

impl Rule {
    /// Returns +1 for upward rules (`crosses_above`, `>`) and -1 for downward ones.
    pub fn direction(&self) -> i32 {
        self.op.direction
    }

    /// The timeframe the rule is evaluated on (its left side's): `None` per tick.
    pub fn timeframe(&self) -> Option<&Timeframe> {
        self.lhs.spec.timeframe.as_ref()
    }

    /// Checks that both sides are on the same timeframe (a rule is evaluated when its
    /// timeframe's input arrives: a tick, or the close of a bar).
    pub fn check(&self) -> Result<(), String> {
        match &self.rhs {
            Operand::Indicator(r) if !self.lhs.spec.same_input(&r.spec) => Err(format!(
                "both sides of a rule must be on the same timeframe: {} is on {}, {} on {} \
                 (write the same @timeframe on both, e.g. ema(12)@1m crosses_above ema(26)@1m)",
                self.lhs,
                self.lhs.spec.timeframe_name(),
                r,
                r.spec.timeframe_name()
            )),
            _ => Ok(()),
        }
    }

    /// Returns whether the rule fires given the previous and current values of both sides.
    pub fn fires(&self, prev: Option<(f64, f64)>, cur: (f64, f64)) -> bool {
        (self.op.fires)(prev, cur)
    }
}

impl FromStr for Rule {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [lhs, op, rhs] = parts[..] else {
            return Err(err("expected `indicator op indicator|number`"));
        };
        let Some(op) = OPS.iter().find(|o| o.name == op) else {
            let names: Vec<&str> = OPS.iter().map(|o| o.name).collect();
            return Err(err(&format!(
                "operator must be one of {}",
                names.join(", ")
            )));
        };
        let lhs: ValueRef = lhs.parse()?;
        let rhs = match rhs.parse::<f64>() {
            Ok(v) if v.is_finite() => Operand::Const(v),
            Ok(_) => return Err(err("constant must be finite")),
            Err(_) => Operand::Indicator(rhs.parse()?),
        };
        let mut rule = Rule {
            id: String::new(),
            lhs,
            op,
            rhs,
        };
        rule.check().map_err(|why| err(&why))?;
        rule.id = rule.to_string();
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.op.name;
        match &self.rhs {
            Operand::Indicator(i) => write!(f, "{} {op} {i}", self.lhs),
            Operand::Const(c) => write!(f, "{} {op} {c}", self.lhs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let r: Rule = "rsi(14) crosses_below 30".parse().unwrap();
        assert_eq!(r.id, "rsi(14) crosses_below 30");
        assert_eq!(r.rhs, Operand::Const(30.0));
        assert_eq!(r.direction(), -1);
        let r: Rule = "EMA(12)  crosses_above ema(26)".parse().unwrap();
        assert_eq!(r.id, "ema(12) crosses_above ema(26)");
        let r: Rule = "MACD(12,26,9).hist crosses_above 0".parse().unwrap();
        assert_eq!(r.id, "macd(12,26,9).hist crosses_above 0");
        assert_eq!(r.lhs.output, 2);
        let r: Rule = "bbands(20,2).lower > sma(20)".parse().unwrap();
        assert_eq!(r.lhs.output, 2);
        assert_eq!(r.rhs, Operand::Indicator("sma(20)".parse().unwrap()));
        let r: Rule = "macd crosses_above macd.signal".parse().unwrap();
        assert_eq!(
            r.id,
            "macd(12,26,9).macd crosses_above macd(12,26,9).signal"
        );
        assert_eq!(
            r.lhs.spec,
            "macd(12,26,9)".parse::<IndicatorSpec>().unwrap()
        );
        let r: Rule = "rsi(14)@1m crosses_below 30".parse().unwrap();
        assert_eq!(r.id, "rsi(14)@1m crosses_below 30");
        assert_eq!(r.timeframe().unwrap().name, "1m");
        let r: Rule = "ema(12)@1m crosses_above ema(26)@1m".parse().unwrap();
        assert_eq!(r.id, "ema(12)@1m crosses_above ema(26)@1m");
        let r: Rule = "zscore(50)@tick > 3".parse().unwrap();
        assert_eq!((r.id.as_str(), r.timeframe()), ("zscore(50) > 3", None));
        let r: Rule = "macd(12,26,9).hist@1m crosses_above 0".parse().unwrap();
        assert_eq!(
            (r.lhs.output, r.id.as_str()),
            (2, "macd(12,26,9).hist@1m crosses_above 0")
        );
        let r2: Rule = "macd(12,26,9)@1m.hist crosses_above 0".parse().unwrap();
        assert_eq!(r, r2);
        let r: Rule = "atr(14)@100t > 0.5".parse().unwrap();
        assert_eq!(r.id, "atr(14)@100t > 0.5");
        for bad in [
            "ema(12)@1m crosses_above ema(26)",
            "ema(12) crosses_above ema(26)@1m",
            "ema(12)@1m crosses_above ema(26)@5m",
            "rsi(14)@1x < 30",
            "rsi(14)@ < 30",
            "macd(12,26,9).foo > 0",
            "sma(20).sma.x > 0",
            "rsi(14) crosses 30",
            "rsi(14) > ",
            "foo(3) > 1",
            "rsi(14) > nan",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fires_on_the_transition_only() {
        let cases = [
            ("x(1)", "sma(1) crosses_above 0", None, (1.0, 0.0), false),
            (
                "",
                "sma(1) crosses_above 0",
                Some((-1.0, 0.0)),
                (1.0, 0.0),
                true,
            ),
            (
                "",
                "sma(1) crosses_above 0",
                Some((0.0, 0.0)),
                (1.0, 0.0),
                true,
            ),
            (
                "",
                "sma(1) crosses_above 0",
                Some((1.0, 0.0)),
                (2.0, 0.0),
                false,
            ),
            (
                "",
                "sma(1) crosses_below 0",
                Some((1.0, 0.0)),
                (-1.0, 0.0),
                true,
            ),
            (
                "",
                "sma(1) crosses_below 0",
                Some((1.0, 0.0)),
                (0.0, 0.0),
                false,
            ),
            ("", "sma(1) > 3", None, (4.0, 3.0), true),
            ("", "sma(1) > 3", Some((4.0, 3.0)), (5.0, 3.0), false),
            ("", "sma(1) < 3", Some((4.0, 3.0)), (2.0, 3.0), true),
        ];
        for (_, rule, prev, cur, want) in cases {
            let r: Rule = rule.parse().unwrap();
            assert_eq!(r.fires(prev, cur), want, "{rule} {prev:?} -> {cur:?}");
        }
    }
}
