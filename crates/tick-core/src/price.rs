//! Fixed-point decimal prices: an `i64` mantissa and a number of decimal places, so the decimal a
//! broker sent is the decimal stored, with no binary floating-point round trip.

use std::fmt;
use std::str::FromStr;

/// The largest number of decimal places a price may carry (10^18 still fits in an `i64`).
pub const MAX_SCALE: u8 = 18;

/// A decimal price `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    /// The integer mantissa.
    pub mantissa: i64,
    /// Number of decimal places.
    pub scale: u8,
}

/// Why a decimal string or a rescale could not become a [`Price`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// The text is not a plain decimal number.
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    /// More decimal places than [`MAX_SCALE`].
    #[error("too many decimal places ({0}, at most {MAX_SCALE})")]
    Scale(usize),
    /// The mantissa does not fit in an `i64`.
    #[error("price out of range: {0:?}")]
    Overflow(String),
}

const POW10: [i64; 19] = {
    let mut p = [1i64; 19];
    let mut i = 1;
    while i < 19 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// Returns 10^exp for `exp <= 18`.
pub fn pow10(exp: u8) -> i64 {
    POW10[exp as usize]
}

impl Price {
    /// Returns a price from its mantissa and scale.
    pub const fn new(mantissa: i64, scale: u8) -> Self {
        Self { mantissa, scale }
    }

    /// Returns the same value with `scale` decimal places, or `None` if that would lose digits
    /// or overflow.
    pub fn rescale(self, scale: u8) -> Option<Price> {
        if scale > MAX_SCALE {
            return None;
        }
        if scale >= self.scale {
            let m = self.mantissa.checked_mul(pow10(scale - self.scale))?;
            Some(Price::new(m, scale))
        } else {
            let f = pow10(self.scale - scale);
            (self.mantissa % f == 0).then(|| Price::new(self.mantissa / f, scale))
        }
    }

    /// Returns the nearest `f64`, for indicator arithmetic only (never for storage).
    pub fn to_f64(self) -> f64 {
        self.mantissa as f64 / pow10(self.scale) as f64
    }
}

impl FromStr for Price {
    type Err = PriceError;

    /// Parses a plain decimal such as `1.10235`, `-0.5` or `105`, keeping every digit given.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PriceError::Syntax(s.to_string());
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > MAX_SCALE as usize {
            return Err(PriceError::Scale(frac.len()));
        }
        let mut m: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            m = m
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or_else(|| PriceError::Overflow(s.to_string()))?;
        }
        Ok(Price::new(if neg { -m } else { m }, frac.len() as u8))
    }
}

impl fmt::Display for Price {
    /// Writes the decimal with exactly `scale` decimal places.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let abs = self.mantissa.unsigned_abs();
        let p = pow10(self.scale) as u64;
        let sign = if neg { "-" } else { "" };
        if self.scale == 0 {
            write!(f, "{sign}{abs}")
        } else {
            write!(
                f,
                "{sign}{}.{:0width$}",
                abs / p,
                abs % p,
                width = self.scale as usize
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_decimals() {
        let cases = [
            ("1.10235", 110235, 5, "1.10235"),
            ("105.123", 105123, 3, "105.123"),
            ("0.00001", 1, 5, "0.00001"),
            ("24921.5", 249215, 1, "24921.5"),
            ("-0.5", -5, 1, "-0.5"),
            ("7", 7, 0, "7"),
            ("1.10", 110, 2, "1.10"),
            (".5", 5, 1, "0.5"),
        ];
        for (text, m, s, back) in cases {
            let p: Price = text.parse().unwrap();
            assert_eq!((p.mantissa, p.scale), (m, s), "{text}");
            assert_eq!(p.to_string(), back);
        }
    }

    #[test]
    fn rejects_non_decimals() {
        for bad in ["", "-", "1.2.3", "abc", "1e5", "NaN", "inf", " 1.0", "1,5"] {
            assert!(bad.parse::<Price>().is_err(), "{bad:?}");
        }
        assert!(matches!(
            "99999999999999999999".parse::<Price>(),
            Err(PriceError::Overflow(_))
        ));
        assert!(matches!(
            "0.0000000000000000001".parse::<Price>(),
            Err(PriceError::Scale(19))
        ));
    }

    #[test]
    fn rescales_without_losing_digits() {
        let p = Price::new(110235, 5);
        assert_eq!(p.rescale(6), Some(Price::new(1102350, 6)));
        assert_eq!(p.rescale(4), None);
        assert_eq!(Price::new(1102350, 6).rescale(5), Some(p));
        assert_eq!(Price::new(i64::MAX, 0).rescale(1), None);
    }

    proptest! {
        #[test]
        fn decimal_text_round_trips(int in 0u64..10_000_000, frac in 0u64..1_000_000_000, scale in 0u8..=9) {
            let frac = frac % 10u64.pow(u32::from(scale)).max(1);
            let text = if scale == 0 { int.to_string() } else { format!("{int}.{frac:0w$}", w = scale as usize) };
            let p: Price = text.parse().unwrap();
            prop_assert_eq!(p.scale, scale);
            prop_assert_eq!(p.to_string(), text);
        }

        #[test]
        fn display_parse_round_trips(m in any::<i64>().prop_filter("not min", |m| *m != i64::MIN), scale in 0u8..=MAX_SCALE) {
            let p = Price::new(m, scale);
            prop_assert_eq!(p.to_string().parse::<Price>().unwrap(), p);
        }
    }
}
