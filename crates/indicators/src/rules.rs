//! Signal rules written as text, such as `rsi(14) crosses_below 30` or
//! `ema(12) crosses_above ema(26)`, evaluated on each new set of indicator values. A rule fires
//! on the input where its condition becomes true, not on every input while it stays true.

use crate::indicator::{IndicatorSpec, SpecError};
use std::fmt;
use std::str::FromStr;

/// How the two sides of a rule are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The left side moved from at or below the right side to above it.
    CrossesAbove,
    /// The left side moved from at or above the right side to below it.
    CrossesBelow,
    /// The left side became greater than the right side.
    Above,
    /// The left side became less than the right side.
    Below,
}

/// The right-hand side of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Another indicator.
    Indicator(IndicatorSpec),
    /// A constant.
    Const(f64),
}

/// A parsed signal rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule as written (canonical form), used as the signal's rule id.
    pub id: String,
    /// The indicator on the left.
    pub lhs: IndicatorSpec,
    /// The comparison.
    pub op: Op,
    /// What it is compared with.
    pub rhs: Operand,
}

impl Rule {
    /// Returns +1 for upward rules (`crosses_above`, `>`) and -1 for downward ones.
    pub fn direction(&self) -> i32 {
        match self.op {
            Op::CrossesAbove | Op::Above => 1,
            Op::CrossesBelow | Op::Below => -1,
        }
    }

    /// Returns whether the rule fires given the previous and current values of both sides.
    pub fn fires(&self, prev: Option<(f64, f64)>, cur: (f64, f64)) -> bool {
        let (l, r) = cur;
        match self.op {
            Op::CrossesAbove => prev.is_some_and(|(pl, pr)| pl <= pr) && l > r,
            Op::CrossesBelow => prev.is_some_and(|(pl, pr)| pl >= pr) && l < r,
            Op::Above => l > r && !prev.is_some_and(|(pl, pr)| pl > pr),
            Op::Below => l < r && !prev.is_some_and(|(pl, pr)| pl < pr),
        }
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
        let op = match op {
            "crosses_above" => Op::CrossesAbove,
            "crosses_below" => Op::CrossesBelow,
            ">" => Op::Above,
            "<" => Op::Below,
            _ => return Err(err("operator must be crosses_above, crosses_below, > or <")),
        };
        let lhs: IndicatorSpec = lhs.parse()?;
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
        rule.id = rule.to_string();
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::CrossesAbove => "crosses_above",
            Op::CrossesBelow => "crosses_below",
            Op::Above => ">",
            Op::Below => "<",
        };
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
        for bad in [
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
