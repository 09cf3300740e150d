//! Reference data for instruments: the canonical symbols tickflow knows, with the number of
//! decimal places their quotes carry and a typical price (used by the simulator).

/// Static facts about one instrument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instrument {
    /// Canonical symbol.
    pub symbol: &'static str,
    /// Decimal places of a quote (EURUSD 5, USDJPY 3, XAUUSD 3, ...).
    pub scale: u8,
    /// A typical price level.
    pub typical_price: f64,
    /// A typical spread in points (units of the last decimal place).
    pub typical_spread: i64,
}

const fn i(symbol: &'static str, scale: u8, typical_price: f64, spread: i64) -> Instrument {
    Instrument {
        symbol,
        scale,
        typical_price,
        typical_spread: spread,
    }
}

/// Instruments known out of the box, most traded first. The scale is the finest any common
/// source quotes (Dukascopy quotes gold to 3 places, many brokers BTC to 2), so every source's
/// quotes rescale to it without loss.
pub const INSTRUMENTS: &[Instrument] = &[
    i("EURUSD", 5, 1.08500, 8),
    i("GBPUSD", 5, 1.27000, 12),
    i("USDJPY", 3, 149.500, 10),
    i("AUDUSD", 5, 0.65500, 10),
    i("USDCAD", 5, 1.36000, 14),
    i("USDCHF", 5, 0.88000, 12),
    i("NZDUSD", 5, 0.60000, 14),
    i("EURGBP", 5, 0.85500, 12),
    i("EURJPY", 3, 162.000, 16),
    i("XAUUSD", 3, 2000.000, 300),
    i("GBPJPY", 3, 189.000, 25),
    i("EURCHF", 5, 0.95500, 16),
    i("AUDJPY", 3, 98.000, 18),
    i("XAGUSD", 3, 23.000, 25),
    i("BTCUSD", 2, 42000.00, 3000),
    i("ETHUSD", 2, 2200.00, 150),
];

/// Returns the canonical spelling of what a broker sent: broker suffixes (`.m`, `.pro`) and
/// separators (`/`, `_`, `-`, spaces) go, letters are upper-cased: `eur_usd.m` -> `EURUSD`.
/// Ingest keys `ticks.raw` by it, so every spelling of a symbol lands in one partition.
pub fn canonical(raw: &str) -> String {
    let base = raw.split('.').next().unwrap_or(raw);
    base.chars()
        .filter(|c| !matches!(c, '/' | '_' | '-' | ' '))
        .flat_map(char::to_uppercase)
        .collect()
}

/// Returns whether `symbol` trades around the clock, weekends included: crypto (`BTC*`,
/// `ETH*`).
pub fn trades_24_7(symbol: &str) -> bool {
    symbol.starts_with("BTC") || symbol.starts_with("ETH")
}

/// Returns whether the market of `symbol` is open at `ts_ns` (UTC ns): the calendar that
/// decides whether an hour without ticks is a gap. FX, metals and indices close from Friday
/// 22:00 UTC to Sunday 22:00 UTC; crypto never closes. Holidays and daylight-saving shifts of
/// the weekly open are not modelled: an hour next to them may be reported as a gap.
pub fn market_open(symbol: &str, ts_ns: i64) -> bool {
    if trades_24_7(symbol) {
        return true;
    }
    let secs = ts_ns.div_euclid(1_000_000_000);
    // 1970-01-01 was a Thursday: weekday 0 = Monday.
    let weekday = (secs.div_euclid(86_400) + 3).rem_euclid(7);
    let hour = secs.rem_euclid(86_400) / 3600;
    !matches!((weekday, hour), (4, 22..) | (5, _) | (6, ..22))
}

/// Returns the instrument with this canonical symbol, if known.
pub fn lookup(symbol: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.symbol == symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fx_closes_from_friday_22_to_sunday_22_utc_and_crypto_never() {
        const H: i64 = 3_600_000_000_000;
        // 2019-02-04T00:00:00Z, a Monday.
        let monday = 1_549_238_400_000_000_000;
        let at = |day: i64, hour: i64| monday + (day * 24 + hour) * H;
        let table = [
            // (day from Monday, hour, FX open)
            (0, 0, true),
            (3, 23, true),
            (4, 21, true),
            (4, 22, false),
            (4, 23, false),
            (5, 0, false),
            (5, 12, false),
            (6, 0, false),
            (6, 21, false),
            (6, 22, true),
            (6, 23, true),
            (7, 0, true),
            (-1, 21, false),
            (-1, 22, true),
        ];
        for (day, hour, open) in table {
            let t = at(day, hour);
            assert_eq!(market_open("EURUSD", t), open, "day {day} hour {hour}");
            assert_eq!(market_open("XAUUSD", t + H - 1), open, "end of the hour");
            assert!(market_open("BTCUSD", t) && market_open("ETHUSD", t));
        }
    }
}
