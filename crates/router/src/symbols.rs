//! Symbol normalisation: maps what brokers send (`EURUSD.m`, `EUR_USD`, `EUR/USD`) to the
//! canonical symbol, and holds each instrument's price scale and spread limit.

use std::collections::HashMap;
use tick_core::instrument::INSTRUMENTS;

/// What the router knows about one canonical instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstrumentRule {
    /// Decimal places of the instrument's prices; quotes are rescaled to it.
    pub scale: u8,
    /// Widest accepted spread, in points of `scale` (none: no limit).
    pub max_spread: Option<i64>,
}

/// foldhash, not SipHash: the maps are filled from configuration only, and a tick's symbol
/// is only looked up (an unknown one is rejected, never inserted), on every tick.
type Fast = foldhash::fast::RandomState;

/// Aliases and instruments.
#[derive(Debug, Clone, Default)]
pub struct SymbolMap {
    aliases: HashMap<String, String, Fast>,
    instruments: HashMap<String, InstrumentRule, Fast>,
}

/// Why a symbol map entry could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {why}")]
pub struct MapError {
    what: &'static str,
    text: String,
    why: &'static str,
}

impl SymbolMap {
    /// Returns the built-in instruments, each with a spread limit of 25 times its typical
    /// spread.
    pub fn with_defaults() -> Self {
        let mut m = Self::default();
        for i in INSTRUMENTS {
            m.instruments.insert(
                i.symbol.to_string(),
                InstrumentRule {
                    scale: i.scale,
                    max_spread: Some(i.typical_spread * 25),
                },
            );
        }
        m
    }

    /// Adds or replaces an instrument.
    pub fn set_instrument(&mut self, symbol: &str, rule: InstrumentRule) {
        self.instruments.insert(symbol.to_string(), rule);
    }

    /// Maps `alias` to `canonical`.
    pub fn alias(&mut self, alias: &str, canonical: &str) {
        self.aliases
            .insert(alias.to_string(), canonical.to_string());
    }

    /// Parses `ALIAS=CANONICAL`.
    pub fn add_alias_spec(&mut self, spec: &str) -> Result<(), MapError> {
        let err = |why| MapError {
            what: "symbol alias",
            text: spec.to_string(),
            why,
        };
        let (a, c) = spec
            .split_once('=')
            .ok_or_else(|| err("expected ALIAS=CANONICAL"))?;
        if a.trim().is_empty() || c.trim().is_empty() {
            return Err(err("empty side"));
        }
        self.alias(a.trim(), &c.trim().to_uppercase());
        Ok(())
    }

    /// Parses `SYMBOL:SCALE[:MAX_SPREAD_POINTS]`.
    pub fn add_instrument_spec(&mut self, spec: &str) -> Result<(), MapError> {
        let err = |why| MapError {
            what: "instrument",
            text: spec.to_string(),
            why,
        };
        let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
        let (symbol, scale, spread) = match parts[..] {
            [s, sc] => (s, sc, None),
            [s, sc, sp] => (s, sc, Some(sp)),
            _ => return Err(err("expected SYMBOL:SCALE[:MAX_SPREAD_POINTS]")),
        };
        let scale: u8 = scale
            .parse()
            .ok()
            .filter(|s| *s <= tick_core::price::MAX_SCALE)
            .ok_or_else(|| err("scale must be 0..=18"))?;
        let max_spread = match spread {
            None => None,
            Some(s) => Some(
                s.parse()
                    .ok()
                    .filter(|v: &i64| *v > 0)
                    .ok_or_else(|| err("spread must be a positive integer"))?,
            ),
        };
        self.set_instrument(&symbol.to_uppercase(), InstrumentRule { scale, max_spread });
        Ok(())
    }

    /// Returns the canonical symbol and its rule for what a source sent, if known.
    pub fn resolve(&self, raw: &str) -> Option<(&str, &InstrumentRule)> {
        if let Some((s, r)) = self.instruments.get_key_value(raw) {
            return Some((s.as_str(), r));
        }
        let canonical = match self.aliases.get(raw) {
            Some(c) => c.clone(),
            None => {
                let cleaned = tick_core::instrument::canonical(raw);
                self.aliases.get(&cleaned).cloned().unwrap_or(cleaned)
            }
        };
        self.instruments
            .get_key_value(canonical.as_str())
            .map(|(s, r)| (s.as_str(), r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_broker_spellings() {
        let mut m = SymbolMap::with_defaults();
        m.add_alias_spec("GOLD=XAUUSD").unwrap();
        let cases = [
            ("EURUSD", Some("EURUSD")),
            ("EURUSD.m", Some("EURUSD")),
            ("EUR_USD", Some("EURUSD")),
            ("EUR/USD", Some("EURUSD")),
            ("eurusd.pro", Some("EURUSD")),
            ("GOLD", Some("XAUUSD")),
            ("GOLD.m", Some("XAUUSD")),
            ("USD_JPY", Some("USDJPY")),
            ("FOOBAR", None),
            ("", None),
        ];
        for (raw, want) in cases {
            assert_eq!(m.resolve(raw).map(|(s, _)| s), want, "{raw}");
        }
        assert_eq!(m.resolve("USD_JPY").unwrap().1.scale, 3);
    }

    #[test]
    fn parses_instrument_specs() {
        let mut m = SymbolMap::default();
        m.add_instrument_spec("ger40:1:50").unwrap();
        assert_eq!(
            m.resolve("GER40").unwrap().1,
            &InstrumentRule {
                scale: 1,
                max_spread: Some(50)
            }
        );
        for bad in ["X", "X:19", "X:a", "X:2:0", "X:2:3:4"] {
            assert!(m.add_instrument_spec(bad).is_err(), "{bad}");
        }
        assert!(m.add_alias_spec("nope").is_err());
    }
}
