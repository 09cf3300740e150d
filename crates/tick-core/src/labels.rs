//! Metric label values taken from input, kept to a bounded set: a label is a canonical,
//! well-formed symbol among the first few distinct ones seen, or `other`. A feed that sends
//! garbage or endless look-alike symbols then adds at most one series (`other`), never one per
//! string.

use std::collections::HashSet;

/// The label every value outside the bounded set gets.
pub const OTHER: &str = "other";

/// The longest symbol that gets a label of its own.
const MAX_SYMBOL_LEN: usize = 16;

/// Hands out symbol labels from a bounded set.
#[derive(Debug)]
pub struct SymbolLabels {
    max: usize,
    seen: HashSet<String>,
}

impl SymbolLabels {
    /// Returns a set that gives at most `max` distinct symbols a label of their own; known
    /// instruments always get theirs (they count towards `max`).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: HashSet::new(),
        }
    }

    /// Returns the label of `raw`: its canonical spelling when that is 1-16 characters of
    /// `A-Z0-9` and either a known instrument or one of the first `max` such symbols seen;
    /// otherwise [`OTHER`].
    pub fn label(&mut self, raw: &str) -> &str {
        // The common case, once per tick: a symbol already labelled under its own spelling is
        // found without being canonicalised again.
        if self.seen.contains(raw) {
            return self.seen.get(raw).map_or(OTHER, String::as_str);
        }
        let canonical = crate::instrument::canonical(raw);
        let well_formed = (1..=MAX_SYMBOL_LEN).contains(&canonical.len())
            && canonical
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !well_formed {
            return OTHER;
        }
        if !self.seen.contains(&canonical)
            && (self.seen.len() < self.max || crate::instrument::lookup(&canonical).is_some())
        {
            self.seen.insert(canonical.clone());
        }
        self.seen.get(&canonical).map_or(OTHER, String::as_str)
    }

    /// Returns how many symbols have a label of their own.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Returns whether no symbol has a label of its own yet.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_look_alikes_share_one_label_and_the_set_is_bounded() {
        let mut l = SymbolLabels::new(3);
        assert_eq!(l.label("eur_usd.m"), "EURUSD");
        assert_eq!(l.label("EURUSD"), "EURUSD");
        for bad in [
            "",
            "EUR\0USD",
            "EURUSD\u{0456}",
            "ЕURUSD",
            "A_VERY_LONG_SYMBOL_NAME_1",
        ] {
            assert_eq!(l.label(bad), OTHER, "{bad:?}");
        }
        assert_eq!(l.label("AAA1"), "AAA1");
        assert_eq!(l.label("AAA2"), "AAA2");
        assert_eq!(l.label("AAA3"), OTHER, "past the bound");
        assert_eq!(l.label("USDJPY"), "USDJPY", "known instruments keep theirs");
        for i in 0..10_000 {
            l.label(&format!("Z{i}"));
        }
        assert_eq!(l.len(), 4);
    }
}
